"""``bodyfit.fit_views``: one body seen by V calibrated views, for B frames at a time; a video is
the same problem with the frames tied together (one shape, smooth motion).

Bodies live in the calibration's world frame (metres). Energies are summed over the views: 2D
keypoint reprojection always; silhouettes when person masks are given, texture consistency when
pictures are given (between views, and between consecutive frames of a sequence), DensePose when
IUV maps are given; temporal smoothness for sequences. Stages and weights are in
``configs/fit_views.yaml``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import roma
import torch
import torch.nn.functional as F

from bodyfit.body_models.base import BodyModel, BodyOutput, BodyParams
from bodyfit.body_models.conventions import keypoint_names
from bodyfit.cameras import Camera
from bodyfit.fitting.fit import initial_params, load_config
from bodyfit.fitting.optimizer import run_stage
from bodyfit.fitting.reprojection import ReprojectionEnergy
from bodyfit.priors import joint_limits, pose_prior, shape_prior, temporal_smoothness
from bodyfit.regressors.keypoint_regressor import boxes_from_keypoints
from bodyfit.renderers.views import rasterize_view

DENSE_ENERGIES = ("silhouette", "texture", "densepose")


@dataclass
class Views:
    """What V calibrated cameras saw of a person in B frames (B = 1 for one moment).

    Attributes:
        cameras: V Cameras of batch 1 (K px, R, t world -> camera in metres, image_size (H, W)).
        keypoints: (B,V,K,3) pixels + confidence, in the fit's keypoint convention; confidence
            0 where missing (a view that does not see the person: all zero).
        masks: optional per view (B,H,W) person mask in [0,1], or None for a view without one.
        images: optional per view (B,H,W,3) pictures, float in [0,1] or uint8.
        iuv: optional per view (B,3,H,W) DensePose IUV (I in 0..24, U, V in [0,1]).
        names: optional view names (for messages and file names).
    """

    cameras: list[Camera]
    keypoints: torch.Tensor
    masks: list[torch.Tensor | None] | None = None
    images: list[torch.Tensor | None] | None = None
    iuv: list[torch.Tensor | None] | None = None
    names: list[str] | None = None


@dataclass
class ViewsFitResult:
    """The outcome of :func:`fit_views` for B frames seen by V views.

    Attributes:
        params: BodyParams (B) in the world frame; frames not fitted hold the default body.
        joints: (B,J,3), vertices: (B,N,3) or None; metres, world frame. faces: (F,3).
        cameras: the V cameras used (views dropped as unusable are absent). names: their names.
        keypoints: (B,V,K,3) observed; projected: (B,V,K,2) the fit's keypoints in each view.
        keypoint_error_px: (B,V,K), NaN where not seen. reprojection_error_px: (B,V) mean over
            the view's seen keypoints, NaN where the view does not see the person.
        box_height_px: (B,V).
        energies: name -> (B,) weighted terms of the last stage, plus "total".
        valid: (B,) bool. messages: per frame None or why it was not fitted / what was left out.
        skipped_energies: configured energies left out for lack of observations.
        runtime_s: seconds for "init" and "fit".
    """

    params: BodyParams
    joints: torch.Tensor
    vertices: torch.Tensor | None
    faces: torch.Tensor
    cameras: list[Camera]
    names: list[str]
    keypoints: torch.Tensor
    projected: torch.Tensor
    keypoint_error_px: torch.Tensor
    reprojection_error_px: torch.Tensor
    box_height_px: torch.Tensor
    energies: dict[str, torch.Tensor]
    valid: torch.Tensor
    messages: list[str | None]
    view_messages: list[str] = field(default_factory=list)
    skipped_energies: list[str] = field(default_factory=list)
    convention: str = "mediapipe33"
    model_name: str = "anny"
    runtime_s: dict[str, float] = field(default_factory=dict)


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


def _check_camera(cam: Camera, name: str) -> str | None:
    """Why a calibrated view cannot be used, or None."""
    if not isinstance(cam, Camera) or cam.batch_size != 1:
        return f"view {name}: expected a Camera of batch 1"
    K, R, t = cam.K[0].double(), cam.R[0].double(), cam.t[0].double()
    if not (torch.isfinite(K).all() and torch.isfinite(R).all() and torch.isfinite(t).all()):
        return f"view {name}: calibration holds NaN or inf"
    if float(K[0, 0]) <= 0 or float(K[1, 1]) <= 0 or abs(float(torch.linalg.det(K))) < 1e-9:
        return f"view {name}: singular intrinsics K (focal lengths {float(K[0, 0])}, {float(K[1, 1])})"
    if float((R @ R.T - torch.eye(3, dtype=R.dtype)).abs().max()) > 1e-3 or float(torch.linalg.det(R)) < 0.5:
        return f"view {name}: R is not a rotation (check the calibration's extrinsics)"
    H, W = cam.image_size
    if H <= 0 or W <= 0:
        return f"view {name}: image size {cam.image_size} is not positive"
    return None


def _scaled_camera(cam: Camera, render_size: int) -> tuple[Camera, float]:
    """The camera at a working resolution whose longer side is at most ``render_size``."""
    H, W = cam.image_size
    s = min(1.0, render_size / max(H, W))
    if s == 1.0:
        return cam, 1.0
    K = cam.K.clone()
    K[:, :2, :2] *= s
    K[:, :2, 2] = (K[:, :2, 2] + 0.5) * s - 0.5  # pixel centres stay pixel centres
    size = (max(1, round(H * s)), max(1, round(W * s)))
    return Camera(K, cam.R, cam.t, size), s


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,H,W) or (B,H,W,C) float -> the same at ``size`` (area averaging)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    chw = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    out = F.interpolate(chw, size=size, mode="area")
    return out[:, 0] if x.dim() == 3 else out.permute(0, 2, 3, 1)


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,H,W,C) Gaussian blur with standard deviation ``sigma`` pixels."""
    if sigma <= 0:
        return images
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=images.dtype)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    C = images.shape[-1]
    chw = images.permute(0, 3, 1, 2)
    chw = F.conv2d(F.pad(chw, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    chw = F.conv2d(F.pad(chw, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    return chw.permute(0, 2, 3, 1)


def _as_float_image(img: torch.Tensor) -> torch.Tensor:
    img = torch.as_tensor(img)
    return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()


def render_model(model: BodyModel, topology: str | None) -> BodyModel:
    """The model whose mesh the dense energies (silhouette, texture, DensePose) render: for Anny
    on its default mesh, the same body on the low-poly ``topology`` (``AnnyModel.with_mesh``:
    the same 104 bones and the same joints, so only the rendered mesh is coarser); ``model``
    itself for any other model or when ``topology`` is None or "default"."""
    if not topology or topology == "default" or model.name != "anny" or model.topology != "default":
        return model
    return model.with_mesh(topology)


def fit_views(views: Views, model: BodyModel | None = None, convention: str = "mediapipe33",
              config=None, overrides: list[str] | None = None, sequence: bool = False,
              regressor=None, vertices: bool = True) -> ViewsFitResult:
    """Fit one body per frame to what V calibrated views saw of it.

    Args:
        views: the cameras and observations (:class:`Views`).
        model: a BodyModel (Anny when None).
        convention: keypoint convention of ``views.keypoints``.
        config / overrides: ``configs/fit_views.yaml`` and ``key=value`` overrides. The dense
            energies render the mesh of :func:`render_model` (``render_topology``: Anny's
            low-poly mesh of the same body by default); the result is on ``model``'s mesh.
        sequence: the B frames are consecutive frames of one person: one shape for all of them,
            temporal smoothness, and texture consistency between consecutive frames too.
        regressor: keypoint regressor for the start (the shipped one when None).
        vertices: also return the fitted vertices.

    Returns:
        ViewsFitResult. A view with an unusable calibration (NaN, singular K, R not a rotation)
        is dropped and reported in ``view_messages``; a frame no view sees the person in is
        skipped and reported in ``messages`` (``valid`` False), and in a sequence its
        neighbours are not pulled towards it.

    Raises:
        ValueError: malformed observations (shapes, sizes that do not match the cameras, a
            malformed IUV), or no usable view at all.
    """
    cfg = config if config is not None else load_config(overrides, name="fit_views")
    if model is None:
        from bodyfit.body_models import body_model

        model = body_model("anny")
    dev, dt = model.device, model.dtype
    names_kp = keypoint_names(convention)
    kp = torch.as_tensor(views.keypoints)
    V = len(views.cameras)
    if kp.dim() != 4 or kp.shape[1] != V or kp.shape[2] != len(names_kp) or kp.shape[3] != 3:
        raise ValueError(f"keypoints must have shape (B, V={V}, {len(names_kp)}, 3) for convention "
                         f"{convention!r} and {V} cameras, got {tuple(kp.shape)}.")
    B = kp.shape[0]
    view_names = list(views.names) if views.names is not None else [f"view{v}" for v in range(V)]
    for label, per_view in (("masks", views.masks), ("images", views.images), ("iuv", views.iuv)):
        if per_view is not None and len(per_view) != V:
            raise ValueError(f"{label} must be a list with one entry (or None) per view: {V}, "
                             f"got {len(per_view)}.")

    # Unusable calibrations: drop those views, report them.
    view_messages = []
    keep_views = []
    for v, cam in enumerate(views.cameras):
        why = _check_camera(cam, view_names[v])
        if why is None:
            keep_views.append(v)
        else:
            view_messages.append(why + ": view left out")
    if not keep_views:
        raise ValueError("no usable calibrated view: " + "; ".join(view_messages))
    cams = [Camera(c.K.to(dev, dt), c.R.to(dev, dt), c.t.to(dev, dt), tuple(c.image_size))
            for c in (views.cameras[v] for v in keep_views)]
    pick = lambda seq: None if seq is None else [seq[v] for v in keep_views]  # noqa: E731
    masks, images, iuvs = pick(views.masks), pick(views.images), pick(views.iuv)
    view_names = [view_names[v] for v in keep_views]
    kp = kp[:, keep_views].to(dev, dt)
    V = len(cams)

    # Which (frame, view) pairs see the person.
    finite = torch.isfinite(kp).all(dim=(2, 3))
    kp = torch.where(torch.isfinite(kp), kp, torch.zeros_like(kp))
    kp[..., 2] = kp[..., 2].clamp(0.0, 1.0)
    kp[~finite] = 0.0
    kp_index, kp_weight = model.keypoint_map(convention)
    n_seen = ((kp[..., 2] > 0) & (kp_weight > 0)).sum(-1)  # (B,V)
    seen_bv = n_seen >= cfg.min_keypoints
    active = seen_bv.any(1)
    messages: list[str | None] = []
    for b in range(B):
        notes = [f"{view_names[v]}: keypoints hold NaN or inf, view left out" for v in range(V) if not finite[b, v]]
        if not active[b]:
            notes.insert(0, f"no view sees {cfg.min_keypoints} or more keypoints: frame not fitted")
        messages.append("; ".join(notes) if notes else None)
    kp_used = kp * seen_bv[..., None, None]
    boxes = torch.stack([boxes_from_keypoints(kp[:, v]) for v in range(V)], 1)  # (B,V,4)
    scale = (boxes[..., 3] - boxes[..., 1]).clamp(min=1.0)  # (B,V) box heights, pixels

    # Start: the regressor (or mean body) in the view that sees most, moved to the world frame.
    t0 = time.perf_counter()
    best = n_seen.argmax(1)
    b_idx = torch.arange(B, device=dev)
    Ks = torch.stack([c.K[0] for c in cams])
    Rs = torch.stack([c.R[0] for c in cams])
    ts = torch.stack([c.t[0] for c in cams])
    init_cam = initial_params(kp[b_idx, best], Ks[best], model, convention, cfg, regressor=regressor)
    init = camera_to_world(model, init_cam, Rs[best], ts[best])
    init = init.where(active & init.is_finite(), model.default_params(B))
    t_init = time.perf_counter()

    # Dense observations at the working resolution.
    work = [_scaled_camera(c, cfg.render_size)[0] for c in cams]
    cams_b = [c.expand(B) for c in cams]
    work_b = [c.expand(B) for c in work]
    obs_masks, obs_images, obs_dp = {}, {}, {}
    for v in range(V):
        H, W = cams[v].image_size
        if masks is not None and masks[v] is not None:
            m = torch.as_tensor(masks[v]).to(dev, dt)
            if m.dim() != 3 or tuple(m.shape) != (B, H, W):
                raise ValueError(f"mask of {view_names[v]} must have shape (B,H,W) = ({B},{H},{W}), "
                                 f"got {tuple(m.shape)}.")
            obs_masks[v] = _resize(m.clamp(0, 1), work[v].image_size)
        if images is not None and images[v] is not None:
            im = _as_float_image(images[v]).to(dev, dt)
            if im.dim() != 4 or tuple(im.shape[:3]) != (B, H, W):
                raise ValueError(f"images of {view_names[v]} must have shape (B,H,W,C) = ({B},{H},{W},C), "
                                 f"got {tuple(im.shape)}.")
            obs_images[v] = _blur(_resize(im, work[v].image_size), cfg.texture_blur)
        if iuvs is not None and iuvs[v] is not None:
            iuv = torch.as_tensor(iuvs[v])
            if iuv.dim() != 4 or tuple(iuv.shape[-2:]) != (H, W) or iuv.shape[0] != B:
                raise ValueError(f"IUV of {view_names[v]} is {tuple(iuv.shape)} but the picture is "
                                 f"(B,3,H,W) = ({B},3,{H},{W}): resize the IUV (nearest neighbour) "
                                 f"or pass the matching picture.")
            obs_dp[v] = iuv
    for v, m in obs_masks.items():
        empty = (m.sum(dim=(1, 2)) == 0) & active
        for b in torch.nonzero(empty).flatten().tolist():
            note = f"{view_names[v]}: empty person mask, silhouette left out"
            messages[b] = note if messages[b] is None else messages[b] + "; " + note

    reproj = ReprojectionEnergy(kp_index, kp_weight, cfg.sigma).to(dev)
    limits = joint_limits(model).to(dev)
    mesh_model = render_model(model, cfg.get("render_topology"))
    sil_energy = tex_energy = dp_energy = None
    dp_targets = {}
    if obs_masks:
        from bodyfit.fitting.silhouette import SilhouetteEnergy

        sil_energy = SilhouetteEnergy(mesh_model.faces).to(dev)
    if len(obs_images) >= 2 or (obs_images and sequence and B >= 2):
        from bodyfit.fitting.texture import TextureConsistencyEnergy

        tex_energy = TextureConsistencyEnergy(mesh_model.faces, cfg.depth_tolerance,
                                              margin=max(1, math.ceil(2 * cfg.texture_blur))).to(dev)
    if obs_dp:
        from bodyfit.densepose import anny_chart, smpl_chart
        from bodyfit.fitting.densepose import DensePoseEnergy

        if model.name == "anny":
            chart = anny_chart(mesh_model)
        elif model.name in ("smpl", "smplh"):  # 6890 vertices: DensePose's own chart
            chart = smpl_chart()
        else:
            raise ValueError(f"DensePose fitting needs a chart on {model.name!r}'s mesh: Anny's "
                             f"is built in and SMPL's comes from bodyfit[densepose-smpl].")
        dp_energy = DensePoseEnergy(chart, cfg.sigma)
        gen = torch.Generator().manual_seed(0)
        for v, iuv in obs_dp.items():
            dp_targets[v] = dp_energy.targets(iuv, cfg.densepose_points, generator=gen)
            for b in torch.nonzero((dp_targets[v].counts == 0).cpu() & active.cpu()).flatten().tolist():
                note = f"{view_names[v]}: no DensePose foreground, DensePose left out"
                messages[b] = note if messages[b] is None else messages[b] + "; " + note
    available = {"reprojection": True, "joint_limits": True, "pose_prior": True,
                 "init_prior": True, "shape_prior": True, "temporal": sequence and B >= 3,
                 "silhouette": sil_energy is not None, "texture": tex_energy is not None,
                 "densepose": dp_energy is not None}

    def texture_term(out: BodyOutput, raster) -> torch.Tensor:
        rendered = {v: tex_energy.view(out.vertices, work_b[v], im, raster(v)) for v, im in obs_images.items()}
        total = out.vertices.new_zeros(B)
        pairs = 0
        seen = seen_bv.to(out.vertices.dtype)
        for i in rendered:
            for j in rendered:
                if i != j:  # only where both views see the person in that frame
                    e = tex_energy.pair_energy(out.vertices, rendered[i], rendered[j])
                    total = total + e * seen[:, i] * seen[:, j]
                    pairs += 1
        if sequence and B >= 2:  # the same view in consecutive frames, where both see the person
            for v, r in rendered.items():
                both = F.pad(seen[1:, v] * seen[:-1, v], (1, 0))
                total = total + tex_energy.pair_energy(out.vertices, r, r, shift=1) * both
                pairs += 1
        return total / max(pairs, 1)

    def energies(p: BodyParams, names, start_pose):
        need_vertices = any(n in DENSE_ENERGIES for n in names)
        out = (mesh_model if need_vertices else model)(p, vertices=need_vertices)
        rasters = {}

        def raster(v):  # one rasterization per view and step, shared by silhouette and texture
            if v not in rasters:
                rasters[v] = rasterize_view(out.vertices, mesh_model.faces, work_b[v])
            return rasters[v]

        terms = {
            "reprojection": lambda: sum(reproj(out, cams_b[v], kp_used[:, v], scale[:, v]) for v in range(V)),
            "joint_limits": lambda: limits(p.body_pose),
            "pose_prior": lambda: pose_prior(p.body_pose, model.free_pose_joints),
            "init_prior": lambda: pose_prior(p.body_pose - start_pose, model.free_pose_joints),
            "shape_prior": lambda: shape_prior(p.shape, model.shape_name),
            "temporal": lambda: temporal_smoothness(out.joints, active),
            "silhouette": lambda: sum(sil_energy(out, work_b[v], m, raster(v)) * seen_bv[:, v]
                                      for v, m in obs_masks.items()),
            "texture": lambda: texture_term(out, raster),
            "densepose": lambda: sum(dp_energy(out, cams_b[v], dp_targets[v], scale[:, v]) for v in dp_targets),
        }
        unknown = set(names) - set(terms)
        if unknown:
            raise ValueError(f"Unknown energies {sorted(unknown)} in the config; known: {sorted(terms)}.")
        return {name: terms[name]() for name in names}

    params = init
    result = None
    skipped = set()
    for stage in cfg.stages:
        weights = {k: float(w) for k, w in stage.weights.items() if w != 0}
        for name in list(weights):
            if not available.get(name, True):
                skipped.add(name)
                del weights[name]
        result = run_stage(params, lambda p: energies(p, weights, init.body_pose), free=list(stage.free),
                           weights=weights, steps=stage.steps, lr=stage.lr, optimizer=stage.optimizer,
                           ftol=cfg.ftol, check_every=cfg.check_every,
                           free_pose_joints=model.free_pose_joints, clamp_shape=model.clamp_shape,
                           active=active, shared_shape=sequence)
        params = result.params

    with torch.no_grad():
        out = model(params, vertices=vertices)
        projected = torch.stack([cams_b[v].project(out.joints[:, kp_index]) for v in range(V)], 1)
        err = (projected - kp[..., :2]).norm(dim=-1)
        seen = (kp[..., 2] > 0) & (kp_weight > 0) & seen_bv[..., None]
        err = torch.where(seen, err, torch.full_like(err, math.nan))
        mean_err = torch.where(seen.any(-1), torch.nanmean(err, dim=-1), torch.full_like(err[..., 0], math.nan))
        valid = active & params.is_finite() & ~result.failed
        for b in range(B):
            if active[b] and not valid[b]:
                messages[b] = "the fit diverged (non-finite energy): frame not fitted"
        params = params.where(valid, model.default_params(B))
        if not bool(valid.all()):
            out = model(params, vertices=vertices)
    energies_out = dict(result.terms)
    energies_out["total"] = result.energy
    return ViewsFitResult(
        params=params, joints=out.joints, vertices=out.vertices, faces=out.faces, cameras=cams,
        names=view_names, keypoints=kp, projected=projected, keypoint_error_px=err,
        reprojection_error_px=mean_err, box_height_px=scale, energies=energies_out, valid=valid,
        messages=messages, view_messages=view_messages, skipped_energies=sorted(skipped),
        convention=convention, model_name=model.name,
        runtime_s={"init": t_init - t0, "fit": time.perf_counter() - t_init})
