"""Priors on body parameters: anatomical joint limits, shape and pose priors, temporal
smoothness."""
from __future__ import annotations

from bodyfit.priors.joint_limits import JointLimits, anny_joint_limits, smpl_joint_limits
from bodyfit.priors.shape import pose_prior, shape_prior
from bodyfit.priors.temporal import temporal_smoothness


def joint_limits(model) -> JointLimits:
    """The joint limits that fit ``model`` (Anny: anatomical ranges; SMPL family: angle prior)."""
    return anny_joint_limits(model) if model.name == "anny" else smpl_joint_limits(model)


__all__ = ["JointLimits", "joint_limits", "anny_joint_limits", "smpl_joint_limits",
           "pose_prior", "shape_prior", "temporal_smoothness"]
