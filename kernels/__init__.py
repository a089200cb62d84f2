"""Integer kernels: extraction of integer models from Brevitas, packing, NumPy reference and Numba kernels.

``extract_lstm(quant_lstm, head) -> IntLSTMModel`` is the single description the Numba
engine (:class:`IntLSTMEngine`) and the ONNX LSTM exporter both build from.
"""

import importlib

# Loaded on first use (PEP 562): ``kernels.conformance`` imports Brevitas (2 s), which a process
# that only asks ``kernels.simd`` for its ISA (a resumed sweep's provenance) never needs.
_WHERE = {
    "agreement": "conformance", "brevitas_codes": "conformance", "step_agreement": "conformance",
    "EngineOutput": "engine", "IntLSTMEngine": "engine", "KernelBackend": "engine", "LSTMStream": "engine",
    "UnsupportedQuantizer": "extract", "extract_lstm": "extract",
    "GATES": "model", "IntLinear": "model", "IntLSTMLayer": "model", "IntLSTMModel": "model", "QuantSpec": "model",
    "pack_codes": "pack", "packed_nbytes": "pack", "unpack_codes": "pack",
    "load_model": "storage", "save_model": "storage",
}

__all__ = [
    "GATES",
    "EngineOutput",
    "IntLSTMEngine",
    "IntLSTMLayer",
    "IntLSTMModel",
    "IntLinear",
    "KernelBackend",
    "LSTMStream",
    "QuantSpec",
    "UnsupportedQuantizer",
    "agreement",
    "brevitas_codes",
    "extract_lstm",
    "load_model",
    "pack_codes",
    "packed_nbytes",
    "save_model",
    "step_agreement",
    "unpack_codes",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kernels.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
