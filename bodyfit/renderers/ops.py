"""nvdiffrast's four differentiable rendering ops, with nvdiffrast's signatures and conventions,
on a rasterizer context the caller owns.

Source: S. Laine, J. Hellsten, T. Karras, Y. Seol, J. Lehtinen, T. Aila, "Modular Primitives
for High-Performance Differentiable Rendering", ACM TOG 39(6), 2020 (nvdiffrast). Only the
ideas and the public interface are followed here; no nvdiffrast code is used.

Code written for nvdiffrast runs unchanged with ``dr = bodyfit.renderers``::

    glctx = dr.RasterizeGLContext()  # or dr.RasterizeTorchContext(), dr.RasterizeCudaContext()
    rast, rast_db = dr.rasterize(glctx, pos, tri, resolution=[H, W])
    color, _ = dr.interpolate(attr, rast, tri)
    color = dr.antialias(color, rast, pos, tri)

This module holds :func:`rasterize`, :func:`interpolate`, :func:`texture` and
:func:`clip_matrix`; ``antialias`` and ``antialias_construct_topology_hash`` live in
:mod:`bodyfit.renderers.antialias` (re-exported here), the contexts in
:mod:`bodyfit.renderers.backends`, the pure-torch z-buffer in :mod:`bodyfit.renderers.zbuffer`.

Conventions (identical to nvdiffrast, so calling code runs on any context):

* ``pos`` (B,V,4): homogeneous clip-space positions ``(x, y, z, w)`` as a vertex shader
  outputs them.
* Pixel ``(x, y)`` of an (H,W) output, i.e. ``rast[:, y, x]``, has its centre at normalized
  device coordinates ``((x + 0.5) / W * 2 - 1, (y + 0.5) / H * 2 - 1)``: row 0 is at NDC
  y = -1 (the bottom in OpenGL terms). :func:`clip_matrix` puts OpenCV's picture row 0 (the top)
  there, so with it the rendered rows are the picture's rows, top-down, and no flip is needed.
* ``rast`` (B,H,W,4) = ``(u, v, z/w, triangle_id + 1)``; all four are 0 where no triangle
  covers the pixel centre. ``u`` and ``v`` are the perspective-correct barycentrics of vertices
  0 and 1 of the triangle (vertex 2 weighs ``1 - u - v``); ``z/w`` is the NDC depth in [-1, 1]
  (nearest wins); ``triangle_id`` indexes ``tri``. Both facings are drawn (no culling).
* ``rast_db`` (B,H,W,4) = ``(du/dX, du/dY, dv/dX, dv/dY)``, the derivatives of the barycentrics
  with respect to the pixel coordinates X (column) and Y (row), in 1/pixel.
* :func:`texture`: ``uv`` (0, 0) is the corner of texel ``tex[:, 0, 0]``; u runs along the
  columns (width), v along the rows (height) of the tensor, v = 0 at row 0 (nvdiffrast indexes
  the texture tensor directly; OpenGL would call row 0 the bottom). Texel ``(i, j)`` has its
  centre at ``uv = ((j + 0.5) / Wt, (i + 0.5) / Ht)``.

Contexts, the first argument of :func:`rasterize` (see :mod:`bodyfit.renderers.backends`):
``RasterizeCudaContext`` runs nvdiffrast itself (CUDA; the optional, non-commercial extra),
``RasterizeGLContext`` the triangle-ID pass on a real OpenGL rasterizer (Mesa llvmpipe on a
headless EGL context), ``RasterizeTorchContext`` a pure-torch z-buffer (any device). On the last
two the barycentrics are recomputed in torch from ``pos``, as nvdiffrast's second stage does,
so gradients flow the same way. ``default_context(device)`` picks the best one available.
:func:`interpolate`, :func:`texture` and ``antialias`` take no context, as in nvdiffrast: when
all their tensors are on CUDA and nvdiffrast can be loaded, interpolate and texture run in
nvdiffrast, else in torch; ``antialias`` always runs in torch (see its docstring).

Deviations from nvdiffrast, by design of the torch implementation:

* Clipping: triangles with any vertex at ``w <= 0`` (at or behind the camera plane), or with a
  non-finite coordinate, are skipped instead of being clipped; pixels whose ``z/w`` falls outside
  [-1, 1] are discarded (OpenGL's depth clip). Pixel centres exactly on an edge belong to both
  triangles (the depth test, then the lower triangle id, decides) instead of the top-left rule.
* Inputs: any floating dtype (float64 for gradcheck), CPU tensors and int64 ``tri`` are
  accepted; a (V,4) ``pos`` without ``ranges`` is a batch of one (nvdiffrast requires
  ``ranges`` then). ``RasterizeGLContext`` takes tensors on any device (nvdiffrast's needs
  CUDA). There is no ``DepthPeeler``.
* ``antialias`` follows the paper's analytic scheme (blend across silhouette edges by the
  crossing point of the edge with the segment between pixel centres) but looks for the crossed
  edge among all silhouette edges, not only those of the nearer pixel's triangle; its
  ``topology_hash`` is an explicit (F,3) table, not nvdiffrast's opaque object. See its
  docstring.
* :func:`texture` has no mipmaps and no cube maps: ``filter_mode`` 'nearest' or 'linear'
  ('auto' is 'linear', even where nvdiffrast would pick a mipmapped mode because ``uv_da`` or
  ``mip_level_bias`` is given); ``uv_da``, ``mip_level_bias``, ``mip`` and ``max_mip_level``
  are accepted and unused. There is no ``texture_construct_mip``.
"""
from __future__ import annotations

