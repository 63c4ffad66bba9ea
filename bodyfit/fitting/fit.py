"""``bodyfit.fit``: 2D keypoints -> fitted body, SMPLify style (Bogo et al. 2016; SPIN,
Kolotouros et al. 2019 for the regressor initialization and the two-stage schedule).

Single-view fits keep the camera at the origin (R = I, t = 0, OpenCV frame) and move the body.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import roma
import torch
from omegaconf import DictConfig, OmegaConf

from bodyfit.body_models.base import BodyModel, BodyParams
from bodyfit.body_models.conventions import TORSO, keypoint_names
from bodyfit.cameras import Camera, default_intrinsics, init_translation
from bodyfit.fitting.optimizer import run_stage
from bodyfit.fitting.reprojection import ReprojectionEnergy
from bodyfit.priors import joint_limits, pose_prior, shape_prior
from bodyfit.regressors.keypoint_regressor import boxes_from_keypoints, load_regressor

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load_config(overrides: list[str] | None = None, name: str = "fit") -> DictConfig:
    """The packaged Hydra/OmegaConf config ``configs/<name>.yaml`` with ``key=value`` overrides
    (dotted keys, list items by index: ``stages.1.steps=300``).

    Raises:
        ValueError: an override is not ``key=value`` or names an unknown key."""
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    OmegaConf.set_struct(cfg, True)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"Config override {item!r} must look like key=value.")
        key, value = item.split("=", 1)
        try:
            OmegaConf.update(cfg, key, OmegaConf.create(f"v: {value}").v, merge=True)
        except Exception as e:  # omegaconf raises several types for unknown keys
            raise ValueError(f"Config override {item!r}: {e}") from None
    return cfg


@dataclass
class FitResult:
    """The outcome of ``fit`` for a batch of B samples.

    Attributes:
        params: fitted BodyParams (B); samples that were not fitted hold the model's default.
        joints: (B,J,3) metres, camera frame (the world frame of a single-view fit).
        vertices: (B,V,3) metres or None when not requested.
        faces: (F,3) triangles.
        camera: Camera (B) used for the fit: K (B,3,3) px, R = I, t = 0.
        keypoints: (B,K,3) the observed keypoints (pixels + confidence).
        projected: (B,K,2) the fitted body's keypoints projected, pixels.
        keypoint_error_px: (B,K) 2D error per keypoint in pixels, NaN where not visible.
        reprojection_error_px: (B,) mean of keypoint_error_px over visible keypoints.
        box_height_px: (B,) height of the person's box (pixels), the energies' scale.
        energies: name -> (B,) weighted energy terms of the last stage, plus "total".
        converged: (B,) bool, the last stage met its tolerance.
        valid: (B,) bool, the sample was fitted and every value is finite.
        messages: per sample, None or why it was not fitted.
        runtime_s: seconds spent on the initialization ("init") and the optimization ("fit").
        init_params: BodyParams (B) the optimizer started from.
    """

    params: BodyParams
    joints: torch.Tensor
    vertices: torch.Tensor | None
    faces: torch.Tensor
    camera: Camera
    keypoints: torch.Tensor
    projected: torch.Tensor
    keypoint_error_px: torch.Tensor
    reprojection_error_px: torch.Tensor
    box_height_px: torch.Tensor
    energies: dict[str, torch.Tensor]
    converged: torch.Tensor
    valid: torch.Tensor
    messages: list[str | None]
    init_params: BodyParams
    convention: str = "mediapipe33"
    model_name: str = "anny"
    stage_steps: list[int] = field(default_factory=list)
    runtime_s: dict[str, float] = field(default_factory=dict)


def _as_keypoints(keypoints, n_expected: int, convention: str) -> torch.Tensor:
    kp = torch.as_tensor(np.asarray(keypoints) if not isinstance(keypoints, torch.Tensor) else keypoints)
    if kp.dim() == 2:
        kp = kp[None]
    if kp.dim() != 3 or kp.shape[-1] != 3 or kp.shape[1] != n_expected:
        raise ValueError(
            f"keypoints must have shape (B, {n_expected}, 3) = x px, y px, confidence for "
            f"convention {convention!r}; got {tuple(kp.shape)}.")
    if not kp.is_floating_point():
        kp = kp.float()
    return kp


def _flip_about_vertical(global_orient: torch.Tensor) -> torch.Tensor:
    """Turn the body 180 degrees about the camera's vertical (y) axis."""
    Ry = torch.tensor([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]], dtype=global_orient.dtype,
                      device=global_orient.device)
    return roma.rotmat_to_rotvec(Ry @ roma.rotvec_to_rotmat(global_orient))


