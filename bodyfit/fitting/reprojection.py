"""Robust 2D keypoint reprojection energy (SMPLify, Bogo et al. 2016).

E = sum_views sum_k w_k * conf_k^2 * sum_{x,y} GMoF(r_k / s, sigma), with residuals r in pixels
normalized by the person's box height s in that view, so one sigma serves every resolution.
"""
from __future__ import annotations

import torch

from bodyfit.cameras import Camera
from bodyfit.fitting.energy import Energy, Evaluation


def gmof(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure robust penalty: sigma^2 x^2 / (sigma^2 + x^2), elementwise.

    Quadratic near 0, saturating at sigma^2 for outliers (Geman & McClure 1987)."""
    x2 = x ** 2
    s2 = sigma ** 2
    return s2 * x2 / (s2 + x2)


def reprojection(joints: torch.Tensor, camera: Camera, keypoints: torch.Tensor, scale: torch.Tensor,
                 kp_index: torch.Tensor, kp_weight: torch.Tensor, sigma: float) -> torch.Tensor:
    """One view's keypoint energy.

    Args:
        joints: (B,J,3) model landmarks, metres, world frame. camera: Camera (B).
        keypoints: (B,K,3) pixels + confidence in [0,1]. scale: (B,) box height in pixels.
        kp_index: (K,) landmark of each keypoint; kp_weight: (K,) per-keypoint weight (may
            include a stage's keypoint mask).
        sigma: GMoF scale as a fraction of the box height.
    Returns:
        (B,) energy.
    """
    r = (camera.project(joints[:, kp_index]) - keypoints[..., :2]) / scale[:, None, None]
    w = kp_weight * keypoints[..., 2] ** 2
    return (w[..., None] * gmof(r, sigma)).sum(dim=(1, 2))


class ReprojectionEnergy(Energy):
    """Keypoint reprojection summed over the views (``reprojection``); the stage's
    ``keypoints: torso`` keeps only the torso keypoints. Views a sample cannot use hold zero
    keypoints and add nothing."""

    name = "reprojection"
    needs = "joints"

    def __init__(self, model, config):
        super().__init__(model, config)
        self.sigma = float(config.sigma)

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        pb = ev.problem
        weight = pb.kp_weight if ev.keypoint_mask is None else pb.kp_weight * ev.keypoint_mask
        joints = ev.output.joints
        return sum(reprojection(joints, pb.cameras[v], pb.keypoints[:, v], pb.scale[:, v], pb.kp_index,
                                weight, self.sigma) for v in range(pb.num_views))
