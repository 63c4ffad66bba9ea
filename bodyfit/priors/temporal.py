"""Temporal smoothness of a sequence of fits (one person, consecutive frames)."""
from __future__ import annotations

import torch


def temporal_smoothness(joints: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Squared acceleration of the joints, per frame.

    E_t = sum_j || J[t+1] - 2 J[t] + J[t-1] ||^2 (m^2 per frame^2), for the frames t whose two
    neighbours are valid too; 0 at the ends and next to gaps, so a skipped frame (no person)
    never pulls its neighbours. Acceleration rather than velocity, so steady walking is free.

    Args:
        joints: (T,J,3) metres, world frame, frames in order.
        valid: (T,) bool, frames that were fitted; all when None.
    Returns:
        (T,) energy.
    Raises:
        ValueError: joints not (T,J,3) or valid not (T,).
    """
    if joints.dim() != 3 or joints.shape[-1] != 3:
        raise ValueError(f"joints must have shape (T,J,3), got {tuple(joints.shape)}.")
    T = joints.shape[0]
    if valid is None:
        valid = torch.ones(T, dtype=torch.bool, device=joints.device)
    if tuple(valid.shape) != (T,):
        raise ValueError(f"valid must have shape (T,) = ({T},), got {tuple(valid.shape)}.")
    out = joints.new_zeros(T)
    if T < 3:
        return out
    acc = joints[2:] - 2 * joints[1:-1] + joints[:-2]
    ok = valid[2:] & valid[1:-1] & valid[:-2]
    e = (acc ** 2).sum(dim=(1, 2))
    out[1:-1] = torch.where(ok, e, torch.zeros_like(e))
    return out
