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

LIBRARIES = ("qbench", "torch", "brevitas", "onnx", "onnxruntime", "openvino", "numba", "llvmlite", "numpy")
REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's marketing name (x86 ``model name``; ARM implementer/part when no name is given)."""
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
        return f"ARM implementer {impl.group(1)} part {part.group(1)}"
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


def machine_info() -> dict[str, Any]:
    """Architecture, CPU model, logical cores, OS and Python of this machine."""
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
    }


def machine_id(info: dict[str, Any] | None = None) -> str:
    """A folder-safe name for this machine kind, e.g. ``x86_64-intel-xeon-platinum-8375c-2c``."""
    info = info or machine_info()
    model = re.sub(r"\((r|tm)\)|cpu|@.*$", "", info["cpu_model"], flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40].strip("-")
    return f"{info['arch']}-{slug}-{info['usable_cores']}c"


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a figure depends on (None when absent)."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
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


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(*, ignore: Path | None = None) -> dict[str, Any]:
    """Everything a results document needs to say where it came from (``ignore``: see :func:`git_commit`)."""
    info = machine_info()
    return {
        "machine": info,
        "machine_id": machine_id(info),
        "versions": library_versions(),
        "git": git_commit(ignore=ignore),
        "utc": utc_now(),
    }
