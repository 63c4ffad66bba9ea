"""Robust 2D keypoint reprojection energy (SMPLify, Bogo et al. 2016).

E = sum_views sum_k w_k * conf_k^2 * sum_{x,y} GMoF(r_k / s, sigma), with residuals r in pixels
normalized by the person's box height s in that view, so one sigma serves every resolution.
"""
from __future__ import annotations

import torch

from bodyfit.cameras import _MIN_DEPTH, Camera
from bodyfit.fitting.energy import Energy, Evaluation


def gmof(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure robust penalty: sigma^2 x^2 / (sigma^2 + x^2), elementwise.

    Quadratic near 0, saturating at sigma^2 for outliers (Geman & McClure 1987)."""
    x2 = x ** 2
    s2 = sigma ** 2
    return s2 * x2 / (s2 + x2)


def reprojection(joints: torch.Tensor, camera: Camera, keypoints: torch.Tensor, scale: torch.Tensor,
                 kp_index: torch.Tensor, kp_weight: torch.Tensor, sigma: float) -> torch.Tensor:
    """One view's keypoint energy, with a hand-written backward (:class:`_Reprojection`: a fit
    step at a small batch costs the number of operations it runs, and autograd records about
    twenty for this energy). Gradients flow to ``joints`` only: the camera and the keypoints
    are data.

    Args:
        joints: (B,J,3) model landmarks, metres, world frame. camera: Camera (B).
        keypoints: (B,K,3) pixels + confidence in [0,1]. scale: (B,) box height in pixels.
        kp_index: (K,) landmark of each keypoint; kp_weight: (K,) per-keypoint weight (may
            include a stage's keypoint mask).
        sigma: GMoF scale as a fraction of the box height.
    Returns:
        (B,) energy.
    """
    return _Reprojection.apply(joints, camera.K.to(joints), camera.R.to(joints), camera.t.to(joints), keypoints,
                               scale, kp_index, kp_weight, sigma)


class _Reprojection(torch.autograd.Function):
    """``E_b = sum_k w_k sum_xy GMoF((pi(K (R X_k + t)) - x_k) / s, sigma)``, ``w = kp_weight *
    conf^2``, with the depth clamped as ``cameras.project`` clamps it, and ``dE/dX`` by the
    chain rule written out: GMoF' = 2 sigma^4 r / (sigma^2 + r^2)^2, the division by the depth
    (not through a clamped depth), then R^T, summed onto the landmarks the keypoints read."""

    @staticmethod
    def forward(ctx, joints, K, R, t, keypoints, scale, kp_index, kp_weight, sigma):
        camera_points = torch.baddbmm(t[:, None], joints[:, kp_index], R.transpose(1, 2))  # (B,K,3)
        depth = camera_points[..., 2:].clamp(min=_MIN_DEPTH)
        normalized = camera_points / depth
        r = (torch.bmm(normalized, K[:, :2].transpose(1, 2)) - keypoints[..., :2]) / scale[:, None, None]
        s2 = sigma ** 2
        r2 = r * r
        denominator = r2 + s2
        w = (kp_weight * keypoints[..., 2] ** 2)[..., None]  # (B,K,1)
        ctx.save_for_backward(camera_points, depth, r, denominator, w, K, R, scale, kp_index)
        ctx.sigma, ctx.n_joints = sigma, joints.shape[1]
        return (w * s2 * r2 / denominator).sum((1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        camera_points, depth, r, denominator, w, K, R, scale, kp_index = ctx.saved_tensors
        s4 = ctx.sigma ** 4
        g_r = (grad / scale)[:, None, None] * w * (2 * s4) * r / (denominator * denominator)
        g_normalized = torch.bmm(g_r, K[:, :2])  # (B,K,3)
        g_points = g_normalized / depth
        g_depth = -(g_normalized * camera_points).sum(-1, keepdim=True) / depth  # d/d depth of (p / depth)
        g_points[..., 2:] += torch.where(camera_points[..., 2:] > _MIN_DEPTH, g_depth / depth, 0.0)
        g_landmarks = torch.bmm(g_points, R)
        B = g_landmarks.shape[0]
        g_joints = g_landmarks.new_zeros(B, ctx.n_joints, 3).index_add_(1, kp_index, g_landmarks)
        return g_joints, None, None, None, None, None, None, None, None


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
        energy = reprojection(joints, pb.cameras[0], pb.keypoints[:, 0], pb.scale[:, 0], pb.kp_index, weight, self.sigma)
        for v in range(1, pb.num_views):
            energy = energy + reprojection(joints, pb.cameras[v], pb.keypoints[:, v], pb.scale[:, v], pb.kp_index,
                                           weight, self.sigma)
        return energy
