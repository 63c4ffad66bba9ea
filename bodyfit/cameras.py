"""Pinhole cameras in the OpenCV convention (x right, y down, z forward; pixels; metres).

A camera is intrinsics ``K`` (B,3,3) in pixels and extrinsics ``R`` (B,3,3), ``t`` (B,3) taking
world points to the camera frame: ``X_cam = R @ X + t``. Single-picture fits put the camera at
the world origin (R = I, t = 0) and move the body instead (SMPLify, Bogo et al. 2016).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_FOV_DEG = 55.0
_MIN_DEPTH = 1e-3


@dataclass
class Camera:
    """A batch of pinhole cameras.

    Attributes:
        K: (B,3,3) intrinsics in pixels.
        R: (B,3,3) world -> camera rotation.
        t: (B,3) world -> camera translation, metres.
        image_size: (H, W) pixels, shared by the batch.
    """

    K: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    image_size: tuple[int, int]

    @property
    def batch_size(self) -> int:
        return self.K.shape[0]

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """(B,N,3) world points in metres -> (B,N,2) pixels. See ``project``."""
        return project(points, self.K, self.R, self.t)

    def to_camera_frame(self, points: torch.Tensor) -> torch.Tensor:
        """(B,N,3) world points -> (B,N,3) in each camera's frame, ``R X + t`` (metres; R and t
        cast to the points' dtype and device)."""
        return torch.einsum("bij,bnj->bni", self.R.to(points), points) + self.t.to(points)[:, None]

    def index(self, idx) -> "Camera":
        return Camera(self.K[idx], self.R[idx], self.t[idx], self.image_size)

    def to(self, device) -> "Camera":
        """The cameras with K, R and t on ``device``."""
        return Camera(self.K.to(device), self.R.to(device), self.t.to(device), self.image_size)

    def expand(self, batch_size: int) -> "Camera":
        """A camera of batch 1 repeated ``batch_size`` times (a view of the same tensors)."""
        return Camera(self.K.expand(batch_size, 3, 3), self.R.expand(batch_size, 3, 3),
                      self.t.expand(batch_size, 3), self.image_size)

    def at_most(self, longest: int) -> tuple["Camera", float]:
        """The camera of a picture resized so that its longer side is at most ``longest`` pixels
        (pixel centres stay pixel centres), and the scale factor s <= 1 (new pixels per old)."""
        H, W = self.image_size
        s = min(1.0, longest / max(H, W))
        if s == 1.0:
            return self, 1.0
        K = self.K.clone()
        K[:, :2, :2] *= s
        K[:, :2, 2] = (K[:, :2, 2] + 0.5) * s - 0.5
        return Camera(K, self.R, self.t, (max(1, round(H * s)), max(1, round(W * s)))), s

    @staticmethod
    def identity(K: torch.Tensor, image_size: tuple[int, int]) -> "Camera":
        """Cameras at the world origin looking down +z, with intrinsics K (B,3,3)."""
        B = K.shape[0]
        return Camera(
            K=K,
            R=torch.eye(3, dtype=K.dtype, device=K.device).expand(B, 3, 3).clone(),
            t=torch.zeros(B, 3, dtype=K.dtype, device=K.device),
            image_size=image_size,
        )


def default_intrinsics(image_size: tuple[int, int], batch_size: int = 1,
                       fov_deg: float = DEFAULT_FOV_DEG, dtype=torch.float32,
                       device="cpu") -> torch.Tensor:
    """Intrinsics for a picture whose camera is unknown: the longer image side spans ``fov_deg``
    degrees (55 by default, a typical phone/webcam), square pixels, principal point at the centre.

    Args:
        image_size: (H, W) in pixels.
    Returns:
        K (B,3,3) in pixels.
    Raises:
        ValueError: non-positive image size or a field of view outside (0, 180).
    """
    H, W = image_size
    if H <= 0 or W <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}.")
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}.")
    f = 0.5 * max(H, W) / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=dtype, device=device)
    return K.expand(batch_size, 3, 3).clone()


def project(points: torch.Tensor, K: torch.Tensor, R: torch.Tensor | None = None,
            t: torch.Tensor | None = None) -> torch.Tensor:
    """Perspective projection.

    Args:
        points: (B,N,3) metres, world frame.
        K: (B,3,3) pixels. R: (B,3,3), t: (B,3) world -> camera; identity when None.
    Returns:
        (B,N,2) pixel coordinates. Depths below 1 mm are clamped to 1 mm so that points behind
        the camera give large, finite residuals instead of NaN.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B,N,3), got {tuple(points.shape)}.")
    if R is not None:
        points = torch.einsum("bij,bnj->bni", R, points)
    if t is not None:
        points = points + t[:, None]
    z = points[..., 2:].clamp(min=_MIN_DEPTH)
    uv1 = torch.einsum("bij,bnj->bni", K, points / z)
    return uv1[..., :2]


def init_translation(joints: torch.Tensor, keypoints: torch.Tensor, kp_index: torch.Tensor,
                     kp_weight: torch.Tensor, K: torch.Tensor,
                     torso_names: list[str], names: list[str]) -> torch.Tensor:
    """Body translation that puts the torso where the 2D torso is (similar triangles, SMPLify).

    Depth ``z = f * L3d / L2d`` where L are the summed lengths of the torso segments (shoulder
    to hip on each side, shoulder to shoulder, hip to hip) visible in 2D; then x, y place the 3D
    torso centroid on the ray through the 2D torso centroid. Samples with fewer than two torso
    keypoints fall back to all visible keypoints (their extent against the body's).

    Args:
        joints: (B,J,3) model landmarks in the camera frame with zero translation, metres.
        keypoints: (B,K,3) pixels + confidence.
        kp_index: (K,) the convention's map onto ``joints`` (landmark indices).
        kp_weight: (K,) the convention's keypoint weights (0: no such landmark).
        K: (B,3,3) intrinsics.
        torso_names: the torso keypoint names.
        names: the convention's keypoint names.
    Returns:
        transl (B,3) metres.
    """
    model_kp = joints[:, kp_index]  # (B,K,3)
    conf = keypoints[..., 2] * (kp_weight > 0)
    seen = conf > 0
    f = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
    torso = torch.tensor([n in torso_names for n in names], device=joints.device)
    use = seen & torso
    few = use.sum(1) < 2
    use = torch.where(few[:, None], seen, use)
    w = use.to(joints.dtype)
    # Spread of the chosen points about their centroid, in 3D (x, y only) and 2D.
    wsum = w.sum(1).clamp(min=1)
    c2 = (keypoints[..., :2] * w[..., None]).sum(1) / wsum[:, None]
    c3 = (model_kp * w[..., None]).sum(1) / wsum[:, None]
    s2 = ((keypoints[..., :2] - c2[:, None]).norm(dim=-1) * w).sum(1)
    s3 = ((model_kp[..., :2] - c3[:, None, :2]).norm(dim=-1) * w).sum(1)
    depth = (f * s3 / s2.clamp(min=1e-6)).clamp(0.5, 100.0)
    depth = torch.where(s2 > 1e-3, depth, torch.full_like(depth, 5.0))
    ray = torch.linalg.solve(K, torch.cat([c2, torch.ones_like(c2[:, :1])], 1)[..., None])[..., 0]
    target = ray * depth[:, None]  # where the centroid should be, camera frame
    # The centroid's own depth offset shifts the needed translation in z.
    return target - c3
