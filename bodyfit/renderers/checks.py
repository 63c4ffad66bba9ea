"""Input checks shared by the renderer ops: one place that says what shapes and dtypes the ops
take, and one wording of the errors (ValueError, naming the argument and its expected shape)."""
from __future__ import annotations

import torch


def check_pos(pos: torch.Tensor, name: str = "pos_clip") -> torch.Tensor:
    """(B,V,4) floating-point clip-space positions; a (V,4) tensor becomes a batch of one."""
    if not isinstance(pos, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B,V,4), got {type(pos)}.")
    if pos.dim() == 2:
        pos = pos[None]
    if pos.dim() != 3 or pos.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (B,V,4) or (V,4), got {tuple(pos.shape)}.")
    if not pos.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (float32), got {pos.dtype}.")
    return pos


def check_tri(tri: torch.Tensor, num_vertices: int, device) -> torch.Tensor:
    """(F,3) int32/int64 vertex indices in [0, num_vertices), returned as int64 on ``device``."""
    if not isinstance(tri, torch.Tensor):
        raise ValueError(f"tri must be a torch.Tensor of shape (F,3), got {type(tri)}.")
    if tri.dim() != 2 or tri.shape[-1] != 3:
        raise ValueError(f"tri must have shape (F,3), got {tuple(tri.shape)}.")
    if tri.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"tri must be int32 or int64, got {tri.dtype}.")
    tri = tri.to(device=device, dtype=torch.int64)
    if tri.numel() and (int(tri.min()) < 0 or int(tri.max()) >= num_vertices):
        raise ValueError(f"tri indices must lie in [0, {num_vertices}) (V = number of vertices),"
                         f" got range [{int(tri.min())}, {int(tri.max())}].")
    return tri


def check_rast(rast: torch.Tensor, name: str = "rast") -> torch.Tensor:
    """(B,H,W,4) floating-point output of ``rasterize``."""
    if not isinstance(rast, torch.Tensor) or rast.dim() != 4 or rast.shape[-1] != 4:
        shape = tuple(rast.shape) if isinstance(rast, torch.Tensor) else type(rast)
        raise ValueError(f"{name} must have shape (B,H,W,4) as rasterize returns it, got {shape}.")
    if not rast.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {rast.dtype}.")
    return rast


def check_resolution(resolution) -> tuple[int, int]:
    """(H, W) positive integers."""
    try:
        H, W = (int(r) for r in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be (H, W), got {resolution!r}.") from None
    if H <= 0 or W <= 0:
        raise ValueError(f"resolution must be positive (H, W), got {tuple(resolution)}.")
    return H, W


def rast_triangle_ids(rast: torch.Tensor, num_tri: int) -> torch.Tensor:
    """(B,H,W) int64 triangle id + 1 (0 = empty) from rast, checked against F."""
    ids = rast[..., 3].detach().round().long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > num_tri):
        raise ValueError(f"rast[..., 3] holds triangle ids up to {int(ids.max())} but tri has "
                         f"only {num_tri} triangles: rast and tri do not belong together.")
    return ids
