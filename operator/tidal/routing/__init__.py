"""Which replica serves a request (pure, shared by the gateway and the simulator): `prefix` reads the leading text
of a prompt, `ring` places those keys on replicas by consistent hashing with bounded loads."""
