"""The detector's metric 3D landmarks as an energy: what the picture says about depth.

MediaPipe Pose (BlazePose GHUM 3D, Bazarevsky et al. 2020; Grishchenko et al. 2022) predicts, per
person, 33 "world landmarks": metres, origin between the hips, axes those of the picture (x right,
y down, z away from the camera; MediaPipe's ``pose_world_landmarks``). 2D keypoints leave each
limb's depth ambiguous (which arm is forward); these landmarks do not, but their scale and their
root are their own. So this energy compares **bone directions**, which need neither: for every
bone (a, b) of :data:`BONES` seen in a view,

    E = sum_views sum_bones w_ab * sum_{x,y,z} GMoF(u_model - u_obs, sigma)

with u the unit vector from a to b in the view's camera frame (the model's landmarks rotated by the
camera's R; the observed ones by :func:`view_rotation`), w_ab = kp_w_a kp_w_b conf_a conf_b (the
model's keypoint weights and the 2D keypoints' confidences, MediaPipe's visibility) and sigma
``world_sigma`` (GMoF, Geman & McClure 1987; |u_model - u_obs| = 2 sin(angle / 2)). A wrong
landmark saturates at sigma^2 and cannot drag the body.

``world_frame`` says how the landmarks' axes sit relative to the camera: "camera" (the camera's
own axes) or "ray" (turned so that their z axis is the ray from the camera through the hips'
midpoint: a landmark model that sees a centred crop predicts the body as seen from straight
ahead; measured on Pose2Sim's 4 calibrated views, see benchmarks/bench_pose2sim_depth.py).
"""
from __future__ import annotations

import torch

from bodyfit.body_models.conventions import keypoint_names
from bodyfit.fitting.energy import Energy, Evaluation, Problem
from bodyfit.fitting.reprojection import gmof

#: Bones compared, by keypoint name (parent, child); those a convention lacks are left out.
BONES: tuple[tuple[str, str], ...] = (
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ("right_shoulder", "left_shoulder"), ("right_hip", "left_hip"),
    ("left_hip", "left_shoulder"), ("right_hip", "right_shoulder"),
)