import torch

from bodyfit.renderers.antialias import antialias, antialias_construct_topology_hash
from bodyfit.renderers.backends import (RasterizeContext, RasterizeCudaContext,
                                        RasterizeGLContext, RasterizeTorchContext,
                                        default_context, nvdiffrast_for)
from bodyfit.renderers.checks import (check_pos, check_rast, check_resolution, check_tri,
                                      rast_triangle_ids)

__all__ = ["rasterize", "interpolate", "texture", "antialias",
           "antialias_construct_topology_hash", "clip_matrix", "RasterizeGLContext",
           "RasterizeTorchContext", "RasterizeCudaContext", "default_context"]


# --------------------------------------------------------------------------------------------
# rasterize
# --------------------------------------------------------------------------------------------
def rasterize(glctx, pos: torch.Tensor, tri: torch.Tensor, resolution, ranges=None,
              grad_db: bool = True):
    """Rasterize triangles: which triangle covers each pixel centre, and where in it.

    Args:
        glctx: the rasterizer context: a ``RasterizeGLContext``, ``RasterizeTorchContext`` or
            ``RasterizeCudaContext`` (or nvdiffrast's own context object); see
            ``default_context``.
        pos: (B,V,4) clip-space vertex positions, float32 (any float dtype on the GL and torch
            contexts; float64 for gradcheck); a (V,4) tensor is a batch of one, or with
            ``ranges`` the vertices shared by all ranges. Pixel centres are at NDC
            ``((x+0.5)/W*2-1, (y+0.5)/H*2-1)``; see the module docstring and :func:`clip_matrix`.
        tri: (F,3) int32/int64 vertex indices, shared by the batch.
        resolution: (H, W) output size in pixels.
        ranges: optional (N,2) integer tensor of ``(first triangle, count)`` per output image
            (nvdiffrast's range mode; pos must then be (V,4)): the output has batch N, and its
            triangle ids index the whole ``tri``.
        grad_db: let gradients of ``rast_db`` flow to pos (moot when the context has
            ``output_db=False``).
    Returns:
        rast: (B,H,W,4) ``(u, v, z/w, triangle_id + 1)``, zeros where empty; dtype of pos.
            u, v (perspective-correct barycentrics of vertices 0 and 1) and z/w are
            differentiable with respect to pos; the triangle ids come from a z-buffer pass
            without gradients, as in nvdiffrast.
        rast_db: (B,H,W,4) ``(du/dX, du/dY, dv/dX, dv/dY)`` in 1/pixel, zeros where empty;
            (B,H,W,0) when the context has ``output_db=False``.
    Triangles with a vertex at w <= 0 or with non-finite coordinates are skipped, and pixels
    with z/w outside [-1, 1] are discarded. F = 0 gives all-zero outputs.
    Raises:
        TypeError: glctx is not a rasterizer context (e.g. the call without a context,
            ``rasterize(pos, tri, resolution)``).
        ValueError: wrong shape/dtype of pos, tri or ranges, tri indices outside [0, V), a
            non-positive resolution, CPU tensors given to a RasterizeCudaContext.
    """
    if isinstance(glctx, RasterizeCudaContext) or \
            type(glctx).__module__.startswith("nvdiffrast"):
        return _rasterize_nvdiffrast(glctx, pos, tri, resolution, ranges, grad_db)
    if not isinstance(glctx, RasterizeContext):
        got = repr(glctx) if isinstance(glctx, str) else type(glctx).__name__
        raise TypeError(f"rasterize takes a rasterizer context first, as nvdiffrast does: "
                        f"rasterize(glctx, pos, tri, resolution); got {got}. Make one with "
                        f"RasterizeGLContext(), RasterizeTorchContext(), RasterizeCudaContext() "
                        f"or default_context(device).")
    if grad_db is not True and grad_db is not False:
        raise ValueError(f"grad_db must be True or False, got {grad_db!r}.")
    H, W = check_resolution(resolution)
    if ranges is None:
        pos = check_pos(pos, "pos")
        tri = check_tri(tri, pos.shape[1], pos.device)
        ids = glctx.triangle_ids(pos.detach(), tri, H, W)  # (B*H*W,) int64, -1 = empty
    else:
        if not isinstance(pos, torch.Tensor) or pos.dim() != 2:
            shape = tuple(pos.shape) if isinstance(pos, torch.Tensor) else type(pos)
            raise ValueError(f"with ranges (range mode) pos must have shape (V,4), got {shape}.")
        pos = check_pos(pos, "pos")
        tri = check_tri(tri, pos.shape[1], pos.device)
        spans = _check_ranges(ranges, tri.shape[0])
        ids = torch.cat([_offset_ids(glctx.triangle_ids(pos.detach(), tri[s:s + n], H, W), s)
                         for s, n in spans])
        pos = pos.expand(len(spans), -1, -1)
    rast, rast_db = _barycentrics(pos, tri, ids, H, W)
    if not glctx.output_db:
        return rast, pos.new_zeros(*rast.shape[:3], 0)
    return rast, (rast_db if grad_db else rast_db.detach())


