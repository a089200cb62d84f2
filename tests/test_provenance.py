"""Provenance: emulated machines are named as such, and the thread policy is set before torch and recorded."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from qbench.provenance import ARM_PARTS, MALLOC_POLICY, machine_id, provenance
from qbench.train import TrainConfig

POLICY_CHECK = """
import json, sys
import qbench.__main__ as entry
assert "torch" not in sys.modules, "the CLI entry must not import torch before the thread policy"
from qbench.provenance import apply_process_policy, thread_policy
apply_process_policy()
import torch
print(json.dumps(thread_policy()))
"""


def _policy(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", *MALLOC_POLICY)} | env_extra
    done = subprocess.run([sys.executable, "-c", POLICY_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_passive_wait_policy_is_set_unless_the_user_chose_one() -> None:
    ours = _policy({})
    assert ours["omp_wait_policy"] == "PASSIVE" and ours["omp_wait_policy_set_by"] == "qbench"
    assert ours["torch_intra_op_threads"] >= 1
    theirs = _policy({"OMP_WAIT_POLICY": "ACTIVE"})
    assert theirs["omp_wait_policy"] == "ACTIVE" and theirs["omp_wait_policy_set_by"] == "user"


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_malloc_policy_is_set_for_children_unless_the_user_chose_one() -> None:
    ours = _policy({})
    assert ours["malloc_set_by"] == "qbench"
    assert ours["malloc"] == {name: str(value) for name, value in MALLOC_POLICY.items()}
    theirs = _policy({"MALLOC_TRIM_THRESHOLD_": "123456789"})
    assert theirs["malloc_set_by"] == "user"
    assert theirs["malloc"] == {"MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": "123456789"}


def test_training_defaults_to_one_thread() -> None:
    assert TrainConfig().threads == 1


def test_provenance_records_threads_emulator_and_kernel_path() -> None:
    prov = provenance()
    assert {"omp_wait_policy", "torch_intra_op_threads", "policy"} <= set(prov["threads"])
    assert "emulator" in prov["machine"] and prov["kernel_isa"] in ("avx512", "avx2", "generic")


@pytest.mark.parametrize(("emulator", "expected"), [(None, "aarch64-neoverse-n1-2c"),
                                                    ("qemu-user 7.2.22 on x86_64", "aarch64-qemu-neoverse-n1-2c")])
def test_an_emulated_machine_gets_its_own_results_folder(emulator, expected: str) -> None:
    info = {"arch": "aarch64", "cpu_model": ARM_PARTS[("0x41", "0xd0c")], "usable_cores": 2, "emulator": emulator}
    assert machine_id(info) == expected
