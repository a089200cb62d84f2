"""qbench: quantization and kernel benchmarks for small on-device audio models."""

__version__ = "0.1.0"
