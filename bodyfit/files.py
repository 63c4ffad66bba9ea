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
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_save_npz",
           "atomic_torch_save"]


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