def _barycentrics(pos: torch.Tensor, tri: torch.Tensor, ids: torch.Tensor, H: int, W: int):
    """nvdiffrast's second stage: (rast, rast_db), (B,H,W,4) each, differentiable in pos, from
    the visibility pass's triangle ids ((B*H*W,) int64, -1 = empty) and pos (B,V,4)."""
    B = pos.shape[0]
    F = tri.shape[0]
    pix = torch.nonzero(ids >= 0).squeeze(1)
    rast = pos.new_zeros(B * H * W, 4)
    rast_db = pos.new_zeros(B * H * W, 4)
    if F == 0 or pix.numel() == 0:
        return rast.view(B, H, W, 4), rast_db.view(B, H, W, 4)
    f = ids[pix]
    b = pix // (H * W)
    y = (pix // W) % H
    x = pix % W
    c = pos[b[:, None], tri[f]]  # (N,3,4) clip positions of the triangle's vertices
    px = (2 * x + 1).to(pos.dtype) / W - 1
    py = (2 * y + 1).to(pos.dtype) / H - 1
    # Perspective-correct barycentrics by 2D homogeneous rasterization (Olano & Greer 1997):
    # with M = [c0 c1 c2] (columns (x, y, w)), b ~ M^-1 (px, py, 1); the rows of M^-1 are
    # proportional to c1 x c2, c2 x c0, c0 x c1.
    cxyw = c[..., [0, 1, 3]]
    rows = torch.stack([torch.linalg.cross(cxyw[:, 1], cxyw[:, 2]),
                        torch.linalg.cross(cxyw[:, 2], cxyw[:, 0]),
                        torch.linalg.cross(cxyw[:, 0], cxyw[:, 1])], 1)  # (N,3,3)
    p = torch.stack([px, py, torch.ones_like(px)], -1)  # (N,3)
    bt = (rows * p[:, None]).sum(-1)  # (N,3) unnormalized
    S = bt.sum(-1, keepdim=True)
    bary = bt / S
    zw = (bary * c[..., 2]).sum(-1) / (bary * c[..., 3]).sum(-1)
    vals = torch.stack([bary[:, 0], bary[:, 1], zw, (f + 1).to(pos.dtype)], -1)
    rast = rast.index_put((pix,), vals)
    # d(bary)/d(px, py), then to pixels: dpx/dX = 2/W, dpy/dY = 2/H.
    G = rows[..., :2]  # (N,3,2) d bt / d(px, py)
    Gs = G.sum(1, keepdim=True)
    db = (G * S[..., None] - bt[..., None] * Gs) / (S[..., None] ** 2)  # (N,3,2)
    scale = pos.new_tensor([2.0 / W, 2.0 / H])
    db = db * scale
    rast_db = rast_db.index_put((pix,), torch.stack(
        [db[:, 0, 0], db[:, 0, 1], db[:, 1, 0], db[:, 1, 1]], -1))
    return rast.view(B, H, W, 4), rast_db.view(B, H, W, 4)


def _check_ranges(ranges, num_tri: int) -> list[tuple[int, int]]:
    """(N,2) integer ``(first triangle, count)`` rows, N > 0, each span inside [0, F]."""
    if not isinstance(ranges, torch.Tensor) or ranges.dim() != 2 or ranges.shape[1] != 2 or \
            ranges.shape[0] == 0 or ranges.is_floating_point():
        got = (tuple(ranges.shape), ranges.dtype) if isinstance(ranges, torch.Tensor) \
            else type(ranges)
        raise ValueError(f"ranges must be an integer tensor of shape (N,2), N > 0, of "
                         f"(first triangle, count), got {got}.")
    spans = [(int(s), int(n)) for s, n in ranges.tolist()]
    for s, n in spans:
        if s < 0 or n < 0 or s + n > num_tri:
            raise ValueError(f"ranges row ({s}, {n}) is outside the {num_tri} triangles of tri.")
    return spans


def _offset_ids(ids: torch.Tensor, first: int) -> torch.Tensor:
    """Triangle indices of the slice ``tri[first:]`` as indices of the whole tri."""
    return torch.where(ids >= 0, ids + first, ids)


def _rasterize_nvdiffrast(glctx, pos, tri, resolution, ranges, grad_db):
    """rasterize on nvdiffrast's CUDA rasterizer (a RasterizeCudaContext, or nvdiffrast's own
    context object)."""
    H, W = check_resolution(resolution)
    if isinstance(glctx, RasterizeCudaContext):
        dr, ctx = glctx.nvdiffrast, glctx.context
    else:
        from bodyfit.renderers.nvdiffrast_backend import load_nvdiffrast

        dr, ctx = load_nvdiffrast(), glctx
    if not all(isinstance(t, torch.Tensor) and t.is_cuda for t in (pos, tri)):
        raise ValueError("RasterizeCudaContext (nvdiffrast) needs pos and tri on a CUDA device; "
                         "for CPU tensors use RasterizeGLContext() or RasterizeTorchContext().")
    if ranges is None:
        pos = check_pos(pos, "pos")
    tri = check_tri(tri, pos.shape[-2], pos.device).int()
    return dr.rasterize(ctx, pos.contiguous(), tri.contiguous(), (H, W), ranges=ranges,
                        grad_db=grad_db)


# --------------------------------------------------------------------------------------------
# interpolate
# --------------------------------------------------------------------------------------------
def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, rast_db=None,
                diff_attrs=None):
    """Interpolate vertex attributes over the rasterized pixels.

    ``out = u * attr[v0] + v * attr[v1] + (1 - u - v) * attr[v2]`` for the triangle
    ``(v0, v1, v2)`` covering the pixel, 0 where empty.

    Args:
        attr: (B,V,C) or (V,C) (shared by the batch) vertex attributes, floating point; a batch
            of one is shared too.
        rast: (B,H,W,4) from :func:`rasterize`.
        tri: (F,3) int32/int64, the triangles given to :func:`rasterize`.
        rast_db: (B,H,W,4), the second output of :func:`rasterize`; needed for diff_attrs.
        diff_attrs: None, 'all', or a list of attribute (channel) indices whose pixel
            derivatives are wanted.
    Returns:
        (out, out_da): out (B,H,W,C) in the promoted dtype of attr and rast, differentiable
        with respect to attr and, through rast's u and v, to the positions given to rasterize.
        out_da (B,H,W,2K) for the K selected attributes: ``(dA/dX, dA/dY)`` per attribute, in
        attribute units per pixel (X = column, Y = row), 0 where empty, differentiable with
        respect to attr and rast_db; (B,H,W,0) when diff_attrs is None, as in nvdiffrast.
    Raises:
        ValueError: wrong shapes or dtypes, tri indices outside [0, V), batch sizes that do not
            match, triangle ids in rast beyond F, diff_attrs without rast_db or out of range.
    """
    dr = nvdiffrast_for(attr, rast, *(() if rast_db is None else (rast_db,)))
    if dr is not None:
        return dr.interpolate(attr.contiguous(), rast.contiguous(), tri.int().contiguous(),
                              rast_db=None if rast_db is None else rast_db.contiguous(),
                              diff_attrs=diff_attrs)
    if not isinstance(attr, torch.Tensor) or attr.dim() not in (2, 3):
        shape = tuple(attr.shape) if isinstance(attr, torch.Tensor) else type(attr)
        raise ValueError(f"attr must have shape (B,V,C) or (V,C), got {shape}.")
    if not attr.is_floating_point():
        raise ValueError(f"attr must be floating point, got {attr.dtype}.")
    rast = check_rast(rast)
    B, H, W, _ = rast.shape
    if attr.dim() == 2:
        attr = attr[None].expand(B, *attr.shape)
    if attr.shape[0] not in (1, B):
        raise ValueError(f"attr has batch size {attr.shape[0]} but rast has {B}.")
    attr = attr.expand(B, *attr.shape[1:])
    V, C = attr.shape[1:]
    tri = check_tri(tri, V, attr.device)
    ids = rast_triangle_ids(rast, tri.shape[0]).reshape(-1)
    pix = torch.nonzero(ids > 0).squeeze(1)
    sel = _diff_attr_indices(diff_attrs, C)
    if sel:
        if not isinstance(rast_db, torch.Tensor) or tuple(rast_db.shape) != (B, H, W, 4):
            got = tuple(rast_db.shape) if isinstance(rast_db, torch.Tensor) else type(rast_db)
            raise ValueError(f"diff_attrs needs rast_db, the (B,H,W,4) = ({B},{H},{W},4) second "
                             f"output of rasterize (with output_db=True), got {got}.")
    out = attr.new_zeros(B * H * W, C, dtype=torch.promote_types(attr.dtype, rast.dtype))
    out_da = out.new_zeros(B * H * W, 2 * len(sel))
    if pix.numel() == 0:
        return out.view(B, H, W, C), out_da.view(B, H, W, 2 * len(sel))
    b = pix // (H * W)
    a = attr[b[:, None], tri[ids[pix] - 1]]  # (N,3,C)
    r = rast.reshape(-1, 4)[pix]
    u, v = r[:, 0:1], r[:, 1:2]
    vals = u * a[:, 0] + v * a[:, 1] + (1 - u - v) * a[:, 2]
    out = out.index_put((pix,), vals.to(out.dtype))
    if sel:
        # dA/dX = du/dX (A0 - A2) + dv/dX (A1 - A2), and the same for Y
        e0 = (a[:, 0] - a[:, 2])[:, sel]
        e1 = (a[:, 1] - a[:, 2])[:, sel]
        d = rast_db.reshape(-1, 4)[pix].to(out.dtype)
        da = torch.stack([d[:, 0:1] * e0 + d[:, 2:3] * e1, d[:, 1:2] * e0 + d[:, 3:4] * e1], -1)
        out_da = out_da.index_put((pix,), da.reshape(-1, 2 * len(sel)).to(out.dtype))
    return out.view(B, H, W, C), out_da.view(B, H, W, 2 * len(sel))