def _facing_away(keypoints: torch.Tensor, names: list[str]) -> torch.Tensor:
    """(B,) True where both shoulders are seen and the left one is left of the right one in the
    picture: the subject turns their back to the camera."""
    if "left_shoulder" not in names or "right_shoulder" not in names:
        return torch.zeros(keypoints.shape[0], dtype=torch.bool, device=keypoints.device)
    ls, rs = keypoints[:, names.index("left_shoulder")], keypoints[:, names.index("right_shoulder")]
    return (ls[:, 2] > 0) & (rs[:, 2] > 0) & (ls[:, 0] < rs[:, 0])


def _torso_is_ambiguous(keypoints: torch.Tensor, names: list[str]) -> torch.Tensor:
    """(B,) True where the shoulders are close in 2D relative to the torso height (side view)."""
    idx = {n: names.index(n) for n in TORSO if n in names}
    if len(idx) < 4:
        return torch.zeros(keypoints.shape[0], dtype=torch.bool)
    ls, rs, lh, rh = (keypoints[:, idx[n]] for n in TORSO)
    seen = (ls[:, 2] > 0) & (rs[:, 2] > 0) & (lh[:, 2] > 0) & (rh[:, 2] > 0)
    width = (ls[:, :2] - rs[:, :2]).norm(dim=-1)
    height = (0.5 * (ls[:, :2] + rs[:, :2]) - 0.5 * (lh[:, :2] + rh[:, :2])).norm(dim=-1)
    return seen & (width < 0.4 * height)


def initial_params(kp: torch.Tensor, K: torch.Tensor, model: BodyModel, convention: str,
                   cfg: DictConfig, init: BodyParams | None = None, regressor=None) -> BodyParams:
    """Where the optimizer starts, in the camera frame of ``K`` (B,3,3): ``init`` if given,
    else the keypoint regressor's prediction (``cfg.init == "regressor"`` and one is shipped for
    this model and convention), else the mean body turned by the shoulders' order and placed on
    the torso by similar triangles. Non-finite samples fall back to the default body.

    Args:
        kp: (B,K,3) keypoints, pixels + confidence (cleaned: finite, confidence in [0,1]).
    Raises:
        ValueError: ``init`` with the wrong shapes for ``model``.
    """
    names = keypoint_names(convention)
    B = kp.shape[0]
    if init is None and cfg.init == "regressor":
        regressor = regressor if regressor is not None else load_regressor(model, convention)
        if regressor is not None:
            init = regressor.predict(kp, K, model)
    if init is None:
        kp_index, kp_weight = model.keypoint_map(convention)
        init = model.default_params(B)
        # Facing away when the subject's left shoulder is on the image's left.
        away = _facing_away(kp, names)
        init.global_orient[away] = _flip_about_vertical(init.global_orient[away])
        init.transl = torch.zeros_like(init.transl)
        joints0 = model(init, vertices=False).joints
        init.transl = init_translation(joints0, kp, kp_index, kp_weight, K, TORSO, names)
    model.check_params(init)
    init = init.to(model.dtype)
    bad_init = ~init.is_finite()
    if bad_init.any():  # never start from NaN: fall back to the default body for those samples
        init = init.where(~bad_init, model.default_params(B))
    return init


