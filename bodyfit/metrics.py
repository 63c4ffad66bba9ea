"""Evaluation metrics on 3D joints (metres in, millimetres out).

MPJPE: mean per-joint position error after aligning the root (here: the mean of the joints);
PA-MPJPE: the same after a similarity Procrustes alignment (Gower 1975; as in HMR/SPIN).
"""
from __future__ import annotations

import roma
import torch


def mpjpe(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(B,J,3), (B,J,3) metres -> (B,) mm, both centred on their joint mean."""
    p = pred - pred.mean(1, keepdim=True)
    g = gt - gt.mean(1, keepdim=True)
    return (p - g).norm(dim=-1).mean(1) * 1000.0


def pa_mpjpe(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(B,J,3), (B,J,3) metres -> (B,) mm after rotation, translation and scale alignment."""
    R, t, s = roma.rigid_points_registration(pred, gt, compute_scaling=True)
    aligned = s[:, None, None] * torch.einsum("bij,bnj->bni", R, pred) + t[:, None]
    return (aligned - gt).norm(dim=-1).mean(1) * 1000.0


def pve(pred_vertices: torch.Tensor, gt_vertices: torch.Tensor, pred_joints: torch.Tensor,
        gt_joints: torch.Tensor) -> torch.Tensor:
    """Per-vertex error: (B,V,3) vertices and (B,J,3) joints, metres -> (B,) mm, after moving
    both bodies so that their joint means coincide (root alignment, as for MPJPE)."""
    p = pred_vertices - pred_joints.mean(1, keepdim=True)
    g = gt_vertices - gt_joints.mean(1, keepdim=True)
    return (p - g).norm(dim=-1).mean(1) * 1000.0
