"""Where a figure came from: machine, library versions, git commit, time.

Every results document carries these so a table can be trusted and rebuilt, and so tables
from different machines are never mixed silently (``machine_id`` names the results folder).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("qbench", "torch", "brevitas", "onnx", "numba", "llvmlite", "numpy")  # besides each backend's library
REPO_ROOT = Path(__file__).resolve().parent.parent


# (CPU implementer, CPU part) of common Arm cores: aarch64 /proc/cpuinfo gives numbers, not names.
ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53", ("0x41", "0xd05"): "Cortex-A55", ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd0b"): "Cortex-A76", ("0x41", "0xd0c"): "Neoverse-N1", ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd41"): "Cortex-A78", ("0x41", "0xd49"): "Neoverse-N2", ("0x41", "0xd4f"): "Neoverse-V2",
    ("0x61", "0x022"): "Apple M1", ("0xc0", "0xac3"): "Ampere-1",
}


def cpu_model() -> str:
    """The CPU's marketing name (x86 ``model name``; on ARM the core's name from implementer and part)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    impl = re.search(r"^CPU implementer\s*:\s*(\S+)", text, re.MULTILINE)
    part = re.search(r"^CPU part\s*:\s*(\S+)", text, re.MULTILINE)
    if impl and part:
        key = (impl.group(1).lower(), part.group(1).lower())
        return ARM_PARTS.get(key, f"ARM implementer {key[0]} part {key[1]}")
    return platform.processor() or "unknown"


# Instruction-set features that decide integer-kernel speed on the CPUs users ship.
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def isa_features() -> list[str]:
    """The :data:`ISA_FEATURES` this CPU reports (``flags`` on x86, ``Features`` on ARM)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    m = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    present = set(m.group(2).split()) if m else set()
    return [f for f in ISA_FEATURES if f in present]


def emulator() -> str | None:
    """The user-mode emulator this process runs under (e.g. ``qemu-user 7.2.22 on x86_64``), else None.

    ``QBENCH_EMULATOR`` names it (CI's ARM job sets it); failing that, a registered and enabled
    ``qemu-<arch>`` binfmt handler for this very architecture means the kernel runs us through
    qemu (a native kernel has no reason to register its own architecture). Emulated timings mean
    nothing: records carry this so no one reads them as the CPU's.
    """
    named = os.environ.get("QBENCH_EMULATOR")
    if named:
        return named
    try:
        handler = Path(f"/proc/sys/fs/binfmt_misc/qemu-{platform.machine()}").read_text()
    except OSError:
        return None
    return "qemu-user" if handler.startswith("enabled") else None


def machine_info() -> dict[str, Any]:
    """Architecture, CPU model, logical cores, OS and Python of this machine, and its emulator if any."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "isa": isa_features(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "emulator": emulator(),
    }


def machine_id(info: dict[str, Any] | None = None) -> str:
    """A folder-safe name for this machine kind, e.g. ``x86_64-intel-xeon-platinum-8375c-2c``
    (``aarch64-qemu-neoverse-n1-2c`` under an emulator)."""
    info = info or machine_info()
    model = re.sub(r"\((r|tm)\)|cpu|@.*$", "", info["cpu_model"], flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40].strip("-")
    arch = f"{info['arch']}-qemu" if info.get("emulator") else info["arch"]
    return f"{arch}-{slug}-{info['usable_cores']}c"


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a figure depends on (None when absent)."""
    from qbench.backends import specs

    out: dict[str, str | None] = {}
    for name in dict.fromkeys([*LIBRARIES, *(s.library for s in specs() if s.library)]):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(root: Path = REPO_ROOT, *, ignore: Path | None = None) -> dict[str, Any]:
    """The commit qbench runs from and whether the work tree had uncommitted changes.

    ``ignore``: a folder whose changes do not count (a sweep's own output folder, which a
    resumed or ``--fresh`` run has already changed when it asks).
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    pathspec = []
    if ignore is not None:
        try:
            pathspec = ["--", ".", f":(exclude){Path(ignore).resolve().relative_to(Path(root).resolve())}"]
        except ValueError:  # outside the work tree: nothing to exclude
            pass
    status = git("status", "--porcelain", "--untracked-files=no", *pathspec)
    return {"commit": sha, "dirty": bool(status) if status is not None else None}


