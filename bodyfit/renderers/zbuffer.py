"""The pure-torch z-buffer: which triangle covers each pixel centre (the triangle-ID pass of
``RasterizeTorchContext``), on any device.

It plays the part of nvdiffrast's hardware/CUDA rasterizer stage (Laine et al. 2020) without
its code: only visibility is decided here, without gradients; ``ops.rasterize`` then recomputes
the barycentrics in torch from the positions. Policy, shared with ``RasterizeGLContext`` so the
two agree: triangles with a vertex at ``w <= 0`` or a non-finite coordinate are skipped (not
clipped), pixels with ``z/w`` outside [-1, 1] are discarded, a pixel centre on an edge belongs
to both triangles (nearest ``z/w`` wins, then the lower triangle id).
"""
from __future__ import annotations

import torch

__all__ = ["zbuffer_ids"]

_CHUNK = 1 << 22  # candidate (triangle, pixel) pairs tested at once by the torch z-buffer
_EDGE_TOL = 1e-6  # barycentric tolerance of the inside test (no cracks between neighbours)


def zbuffer_ids(pos: torch.Tensor, tri: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Nearest triangle per pixel centre, (B*H*W,) int64 triangle index, -1 where empty.

    Per triangle: pixel bounding box, edge functions at the pixel centres, z/w interpolated
    linearly in screen space (it is affine there), nearest z/w wins, ties to the lower id.
    Vectorized over chunks of (triangle, pixel) candidates.

    Args:
        pos: (B,V,4) clip-space positions (any float dtype, any device; no gradients are kept).
        tri: (F,3) int64 vertex indices on pos's device, already checked.
        H, W: output size in pixels; pixel (x, y) has its centre at NDC
            ``((x + 0.5) / W * 2 - 1, (y + 0.5) / H * 2 - 1)`` (nvdiffrast's grid).
    Returns:
        (B*H*W,) int64 on pos's device, flat index ``(b * H + y) * W + x``.
    """
    B = pos.shape[0]
    F = tri.shape[0]
    dev = pos.device
    ids = torch.full((B * H * W,), -1, dtype=torch.int64, device=dev)
    if F == 0 or B == 0:
        return ids
    with torch.no_grad():
        v = pos[:, tri]  # (B,F,3,4)
        w = v[..., 3]
        ok = (w > 0).all(-1) & torch.isfinite(v).all(-1).all(-1)
        wd = torch.where(w > 0, w, torch.ones_like(w))
        X = (v[..., 0] / wd + 1) * (W * 0.5) - 0.5  # pixel coordinates, centres at integers
        Y = (v[..., 1] / wd + 1) * (H * 0.5) - 0.5
        Z = v[..., 2] / wd
        area = (X[..., 1] - X[..., 0]) * (Y[..., 2] - Y[..., 0]) - \
               (X[..., 2] - X[..., 0]) * (Y[..., 1] - Y[..., 0])
        ok &= area.abs() > 1e-12
        ok &= ~((Z < -1).all(-1) | (Z > 1).all(-1))
        x0 = torch.ceil(X.amin(-1)).clamp(min=0)
        x1 = torch.floor(X.amax(-1)).clamp(max=W - 1)
        y0 = torch.ceil(Y.amin(-1)).clamp(min=0)
        y1 = torch.floor(Y.amax(-1)).clamp(max=H - 1)
        ok &= (x0 <= x1) & (y0 <= y1)
        bi, fi = torch.nonzero(ok, as_tuple=True)
        if bi.numel() == 0:
            return ids
        X, Y, Z, area = X[bi, fi], Y[bi, fi], Z[bi, fi], area[bi, fi]  # (T,3), (T,)
        x0, y0 = x0[bi, fi], y0[bi, fi]
        bw = x1[bi, fi].long() - x0.long() + 1
        n = bw * (y1[bi, fi].long() - y0.long() + 1)
        # Per triangle, plane equations of the screen-space barycentrics l0 (of vertex 0,
        # opposite edge v1-v2) and l1 in bounding-box-local pixel coordinates (lx, ly), so one
        # gather per candidate pixel fetches everything: l = a * lx + b * ly + c.
        Xr, Yr = X - x0[:, None], Y - y0[:, None]
        inv = 1.0 / area
        a0, b0 = -(Yr[:, 2] - Yr[:, 1]) * inv, (Xr[:, 2] - Xr[:, 1]) * inv
        c0 = -(a0 * Xr[:, 1] + b0 * Yr[:, 1])
        a1, b1 = -(Yr[:, 0] - Yr[:, 2]) * inv, (Xr[:, 0] - Xr[:, 2]) * inv
        c1 = -(a1 * Xr[:, 2] + b1 * Yr[:, 2])
        coef = torch.stack([a0, b0, c0, a1, b1, c1, Z[:, 0] - Z[:, 2], Z[:, 1] - Z[:, 2],
                            Z[:, 2]], 1)
        ints = torch.stack([bi * (H * W) + y0.long() * W + x0.long(), bw, fi], 1)
        ends = torch.cumsum(n, 0)
        keys, zs, fs = [], [], []
        start = 0
        T = n.shape[0]
        while start < T:
            base = int(ends[start - 1]) if start > 0 else 0
            stop = int(torch.searchsorted(ends, base + _CHUNK, right=True))
            stop = max(stop, start + 1)
            cnt = n[start:stop]
            ti = torch.repeat_interleave(torch.arange(start, stop, device=dev), cnt)
            local = torch.arange(int(cnt.sum()), device=dev) - \
                torch.repeat_interleave(ends[start:stop] - cnt - base, cnt)
            ct = coef.index_select(0, ti)
            it = ints.index_select(0, ti)
            ly = torch.div(local, it[:, 1], rounding_mode="floor")
            lx = local - ly * it[:, 1]
            fx, fy = lx.to(pos.dtype), ly.to(pos.dtype)
            l0 = ct[:, 0] * fx + ct[:, 1] * fy + ct[:, 2]
            l1 = ct[:, 3] * fx + ct[:, 4] * fy + ct[:, 5]
            z = ct[:, 8] + l0 * ct[:, 6] + l1 * ct[:, 7]  # z/w is affine in screen space
            inside = (l0 >= -_EDGE_TOL) & (l1 >= -_EDGE_TOL) & (l0 + l1 <= 1 + _EDGE_TOL) & \
                (z >= -1) & (z <= 1)
            keys.append((it[:, 0] + ly * W + lx)[inside])
            zs.append(z[inside])
            fs.append(it[:, 2][inside])
            start = stop
        key = torch.cat(keys)
        z = torch.cat(zs)
        f = torch.cat(fs)
        zbuf = torch.full((B * H * W,), float("inf"), dtype=z.dtype, device=dev)
        zbuf.scatter_reduce_(0, key, z, reduce="amin")
        win = z == zbuf[key]
        big = torch.iinfo(torch.int64).max
        best = torch.full((B * H * W,), big, dtype=torch.int64, device=dev)
        best.scatter_reduce_(0, key[win], f[win], reduce="amin")
        ids = torch.where(best == big, ids, best)
    return ids
