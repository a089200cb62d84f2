"""The fp32 student on each runtime: the baseline a quantized artifact's speed-up and size are measured against.

The float model is exported as plain ONNX (TorchScript exporter, opset 17, dynamic batch):
each runtime loads what its ``files_from_onnx`` makes of that file (ONNX Runtime the file itself,
OpenVINO IR without fp16 compression). Global
adaptive pools become ``ReduceMean`` as in the quantized export. Conformance against PyTorch is
a float tolerance, not output steps: the runtimes reassociate float sums (fused kernels, other
GEMM blocking), so logits agree to a few float32 ulps of their size, never bit for bit.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qbench.backends import Backend
from qbench.export.base import Artifact, FloatPrecision, files_size

FP32_OPSET = 17
FP32_CONTAINER = "fp32"
FP32_LOGIT_RTOL = 1e-4
"""Largest |runtime - PyTorch| logit difference, relative to the largest |logit| of the batch.
Float32 reassociation over ~1e4-term sums gives ~1e-6; 1e-4 leaves room for fused kernels
(measured here: 1.5e-8 absolute for the LSTM on ONNX Runtime and OpenVINO)."""
FP32_MIN_TOP1 = 0.999  # a class flip needs two logits within that difference of each other


def _exportable(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose global adaptive pools are ``GlobalMean`` (ONNX ``ReduceMean``)."""
    from qbench.quant.quantize import GlobalMean, global_mean_dims

    model = copy.deepcopy(model).cpu().float().eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
                dims = global_mean_dims(child)
                if dims is not None:
                    setattr(parent, name, GlobalMean(dims))
    return model


def write_fp32_onnx(model: nn.Module, path: Path, example: np.ndarray) -> Path:
    """``(B, T, F) -> (B, C)`` float ONNX of ``model`` at ``path`` (T fixed by ``example``)."""
    from qbench.export.onnx_cnn import INPUT_NAME

    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.as_tensor(np.ascontiguousarray(example[:1], dtype=np.float32))
    with warnings.catch_warnings():
        # the LSTM's initial states are zeros built from the input's batch size: any batch runs (tested)
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(_exportable(model), (x,), str(path), dynamo=False, opset_version=FP32_OPSET,
                          input_names=[INPUT_NAME], output_names=["logits"], dynamic_axes={INPUT_NAME: {0: "batch"}})
    return path


def export_fp32(model: nn.Module, backend: Backend | str, *, out_dir: Path, example: np.ndarray,
                name: str = "fp32") -> Artifact:
    """The float student as an artifact of ``backend`` (ONNX for ONNX Runtime, IR for OpenVINO)."""
    backend = Backend(backend)
    files = backend.spec.files_from_onnx(write_fp32_onnx(model, Path(out_dir) / f"{name}.onnx", example))
    return Artifact(backend=backend, path=files[0], files=files, size_bytes=files_size(files),
                    precision=FloatPrecision.F32, weight_container=FP32_CONTAINER, weight_bits=32, act_bits=32,
                    notes=(f"fp32 ONNX (opset {FP32_OPSET}) of the float student",))


def float_conformance(scores: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """How a runtime's fp32 logits compare with PyTorch's: relative max difference, top-1, verdict."""
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    rel = float(np.max(np.abs(scores - reference))) / scale
    top1 = float(np.mean(scores.argmax(1) == reference.argmax(1)))
    ok = rel <= FP32_LOGIT_RTOL and top1 >= FP32_MIN_TOP1
    reason = "" if ok else (f"logits differ from PyTorch by {rel:.2e} of their range (bound {FP32_LOGIT_RTOL:g}), "
                            f"top-1 agreement {top1:.4f} (bound {FP32_MIN_TOP1})")
    return {"status": "ok" if ok else "failed", "max_rel_diff": rel, "top1": top1, "reason": reason}
