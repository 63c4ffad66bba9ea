"""Our DensePose-style chart for the Anny body model: :func:`anny_chart`.

DensePose's 24 parts (:data:`bodyfit.densepose.chart.PART_NAMES`) with our own per-part UV,
computed from Anny's skinning weights and rest geometry by the rules documented in
:func:`anny_chart`: bones -> body segments, segments halved (front/back, left/right), cylindrical
UV for limbs, torso and head, two-sided planar UV for hands and feet, and faces no projection
shows packed into a margin band. It follows DensePose's part layout, not its UV layout:
DensePose's (U, V) are defined on SMPL and do not carry over.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from bodyfit.densepose.chart import DensePoseChart, part_index
from bodyfit.densepose.geometry import majority_sign, signed_area

__all__ = ["anny_chart"]

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
    signed = signed_area(uv)
    for p in part[hidden].unique():
        m = part == p
        keep = m & ~hidden
        sign = majority_sign(signed[keep]) if keep.any() else 1.0
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
