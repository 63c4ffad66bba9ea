"""Synthetic bodies and their 2D keypoints (Pose2Mesh, Choi et al. 2020: 2D pose is free of
appearance, so training and test pairs can be made by projecting sampled bodies).

Bodies are sampled inside the model's joint limits, with random phenotypes/betas and a random
heading; cameras at random distances and fields of view; keypoints get detector-like noise
(a fraction of the box height), random confidences and dropped points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch

from bodyfit.body_models.base import BodyModel, BodyParams
from bodyfit.cameras import default_intrinsics, project
from bodyfit.observations import Observations
from bodyfit.priors import joint_limits


@dataclass
class SyntheticBatch:
    """params: ground-truth BodyParams (B) in the camera frame; K: (B,3,3) px;
    image_size: (H, W); keypoints: (B,K,3) noisy px + confidence; clean: (B,K,2) exact px;
    boxes: (B,4) xyxy px; joints: (B,J,3) m, camera frame."""

    params: BodyParams
    K: torch.Tensor
    image_size: tuple[int, int]
    keypoints: torch.Tensor
    clean: torch.Tensor
    boxes: torch.Tensor
    joints: torch.Tensor


def sample_params(model: BodyModel, batch_size: int, generator: torch.Generator | None = None,
                  spread: float = 0.35, max_tilt_deg: float = 15.0, pose_prior=None,
                  prior_share: float = 0.0) -> BodyParams:
    """Random bodies: each free joint's anatomical angles ~ N(0, spread * half-range) clipped to
    the joint limits; shape uniform over its range (phenotypes) or N(0,1) (betas); a heading
    uniform in [-180, 180) degrees about the vertical and a tilt of up to ``max_tilt_deg``.
    ``transl`` is zero. With a ``pose_prior`` (:class:`bodyfit.priors.gmm.PoseGMM` of this
    model), a ``prior_share`` of the bodies take their joints' rotations from its samples
    instead (real-looking poses)."""
    g = generator
    dt, dev = model.dtype, model.device
    limits = joint_limits(model).to(dev)
    params = model.default_params(batch_size)
    M = limits.joint_index.numel()
    half = 0.5 * (limits.hi - limits.lo)
    angles = torch.randn(batch_size, M, 3, generator=g, dtype=dt).to(dev) * spread * half
    angles = torch.minimum(torch.maximum(angles, limits.lo), limits.hi)
    pose = params.body_pose.clone()
    pose[:, limits.joint_index] = torch.einsum("mij,bmi->bmj", limits.frames, angles)
    if pose_prior is not None and prior_share > 0:
        take = torch.nonzero(torch.rand(batch_size, generator=g) < prior_share).flatten()
        drawn = pose_prior.sample(len(take), g).to(dev, dt)
        pose[take.to(dev)[:, None], torch.tensor(pose_prior.joint_index(model), device=dev)] = drawn
    params.body_pose = pose
    if model.shape_name == "phenotypes":
        params.shape = torch.rand(batch_size, model.shape_dim, generator=g, dtype=dt).to(dev)
    else:
        params.shape = torch.randn(batch_size, model.shape_dim, generator=g, dtype=dt).to(dev)
    yaw = (torch.rand(batch_size, generator=g, dtype=dt) * 2 - 1) * math.pi
    tilt = (torch.rand(batch_size, 2, generator=g, dtype=dt) * 2 - 1) * math.radians(max_tilt_deg)
    turn = torch.stack([tilt[:, 0], yaw, tilt[:, 1]], 1).to(dev)  # camera-frame x, y (vertical), z
    R = roma.rotvec_to_rotmat(turn) @ model.up_to_camera.to(dev, dt)
    params.global_orient = roma.rotmat_to_rotvec(R)
    params.transl = torch.zeros(batch_size, 3, dtype=dt, device=dev)
    return params


def synthetic_batch(model: BodyModel, batch_size: int, convention: str = "mediapipe33",
                    image_size: tuple[int, int] = (1000, 1000), noise: float = 0.015,
                    dropout: float = 0.1, generator: torch.Generator | None = None,
                    fov_range: tuple[float, float] = (45.0, 65.0),
                    depth_range: tuple[float, float] = (2.5, 8.0), pose_prior=None,
                    prior_share: float = 0.0) -> SyntheticBatch:
    """Sample bodies, cameras and noisy keypoints (see the module docstring).

    Args:
        noise: std of the 2D noise as a fraction of the person's height in the picture (the
            keypoints' extent; 0.015 = 1.5%).
        dropout: probability that a keypoint is missing (confidence 0).
        pose_prior: a :class:`bodyfit.priors.gmm.PoseGMM` (see :func:`sample_params`).
        prior_share: the share of bodies it poses (see :func:`sample_params`).
    """
    g = generator
    dt, dev = model.dtype, model.device
    params = sample_params(model, batch_size, g, pose_prior=pose_prior, prior_share=prior_share)
    fov = fov_range[0] + (fov_range[1] - fov_range[0]) * torch.rand(batch_size, generator=g)
    K = torch.stack([default_intrinsics(image_size, 1, float(f), dt, dev)[0] for f in fov])
    depth = depth_range[0] + (depth_range[1] - depth_range[0]) * torch.rand(batch_size, generator=g)
    # Random placement within the central part of the view.
    H, W = image_size
    f = K[:, 0, 0].cpu()
    off = (torch.rand(batch_size, 2, generator=g) * 2 - 1) * 0.25
    tx = off[:, 0] * (W / 2) * depth / f
    ty = off[:, 1] * (H / 2) * depth / f
    params.transl = torch.stack([tx, ty, depth], 1).to(dev, dt)
    with torch.no_grad():
        out = model(params, vertices=False)
    kp_index, kp_weight = model.keypoint_map(convention)
    clean = project(out.joints[:, kp_index], K)
    lo, hi = clean.amin(1), clean.amax(1)
    box_h = (hi - lo).amax(1)
    pad = 0.1 * box_h[:, None]
    boxes = torch.cat([lo - pad, hi + pad], 1)
    keypoints = corrupt_keypoints(clean, box_h, image_size, kp_weight, noise, dropout, g)
    return SyntheticBatch(params, K, image_size, keypoints, clean, boxes, out.joints)


def corrupt_keypoints(clean: torch.Tensor, scale: torch.Tensor, image_size: tuple[int, int],
                      kp_weight: torch.Tensor, noise: float, dropout: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Detector-like keypoints from exact ones.

    Args:
        clean: (B,K,2) exact pixels. scale: (B,) the person's size in pixels (keypoint extent).
        kp_weight: (K,) keypoints with weight 0 (no model landmark) are always missing.
        noise: std of Gaussian noise, fraction of ``scale``; dropout: drop probability.
    Returns:
        (B,K,3) pixels + confidence (uniform in [0.6, 1]; 0 for dropped or out-of-image points).
    """
    g = generator
    H, W = image_size
    noisy = clean + torch.randn(clean.shape, generator=g, dtype=clean.dtype).to(clean.device) * noise * scale[:, None, None]
    conf = 0.6 + 0.4 * torch.rand(clean.shape[:2], generator=g, dtype=clean.dtype).to(clean.device)
    drop = torch.rand(clean.shape[:2], generator=g).to(clean.device) < dropout
    inside = (clean[..., 0] >= 0) & (clean[..., 0] < W) & (clean[..., 1] >= 0) & (clean[..., 1] < H)
    conf = torch.where(drop | ~inside | (kp_weight == 0), torch.zeros_like(conf), conf)
    noisy = torch.where(conf[..., None] > 0, noisy, torch.zeros_like(noisy))
    return torch.cat([noisy, conf[..., None]], -1)


