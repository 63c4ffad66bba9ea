"""Shape and pose priors.

- Anny phenotypes live in [0, 1] (0.5 the average adult); the prior pulls them towards 0.5.
- SMPL betas are unit-variance PCA coefficients; the prior is their squared norm (SMPLify).
- Pose: squared norm of the free joints' rotation vectors (a weak pull to the rest pose, used
  where no learned pose prior is available).
"""
from __future__ import annotations

import torch


def shape_prior(shape: torch.Tensor, shape_name: str) -> torch.Tensor:
    """(B,S) phenotypes or betas -> (B,) energy (unitless)."""
    if shape_name == "phenotypes":
        return ((shape - 0.5) ** 2).sum(dim=1) * 4.0  # 1 at the range's ends per coefficient
    return (shape ** 2).sum(dim=1)


def pose_prior(body_pose: torch.Tensor, free_joints) -> torch.Tensor:
    """(B,P,3) axis-angle -> (B,) sum of squared rotation angles (rad^2) of the free joints
    (a list or long tensor of joint indices, or a slice)."""
    return (body_pose[:, free_joints] ** 2).sum(dim=(1, 2))
