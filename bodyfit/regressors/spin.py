"""The SPIN loop (Kolotouros et al. 2019) for the keypoint regressor: the regressor proposes,
the optimizer refines, the best fit per sample is kept, and the kept fits supervise the regressor.

Each step, for a batch of real samples (2D keypoints and their camera):

1. the regressor predicts the body; ``bodyfit.fit`` refines it from there (a short schedule);
2. the fit store keeps the new fit where it is plausible and its keypoint energy is lower than
   the stored one's (``FitStore``);
3. the regressor is trained on the stored fits (rotation matrices, shape, root-relative 3D
   joints), on the samples' 2D keypoints through its own camera, and on a batch of synthetic
   pairs with exact parameters, so that it keeps what it learned from them.

Checkpoints (regressor, optimizer, step, the run's config) are written atomically and a run
resumes from the last one exactly: the data order and the synthetic batches are functions of
(seed, epoch, step). A checkpoint holds only tensors and plain data and is read with
``torch.load(weights_only=True)``: a crafted ``checkpoint.pt`` in the run folder cannot run code.
``metrics.csv`` is rewritten atomically after every step and, on resume, keeps only the steps
the checkpoint covers (the steps after it are run again). Messages go to this module's logger.

Data-parallel over ``torchrun`` processes (torch.distributed, gloo on CPU, nccl on GPUs): each
rank fits and learns from its share of every batch, gradients are averaged by DDP, and the
ranks share the store on disk.

A run holds its folder (``run.lock``, :func:`bodyfit.files.run_lock`): a second ``train`` on the
same folder stops at once with a message naming the running one; a lock left by a killed run is
taken over with a warning.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import pickle
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from bodyfit.body_models.base import BodyParams
from bodyfit.boxes import boxes_from_keypoints
from bodyfit.cameras import project
from bodyfit.data.samples import KeypointSamples
from bodyfit.distributed import hold_run_folder, rank_and_world
from bodyfit.files import atomic_torch_save, atomic_write_text
from bodyfit.regressors.fit_store import FitStore, Plausibility
from bodyfit.regressors.image_regressor import ImageRegressor, synthetic_renders
from bodyfit.regressors.keypoint_regressor import KeypointRegressor, load_regressor, normalize_keypoints
from bodyfit.regressors.train_keypoint import (drop_groups, keypoint_loss, parameter_losses,
                                               supervised_loss, synthetic_losses)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
_CHECKPOINT_KEYS = ("regressor", "optimizer", "step", "config")

logger = logging.getLogger(__name__)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A SPIN checkpoint (``regressor``, ``optimizer`` state dicts, ``step``, ``config``), read
    with ``torch.load(weights_only=True)``: tensors and plain data only, never code.

    Raises:
        ValueError: the file is not a readable checkpoint, holds other objects (a pickle that
            would run code is refused here, not run), or lacks a key.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable bodyfit checkpoint, or holds objects other than "
                         f"tensors and plain data (refused, not unpickled): {first}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _CHECKPOINT_KEYS):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a bodyfit SPIN checkpoint: it needs keys "
                         f"{list(_CHECKPOINT_KEYS)}, got {have}.")
    return ckpt


def sample_is_usable(keypoints: torch.Tensor, min_keypoints: int) -> torch.Tensor:
    """(B,) bool: finite keypoints with at least ``min_keypoints`` of confidence > 0."""
    finite = torch.isfinite(keypoints).all(dim=(1, 2))
    seen = (torch.nan_to_num(keypoints[..., 2]) > 0).sum(1)
    return finite & (seen >= min_keypoints)


def fit_losses(reg: KeypointRegressor, model, y: torch.Tensor, boxes: torch.Tensor,
               keypoints: torch.Tensor, K: torch.Tensor, stored: BodyParams, have: torch.Tensor,
               kp_index: torch.Tensor, kp_weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The regressor's losses on real samples.

    Args:
        y: (B, out_dim) regressor output; boxes (B,4) the normalization boxes.
        keypoints: (B,K,3) detected keypoints; K (B,3,3).
        stored: BodyParams (B) the store's fits (camera frame); have: (B,) which exist.
    Returns:
        scalars ``fit_rotations``, ``fit_shape``, ``fit_joints`` (means over samples with a
        stored fit; 0 without any) and ``keypoints_2d`` (conf-weighted L1 in box heights).
    """
    params, cam = reg.decode(y, model)
    joints = model(params, vertices=False).joints
    uv = project(joints[:, kp_index] + reg.camera_to_transl(cam, boxes, K)[:, None], K)
    kp2d = keypoint_loss(uv, keypoints[..., :2], keypoints[..., 2] * (kp_weight > 0),
                         boxes[:, 3] - boxes[:, 1])
    if not bool(have.any()):
        zero = y.sum() * 0.0
        return {"fit_rotations": zero, "fit_shape": zero, "fit_joints": zero, "keypoints_2d": kp2d}
    sel = have.nonzero().flatten()
    fit = parameter_losses(model, params.index(sel), joints[sel], stored.index(sel))
    return {"fit_" + k: v for k, v in fit.items()} | {"keypoints_2d": kp2d}


