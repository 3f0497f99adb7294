"""Tidal's developer tools: the local GPU cluster, simulated engines and the demo. Not in the product's
wheel or image; installed from a checkout by `make install`."""
