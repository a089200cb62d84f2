"""qbench: quantization and kernel benchmarks for small on-device audio models."""

import warnings

__version__ = "0.1.0"

# Brevitas warns on import that an optional CUDA Hadamard kernel is missing; qbench never uses
# Hadamard rotations, so the line is noise in every run.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
