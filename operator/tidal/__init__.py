"""Tidal: run vLLM or Triton on GPU node pools and scale each model between 0 and N."""

__version__ = "0.1.0"