@dataclass
class SyntheticViews:
    """A synthetic multi-view scene: ``observations`` (:class:`bodyfit.observations.Observations`,
    B samples x V views) rendered from the ground-truth ``params`` (BodyParams (B), world frame =
    OpenCV axes, y down, the bodies near the origin); ``vertices`` (B,N,3) and ``joints``
    (B,J,3) the true ones, metres."""

    observations: Observations
    params: BodyParams
    vertices: torch.Tensor
    joints: torch.Tensor


def look_at_camera(center, target=(0.0, 0.0, 0.0), image_size=(256, 256), fov_deg: float = 50.0,
                   dtype=torch.float32):
    """A Camera (batch 1) at ``center`` (metres, world frame with y down) looking at ``target``,
    its image rows along world +y."""
    from bodyfit.cameras import Camera

    c = torch.as_tensor(center, dtype=dtype)
    z = torch.as_tensor(target, dtype=dtype) - c
    z = z / z.norm()
    x = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0], dtype=dtype), z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    return Camera(default_intrinsics(image_size, 1, fov_deg, dtype), R[None], (-R @ c)[None],
                  tuple(image_size))


def body_texture(rest_vertices: torch.Tensor) -> torch.Tensor:
    """(V,3) RGB in [0,1]: a smooth, non-repeating pattern on the body (sines of the rest-pose
    coordinates at a few frequencies), the same in every view; for texture-consistency tests."""
    x = rest_vertices
    return torch.stack([0.5 + 0.4 * torch.sin(9 * x[:, 0] + 5 * x[:, 1] - 3 * x[:, 2]),
                        0.5 + 0.4 * torch.sin(-4 * x[:, 0] + 11 * x[:, 2] + 1.0),
                        0.5 + 0.4 * torch.sin(7 * x[:, 1] + 6 * x[:, 2] - 8 * x[:, 0] + 2.0)], -1)


