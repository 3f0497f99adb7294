"""The local development cluster: a real control plane built from Go modules, simulated GPU nodes."""
