"""The SPIN fit store: per training sample, the best fit so far (Kolotouros et al. 2019).

A fit replaces the stored one only when it is plausible (finite, marked valid, shape inside the
model's range, 2D error and joint-limit energy below thresholds) and its keypoint energy is lower
("update if better"). One file per sample under ``root/fits/`` (``<id>.npz``), written to a
temporary file, fsync'ed and renamed over the old one (``bodyfit.files.atomic_write``): a process
killed at any moment leaves every committed fit intact. Records are plain arrays, read with
``allow_pickle=False``. Read-compare-write runs under an exclusive ``fcntl.flock`` on
``root/store.lock``, so several writers (ranks, processes) on one machine never lose each
other's fits; on a network file system without working flock, give each writer its own samples.
"""
from __future__ import annotations

import fcntl
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

    @contextmanager
    def _locked(self):
        with open(self._lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _path(self, sample_id: str) -> Path:
        if not _ID.match(sample_id):
            raise ValueError(f"sample id {sample_id!r} must use only letters, digits, '_', '.', '-'.")
        return self.dir / f"{sample_id}.npz"

    def _read(self, sample_id: str) -> dict | None:
        path = self._path(sample_id)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*.npz"))

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.npz"))

    def get(self, sample_id: str) -> dict | None:
        """The stored record of one sample (numpy arrays), or None."""
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
        none) and a (B,) bool mask of the ids that have one."""
        B = len(sample_ids)
        out = {k: torch.zeros_like(v[:1]).expand(B, *v.shape[1:]).clone() for k, v in like.as_dict().items()}
        have = torch.zeros(B, dtype=torch.bool, device=like.transl.device)
        for b, sid in enumerate(sample_ids):
            rec = self._read(sid)
            if rec is None:
                continue
            for k in out:
                out[k][b] = torch.as_tensor(rec[k], dtype=out[k].dtype)
            have[b] = True
        return BodyParams(**out), have
