"""qbench: quantization and kernel benchmarks for small on-device audio models."""

import warnings

__version__ = "0.1.0"

# Brevitas warns on import that an optional CUDA Hadamard kernel is missing; qbench never uses
# Hadamard rotations, so the line is noise in every run.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")


def __getattr__(name: str):
    """``qbench.run_grid`` and ``qbench.api`` load on first use, so ``import qbench`` stays light."""
    if name in ("run_grid", "api"):
        import importlib

        api = importlib.import_module("qbench.api")
        return api if name == "api" else api.run_grid
    raise AttributeError(f"module 'qbench' has no attribute {name!r}")


__all__ = ["__version__", "run_grid"]