def _diff_attr_indices(diff_attrs, num_attrs: int) -> list[int]:
    """nvdiffrast's diff_attrs (None, 'all' or a list of indices) as a list of indices."""
    if diff_attrs is None:
        return []
    if isinstance(diff_attrs, str):
        if diff_attrs != "all":
            raise ValueError(f"diff_attrs must be None, 'all' or a list of attribute indices, "
                             f"got {diff_attrs!r}.")
        return list(range(num_attrs))
    sel = [int(i) for i in diff_attrs]
    if any(i < 0 or i >= num_attrs for i in sel):
        raise ValueError(f"diff_attrs {sel} must index the {num_attrs} attributes.")
    return sel


# --------------------------------------------------------------------------------------------
# texture
# --------------------------------------------------------------------------------------------
def _texel_index(i: torch.Tensor, n: int, boundary_mode: str):
    """Index into a texture axis of size n and a validity mask, per boundary mode."""
    if boundary_mode == "wrap":
        return torch.remainder(i, n), torch.ones_like(i, dtype=torch.bool)
    if boundary_mode == "clamp":
        return i.clamp(0, n - 1), torch.ones_like(i, dtype=torch.bool)
    valid = (i >= 0) & (i < n)  # zero
    return i.clamp(0, n - 1), valid


