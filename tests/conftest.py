"""Shared test configuration: benchmark machine info carries qbench's provenance."""

from __future__ import annotations


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
