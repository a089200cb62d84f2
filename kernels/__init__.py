"""Integer kernels: extraction of integer models from Brevitas, packing, NumPy reference and Numba kernels.

``extract_lstm(quant_lstm, head) -> IntLSTMModel`` is the single description the Numba
engine (:class:`IntLSTMEngine`) and the ONNX LSTM exporter both build from.
"""

from kernels.conformance import agreement, brevitas_codes, step_agreement
from kernels.engine import EngineOutput, IntLSTMEngine, KernelBackend, LSTMStream
from kernels.extract import UnsupportedQuantizer, extract_lstm
from kernels.model import GATES, IntLinear, IntLSTMLayer, IntLSTMModel, QuantSpec
from kernels.pack import pack_codes, packed_nbytes, unpack_codes
from kernels.storage import load_model, save_model

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