def texture(tex: torch.Tensor, uv: torch.Tensor, uv_da=None, mip_level_bias=None, mip=None,
            filter_mode: str = "auto", boundary_mode: str = "wrap", max_mip_level=None):
    """Sample a texture at per-pixel texture coordinates (nvdiffrast's signature and defaults).

    Args:
        tex: (B,Ht,Wt,C) texture (a batch of 1 is shared by all of uv's batch), floating point.
        uv: (B,H,W,2) texture coordinates: (0, 0) is the outer corner of texel ``tex[:, 0, 0]``,
            (1, 1) that of ``tex[:, -1, -1]``; u along the columns (Wt), v along the rows (Ht),
            v = 0 at row 0 (nvdiffrast's convention: the tensor is indexed directly).
        uv_da: nvdiffrast's mipmapping input (also ``mip_level_bias``, ``mip``,
            ``max_mip_level``); unused by the torch implementation, which has no mipmaps
            (used by nvdiffrast on CUDA).
        filter_mode: 'auto' (= 'linear' here) or 'linear' (bilinear between the four nearest
            texel centres) or 'nearest' (the texel containing uv; no gradient with respect to
            uv). The mipmapped modes run on nvdiffrast only.
        boundary_mode: 'wrap' (the texture tiles; nvdiffrast's default), 'clamp' (edge texels
            repeat) or 'zero' (zero outside [0, 1]); 'cube' runs on nvdiffrast only.
    Returns:
        (B,H,W,C), differentiable with respect to tex and (for 'linear') uv.
    Raises:
        ValueError: wrong shapes or dtypes, batch sizes that do not match, an unknown or
            unsupported mode, an empty texture.
    """
    dr = nvdiffrast_for(tex, uv)
    if dr is not None:
        return dr.texture(tex.contiguous(), uv.contiguous(), uv_da=uv_da,
                          mip_level_bias=mip_level_bias, mip=mip, filter_mode=filter_mode,
                          boundary_mode=boundary_mode, max_mip_level=max_mip_level)
    if not isinstance(tex, torch.Tensor) or tex.dim() != 4:
        shape = tuple(tex.shape) if isinstance(tex, torch.Tensor) else type(tex)
        raise ValueError(f"tex must have shape (B,Ht,Wt,C), got {shape}.")
    if not isinstance(uv, torch.Tensor) or uv.dim() != 4 or uv.shape[-1] != 2:
        shape = tuple(uv.shape) if isinstance(uv, torch.Tensor) else type(uv)
        raise ValueError(f"uv must have shape (B,H,W,2), got {shape}.")
    if not tex.is_floating_point() or not uv.is_floating_point():
        raise ValueError(f"tex and uv must be floating point, got {tex.dtype} and {uv.dtype}.")
    if filter_mode == "auto":
        filter_mode = "linear"
    if filter_mode not in ("linear", "nearest"):
        raise ValueError(f"filter_mode must be 'auto', 'linear' or 'nearest' (no mipmaps in "
                         f"the torch implementation), got {filter_mode!r}.")
    if boundary_mode not in ("clamp", "wrap", "zero"):
        raise ValueError(f"boundary_mode must be 'clamp', 'wrap' or 'zero', got {boundary_mode!r}.")
    Bt, Ht, Wt, C = tex.shape
    B, H, W, _ = uv.shape
    if Ht == 0 or Wt == 0:
        raise ValueError(f"tex must have a positive size, got {tuple(tex.shape)}.")
    if Bt not in (1, B):
        raise ValueError(f"tex has batch size {Bt} but uv has {B}; expected {B} or 1.")
    dtype = torch.promote_types(tex.dtype, uv.dtype)
    flat = tex.to(dtype).reshape(Bt, Ht * Wt, C)
    bidx = (torch.arange(B, device=uv.device) if Bt == B else
            torch.zeros(B, dtype=torch.long, device=uv.device)).view(B, 1, 1)

    def fetch(ix, iy):
        ix, okx = _texel_index(ix, Wt, boundary_mode)
        iy, oky = _texel_index(iy, Ht, boundary_mode)
        val = flat[bidx, iy * Wt + ix]  # (B,H,W,C)
        return val * (okx & oky)[..., None].to(dtype)

    x = uv[..., 0].to(dtype) * Wt
    y = uv[..., 1].to(dtype) * Ht
    if filter_mode == "nearest":
        return fetch(torch.floor(x.detach()).long(), torch.floor(y.detach()).long())
    x = x - 0.5
    y = y - 0.5
    xf = torch.floor(x.detach())
    yf = torch.floor(y.detach())
    fx = (x - xf)[..., None]
    fy = (y - yf)[..., None]
    ix, iy = xf.long(), yf.long()
    top = fetch(ix, iy) * (1 - fx) + fetch(ix + 1, iy) * fx
    bot = fetch(ix, iy + 1) * (1 - fx) + fetch(ix + 1, iy + 1) * fx
    return top * (1 - fy) + bot * fy