WAIT_POLICY = "PASSIVE"
"""OpenMP's wait policy for qbench processes: idle OpenMP workers sleep instead of spinning. On a
shared 2-core host a 2-thread training step spun 11-17x slower than a 1-thread one; PASSIVE removed it."""
_wait_policy_source: str | None = None  # who set OMP_WAIT_POLICY: "qbench", "user", or None (unset)


def apply_thread_policy() -> None:
    """Set ``OMP_WAIT_POLICY`` to :data:`WAIT_POLICY` unless the user has set it.

    Call before anything imports torch: OpenMP reads it once, when the library loads.
    Training and calibration threads are ``TrainConfig.threads`` (1 by default).
    """
    global _wait_policy_source
    if "OMP_WAIT_POLICY" in os.environ:
        _wait_policy_source = "user"
    else:
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
        _wait_policy_source = "qbench"


MALLOC_POLICY = {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 1 << 30}
"""glibc malloc settings for qbench processes: blocks up to 32 MiB come from the heap, and up to
1 GiB of freed heap is kept for the next step. By default glibc returns the activation maps of a
training step to the kernel and faults them back in zeroed pages on the next step: a DS-CNN fp32
training step of 64 clips took 238-319 ms with the defaults and 198-236 ms with these, alternating
processes on one thread (the teacher's and LSTM's steps: no difference beyond the noise). glibc
reads the variables when a process starts, so children (training-ahead and measuring workers, Ray
tasks) get them from the environment; this process sets them with ``mallopt``."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_malloc_policy_source: str | None = None  # "qbench", "user" (a variable was set), or None (not glibc)


def apply_malloc_policy() -> None:
    """Apply :data:`MALLOC_POLICY` to this process and its children, unless the user set either
    variable or the C library is not glibc (then nothing changes)."""
    global _malloc_policy_source
    if any(name in os.environ for name in MALLOC_POLICY):
        _malloc_policy_source = "user"
        return
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    if mallopt(_M_MMAP_THRESHOLD, MALLOC_POLICY["MALLOC_MMAP_THRESHOLD_"]) and \
            mallopt(_M_TRIM_THRESHOLD, MALLOC_POLICY["MALLOC_TRIM_THRESHOLD_"]):
        os.environ.update({name: str(value) for name, value in MALLOC_POLICY.items()})
        _malloc_policy_source = "qbench"


def apply_process_policy() -> None:
    """qbench's process settings (:func:`apply_thread_policy`, :func:`apply_malloc_policy`), before torch loads."""
    apply_thread_policy()
    apply_malloc_policy()


def thread_policy() -> dict[str, Any]:
    """The thread settings a figure was made under: OpenMP wait policy (and who set it), torch's threads."""
    import sys

    torch = sys.modules.get("torch")
    return {
        "policy": "training and calibration: TrainConfig.threads intra-op threads (default 1); "
                  "latency: the thread count stated with each figure",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_wait_policy_set_by": _wait_policy_source if "OMP_WAIT_POLICY" in os.environ else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_intra_op_threads": torch.get_num_threads() if torch is not None else None,
        "torch_inter_op_threads": torch.get_num_interop_threads() if torch is not None else None,
        "malloc": {name: os.environ.get(name) for name in MALLOC_POLICY},
        "malloc_set_by": _malloc_policy_source if any(name in os.environ for name in MALLOC_POLICY) else None,
    }


def kernel_isa() -> str | None:
    """The instruction-set path of the integer kernel's gate product in this process (None if unavailable)."""
    try:
        from kernels.simd import compiled_isa
    except ImportError:
        return None
    return compiled_isa()


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(*, ignore: Path | None = None) -> dict[str, Any]:
    """Everything a results document needs to say where it came from (``ignore``: see :func:`git_commit`)."""
    info = machine_info()
    return {
        "machine": info,
        "machine_id": machine_id(info),
        "kernel_isa": kernel_isa(),
        "threads": thread_policy(),
        "versions": library_versions(),
        "git": git_commit(ignore=ignore),
        "utc": utc_now(),
    }
