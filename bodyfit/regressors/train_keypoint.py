"""Train the keypoint regressor on synthetic pairs and write the shipped weights.

    python -m bodyfit.regressors.train_keypoint --minutes 8 --convention mediapipe33

Every step draws a fresh batch from ``bodyfit.data.synthetic`` (bodies inside the joint limits,
random phenotypes, heading, camera distance and field of view; 1.5% box noise, 10% dropped
keypoints plus whole groups dropped to mimic conventions with fewer points), so there is no
dataset on disk. Losses: root-relative 3D landmarks (m), rotation matrices of the root and free
joints, shape, and 2D keypoints in box units through the predicted camera.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import roma
import torch

from bodyfit.body_models import body_model
from bodyfit.body_models.conventions import keypoint_names
from bodyfit.cameras import project
from bodyfit.body_models.base import BodyParams
from bodyfit.data.synthetic import SyntheticBatch, corrupt_keypoints, synthetic_batch
from bodyfit.files import atomic_torch_save
from bodyfit.priors.gmm import ANNY_POSE_GMM, load_pose_gmm
from bodyfit.boxes import boxes_from_keypoints
from bodyfit.regressors.keypoint_regressor import (KeypointRegressor, load_regressor, normalize_keypoints,
                                                   weights_path)

logger = logging.getLogger(__name__)


def drop_groups(keypoints: torch.Tensor, names: list[str], generator: torch.Generator) -> torch.Tensor:
    """Zero the confidence of whole groups (face, hands, feet) at random, so a regressor trained
    on MediaPipe-33 also copes with COCO-like inputs and occlusions."""
    groups = [
        [i for i, n in enumerate(names) if any(s in n for s in ("eye", "ear", "mouth", "nose"))],
        [i for i, n in enumerate(names) if any(s in n for s in ("pinky", "index", "thumb"))
         and "foot" not in n],
        [i for i, n in enumerate(names) if any(s in n for s in ("heel", "foot_index", "toe"))],
    ]
    kp = keypoints.clone()
    for g in groups:
        if not g:
            continue
        hit = torch.rand(kp.shape[0], generator=generator) < 0.15
        kp[hit[:, None] & torch.zeros(kp.shape[1], dtype=torch.bool).index_fill_(0, torch.tensor(g), True)] = 0.0
    return kp


def parameter_losses(model, params: BodyParams, joints: torch.Tensor, target: BodyParams,
                     target_joints: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A regressor's losses against target bodies (synthetic truth or stored fits).

    Args:
        params: (B) the prediction with transl 0 (``decode``'s output); joints (B,J,3) its
            joints (m). target: (B) the target bodies; target_joints: their root-relative joints
            (B,J,3), or None to compute them with ``model`` (without gradient).
    Returns:
        ``joints`` mean root-relative 3D joint error (m), ``rotations`` squared Frobenius error
        of the root and free-joint rotation matrices, ``shape`` squared error; each a scalar.
    """
    if target_joints is None:
        t = target.clone()
        t.transl = torch.zeros_like(t.transl)
        with torch.no_grad():
            target_joints = model(t, vertices=False).joints
    free = model.free_pose_joints

    def rotmats(p):
        return roma.rotvec_to_rotmat(torch.cat([p.global_orient[:, None], p.body_pose[:, free]], 1))

    return {"joints": (joints - target_joints).norm(dim=-1).mean(),
            "rotations": ((rotmats(params) - rotmats(target)) ** 2).sum((-1, -2)).mean(),
            "shape": ((params.shape - target.shape) ** 2).mean()}


def keypoint_loss(uv: torch.Tensor, keypoints: torch.Tensor, weight: torch.Tensor,
                  height: torch.Tensor) -> torch.Tensor:
    """Weighted mean L1 2D error in box heights: uv, keypoints (B,K,2) px, weight (B,K),
    height (B,) px. Scalar."""
    err = ((uv - keypoints) / height.clamp(min=1.0)[:, None, None]).abs().sum(-1)
    return (err * weight).sum() / weight.sum().clamp(min=1.0)


def synthetic_losses(reg: KeypointRegressor, model, y: torch.Tensor, boxes: torch.Tensor,
                     sb: SyntheticBatch, kp_index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The regressor's supervised losses on synthetic pairs with exact parameters.

    Args:
        reg: the regressor (for ``decode`` and ``camera_to_transl``).
        y: (B, out_dim) its output for the (noisy) keypoints; boxes: (B,4) the boxes they were
            normalized with. sb: the batch's ground truth (params, K, clean (B,K,2) exact
            keypoints, boxes, joints (B,J,3) camera frame).
    Returns:
        :func:`parameter_losses` and ``keypoints_2d``, :func:`keypoint_loss` of the projected
        landmarks against the exact ones in heights of ``sb.boxes``; each a scalar.
    """
    params, cam = reg.decode(y, model)
    joints = model(params, vertices=False).joints
    losses = parameter_losses(model, params, joints, sb.params, sb.joints - sb.params.transl[:, None])
    uv = project(joints[:, kp_index] + reg.camera_to_transl(cam, boxes, sb.K)[:, None], sb.K)
    losses["keypoints_2d"] = keypoint_loss(uv, sb.clean, torch.ones_like(sb.clean[..., 0]),
                                           sb.boxes[:, 3] - sb.boxes[:, 1])
    return losses


def supervised_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weighted sum of :func:`synthetic_losses` the regressors train on: joints (m) and 2D
    (box heights) at 1, rotations and shape at 0.1."""
    return losses["joints"] + 0.1 * losses["rotations"] + 0.1 * losses["shape"] + losses["keypoints_2d"]


