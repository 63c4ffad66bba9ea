"""2D geometry of UV charts: triangle barycentrics, closest points on triangles, signed areas,
per-face UV frames and the per-part lookup grid of :class:`bodyfit.densepose.chart.DensePoseChart`.

Functional helpers on torch tensors (numpy for the grid, built once per chart); UV units
throughout. Float64 inputs are expected where exactness matters (the chart's lookups use it).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["build_grid", "signed_area", "majority_sign", "uv_frames", "barycentric_2d",
           "closest_on_triangle_2d"]


def build_grid(face_part: np.ndarray, face_uv: np.ndarray, num_parts: int, max_grid: int):
    """Per-part regular grids over UV listing the faces whose UV bounding box touches each cell.

    Args:
        face_part: (F,) int part of each face, in 1..num_parts.
        face_uv: (F,3,2) float (U, V) of each face's corners, in [0, 1].
        num_parts: number of parts (24 for DensePose); part 0 (background) gets one empty cell.
        max_grid: most cells a side; a part of n faces gets ``ceil(3 sqrt(n))``.
    Returns:
        (grid_size (P,), grid_base (P,), cell_start (C+1,), cell_faces (E,)) int64 with
        P = num_parts + 1: part p has ``grid_size[p]``^2 cells numbered from ``grid_base[p]``
        (row-major, row = V); cell c lists ``cell_faces[cell_start[c]:cell_start[c+1]]``.
    """
    F = face_part.shape[0]
    counts = np.bincount(face_part, minlength=num_parts + 1)
    size = np.clip(np.ceil(3 * np.sqrt(counts)), 1, max_grid).astype(np.int64)
    base = np.concatenate([[0], np.cumsum(size ** 2)]).astype(np.int64)
    if F == 0:
        return size, base[:-1], np.zeros(base[-1] + 1, np.int64), np.zeros(0, np.int64)
    g = size[face_part][:, None]
    lo = np.clip(np.floor((face_uv.min(1) - 1e-7) * g), 0, g - 1).astype(np.int64)
    hi = np.clip(np.floor((face_uv.max(1) + 1e-7) * g), 0, g - 1).astype(np.int64)
    nx = hi[:, 0] - lo[:, 0] + 1
    n = nx * (hi[:, 1] - lo[:, 1] + 1)
    fid = np.repeat(np.arange(F), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    col = lo[fid, 0] + k % nx[fid]
    row = lo[fid, 1] + k // nx[fid]
    key = base[face_part[fid]] + row * g[fid, 0] + col
    order = np.argsort(key, kind="stable")
    start = np.searchsorted(key[order], np.arange(base[-1] + 1)).astype(np.int64)
    return size, base[:-1], start, fid[order].astype(np.int64)


def signed_area(uv: torch.Tensor) -> torch.Tensor:
    """(F,) signed areas of UV triangles (F,3,2); positive for counter-clockwise corners."""
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def majority_sign(signed: torch.Tensor) -> float:
    """+1.0 if at least as many of the signed areas (F,) are positive as negative, else -1.0."""
    return 1.0 if (signed > 0).sum() >= (signed < 0).sum() else -1.0


def uv_frames(face_uv: torch.Tensor):
    """Per face, corner 0's UV (F,2) and the inverse (F,2,2) of [uv1 - uv0, uv2 - uv0], so that
    the barycentrics of corners 1 and 2 at p are ``inverse @ (p - origin)``. Degenerate
    triangles get a NaN inverse: they contain nothing."""
    e = torch.stack([face_uv[:, 1] - face_uv[:, 0], face_uv[:, 2] - face_uv[:, 0]], -1)  # cols
    det = e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0]
    adj = torch.stack([torch.stack([e[:, 1, 1], -e[:, 0, 1]], -1),
                       torch.stack([-e[:, 1, 0], e[:, 0, 0]], -1)], 1)
    ok = det.abs() > 1e-18
    inv = adj / torch.where(ok, det, torch.ones_like(det))[:, None, None]
    inv = torch.where(ok[:, None, None], inv, torch.full_like(inv, math.nan))
    return face_uv[:, 0].clone(), inv


def barycentric_2d(tri: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(N,3) barycentrics of points p (N,2) in triangles tri (N,3,2); -inf rows for degenerate
    triangles (they contain nothing)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    v0, v1, v2 = b - a, c - a, p - a
    d = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = d.abs() > 1e-18
    d = torch.where(ok, d, torch.ones_like(d))
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / d
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / d
    out = torch.stack([1 - l1 - l2, l1, l2], -1)
    return torch.where(ok[:, None], out, torch.full_like(out, -math.inf))


def closest_on_triangle_2d(tri: torch.Tensor, p: torch.Tensor):
    """Distance (...,) from p (...,2) to triangles tri (...,3,2) and the barycentrics (...,3)
    of the closest point (clamped onto the triangle)."""
    shape = p.shape[:-1]
    tri = tri.reshape(-1, 3, 2)
    p = p.reshape(-1, 2)
    inside_b = barycentric_2d(tri, p)
    inside = (inside_b >= 0).all(-1)
    best_d = torch.full(p.shape[:1], math.inf, dtype=p.dtype, device=p.device)
    best_b = torch.zeros(p.shape[0], 3, dtype=p.dtype, device=p.device)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        e = tri[:, j] - tri[:, i]
        ee = (e * e).sum(-1)
        t = ((p - tri[:, i]) * e).sum(-1) / ee.clamp(min=1e-30)
        t = torch.where(ee > 0, t.clamp(0, 1), torch.zeros_like(t))
        d = (tri[:, i] + t[:, None] * e - p).norm(dim=-1)
        b = torch.zeros_like(best_b)
        b[:, i] = 1 - t
        b[:, j] = t
        better = d < best_d
        best_d = torch.where(better, d, best_d)
        best_b = torch.where(better[:, None], b, best_b)
    best_d = torch.where(inside, torch.zeros_like(best_d), best_d)
    best_b = torch.where(inside[:, None], inside_b, best_b)
    return best_d.reshape(shape), best_b.reshape(*shape, 3)
