"""The SPIN fit store: per training sample, the best fit so far (Kolotouros et al. 2019).

A fit replaces the stored one only when it is plausible (finite, marked valid, shape inside the
model's range, 2D error and joint-limit energy below thresholds) and its keypoint energy is lower
("update if better"). One file per sample under ``root/fits/`` (``<id>.npz``), written to a
temporary file, fsync'ed and renamed over the old one (``bodyfit.files.atomic_write``): a process
killed at any moment leaves every committed fit intact. Records are plain arrays, read with
``allow_pickle=False``. Read-compare-write runs under an exclusive ``fcntl.flock`` on
``root/store.lock``, so several writers (ranks, processes) on one machine never lose each
other's fits; on a network file system without working flock, give each writer its own samples.

A record that cannot be read back whole (random bytes, a truncated or damaged zip, missing
fields, NaN or inf inside, arrays of the wrong shape) never stops a run: it is named in a
warning, moved to ``root/corrupt/`` and treated as absent, so its sample is fitted again.
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bodyfit.body_models.base import BodyParams
from bodyfit.files import atomic_save_npz

_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
RECORD_KEYS = ("global_orient", "body_pose", "shape", "transl", "energy", "error_over_box", "step")
CORRUPT_DIR = "corrupt"
log = logging.getLogger(__name__)


class CorruptRecord(ValueError):
    """A stored record that cannot be used (the message says why)."""


def load_record(path: str | os.PathLike) -> dict:
    """Read one record file (``allow_pickle=False``) and check it is whole: every field of
    :data:`RECORD_KEYS` present, numeric and finite.

    Raises:
        CorruptRecord: anything wrong with the file (a ValueError; the message says what).
        FileNotFoundError: no such file.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            record = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # random bytes, a cut or damaged zip, pickled content: all unreadable
        raise CorruptRecord(f"unreadable ({type(e).__name__}: {e})") from None
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise CorruptRecord(f"fields {missing} are missing")
    for k in RECORD_KEYS:
        a = record[k]
        if not np.issubdtype(a.dtype, np.number):
            raise CorruptRecord(f"field {k!r} is not numeric (dtype {a.dtype})")
        if not np.isfinite(a).all():
            raise CorruptRecord(f"field {k!r} holds NaN or inf")
    return record


@dataclass
class Plausibility:
    """What a fit must satisfy to be stored.

    Attributes:
        max_error_over_box: mean 2D keypoint error / box height (0.08).
        max_joint_limits: joint-limit energy of the fit (1.0; 0 inside the anatomical ranges).
        shape_range: allowed range of each shape coefficient ((0, 1) for Anny's phenotypes;
            use (-3, 3) for SMPL betas).
    """

    max_error_over_box: float = 0.08
    max_joint_limits: float = 1.0
    shape_range: tuple[float, float] = (0.0, 1.0)


def _is_corrupt(path: Path, shapes: dict | None = None) -> bool:
    """The record file is there and corrupt (or, with ``shapes``, has other array shapes)."""
    try:
        record = load_record(path)
    except CorruptRecord:
        return True
    except FileNotFoundError:
        return False
    return shapes is not None and any(tuple(record[k].shape) != v for k, v in shapes.items())


