"""Where a fit starts, without any learned model: the mean body turned by the shoulders' order and
placed on the torso by similar triangles (SMPLify, Bogo et al. 2016), in the view that sees the
sample best, moved into the world frame of the observations. A regressor's prediction is composed
by the caller (``bodyfit.initialize``) with :func:`start_in_world`.
"""
from __future__ import annotations

import roma
import torch

from bodyfit.body_models.base import BodyModel, BodyParams
from bodyfit.body_models.conventions import TORSO, keypoint_names
from bodyfit.cameras import init_translation
from bodyfit.observations import Observations


def flip_about_vertical(global_orient: torch.Tensor) -> torch.Tensor:
    """(B,3) axis-angle -> the body turned 180 degrees about the camera's vertical (y) axis."""
    Ry = torch.tensor([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]], dtype=global_orient.dtype,
                      device=global_orient.device)
    return roma.rotmat_to_rotvec(Ry @ roma.rotvec_to_rotmat(global_orient))


def facing_away(keypoints: torch.Tensor, names: list[str]) -> torch.Tensor:
    """(B,K,3) keypoints -> (B,) True where both shoulders are seen and the left one is left of
    the right one in the picture: the subject turns their back to the camera."""
    if "left_shoulder" not in names or "right_shoulder" not in names:
        return torch.zeros(keypoints.shape[0], dtype=torch.bool, device=keypoints.device)
    ls, rs = keypoints[:, names.index("left_shoulder")], keypoints[:, names.index("right_shoulder")]
    return (ls[:, 2] > 0) & (rs[:, 2] > 0) & (ls[:, 0] < rs[:, 0])


def torso_is_ambiguous(keypoints: torch.Tensor, names: list[str]) -> torch.Tensor:
    """(B,K,3) keypoints -> (B,) True where the shoulders are close in 2D relative to the torso
    height (a side view: facing left or right cannot be told from the torso)."""
    idx = {n: names.index(n) for n in TORSO if n in names}
    if len(idx) < 4:
        return torch.zeros(keypoints.shape[0], dtype=torch.bool, device=keypoints.device)
    ls, rs, lh, rh = (keypoints[:, idx[n]] for n in TORSO)
    seen = (ls[:, 2] > 0) & (rs[:, 2] > 0) & (lh[:, 2] > 0) & (rh[:, 2] > 0)
    width = (ls[:, :2] - rs[:, :2]).norm(dim=-1)
    height = (0.5 * (ls[:, :2] + rs[:, :2]) - 0.5 * (lh[:, :2] + rh[:, :2])).norm(dim=-1)
    return seen & (width < 0.4 * height)


def mean_start(model: BodyModel, keypoints: torch.Tensor, K: torch.Tensor, convention: str) -> BodyParams:
    """The mean body in the camera frame of intrinsics K: turned by the shoulders' order and
    placed on the torso by similar triangles (``cameras.init_translation``).

    Args:
        keypoints: (B,K,3) pixels + confidence (finite). K: (B,3,3) pixels.
    Returns:
        BodyParams (B) in the OpenCV camera frame.
    """
    names = keypoint_names(convention)
    kp_index, kp_weight = model.keypoint_map(convention)
    init = model.default_params(keypoints.shape[0])
    away = facing_away(keypoints, names)
    init.global_orient[away] = flip_about_vertical(init.global_orient[away])
    init.transl = torch.zeros_like(init.transl)
    joints0 = model(init, vertices=False).joints
    init.transl = init_translation(joints0, keypoints, kp_index, kp_weight, K, TORSO, names)
    return init


def camera_to_world(model: BodyModel, params: BodyParams, R: torch.Tensor, t: torch.Tensor) -> BodyParams:
    """Move bodies given in a camera's frame into the world frame of that camera's extrinsics.

    Args:
        params: BodyParams (B) in the camera frame. R: (B,3,3), t: (B,3) world -> camera.
    Returns:
        BodyParams (B) with the same pose and shape whose joints are ``R^T (X_cam - t)``: the
        root orientation composed with R^T, and the translation that makes the landmarks agree
        (a rotation about any pivot is one about the origin plus a translation, so this is exact).
    """
    out = params.clone()
    Rt = R.transpose(1, 2).to(params.transl)
    out.global_orient = roma.rotmat_to_rotvec(Rt @ roma.rotvec_to_rotmat(params.global_orient))
    out.transl = torch.zeros_like(params.transl)
    with torch.no_grad():
        target = torch.einsum("bij,bnj->bni", Rt, model(params, vertices=False).joints - t[:, None].to(Rt))
        moved = model(out, vertices=False).joints
    out.transl = (target - moved).mean(1)
    return out


def best_views(observations: Observations, model: BodyModel) -> torch.Tensor:
    """(B,) int64: per sample, the usable view whose keypoints the model uses most (the view a
    start is made in)."""
    _, kp_weight = model.keypoint_map(observations.convention)
    kp = observations.clean_keypoints()
    n_seen = ((kp[..., 2] > 0) & (kp_weight.to(kp.device) > 0)).sum(-1)  # (B,V)
    n_seen = torch.where(observations.usable_views(), n_seen, torch.full_like(n_seen, -1))
    return n_seen.argmax(1)


def start_in_world(model: BodyModel, observations: Observations, predict) -> BodyParams:
    """A start for every sample, made in its best view (:func:`best_views`) by
    ``predict(keypoints (B,K,3), K (B,3,3)) -> BodyParams`` in that camera's frame, then moved
    into the world frame. Samples whose start is not finite get the model's default body.

    Raises:
        ValueError: ``predict`` returned parameters of the wrong shapes for ``model``.
    """
    B = observations.batch_size
    views = best_views(observations, model)
    b = torch.arange(B, device=views.device)
    kp = observations.clean_keypoints()[b, views].to(model.device, model.dtype)
    cams = [observations.camera(v) for v in range(observations.num_views)]
    K = torch.stack([c.K for c in cams], 1)[b, views].to(model.device, model.dtype)
    R = torch.stack([c.R for c in cams], 1)[b, views].to(model.device, model.dtype)
    t = torch.stack([c.t for c in cams], 1)[b, views].to(model.device, model.dtype)
    params = predict(kp, K)
    model.check_params(params)
    params = params.to(model.dtype)
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    if not (torch.equal(R, eye.expand_as(R)) and not bool(t.any())):
        params = camera_to_world(model, params, R, t)
    return params.where(params.is_finite(), model.default_params(B))
