"""Shared test configuration: per-backend markers and skips, and benchmark machine info.

Markers come from the backends qbench registers (:class:`qbench.export.Backend`): a test that
needs a runtime carries ``requires_<backend value>`` (``requires_onnxruntime``,
``requires_openvino``), either written on it or added here to every test parametrised with a
``Backend``; it is skipped, with the reason in the summary, when that runtime is not installed.
A new ``Backend`` member gets its marker without any edit here.
"""

from __future__ import annotations

import importlib.util

import pytest

from qbench.export.base import Backend


def backend_marker(backend: Backend) -> str:
    """The marker of tests that need ``backend``'s runtime (its value is the module it imports)."""
    return f"requires_{backend.value}"


def backend_installed(backend: Backend) -> bool:
    return importlib.util.find_spec(backend.value) is not None


def pytest_configure(config) -> None:
    for backend in Backend:
        config.addinivalue_line("markers", f"{backend_marker(backend)}: needs the {backend.value} runtime")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        for value in params.values():
            if isinstance(value, Backend):
                item.add_marker(backend_marker(value))
        for backend in Backend:
            if item.get_closest_marker(backend_marker(backend)) and not backend_installed(backend):
                item.add_marker(pytest.mark.skip(reason=f"{backend.value} is not installed"))


def _benchmark_json_folder(config):
    """Where ``--benchmark-json`` writes: pytest-benchmark has already truncated that file."""
    from pathlib import Path

    out = config.getoption("benchmark_json", None)
    return Path(out.name).parent if out is not None and hasattr(out, "name") else None


def pytest_benchmark_update_machine_info(config, machine_info):
    """pytest-benchmark's machine_info, extended by library versions, ISA, cores and the commit."""
    from kernels.simd import compiled_isa
    from qbench.provenance import git_commit, library_versions, machine_info as qbench_machine

    import torch

    info = qbench_machine()
    machine_info["qbench"] = {
        "versions": library_versions(),
        "isa": info["isa"],
        "usable_cores": info["usable_cores"],
        "torch_threads": torch.get_num_threads(),
        "kernel_isa": compiled_isa(),  # the instruction set of kernels.simd.gate_dot
        "git": git_commit(ignore=_benchmark_json_folder(config)),
    }