@torch.no_grad()
def synthetic_views(model: BodyModel, batch_size: int = 1, n_views: int = 2,
                    image_size: tuple[int, int] = (256, 256), convention: str = "mediapipe33",
                    noise: float = 0.015, dropout: float = 0.1, distance: float = 4.0,
                    spread_deg: float = 90.0,
                    generator: torch.Generator | None = None, masks: bool = True,
                    images: bool = True, iuv: bool = False) -> SyntheticViews:
    """Random bodies seen by ``n_views`` cameras ``spread_deg`` apart around them (at
    ``distance`` metres, a little above the body's centre).

    Keypoints are projected with detector-like noise (``corrupt_keypoints``); masks are the
    rendered coverage; pictures show the body with :func:`body_texture` over a grey background
    (the same colours in every view); IUV is rendered with Anny's DensePose chart.
    """
    from bodyfit.renderers import ops
    from bodyfit.renderers.views import rasterize_view

    g = generator
    dt = model.dtype
    params = sample_params(model, batch_size, g)
    out = model(params)
    verts, joints = out.vertices, out.joints
    kp_index, kp_weight = model.keypoint_map(convention)
    colors = body_texture(model(model.default_params(1)).vertices[0]) if images else None
    chart = None
    if iuv:
        from bodyfit.densepose import anny_chart

        chart = anny_chart(model)
    start = float(torch.rand((), generator=g)) * 2 * math.pi
    cameras, kps, mask_list, image_list, iuv_list = [], [], [], [], []
    for v in range(n_views):
        ang = start + math.radians(spread_deg) * v
        cam = look_at_camera((distance * math.sin(ang), -0.1, -distance * math.cos(ang)),
                             image_size=image_size, dtype=dt)
        cameras.append(cam)
        camb = cam.expand(batch_size)
        clean = camb.project(joints[:, kp_index])
        box_h = (clean.amax(1) - clean.amin(1)).amax(1)
        kps.append(corrupt_keypoints(clean, box_h, image_size, kp_weight, noise, dropout, g))
        _, rast = rasterize_view(verts, model.faces, camb)
        cover = (rast[..., 3] > 0).to(dt)
        mask_list.append(cover if masks else None)
        if images:
            rgb, _ = ops.interpolate(colors.to(dt), rast, model.faces)
            image_list.append(rgb + (1 - cover[..., None]) * 0.5)
        if iuv:
            from bodyfit.densepose import render_iuv

            iuv_list.append(render_iuv(verts, camb, chart))
    observations = Observations(keypoints=torch.stack(kps, 1), cameras=cameras,
                                convention=convention, masks=mask_list if masks else None,
                                images=image_list if images else None,
                                iuv=iuv_list if iuv else None,
                                names=[f"cam{v}" for v in range(n_views)])
    return SyntheticViews(observations, params, verts, joints)


@dataclass
class SyntheticPeopleViews:
    """Several people seen by calibrated cameras, with known identities.

    Attributes:
        cameras: V Cameras (batch 1), world frame = OpenCV axes (y down), metres.
        keypoints: (V,P,K,3) noisy pixels + confidence of person p in view v, in person order
            (0 confidence: missing, outside the picture or dropped).
        clean: (V,P,K,2) exact pixels.
        sizes: (V,P) each person's size in each view (keypoint extent, pixels).
        params: ground-truth BodyParams (P), world frame. vertices: (P,N,3), joints: (P,J,3),
            metres, world frame.
    """

    cameras: list
    keypoints: torch.Tensor
    clean: torch.Tensor
    sizes: torch.Tensor
    params: BodyParams
    vertices: torch.Tensor
    joints: torch.Tensor


