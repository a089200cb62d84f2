"""Export of quantized students to runtimes, and conformance of the artifacts.

``export(qmodel, backend, *, out_dir, example) -> Artifact``; ``runner(artifact, threads=...)``
gives ``run(x (B, T, F)) -> logits``; ``check_conformance(artifact, qmodel, x)`` compares an
artifact with its Brevitas model. Runtimes are imported only when a backend is used.
"""

from qbench.backends import Backend
from qbench.export.base import Artifact, FloatPrecision, conformance_variants, export, runner
from qbench.export.conformance import TOL_STEPS, Conformance, check_conformance

__all__ = [
    "Artifact", "Backend", "Conformance", "FloatPrecision", "TOL_STEPS", "check_conformance", "conformance_variants",
    "export", "runner",
]