def bone_pairs(convention: str, bones=BONES) -> torch.Tensor:
    """(P,2) long: keypoint indices of the ``bones`` that ``convention`` has."""
    names = keypoint_names(convention)
    pairs = [(names.index(a), names.index(b)) for a, b in bones if a in names and b in names]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def view_rotation(keypoints: torch.Tensor, K: torch.Tensor, frame: str,
                  hips: tuple[int, int] | None) -> torch.Tensor:
    """(B,3,3) rotation taking the landmarks' axes to the camera's.

    Args:
        keypoints: (B,K,3) pixels + confidence. K: (B,3,3) intrinsics, pixels.
        frame: "camera" or "procrustes" (identity here) or "ray" (the minimal rotation taking +z to the ray through the
            hips' midpoint, or the confident keypoints' mean where a hip is unseen).
        hips: keypoint indices of the left and right hip, or None.
    Raises:
        ValueError: an unknown ``frame``.
    """
    B = keypoints.shape[0]
    eye = torch.eye(3, dtype=keypoints.dtype, device=keypoints.device).expand(B, 3, 3)
    if frame in ("camera", "procrustes"):
        return eye
    if frame != "ray":
        raise ValueError(f"world_frame must be camera, ray or procrustes, got {frame!r}.")
    conf = keypoints[..., 2:]
    centre = (keypoints[..., :2] * conf).sum(1) / conf.sum(1).clamp(min=1e-6)
    if hips is not None:
        h = keypoints[:, list(hips)]
        both = (h[..., 2] > 0).all(1, keepdim=True)
        centre = torch.where(both, h[..., :2].mean(1), centre)
    pix = torch.cat([centre, torch.ones_like(centre[:, :1])], -1)
    ray = torch.linalg.solve(K, pix[..., None])[..., 0]
    ray = ray / ray.norm(dim=-1, keepdim=True)
    z = torch.zeros_like(ray)
    z[:, 2] = 1.0
    v = torch.cross(z, ray, dim=-1)  # Rodrigues: rotate z onto ray
    c = ray[:, 2]
    vx = torch.zeros(B, 3, 3, dtype=ray.dtype, device=ray.device)
    vx[:, 0, 1], vx[:, 0, 2], vx[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    vx = vx - vx.transpose(1, 2)
    return eye + vx + (vx @ vx) / (1.0 + c)[:, None, None]


def unit(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / |x| along the last axis (|x| clamped at ``eps``)."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


class WorldLandmarksEnergy(Energy):
    """Bone directions of the body against the detector's world landmarks (module docstring).

    ``prepare`` returns None (the energy is left out, at no cost) when the observations carry no
    world landmarks or none with a positive weight. Config: ``world_sigma`` (GMoF scale on unit
    vectors), ``world_frame`` ("camera" or "ray")."""

    name = "world_landmarks"
    needs = "joints"

    def __init__(self, model, config):
        super().__init__(model, config)
        self.sigma = float(getattr(config, "world_sigma", 0.3))
        self.frame = str(getattr(config, "world_frame", "ray"))

    def prepare(self, problem: Problem):
        obs = problem.observations
        wk = obs.clean_world_keypoints()
        if wk is None:
            return None
        dev, dt = problem.keypoints.device, problem.keypoints.dtype
        wk = wk.to(dev, dt)
        pairs = bone_pairs(obs.convention).to(dev)
        if len(pairs) == 0:
            return None
        names = keypoint_names(obs.convention)
        hips = (names.index("left_hip"), names.index("right_hip")) if "left_hip" in names else None
        V = problem.num_views
        dirs, weights = [], []
        for v in range(V):
            cam = problem.cameras[v]
            Rv = view_rotation(problem.keypoints[:, v], cam.K, self.frame, hips)  # landmarks -> camera
            pts = torch.einsum("bij,bkj->bki", Rv, wk[:, v, :, :3])
            d = pts[:, pairs[:, 1]] - pts[:, pairs[:, 0]]
            long = d.norm(dim=-1) > 0.01
            kw = problem.kp_weight[pairs[:, 0]] * problem.kp_weight[pairs[:, 1]]
            w = wk[:, v, pairs[:, 0], 3] * wk[:, v, pairs[:, 1], 3] * kw * long * problem.seen[:, v, None]
            dirs.append(unit(d))
            weights.append(w)
        weights = torch.stack(weights, 1)  # (B,V,P)
        if not bool((weights > 0).any()):
            return None
        pts_w = wk[..., 3] * problem.kp_weight  # (B,V,K) Procrustes weights
        return {"pairs": pairs, "dirs": torch.stack(dirs, 1), "weights": weights, "points": pts_w}

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        pb = ev.problem
        lm = ev.output.joints[:, pb.kp_index]
        pairs = data["pairs"]
        d = lm[:, pairs[:, 1]] - lm[:, pairs[:, 0]]  # (B,P,3) world frame
        total = 0.0
        for v in range(pb.num_views):
            dv = unit(torch.einsum("bij,bpj->bpi", pb.cameras[v].R, d))
            obs = data["dirs"][:, v]
            if self.frame == "procrustes":
                obs = torch.einsum("bij,bpj->bpi", self._align(ev, data, v), obs)
            r = dv - obs
            total = total + (data["weights"][:, v, :, None] * gmof(r, self.sigma)).sum(dim=(1, 2))
        return total

    def _align(self, ev: Evaluation, data, v: int) -> torch.Tensor:
        """(B,3,3) the rotation (no gradient) that best turns the observed bone directions of
        view ``v`` onto the body's current ones (weighted Procrustes on the bones, Kabsch)."""
        with torch.no_grad():
            pb = ev.problem
            lm = ev.output.joints[:, pb.kp_index]
            pairs = data["pairs"]
            d = unit(torch.einsum("bij,bpj->bpi", pb.cameras[v].R, lm[:, pairs[:, 1]] - lm[:, pairs[:, 0]]))
            w = data["weights"][:, v] + 1e-6
            H = torch.einsum("bp,bpi,bpj->bij", w, d, data["dirs"][:, v])  # sum w d_model obs^T
            U, _, Vh = torch.linalg.svd(H)
            S = torch.ones_like(U[:, 0])
            S[:, 2] = torch.sign(torch.linalg.det(U @ Vh))
            return (U * S[:, None]) @ Vh