class FitStore:
    """Best fit per sample id, on disk.

    Args:
        root: folder (created).
        plausibility: the guards a fit must pass (:class:`Plausibility`).

    Each record holds ``global_orient`` (3,), ``body_pose`` (P,3), ``shape`` (S,), ``transl``
    (3,) in the sample's camera frame (metres, radians), ``energy`` (the keypoint energy it was
    ranked by), ``error_over_box`` and ``step`` (the training step that stored it).

    Raises:
        ValueError: an id with characters other than letters, digits, ``_ . -``.
    """

    def __init__(self, root: str | os.PathLike, plausibility: Plausibility | None = None):
        self.root = Path(root)
        self.dir = self.root / "fits"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.plausibility = plausibility or Plausibility()
        self._lock_path = self.root / "store.lock"
        self._lock_depth = 0

    @contextmanager
    def _locked(self):
        if self._lock_depth:  # already held by this store (flock would wait for itself)
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with open(self._lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _path(self, sample_id: str) -> Path:
        if not _ID.match(sample_id):
            raise ValueError(f"sample id {sample_id!r} must use only letters, digits, '_', '.', '-'.")
        return self.dir / f"{sample_id}.npz"

    def _read(self, sample_id: str) -> dict | None:
        path = self._path(sample_id)
        try:
            return load_record(path)
        except FileNotFoundError:
            return None
        except CorruptRecord as e:
            self.set_aside(sample_id, str(e), still_bad=_is_corrupt)
            return None

    def set_aside(self, sample_id: str, why: str, still_bad=None) -> Path | None:
        """Move a sample's record to ``root/corrupt/`` (``<id>.npz``, ``<id>.1.npz``, ... when
        one is there already) and warn, naming the file and ``why``: the sample counts as
        never fitted. Runs under the store's lock.

        Args:
            why: what is wrong with it (for the warning).
            still_bad: ``still_bad(path) -> bool``, asked again under the lock (another process
                may have set the file aside or replaced it by a whole record meanwhile); the
                file is moved only when it says True. None: moved whatever it holds.
        Returns:
            where the file went, or None when nothing was moved.
        """
        path = self._path(sample_id)
        with self._locked():
            if not path.exists() or (still_bad is not None and not still_bad(path)):
                return None
            folder = self.root / CORRUPT_DIR
            folder.mkdir(exist_ok=True)
            dest = folder / path.name
            n = 0
            while dest.exists():
                n += 1
                dest = folder / f"{sample_id}.{n}.npz"
            os.replace(path, dest)
        log.warning("fit store: %s is corrupt (%s): moved to %s; sample %r counts as not fitted and "
                    "will be fitted again", path, why, dest, sample_id)
        return dest

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*.npz"))

    def ids(self) -> list[str]:
        """Ids with a record file (a corrupt file is found, and set aside, when it is read)."""
        return sorted(p.stem for p in self.dir.glob("*.npz"))

    def get(self, sample_id: str) -> dict | None:
        """The stored record of one sample (numpy arrays), or None (none, or it was corrupt:
        then it is set aside, see :meth:`set_aside`)."""
        return self._read(sample_id)

    def plausible(self, params: BodyParams, valid: torch.Tensor, error_over_box: torch.Tensor,
                  joint_limits: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the fits that may be stored at all."""
        lo, hi = self.plausibility.shape_range
        ok = valid.bool() & params.is_finite() & torch.isfinite(error_over_box)
        ok &= (params.shape >= lo).all(1) & (params.shape <= hi).all(1)
        ok &= error_over_box <= self.plausibility.max_error_over_box
        ok &= torch.nan_to_num(joint_limits, nan=math.inf) <= self.plausibility.max_joint_limits
        return ok

    def update(self, sample_ids: list[str], params: BodyParams, energy: torch.Tensor,
               error_over_box: torch.Tensor, plausible: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Store each plausible fit whose energy beats the stored one (SPIN's rule).

        Args:
            sample_ids: B ids. params: BodyParams (B), camera frame.
            energy: (B,) keypoint energy (lower is better). error_over_box: (B,).
            plausible: (B,) bool from :meth:`plausible`.
        Returns:
            (B,) bool: which fits were stored (new or better).
        """
        B = len(sample_ids)
        if params.batch_size != B or energy.shape != (B,) or plausible.shape != (B,):
            raise ValueError(f"update needs B={B} params, energies and flags, got "
                             f"{params.batch_size}, {tuple(energy.shape)}, {tuple(plausible.shape)}.")
        stored = torch.zeros(B, dtype=torch.bool)
        p = {k: v.detach().cpu().double().numpy() for k, v in params.as_dict().items()}
        e = energy.detach().cpu().double().numpy()
        err = error_over_box.detach().cpu().double().numpy()
        with self._locked():
            for b, sid in enumerate(sample_ids):
                if not bool(plausible[b]) or not math.isfinite(e[b]):
                    continue
                old = self._read(sid)
                if old is not None and float(old["energy"]) <= e[b]:
                    continue
                record = {k: v[b] for k, v in p.items()}
                record.update(energy=np.float64(e[b]), error_over_box=np.float64(err[b]),
                              step=np.int64(step))
                self._write(sid, record)
                stored[b] = True
        return stored

    def _write(self, sample_id: str, record: dict) -> None:
        atomic_save_npz(self._path(sample_id), **record)

    def batch(self, sample_ids: list[str], like: BodyParams) -> tuple[BodyParams, torch.Tensor]:
        """Stored fits of ``sample_ids`` as BodyParams (the dtype/device of ``like``; zeros where
        none) and a (B,) bool mask of the ids that have one. A record that is corrupt, or whose
        arrays do not have ``like``'s shapes, is set aside and counts as none."""
        B = len(sample_ids)
        out = {k: torch.zeros_like(v[:1]).expand(B, *v.shape[1:]).clone() for k, v in like.as_dict().items()}
        have = torch.zeros(B, dtype=torch.bool, device=like.transl.device)
        for b, sid in enumerate(sample_ids):
            rec = self._read(sid)
            if rec is None:
                continue
            wrong = [f"{k} {tuple(rec[k].shape)} (expected {tuple(out[k].shape[1:])})" for k in out
                     if tuple(rec[k].shape) != tuple(out[k].shape[1:])]
            if wrong:
                shapes = {k: tuple(out[k].shape[1:]) for k in out}
                self.set_aside(sid, "arrays of the wrong shape: " + ", ".join(wrong),
                               still_bad=lambda path: _is_corrupt(path, shapes))
                continue
            for k in out:
                out[k][b] = torch.as_tensor(rec[k], dtype=out[k].dtype)
            have[b] = True
        return BodyParams(**out), have
