"""Robust 2D keypoint reprojection energy (SMPLify, Bogo et al. 2016).

E = sum_k w_k * conf_k^2 * sum_{x,y} GMoF(r_k / s, sigma), with residuals r in pixels
normalized by the person's box height s, so one sigma serves every image resolution.
"""
from __future__ import annotations

import torch

from bodyfit.body_models.base import BodyOutput
from bodyfit.cameras import Camera


def gmof(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure robust penalty: sigma^2 x^2 / (sigma^2 + x^2), elementwise.

    Quadratic near 0, saturating at sigma^2 for outliers (Geman & McClure 1987)."""
    x2 = x ** 2
    s2 = sigma ** 2
    return s2 * x2 / (s2 + x2)


class ReprojectionEnergy(torch.nn.Module):
    """Keypoint reprojection energy.

    Args:
        kp_index: (K,) model landmark of each keypoint (``BodyModel.keypoint_map``).
        kp_weight: (K,) per-keypoint trust (0 where the model has no such landmark).
        sigma: GMoF scale as a fraction of the box height (0.3 = 30%).

    ``forward(output, camera, keypoints, scale, mask=None) -> (B,)``:
        output: BodyOutput with joints (B,J,3) m, world frame.
        camera: Camera (B).
        keypoints: (B,K,3) pixels + confidence in [0,1].
        scale: (B,) box height in pixels.
        mask: optional (K,) bool selecting keypoints (e.g. the torso in the camera stage).
    """

    def __init__(self, kp_index: torch.Tensor, kp_weight: torch.Tensor, sigma: float = 0.3):
        super().__init__()
        self.register_buffer("kp_index", kp_index)
        self.register_buffer("kp_weight", kp_weight)
        self.sigma = sigma

    def residuals(self, output: BodyOutput, camera: Camera, keypoints: torch.Tensor) -> torch.Tensor:
        """(B,K,2) projected model keypoints minus observed keypoints, pixels."""
        projected = camera.project(output.joints[:, self.kp_index])
        return projected - keypoints[..., :2]

    def forward(self, output: BodyOutput, camera: Camera, keypoints: torch.Tensor,
                scale: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        r = self.residuals(output, camera, keypoints) / scale[:, None, None]
        w = self.kp_weight * keypoints[..., 2] ** 2
        if mask is not None:
            w = w * mask
        return (w[..., None] * gmof(r, self.sigma)).sum(dim=(1, 2))
