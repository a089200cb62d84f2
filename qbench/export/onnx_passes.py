"""The two onnxoptimizer passes Brevitas' QCDQ export runs, in plain ``onnx``, for where onnxoptimizer is absent.

onnxoptimizer has no aarch64 wheel (source only, a long C++ build), so ``pyproject.toml`` does not
require it there. Brevitas 0.13 refuses to export without it, yet its QCDQ manager only asks for
``extract_constant_to_initializer`` and ``eliminate_unused_initializer``: graph tidying that does
not change what the graph computes. :func:`install` gives Brevitas this module in its place.
"""

from __future__ import annotations

from collections.abc import Sequence

from qbench.errors import QbenchError

PASSES = ("extract_constant_to_initializer", "eliminate_unused_initializer")


def _extract_constants(graph) -> None:
    """Top-level ``Constant`` nodes holding a tensor become initializers of the same name."""
    keep = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and not node.domain and value is not None and len(node.attribute) == 1:
            tensor = type(value.t)()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _used_names(graph) -> set[str]:
    """Every value name a node (or a node's subgraph) reads, and the graph's outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= _used_names(sub)
    return used


def _eliminate_unused_initializers(graph) -> None:
    """Drop initializers nothing reads, and the graph inputs that only declared them."""
    used = _used_names(graph)
    dropped = {i.name for i in graph.initializer if i.name not in used}
    kept = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


def optimize(model, passes: Sequence[str]):
    """onnxoptimizer's ``optimize(model, passes)`` for :data:`PASSES` only; returns a new model."""
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        raise QbenchError(f"ONNX export needs onnxoptimizer for pass(es) {', '.join(unknown)}: pip install onnxoptimizer")
    out = type(model)()
    out.CopyFrom(model)
    for name in passes:
        (_extract_constants if name == PASSES[0] else _eliminate_unused_initializers)(out.graph)
    return out


def install() -> bool:
    """Give Brevitas' ONNX manager these passes when onnxoptimizer is missing; True if installed."""
    import brevitas.export.onnx.manager as manager

    if getattr(manager, "opt", None) is not None:
        return False
    import onnx
    import sys

    manager.onnx = manager.onnx or onnx
    manager.opt = sys.modules[__name__]
    return True
