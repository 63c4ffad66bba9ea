"""Atomic file writes: readers and crashes see the old file or the new one, never a part.

Every file bodyfit writes that another process may read, or that a crash must not corrupt (fit
stores, checkpoints, caches, pictures), goes through :func:`atomic_write`: the content is written
to a temporary file in the destination's folder, flushed and fsync'ed, renamed over the
destination (``os.replace``, atomic on POSIX and on Windows within one volume), and the folder is
fsync'ed so the rename itself survives a power cut. On any failure the temporary file is removed
and an existing destination is left as it was.

The temporary file is created with mode ``0o666`` less the process umask, as ``open`` would
create the destination, and is named ``.<name>.<random>.tmp`` (hidden, never matching
``*.npz`` / ``*.pt`` globs). A process killed with SIGKILL in the middle of a write may leave such
a file behind; it is never read.

:func:`run_lock` keeps a run folder to one process at a time (``bodyfit train``, pseudo-GT).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_save_npz",
           "atomic_torch_save", "run_lock", "FolderLockedError", "LOCK_FILE"]

log = logging.getLogger(__name__)
LOCK_FILE = "run.lock"


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty file beside the destination: (descriptor, path). ``O_EXCL`` with a random
    name, so two writers never share one; the umask applies to its mode as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {str(folder)!r}")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows, or a file system that does not allow it
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a binary file object that becomes ``path``
    only once it is complete and on disk.

    Args:
        path: the destination; its folder must exist.
        write: called once with the temporary file opened for binary writing; it must not close
            it. Whatever it raises propagates, with the destination untouched.
    Returns:
        ``path`` as a Path.
    Raises:
        FileNotFoundError: the folder does not exist. Anything ``write`` raises.
    """
    path = Path(path)
    folder = path.parent
    fd, tmp = _create_temp(folder, path.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(folder)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` (bytes, bytearray, memoryview or a contiguous numpy buffer) atomically."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` atomically (no newline translation: ``\\n`` stays ``\\n``)."""
    return atomic_write(path, lambda fh: fh.write(text.encode(encoding)))


def atomic_save_npz(path: str | os.PathLike, *, compress: bool = False, **arrays) -> Path:
    """``np.savez`` (``np.savez_compressed`` with ``compress``) of ``arrays`` to ``path``,
    atomically. ``path`` is used as given (numpy would add ``.npz`` to a file name without it;
    this does not). Object arrays are refused: readers load with ``allow_pickle=False``."""
    import numpy as np

    for k, v in arrays.items():
        if isinstance(v, np.ndarray) and v.dtype == object:
            raise ValueError(f"array {k!r} has dtype object: store plain numeric or string arrays.")
    save = np.savez_compressed if compress else np.savez
    return atomic_write(path, lambda fh: save(fh, **arrays))


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically. Keep ``obj`` to tensors, dicts, lists,
    tuples, numbers, strings and None so that it loads with ``torch.load(weights_only=True)``."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


_HELD: dict[str, int] = {}  # run folders this process holds (real path -> nesting depth)


class FolderLockedError(RuntimeError):
    """Another process holds the run folder's lock (:func:`run_lock`). ``holder`` is what it
    wrote in the lock file (``pid``, ``host``, ``started``, ``command``; empty if unreadable)."""

    def __init__(self, message: str, folder: Path, holder: dict):
        super().__init__(message)
        self.folder = folder
        self.holder = holder


def _read_holder(fd: int) -> dict:
    """What the lock file says about its holder; {} when empty or unreadable."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode("utf-8", "replace").strip()
        holder = json.loads(text) if text else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that left no details"
    where = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("started"):
        where += f", since {holder['started']}"
    if holder.get("command"):
        where += f": {holder['command']}"
    return where


@contextmanager
def run_lock(folder: str | os.PathLike, what: str = "bodyfit run") -> Iterator[Path]:
    """Hold ``folder`` for this process: at most one run writes a run folder at a time.

    The lock is an exclusive ``fcntl.flock`` on ``folder/run.lock`` (POSIX; the kernel drops it
    when the process ends, however it ends, so a crashed or killed run never blocks the next).
    The file also records the holder (pid, host, start time, command line) for the messages; it
    is emptied, not removed, on release. Nested holds of one folder by one process are fine
    (the outer one releases it). A lock file that still names a holder when the lock is
    free was left by a run that ended without releasing it (killed, power cut): it is taken over
    with a warning that names that run.

    Args:
        folder: the run folder (created, with its parents, if missing).
        what: what holds it, for the messages (e.g. ``"bodyfit train"``).
    Yields:
        the lock file's path.
    Raises:
        FolderLockedError: another process holds the folder; the message names the folder and
            the holder (pid, host) and says what to do. Nothing is waited for.
        OSError: the folder cannot be created or the lock file not opened (e.g. read-only).

    Note: on network file systems without working ``flock`` two hosts may both get the lock;
    give each run its own folder there.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    key = os.path.realpath(folder)
    if key in _HELD:  # this process holds it already (e.g. the CLI, then train() inside it)
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise FolderLockedError(
                f"{folder} is in use by another run ({_describe(holder)}): wait for it to end, "
                f"or choose another --out folder. (If no such run exists, e.g. the folder is "
                f"shared over a network, delete {path}.)", folder, holder) from None
        stale = _read_holder(fd)
        if stale:
            log.warning("%s: taking over the lock left by a run that ended without releasing it "
                        "(%s)", folder, _describe(stale))
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "what": what,
              "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        _HELD[key] = 1
        try:
            yield path
        finally:
            del _HELD[key]
            try:
                os.ftruncate(fd, 0)  # released cleanly: nothing stale to report next time
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