# --------------------------------------------------------------------------------------------
# camera
# --------------------------------------------------------------------------------------------
def clip_matrix(K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, image_size,
                near: float = 0.01, far: float = 100.0) -> torch.Tensor:
    """Clip-space matrix of an OpenCV camera: ``pos_clip = [X, 1] @ M^T`` for world points X.

    OpenCV convention: camera x right, y down, z forward; ``X_cam = R X + t``; pixel
    ``(u, v) = (fx x/z + s y/z + cx, fy y/z + cy)`` with the centre of pixel (col, row) at
    integer ``(u, v) = (col, row)`` and row 0 at the top of the picture. The matrix maps
    ``u -> NDC x = (u + 0.5) / W * 2 - 1`` and ``v -> NDC y = (v + 0.5) / H * 2 - 1``, which is
    exactly nvdiffrast's pixel-centre grid, so a point that projects to pixel (col, row) is
    rasterized at ``rast[:, row, col]`` and rendered images have the picture's row order
    (top-down) with no flip. There is no y flip, so the picture's y-down axis is NDC y-up: a
    triangle's screen winding is mirrored relative to an OpenGL-style projection (harmless:
    nvdiffrast and this module draw both facings). ``w = z_cam`` (depth in metres), and
    ``z/w`` goes from -1 at ``near`` to 1 at ``far`` (OpenGL depth).

    Args:
        K: (B,3,3) intrinsics, pixels. R: (B,3,3) world -> camera rotation. t: (B,3) metres.
        image_size: (H, W) of the picture (and of the rasterization), pixels.
        near: near depth clip plane in metres, 0 < near < far.
        far: far depth clip plane in metres.
    Returns:
        (B,4,4) matrix, dtype of K.
    Raises:
        ValueError: wrong shapes, a non-positive image size, or bad near/far.
    """
    for name, x, shape in (("K", K, (3, 3)), ("R", R, (3, 3)), ("t", t, (3,))):
        if not isinstance(x, torch.Tensor) or x.dim() != len(shape) + 1 or \
                tuple(x.shape[1:]) != shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
            raise ValueError(f"{name} must have shape (B,{','.join(map(str, shape))}), got {got}.")
    B = K.shape[0]
    if R.shape[0] != B or t.shape[0] != B:
        raise ValueError(f"K, R, t must share the batch size, got {K.shape[0]}, {R.shape[0]}, "
                         f"{t.shape[0]}.")
    H, W = (int(s) for s in image_size)
    if H <= 0 or W <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {tuple(image_size)}.")
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}.")
    dtype = K.dtype if K.is_floating_point() else torch.float32
    K, R, t = K.to(dtype), R.to(dtype), t.to(dtype)
    P = K.new_zeros(B, 4, 4)
    P[:, 0, 0] = 2 * K[:, 0, 0] / W
    P[:, 0, 1] = 2 * K[:, 0, 1] / W
    P[:, 0, 2] = 2 * (K[:, 0, 2] + 0.5) / W - 1
    P[:, 1, 1] = 2 * K[:, 1, 1] / H
    P[:, 1, 2] = 2 * (K[:, 1, 2] + 0.5) / H - 1
    P[:, 2, 2] = (far + near) / (far - near)
    P[:, 2, 3] = -2 * far * near / (far - near)
    P[:, 3, 2] = 1
    Rt = K.new_zeros(B, 4, 4)
    Rt[:, :3, :3] = R
    Rt[:, :3, 3] = t
    Rt[:, 3, 3] = 1
    return P @ Rt