def _predict(reg, samples: KeypointSamples, model) -> BodyParams:
    """The regressor's bodies for real samples (camera frame)."""
    if isinstance(reg, ImageRegressor):
        if samples.crops is None:
            raise ValueError("the image regressor needs samples with crops (pose2sim_samples(crops=True)).")
        y = reg(samples.crops.float() / 255.0)
        params, cam = reg.decode(y, model)
        params.transl = reg.camera_to_transl(cam, samples.crop_boxes, samples.K)
        return params.to(model.dtype)
    return reg.predict(samples.keypoints, samples.K, model)


def train(samples: KeypointSamples, out_dir: str | os.PathLike, cfg, model=None,
          regressor: KeypointRegressor | None = None, progress: bool = True) -> dict:
    """Run (or resume) the SPIN loop.

    Args:
        samples: the real training samples (``bodyfit.data.samples``).
        out_dir: run folder: ``checkpoint.pt``, ``metrics.csv``, ``store/``, ``regressor.pt``.
        cfg: ``configs/train.yaml`` (a ``TrainConfig``, or the same keys in an OmegaConf config).
        model: the body model (Anny when None). regressor: the start (the shipped one).
        progress: a tqdm bar on rank 0. Messages (e.g. "resuming from step ...") go to this
            module's logger at INFO.
    Returns:
        the last step's metrics (dict), on every rank.
    Raises:
        ValueError: no usable sample, a checkpoint from a different run (other config), or a
            ``checkpoint.pt`` that is not a plain-data checkpoint (see :func:`load_checkpoint`).
        FolderLockedError: another run is using ``out_dir`` (a RuntimeError; the message names
            the folder and that run's pid and host). The folder is held for the whole run
            (``bodyfit.files.run_lock``, by rank 0 for all ranks), so two runs never mix their
            checkpoints, stores and metrics.
    """
    out = Path(out_dir)
    with hold_run_folder(out):
        return _train(samples, out, cfg, model, regressor, progress, *rank_and_world())