@torch.no_grad()
def synthetic_people_views(model: BodyModel, n_people: int, n_views: int = 4,
                           image_size: tuple[int, int] = (720, 960), convention: str = "mediapipe33",
                           noise: float = 0.015, dropout: float = 0.1, distance: float = 7.0,
                           radius: float = 2.0, min_gap: float = 0.8, fov_deg: float = 60.0,
                           generator: torch.Generator | None = None) -> SyntheticPeopleViews:
    """``n_people`` random bodies (:func:`sample_params`) standing on a floor disc of ``radius``
    metres, at least ``min_gap`` metres apart (rejection sampling), seen by ``n_views`` cameras
    evenly spaced around the disc at ``distance`` metres, 1 m above the bodies' centres, looking
    at the centre; keypoints projected with :func:`corrupt_keypoints` noise (``noise`` of each
    person's size in that view) and ``dropout``.

    Raises:
        ValueError: ``n_people`` < 1, ``n_views`` < 1, or the people cannot be placed
            ``min_gap`` apart on the disc.
    """
    if n_people < 1 or n_views < 1:
        raise ValueError(f"need at least one person and one view, got {n_people} people, {n_views} views")
    g = generator
    dt = model.dtype
    params = sample_params(model, n_people, g)
    spots: list[torch.Tensor] = []
    for _ in range(10000):
        if len(spots) == n_people:
            break
        r = radius * float(torch.rand((), generator=g)) ** 0.5
        a = float(torch.rand((), generator=g)) * 2 * math.pi
        p = torch.tensor([r * math.cos(a), 0.0, r * math.sin(a)], dtype=dt)
        if all(float((p - q).norm()) >= min_gap for q in spots):
            spots.append(p)
    if len(spots) < n_people:
        raise ValueError(f"cannot place {n_people} people {min_gap} m apart within {radius} m")
    params.transl = torch.stack(spots).to(model.device)
    out = model(params)
    kp_index, kp_weight = model.keypoint_map(convention)
    start = float(torch.rand((), generator=g)) * 2 * math.pi
    cameras, kps, cleans, sizes = [], [], [], []
    for v in range(n_views):
        ang = start + 2 * math.pi * v / n_views
        cam = look_at_camera((distance * math.sin(ang), -1.0, -distance * math.cos(ang)),
                             image_size=image_size, fov_deg=fov_deg, dtype=dt)
        cameras.append(cam)
        clean = cam.expand(n_people).project(out.joints[:, kp_index])
        size = (clean.amax(1) - clean.amin(1)).amax(1)
        kps.append(corrupt_keypoints(clean, size, image_size, kp_weight, noise, dropout, g))
        cleans.append(clean)
        sizes.append(size)
    return SyntheticPeopleViews(cameras, torch.stack(kps), torch.stack(cleans), torch.stack(sizes), params,
                                out.vertices, out.joints)


def shuffled_detections(scene: SyntheticPeopleViews, hidden: dict[int, list[int]] | None = None,
                        spurious: list[int] = (), generator: torch.Generator | None = None
                        ) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Per view the people's keypoints as a detector gives them: in a random order, without the
    people ``hidden`` there, plus person-shaped detections that belong to nobody (another
    person's keypoints shifted by 10-30% of the picture: consistent in shape, not in geometry).

    Args:
        hidden: ``{view: [person, ...]}`` left out of that view.
        spurious: one spurious detection in each view listed (a view may be listed twice). Two
            spurious detections in different views can happen to be consistent (a ghost person
            no geometry can tell from a real one); tests list them in one view.
    Returns:
        (V tensors (N_v,K,3), V lists of N_v true identities: the person index, -1 spurious).
    """
    g = generator
    hidden = hidden or {}
    V, P = scene.keypoints.shape[:2]
    H, W = scene.cameras[0].image_size
    dets, ids = [], []
    for v in range(V):
        who = [p for p in range(P) if p not in hidden.get(v, [])]
        kp = [scene.keypoints[v, p] for p in who]
        for _ in range(list(spurious).count(v)):
            src = scene.keypoints[v, int(torch.randint(P, (1,), generator=g))].clone()
            shift = (0.1 + 0.2 * torch.rand(2, generator=g)) * torch.tensor([W, H], dtype=src.dtype)
            shift = shift * torch.where(torch.rand(2, generator=g) < 0.5, -1.0, 1.0)
            src[:, :2] += shift
            kp.append(src)
            who.append(-1)
        order = torch.randperm(len(who), generator=g).tolist()
        dets.append(torch.stack([kp[i] for i in order]) if order else scene.keypoints[v, :0])
        ids.append([who[i] for i in order])
    return dets, ids


def true_groups(ids: list[list[int]]) -> dict[int, set[tuple[int, int]]]:
    """Each person's detections, ``{person: {(view, detection index), ...}}``, from the true
    identities :func:`shuffled_detections` returns (spurious detections, -1, belong to nobody)."""
    truth: dict[int, set[tuple[int, int]]] = {}
    for v, per_view in enumerate(ids):
        for i, p in enumerate(per_view):
            if p >= 0:
                truth.setdefault(p, set()).add((v, i))
    return truth
