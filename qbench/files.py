"""Files that survive crashes and neighbours: atomic writes, folder locks, one-line write errors.

Atomic writes mean readers (and a rerun after ``kill -9``) see the old file or the new one,
never half of one. A folder lock keeps two processes from writing one results folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from qbench.errors import QbenchError

LOCK_NAME = ".lock"
TEMP_SUFFIX = ".tmp"
# OSErrors the machine causes, not the code: no space, no quota, read-only or forbidden place.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, flush it to disk, then rename it.

    The temporary name is unique per writer, so concurrent writers of one path never share a
    file; it is opened rather than made by mkstemp so it gets the umask's permissions, not 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across power loss too (kill -9 needs only the rename itself)."""
    with contextlib.suppress(OSError):  # some file systems cannot open or sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_environment_error(exc: BaseException) -> bool:
    """True for an OSError a full disk, a quota or a read-only / forbidden place raises."""
    return isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS


def os_error_line(exc: OSError, path: Path | str | None = None) -> str:
    """``<path>: <reason>`` on one line, e.g. ``/cache/x.pt: No space left on device``."""
    where = exc.filename if exc.filename is not None else path
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}" if where is not None else reason


@contextlib.contextmanager
def environment_errors(what: str) -> Iterator[None]:
    """Turn a full disk, a quota or a read-only place into one line naming the path (a QbenchError)."""
    try:
        yield
    except OSError as exc:
        if not is_environment_error(exc):
            raise
        raise QbenchError(f"{what}: {os_error_line(exc)}") from None


def writable_dir(path: Path, *, what: str) -> Path:
    """``path`` as a folder this process can write in, created if missing; else a one-line QbenchError.

    Writes and removes a probe file rather than asking ``os.access``, which says yes to root on a
    read-only file system and in ``/proc``.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
        probe.open("xb").close()
        probe.unlink()
    except OSError as exc:
        raise QbenchError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def folder_lock(folder: Path, *, what: str = "folder", hint: str = "") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block; a one-line
    QbenchError when another process holds it.

    ``flock`` on ``<folder>/.lock``: the kernel drops the lock when its holder exits, however it
    exits (``kill -9`` included), so a leftover lock file never blocks a later run. Locks are per
    open file, so a second lock in the same process is refused too. The file holds the pid, for
    the message, and is removed on a clean exit so results folders stay clean.
    """
    folder = writable_dir(folder, what=what)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise QbenchError(f"{what} {folder} is in use by another qbench process (pid {holder})"
                              + (f"; {hint}" if hint else "")) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder we waited on removed the file as it exited: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a process that opened it will see it is gone and retry
        os.close(fd)  # releases the lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that never finished (their writer was killed).

    Call it only while holding the folder's lock: a live writer's temporary file looks the same.
    """
    stale = [p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