def train(convention: str = "mediapipe33", minutes: float = 8.0, batch_size: int = 256,
          lr: float = 1e-3, seed: int = 0, out: str | None = None, pool_size: int = 65536,
          init: str | None = None, prior_share: float = 0.0) -> None:
    """Train for ``minutes`` on a pool of ``pool_size`` synthetic bodies and save the weights
    (float16, atomically) to ``out`` or the packaged weights path. ``init``: weights to start
    from (a fine-tune) instead of random ones. ``prior_share``: that share of the bodies take
    their poses from Anny's packaged pose prior (``bodyfit.priors.gmm``), the rest are drawn
    inside the joint limits. Progress goes to this module's logger at INFO."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = body_model("anny")
    names = keypoint_names(convention)
    kp_index, _ = model.keypoint_map(convention)
    reg = (load_regressor(model, convention, init) if init else
           KeypointRegressor(len(names), len(model.free_pose_joints), model.shape_dim))
    if reg is None:
        raise FileNotFoundError(f"No regressor weights at {init}.")
    reg.float().train()
    opt = torch.optim.AdamW(reg.parameters(), lr=lr, weight_decay=1e-4)
    prior = load_pose_gmm(ANNY_POSE_GMM, model) if prior_share > 0 else None
    # A pool of exact synthetic pairs, made once; noise and dropout are drawn fresh each step.
    pool = [synthetic_batch(model, 1024, convention, noise=0.0, dropout=0.0, generator=g,
                            pose_prior=prior, prior_share=prior_share)
            for _ in range(pool_size // 1024)]
    pool = SyntheticBatch(
        params=BodyParams.cat([b.params for b in pool]), K=torch.cat([b.K for b in pool]),
        image_size=pool[0].image_size, keypoints=torch.cat([b.keypoints for b in pool]),
        clean=torch.cat([b.clean for b in pool]), boxes=torch.cat([b.boxes for b in pool]),
        joints=torch.cat([b.joints for b in pool]))
    _, kp_weight = model.keypoint_map(convention)
    logger.info("pool of %d synthetic bodies ready", pool.K.shape[0])
    deadline = time.time() + 60 * minutes
    step = 0
    start = time.time()
    while time.time() < deadline:
        frac = (time.time() - start) / (60 * minutes)
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        idx = torch.randint(0, pool.K.shape[0], (batch_size,), generator=g)
        sb = SyntheticBatch(pool.params.index(idx), pool.K[idx], pool.image_size, None,
                            pool.clean[idx], pool.boxes[idx], pool.joints[idx])
        extent = (sb.boxes[:, 3] - sb.boxes[:, 1]).clamp(min=1) / 1.2
        kp = corrupt_keypoints(sb.clean, extent, sb.image_size, kp_weight,
                               noise=float(torch.rand(1, generator=g)) * 0.03,
                               dropout=float(torch.rand(1, generator=g)) * 0.2, generator=g)
        kp = drop_groups(kp, names, g)
        boxes = boxes_from_keypoints(kp)  # as at prediction time
        losses = synthetic_losses(reg, model, reg(normalize_keypoints(kp, boxes)), boxes, sb, kp_index)
        loss = supervised_loss(losses)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reg.parameters(), 5.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            logger.info("step %d loss %.4f 3d %.0fmm rot %.3f shape %.3f 2d %.4f", step, loss.item(),
                        losses["joints"].item() * 1000, losses["rotations"].item(),
                        losses["shape"].item(), losses["keypoints_2d"].item())
    path = Path(out) if out else weights_path(model.name, convention)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in reg.state_dict().items()}
    atomic_torch_save({"config": reg.config, "state_dict": state, "steps": step,
                       "convention": convention}, path)
    logger.info("wrote %s after %d steps", path, step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--convention", default="mediapipe33")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--init", default=None, help="weights to fine-tune (default: train from scratch)")
    ap.add_argument("--prior-share", type=float, default=0.0,
                    help="share of the synthetic bodies posed by Anny's packaged pose prior")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train(a.convention, a.minutes, a.batch_size, lr=a.lr, seed=a.seed, out=a.out, init=a.init,
          prior_share=a.prior_share)


if __name__ == "__main__":
    main()
