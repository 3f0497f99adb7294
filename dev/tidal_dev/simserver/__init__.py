"""Simulated model servers: vLLM- and Triton-like HTTP APIs and metrics with a latency model.

They stand in for the real engines behind simulated GPU pods (no GPU needed), so
load builds real queues that Prometheus really scrapes.
"""