def fit(keypoints, model: BodyModel | None = None, convention: str = "mediapipe33",
        image_size: tuple[int, int] | None = None, K: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None, init: BodyParams | None = None,
        config: DictConfig | None = None, overrides: list[str] | None = None,
        regressor=None, vertices: bool = True) -> FitResult:
    """Fit a body model to 2D keypoints, a batch at a time.

    Args:
        keypoints: (B,K,3) or (K,3): x, y in pixels and confidence in [0,1] (0 = missing), in the
            order of ``convention`` (``bodyfit.body_models.conventions``).
        model: a BodyModel; Anny (default topology) when None.
        convention: "mediapipe33" (the detector's), "coco17", "coco17_feet" or "openpose25".
        image_size: (H, W) pixels; needed when K is None (K then comes from ``fov_deg``).
        K: (B,3,3) or (3,3) intrinsics in pixels.
        boxes: (B,4) xyxy person boxes in pixels; from the keypoints when None.
        init: starting BodyParams; otherwise from ``config.init`` (the shipped regressor or the
            mean body placed on the torso).
        config / overrides: the fit config (``configs/fit.yaml``) and ``key=value`` overrides.
        regressor: a KeypointRegressor to start from; the shipped one when None.
        vertices: also return the fitted vertices.

    Returns:
        FitResult. Samples with too few visible keypoints, or non-finite keypoints, are not
        fitted: ``valid`` is False and ``messages`` says why; the rest of the batch is fitted.

    Raises:
        ValueError: wrong keypoint shape, unknown convention, neither K nor image_size given.
    """
    cfg = config if config is not None else load_config(overrides)
    if model is None:
        from bodyfit.body_models import body_model

        model = body_model("anny")
    names = keypoint_names(convention)
    kp = _as_keypoints(keypoints, len(names), convention).to(model.device, model.dtype)
    B = kp.shape[0]
    if K is None:
        if image_size is None:
            raise ValueError("fit() needs the image size (H, W) or the intrinsics K.")
        K = default_intrinsics(image_size, B, cfg.fov_deg, model.dtype, model.device)
    K = torch.as_tensor(K, dtype=model.dtype, device=model.device)
    if K.dim() == 2:
        K = K.expand(B, 3, 3).clone()
    if tuple(K.shape) != (B, 3, 3):
        raise ValueError(f"K must have shape (3,3) or (B,3,3) with B={B}, got {tuple(K.shape)}.")
    if image_size is None:
        image_size = (int(round(2 * float(K[0, 1, 2]))), int(round(2 * float(K[0, 0, 2]))))
    camera = Camera.identity(K, image_size)

    # Which samples can be fitted at all.
    finite = torch.isfinite(kp).all(dim=(1, 2))
    kp = torch.where(torch.isfinite(kp), kp, torch.zeros_like(kp))
    kp[..., 2] = kp[..., 2].clamp(0.0, 1.0)
    kp_index, kp_weight = model.keypoint_map(convention)
    n_seen = ((kp[..., 2] > 0) & (kp_weight > 0)).sum(1)
    active = finite & (n_seen >= cfg.min_keypoints)
    messages: list[str | None] = []
    for b in range(B):
        if not finite[b]:
            messages.append("keypoints contain NaN or inf: sample skipped")
        elif n_seen[b] < cfg.min_keypoints:
            messages.append(f"only {int(n_seen[b])} keypoints with confidence > 0 (need "
                            f"{cfg.min_keypoints}): sample skipped")
        else:
            messages.append(None)
    if boxes is None:
        boxes = boxes_from_keypoints(kp)
    boxes = torch.as_tensor(boxes, dtype=model.dtype, device=model.device).reshape(B, 4)
    scale = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)

    # Initialization.
    t_start = time.perf_counter()
    init = initial_params(kp, K, model, convention, cfg, init=init, regressor=regressor)
    t_init = time.perf_counter()
    reproj = ReprojectionEnergy(kp_index, kp_weight, cfg.sigma).to(model.device)
    limits = joint_limits(model).to(model.device)
    torso_mask = torch.tensor([n in TORSO for n in names], device=model.device, dtype=model.dtype)

    def energies(p: BodyParams, cam: Camera, obs: torch.Tensor, s: torch.Tensor, mask,
                 start_pose: torch.Tensor, names):
        """The energies a stage weighs (only those: this runs at every step)."""
        terms = {
            "reprojection": lambda: reproj(model(p, vertices=False), cam, obs, s, mask),
            "joint_limits": lambda: limits(p.body_pose),
            "pose_prior": lambda: pose_prior(p.body_pose, model.free_pose_joints),
            "init_prior": lambda: pose_prior(p.body_pose - start_pose, model.free_pose_joints),
            "shape_prior": lambda: shape_prior(p.shape, model.shape_name),
        }
        unknown = set(names) - set(terms)
        if unknown:
            raise ValueError(f"Unknown energies {sorted(unknown)} in the config; known: {sorted(terms)}.")
        return {name: terms[name]() for name in names}

    params = init
    stage_steps = []
    result = None
    for i, stage in enumerate(cfg.stages):
        mask = torso_mask if stage.keypoints == "torso" else None
        kwargs = dict(free=list(stage.free), weights=dict(stage.weights), steps=stage.steps,
                      lr=stage.lr, optimizer=stage.optimizer, ftol=cfg.ftol,
                      check_every=cfg.check_every, free_pose_joints=model.free_pose_joints,
                      clamp_shape=model.clamp_shape)
        flip = (cfg.try_flip and i == 0 and "global_orient" in stage.free
                and bool((ambiguous := _torso_is_ambiguous(kp, names) & active).any()))
        if flip:
            flipped = params.clone()
            flipped.global_orient = _flip_about_vertical(flipped.global_orient)
            both = BodyParams.cat([params, flipped])
            cam2 = Camera.identity(torch.cat([K, K]), image_size)
            kp2, s2 = torch.cat([kp, kp]), torch.cat([scale, scale])
            pose2 = torch.cat([init.body_pose, init.body_pose])
            res = run_stage(both, lambda p: energies(p, cam2, kp2, s2, mask, pose2, stage.weights),
                            active=torch.cat([active, ambiguous]), **kwargs)
            take_flip = ambiguous & (res.energy[B:] < res.energy[:B])
            idx = torch.arange(B, device=kp.device) + B * take_flip.long()
            result = res.index(idx)
        else:
            result = run_stage(params, lambda p: energies(p, camera, kp, scale, mask, init.body_pose,
                                                          stage.weights),
                               active=active, **kwargs)
        params = result.params
        stage_steps.append(result.steps)

    with torch.no_grad():
        out = model(params, vertices=vertices)
        projected = camera.project(out.joints[:, kp_index])
        err = (projected - kp[..., :2]).norm(dim=-1)
        seen = (kp[..., 2] > 0) & (kp_weight > 0)
        err = torch.where(seen, err, torch.full_like(err, math.nan))
        mean_err = torch.nanmean(err, dim=1)
        valid = active & params.is_finite() & torch.isfinite(mean_err)
        if result is not None:
            valid &= ~result.failed
        for b in range(B):
            if messages[b] is None and not valid[b]:
                messages[b] = "the fit diverged (non-finite energy): sample not fitted"
        # Samples that were not fitted hold the default body, never NaN.
        params = params.where(valid, model.default_params(B))
        if not bool(valid.all()):
            out = model(params, vertices=vertices)
    runtime = {"init": t_init - t_start, "fit": time.perf_counter() - t_init}
    energies_out = dict(result.terms) if result is not None else {}
    if result is not None:
        energies_out["total"] = result.energy
    return FitResult(
        params=params, joints=out.joints, vertices=out.vertices, faces=out.faces, camera=camera,
        keypoints=kp, projected=projected, keypoint_error_px=err, reprojection_error_px=mean_err,
        box_height_px=scale, energies=energies_out,
        converged=result.converged if result is not None else torch.zeros(B, dtype=torch.bool),
        valid=valid, messages=messages, init_params=init, convention=convention,
        model_name=model.name, stage_steps=stage_steps, runtime_s=runtime)