def _train(samples: KeypointSamples, out: Path, cfg, model, regressor, progress: bool,
           rank: int, world: int) -> dict:
    """:func:`train`'s work, with the run folder held."""
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if ckpt_path.exists():  # checked before anything is built or imported: a bad file fails fast
        ckpt = load_checkpoint(ckpt_path)
        if _run_identity(ckpt["config"]) != _run_identity(_plain_config(cfg)):
            raise ValueError(f"{ckpt_path} belongs to a run with another config; use another --out "
                             f"or the same overrides.")

    from tqdm import tqdm

    from bodyfit.body_models import body_model
    from bodyfit.body_models.conventions import keypoint_names
    from bodyfit.data.synthetic import corrupt_keypoints, synthetic_batch
    from bodyfit.fitting import Fitter, load_config
    from bodyfit.observations import Observations

    out.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else body_model("anny")
    names = keypoint_names(samples.convention)
    kp_index, kp_weight = model.keypoint_map(samples.convention)
    if regressor is None:
        regressor = load_regressor(model, samples.convention)
        if regressor is None:
            raise ValueError(f"no shipped regressor for {model.name!r} and {samples.convention!r}: "
                             "pass one to start from.")
    reg = regressor.float().train()
    for p in reg.parameters():
        p.requires_grad_(True)
    net = torch.nn.parallel.DistributedDataParallel(reg) if world > 1 else reg
    opt = torch.optim.AdamW(reg.parameters(), lr=cfg.lr, weight_decay=1e-4)
    store = FitStore(out / "store", Plausibility(cfg.plausibility.max_error_over_box,
                                                 cfg.plausibility.max_joint_limits,
                                                 (0.0, 1.0) if model.shape_name == "phenotypes" else (-3.0, 3.0)))
    fitter = Fitter(model, load_config(list(cfg.fit_overrides)))  # precomputed once for the run
    N = len(samples)
    usable = sample_is_usable(samples.keypoints, cfg.min_keypoints)
    if not bool(usable.any()):
        raise ValueError("no usable training sample (all have NaN or too few keypoints).")
    steps_per_epoch = math.ceil(N / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    step = 0
    if ckpt is not None:
        reg.load_state_dict(ckpt["regressor"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        if rank == 0:
            logger.info("resuming from step %d of %d", step, total_steps)
    if rank == 0:
        _trim_metrics(out / METRICS, step)
    metrics: dict = {}
    bar = tqdm(total=total_steps, initial=step, desc="spin", unit="step",
               disable=not progress or rank != 0)
    while step < total_steps:
        epoch, pos = divmod(step, steps_per_epoch)
        order = torch.randperm(N, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch))
        batch = order[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        mine = batch[rank::world]
        g = torch.Generator().manual_seed(cfg.seed * 1000003 + step * 31 + rank)
        t0 = time.perf_counter()
        # 1-2: predict, fit from the prediction, keep the better fits
        ok = usable[mine]
        real = samples.index(mine[ok])
        n_improved = n_valid = 0
        fit_err = float("nan")
        if len(real):
            with torch.no_grad():
                reg.eval()
                init = _predict(reg, real, model)
                reg.train()
            result = fitter(Observations.from_pictures(real.keypoints, image_size=real.image_size, K=real.K,
                                                       convention=real.convention), init, vertices=False)
            err = result.error_over_box
            plausible = store.plausible(result.params, result.valid, err,
                                        result.energies.get("joint_limits", torch.zeros_like(err)))
            improved = store.update(real.ids, result.params, result.energies["reprojection"], err,
                                    plausible, step)
            n_improved, n_valid = int(improved.sum()), int(plausible.sum())
            fit_err = float(torch.nanmean(err))
        # 3: learn from the stored fits, the keypoints and synthetic pairs (one forward pass)
        if isinstance(reg, ImageRegressor):
            syn_x, sb, syn_boxes = synthetic_renders(model, cfg.synthetic_batch, size=reg.crop_size,
                                                     generator=g, image_size=(256, 256))
            real_x = reg.resize(real.crops.float() / 255.0) if len(real) else syn_x[:0]
            real_boxes = real.crop_boxes if len(real) else syn_boxes[:0]
            x, boxes = torch.cat([real_x, syn_x]), torch.cat([real_boxes, syn_boxes])
        else:
            sb = synthetic_batch(model, cfg.synthetic_batch, samples.convention, noise=0.0,
                                 dropout=0.0, generator=g)
            extent = (sb.boxes[:, 3] - sb.boxes[:, 1]).clamp(min=1) / 1.2
            syn_kp = corrupt_keypoints(sb.clean, extent, sb.image_size, kp_weight,
                                       noise=float(torch.rand(1, generator=g)) * 0.03,
                                       dropout=float(torch.rand(1, generator=g)) * 0.2, generator=g)
            syn_kp = drop_groups(syn_kp, names, g)
            all_kp = torch.cat([real.keypoints if len(real) else syn_kp[:0], syn_kp])
            boxes = boxes_from_keypoints(all_kp)
            x = normalize_keypoints(all_kp, boxes)
        y = net(x)
        n = len(real)
        stored, have = store.batch(real.ids, model.default_params(n)) if n else (None, torch.zeros(0, dtype=torch.bool))
        lw = cfg.loss
        syn = synthetic_losses(reg, model, y[n:], boxes[n:], sb, kp_index)
        loss = lw.synthetic * supervised_loss(syn)
        terms = {}
        if n:
            terms = fit_losses(reg, model, y[:n], boxes[:n], real.keypoints, real.K, stored, have,
                               kp_index, kp_weight)
            loss = loss + sum(getattr(lw, k) * v for k, v in terms.items())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reg.parameters(), 5.0)
        opt.step()
        step += 1
        counts = torch.tensor([n_improved, n_valid, int((~ok).sum()), len(mine), float(loss.detach())])
        if world > 1:
            dist.all_reduce(counts)
        metrics = {"step": step, "epoch": epoch, "loss": float(counts[4]) / world,
                   "stored_improved": int(counts[0]), "fits_plausible": int(counts[1]),
                   "skipped_samples": int(counts[2]), "samples": int(counts[3]),
                   "fit_error_over_box": fit_err,
                   **{k: float(terms[k].detach()) if k in terms else float("nan")
                      for k in ("fit_rotations", "fit_shape", "fit_joints", "keypoints_2d")},
                   "synthetic_joints_mm": 1000 * float(syn["joints"].detach()),
                   "seconds": time.perf_counter() - t0}
        if rank == 0:
            _log_metrics(out / METRICS, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", improved=metrics["stored_improved"])
        if step % cfg.checkpoint_every == 0 or step % steps_per_epoch == 0 or step == total_steps:
            if world > 1:
                dist.barrier()
            if rank == 0:
                atomic_torch_save({"regressor": reg.state_dict(), "optimizer": opt.state_dict(),
                                   "step": step, "config": _plain_config(cfg)}, ckpt_path)
            if world > 1:
                dist.barrier()
    bar.close()
    if rank == 0:
        state = {k: v.half() if v.is_floating_point() else v for k, v in reg.state_dict().items()}
        atomic_torch_save({"config": reg.config, "state_dict": state, "steps": step,
                           "convention": samples.convention}, out / "regressor.pt")
    return metrics


def _plain_config(cfg) -> dict:
    """The run's config as plain data, as checkpoints hold it: ``TrainConfig.as_dict()``, or an
    OmegaConf config's container."""
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg.as_dict()


def _run_identity(cfg: dict) -> dict:
    """The config keys that must match to resume (more epochs or other checkpoint spacing may
    continue a run)."""
    return {k: v for k, v in cfg.items() if k not in ("epochs", "checkpoint_every")}


def _log_metrics(path: Path, row: dict) -> None:
    """Append one row to the metrics CSV (header first), rewriting the file atomically: a run
    killed at any moment leaves whole rows only."""
    old = path.read_text() if path.exists() else ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
    if not old:
        w.writeheader()
    w.writerow(row)
    atomic_write_text(path, old + buf.getvalue())


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics rows of steps up to ``step`` (the checkpoint's): the later ones are
    run again after a resume."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if _row_step(ln) <= step]
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep) if len(keep) > 1 else "")


def _row_step(line: str) -> float:
    """A metrics row's step (its first field); inf for a line that is not a row."""
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return math.inf
