"""qbench's Numba fixed-point integer engine, in process: LSTM students of ``models.LSTMStudent`` shape.

Registered as ``engine``; it requires the :data:`~qbench.capabilities.LSTM_STUDENT` capability and
is a second reference (its scores) for exported LSTM artifacts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qbench.backends import BackendSpec, register
from qbench.capabilities import LSTM_STUDENT

ENGINE_THREADS = 1  # the Numba kernel is single-threaded: it is timed, and reported, at one thread


def _student_engine(pipe, point, qmodel):
    """The integer engine extracted from this point's QAT model (extracted once per run)."""
    from qbench.engine import StudentEngine

    key = ("engine", point.model, point.distill.value, point.bits)
    return pipe.once(key, lambda: StudentEngine(qmodel))


def engine_scores(pipe, point, qmodel) -> np.ndarray:
    """(N, C) logits of the integer engine on the test split (computed once per QAT model)."""
    from qbench.sweep.points import scores_of

    key = ("engine-scores", point.model, point.distill.value, point.bits)
    return pipe.once(key, lambda: scores_of(_student_engine(pipe, point, qmodel), pipe.eval_split().x))


def measure_qat(pipe, point) -> dict[str, Any]:
    """Error, code-level agreement with Brevitas, stored size and latency of the engine."""
    import kernels
    from qbench.sweep.points import agreement, error_figures, latency, quant_scores, size_figures

    qmodel, _ = pipe.qat(point.model, point.distill, point.bits)
    engine = _student_engine(pipe, point, qmodel)
    x = pipe.eval_split().x
    scores = engine_scores(pipe, point, qmodel)
    out_dir = pipe.artifact_dir(point.model, point.distill, point.bits) / NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    kernels.save_model(engine.model, out_dir / "model.npz")
    # hidden codes compared with Brevitas on the whole (capped) test split, free running and per step
    codes = kernels.agreement(engine.model, qmodel.lstm, engine.features(x), head=qmodel.fc)
    return {
        **error_figures(pipe, point, scores), **size_figures(pipe, point, qmodel),
        "engine_packed_bytes": engine.model.packed_nbytes,
        "file_bytes": (out_dir / "model.npz").stat().st_size,
        "agreement": {**agreement(scores, quant_scores(pipe, point, qmodel)), **codes},
        "latency": latency(pipe, lambda threads: engine, threads=SPEC.thread_counts),
    }


NAME = "engine"
SPEC = register(BackendSpec(
    name=NAME, label="integer engine (Numba)", tag="int", library="numba", order=1,
    description="qbench's Numba fixed-point integer engine (LSTM students of models.LSTMStudent shape)",
    requires=frozenset({LSTM_STUDENT}), measure=measure_qat, scores=engine_scores,
    thread_counts=(ENGINE_THREADS,),
))
