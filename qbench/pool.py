"""qbench's worker pools: spawned processes that do not outlive the process that started them.

A pool worker runs a task for minutes (a teacher trains for several). When the sweep's process is
killed by a signal it cannot handle (``kill -9``, the out-of-memory killer, a CI timeout), Python
cannot shut its pool down, and the workers went on training into the cache for minutes, on the
cores the next run needs. On Linux each worker asks the kernel to kill it when the sweep's process
exits (``prctl(PR_SET_PDEATHSIG)``); elsewhere it is left as before.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` spawned worker processes that die with this process."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Shut ``pool`` down now: pending tasks cancelled and running ones killed (a shutdown waits for
    them, and a teacher trains for minutes)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # CPython's; none to kill without it
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()
    for process in processes:
        process.join()


def die_with_parent(parent: int) -> None:
    """In a worker: be killed when ``parent`` exits (Linux; a no-op elsewhere or without glibc's prctl)."""
    if sys.platform != "linux":
        return
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent was gone before the request: nobody will send the signal
        os._exit(1)
