"""Shared test configuration: per-backend markers and skips, and benchmark machine info.

Markers come from the backends qbench registers (:mod:`qbench.backends`): a test that needs a
runtime carries its spec's marker ``requires_<name>`` (``requires_onnxruntime``,
``requires_openvino``), either written on it or added here to every test parametrised with a
``Backend``; it is skipped, with the reason in the summary, when that runtime is not installed.
A new backend gets its marker without any edit here.
"""

from __future__ import annotations

import os

import pytest

from qbench.backends import Backend, specs


def pytest_configure(config) -> None:
    # Sweeps in tests train in-process unless a test asks for workers (--jobs, tests/test_sweep_ahead.py):
    # spawning two workers per tiny sweep cost the suite minutes, and monkeypatches do not reach them.
    os.environ.setdefault("QBENCH_JOBS", "1")
    for spec in specs():
        config.addinivalue_line("markers", f"{spec.marker}: needs {spec.label} ({spec.library or 'qbench'})")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        for value in params.values():
            if isinstance(value, Backend):
                item.add_marker(value.spec.marker)
        for spec in specs():
            if item.get_closest_marker(spec.marker) and not spec.installed():
                item.add_marker(pytest.mark.skip(reason=f"{spec.library} is not installed"))


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
