"""People across calibrated views: which detection of each view is which person.

Every view's detector finds its people in its own order; before a body can be fitted to
several views, the detections that show the same person must be grouped. This module does it
from geometry alone (no appearance), by hypothesize-and-verify:

1. **Hypotheses from pairs.** For every pair of views (a, b) and every pair of detections
   (i in a, j in b) not yet assigned, the two keypoint sets are triangulated
   (:func:`bodyfit.triangulation.triangulate`, linear DLT) and reprojected into both views. A
   detection's *error* is the mean reprojection error (pixels) over the keypoints confident in
   it and triangulated, divided by its size (box height, pixels): a pair of the same person
   reprojects within the detector's noise (a few % of the box), two different people do not
   (their rays do not meet). This is the epipolar-consistency test of Pose2Sim's
   ``personAssociation`` and EasyMocap's multi-view matching (pairwise affinities from
   epipolar / triangulation error), normalized by the person's size so one gate serves near
   and far people.
2. **Completing a hypothesis.** The pair's 3D keypoints are projected into every other view;
   the unassigned detection there with the lowest error joins when its error is under the gate.
3. **Cycle consistency.** The whole group is triangulated from all its views; while a view's
   error is over the gate, the worst view is dropped and the rest triangulated again (a group
   must be consistent in all its views, not only pairwise). A group left with fewer than two
   views is no hypothesis.
4. **Greedy choice.** The hypothesis seen in the most views, then with the lowest mean error,
   becomes a person; its detections are taken and the search repeats on what is left until no
   hypothesis passes.

Left/right swaps: a 2D detector often swaps a person's left and right keypoints in a view that
sees the person from behind (MediaPipe does, in the Pose2Sim demo's cam02). With ``mirror`` (the
keypoint permutation that swaps left and right, :func:`mirror_index`) every detection also
takes part mirrored, and a group may hold a view's detection mirrored; of the two labellings of a
group the one with fewer mirrored views is kept, and :attr:`PersonMatch.mirrored` lists the
views whose detection must be mirrored to agree with the others.

Detections left over belong to nobody in more than one view: a person seen in one view only,
or a spurious detection (the two cannot be told apart from geometry). They are reported in
:attr:`Association.unmatched` with the reason and never merged into another person's group.

Conventions: keypoints ``(K, 3)`` x, y in undistorted pixels of the view's camera and a
confidence in [0, 1] (0 = missing); cameras :class:`bodyfit.cameras.Camera` (OpenCV frame,
world -> camera, metres).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bodyfit.body_models.conventions import mirror_index
from bodyfit.cameras import Camera
from bodyfit.triangulation import stack_cameras, triangulate

__all__ = ["DEFAULT_GATE", "PersonMatch", "Unmatched", "Association", "associate", "detection_sizes",
           "mirror_index"]

#: Default gate: largest mean reprojection error, as a share of the person's box height, for a
#: detection to belong to a group. Synthetic MediaPipe-33 keypoints with 1.5% noise give
#: 1-2%; MediaPipe's view-dependent biases on real pictures 2-4%; two different people
#: typically 20% or more.
DEFAULT_GATE = 0.08


@dataclass
class PersonMatch:
    """One person found in several views.

    Attributes:
        detections: ``{view index: detection index in that view}``, two views or more.
        error_px: ``{view: mean reprojection error}`` in pixels of the group's triangulated
            keypoints in that view's detection.
        error_over_box: ``{view: error_px / the detection's size}``.
        points: ``(K, 4)`` the triangulated keypoints: x, y, z metres (world frame) and a quality
            in [0, 1] (0: not triangulated), see :func:`bodyfit.triangulation.triangulate`.
        mirrored: views whose detection agrees with the others only with its left and right
            keypoints swapped (``associate(..., mirror=...)``); empty without ``mirror``.
    """

    detections: dict[int, int]
    error_px: dict[int, float]
    error_over_box: dict[int, float]
    points: np.ndarray = field(repr=False)
    mirrored: list[int] = field(default_factory=list)

    @property
    def mean_error_over_box(self) -> float:
        return float(np.mean(list(self.error_over_box.values())))


@dataclass
class Unmatched:
    """A detection that belongs to no group: ``view``, ``detection`` (index in that view) and
    ``reason`` (human-readable)."""

    view: int
    detection: int
    reason: str


@dataclass
class Association:
    """The result of :func:`associate`: ``people`` (most views first, then lowest error) and the
    detections left ``unmatched``."""

    people: list[PersonMatch]
    unmatched: list[Unmatched]

    def table(self, n_views: int) -> list[list[int | None]]:
        """``table[v][p]``: person ``p``'s detection index in view ``v``, None where unseen (the
        layout :func:`bodyfit.pipeline.observe` takes, with detections for indices)."""
        return [[p.detections.get(v) for p in self.people] for v in range(n_views)]


def detection_sizes(keypoints: np.ndarray, min_confidence: float = 0.0) -> np.ndarray:
    """Each detection's size in pixels: the larger side of the extent of its keypoints with
    confidence > ``min_confidence`` (1 where fewer than two are).

    Args:
        keypoints: ``(N, K, 3)`` pixels + confidence.
    Returns:
        ``(N,)`` float64 pixels.
    """
    kp = np.asarray(keypoints, np.float64)
    out = np.ones(len(kp))
    for n, k in enumerate(kp):
        seen = k[k[:, 2] > min_confidence, :2]
        if len(seen) >= 2:
            out[n] = max(float(np.ptp(seen[:, 0])), float(np.ptp(seen[:, 1])), 1.0)
    return out


def _check(keypoints, cameras, sizes) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if not isinstance(keypoints, (list, tuple)) or not isinstance(cameras, (list, tuple)):
        raise ValueError("associate: keypoints and cameras must be lists with one entry per view")
    if len(keypoints) != len(cameras):
        raise ValueError(f"associate: {len(keypoints)} views of keypoints for {len(cameras)} cameras")
    if len(cameras) < 2:
        raise ValueError(f"associate needs at least 2 calibrated views, got {len(cameras)}")
    if not all(isinstance(c, Camera) and c.batch_size == 1 for c in cameras):
        raise ValueError("associate: cameras must be bodyfit Cameras of batch 1, one per view")
    kps, K = [], None
    for v, k in enumerate(keypoints):
        k = np.asarray(k, np.float64)
        if k.size == 0:
            k = k.reshape(0, K or 0, 3)
        if k.ndim != 3 or k.shape[-1] != 3:
            raise ValueError(f"associate: view {v} keypoints must be (N, K, 3) (x px, y px, confidence), "
                             f"got {k.shape}")
        if len(k) and K is not None and k.shape[1] != K:
            raise ValueError(f"associate: view {v} has {k.shape[1]} keypoints per person, others {K}")
        if len(k):
            K = k.shape[1]
        bad = ~np.isfinite(k).all(-1)  # NaN / inf keypoints count as missing
        k = np.where(bad[..., None], 0.0, k)
        kps.append(np.concatenate([k[..., :2], np.clip(k[..., 2:], 0.0, 1.0)], -1))
    K = K or 0
    kps = [k if len(k) else np.zeros((0, K, 3)) for k in kps]
    if sizes is None:
        sz = [detection_sizes(k) for k in kps]
    else:
        if len(sizes) != len(kps):
            raise ValueError(f"associate: {len(sizes)} views of sizes for {len(kps)} views")
        sz = [np.asarray(s, np.float64).reshape(-1) for s in sizes]
        for v, (s, k) in enumerate(zip(sz, kps)):
            if len(s) != len(k) or not np.all(np.isfinite(s) & (s > 0)):
                raise ValueError(f"associate: view {v} needs {len(k)} positive sizes, got {s}")
    return kps, sz


def associate(keypoints, cameras, sizes=None, gate: float = DEFAULT_GATE,
              min_confidence: float = 0.3, min_keypoints: int = 6, mirror=None) -> Association:
    """Group the detections of V calibrated views into people (see the module docstring).

    Args:
        keypoints: V arrays ``(N_v, K, 3)``: view ``v``'s detections, x, y in undistorted pixels
            of camera ``v`` and a confidence in [0, 1]; ``N_v`` may be 0; non-finite keypoints
            count as missing.
        cameras: V :class:`Camera` of batch 1.
        sizes: V arrays ``(N_v,)`` of each detection's size in pixels (its box height); None:
            :func:`detection_sizes` of the keypoints.
        gate: largest mean reprojection error over size for a detection to join a group.
        min_confidence: keypoints below it are not used.
        min_keypoints: fewest keypoints shared by a detection and its group (confident in the
            detection and triangulated); a detection with fewer confident ones is left out.
        mirror: ``(K,)`` the left/right permutation of the keypoints (:func:`mirror_index`):
            detections may join a group mirrored (see the module docstring); None: as given.
    Returns:
        :class:`Association`. Detections of a view are never split between people; each is in
        one person or in ``unmatched``.
    Raises:
        ValueError: fewer than 2 views, views and cameras of different counts, keypoints not
            ``(N, K, 3)``, sizes not positive, ``gate`` <= 0, ``mirror`` not a permutation of
            the K keypoints.
    """
    if not gate > 0:
        raise ValueError(f"associate: gate must be > 0, got {gate}")
    kps, sz = _check(keypoints, cameras, sizes)
    V, K = len(kps), kps[0].shape[1]
    n = [len(k) for k in kps]
    if mirror is not None:
        mirror = np.asarray(mirror)
        if mirror.shape != (K,) or sorted(mirror.tolist()) != list(range(K)):
            raise ValueError(f"associate: mirror must be a permutation of the {K} keypoints, got {mirror}")
        # Each detection twice: as given (index i), mirrored (index n_v + i).
        kps = [np.concatenate([k, k[:, mirror]]) for k in kps]
        sz = [np.concatenate([s, s]) for s in sz]
    Kc, R, t = stack_cameras(list(cameras))
    free = [set(range(len(k))) for k in kps]
    unmatched: list[Unmatched] = []
    for v, k in enumerate(kps):
        for i in range(len(k)):
            m = int((k[i, :, 2] >= max(min_confidence, 1e-9)).sum())
            if m < min_keypoints and i < n[v]:
                free[v] -= {i, i + n[v]}
                unmatched.append(Unmatched(v, i, f"{m} confident keypoints, fewer than {min_keypoints}"))
    people: list[PersonMatch] = []
    hypotheses = _pair_hypotheses(kps, sz, n, Kc, R, t, cameras, min_confidence, min_keypoints)
    while True:
        best = _best_hypothesis(kps, sz, free, hypotheses, Kc, R, t, cameras, gate, min_confidence,
                                min_keypoints)
        if best is None:
            break
        flips = [v for v, i in best.detections.items() if i >= n[v]]
        dets = {v: i % n[v] for v, i in best.detections.items()}
        if 2 * len(flips) > len(dets):  # keep the labelling most views agree with
            flips = [v for v in dets if v not in flips]
            best.points = best.points[mirror]
        best.detections, best.mirrored = dets, sorted(flips)
        people.append(best)
        for v, i in dets.items():
            free[v] -= {i, i + n[v]}
    for v in range(V):
        for i in sorted(j for j in free[v] if j < n[v]):
            unmatched.append(Unmatched(v, i, _why_alone(kps, sz, n, v, i, Kc, R, t, cameras, min_confidence,
                                                         min_keypoints, gate)))
    unmatched.sort(key=lambda u: (u.view, u.detection))
    return Association(people, unmatched)


def _project(X: torch.Tensor, Kc, R, t, v: int) -> torch.Tensor:
    """(M,K,3) world points -> (M,K,2) pixels of view v (float64; depth clamped at 1 mm)."""
    xc = X @ R[v].T + t[v]
    uv = xc @ Kc[v].T
    return uv[..., :2] / uv[..., 2:].clamp(min=1e-3)


def _errors(X: torch.Tensor, ok: torch.Tensor, Kc, R, t, v: int, kp: np.ndarray, size: np.ndarray,
            min_confidence: float, min_keypoints: int) -> torch.Tensor:
    """(M, N) mean reprojection error over size of M keypoint sets X (M,K,3) (ok (M,K): those
    triangulated) in view v's N detections kp (N,K,3); inf where fewer than ``min_keypoints``
    keypoints are shared."""
    if len(kp) == 0:
        return torch.zeros(X.shape[0], 0, dtype=torch.float64)
    uv = _project(X, Kc, R, t, v)  # (M,K,2)
    k = torch.as_tensor(kp, dtype=torch.float64)
    seen = (k[..., 2] >= max(min_confidence, 1e-9))  # (N,K)
    both = ok[:, None] & seen[None]  # (M,N,K)
    d = (uv[:, None] - k[None, ..., :2]).norm(dim=-1)  # (M,N,K)
    n = both.sum(-1)
    err = (d * both).sum(-1) / n.clamp(min=1) / torch.as_tensor(size, dtype=torch.float64)[None]
    return torch.where(n >= min_keypoints, err, torch.full_like(err, float("inf")))


def _own_errors(X: torch.Tensor, ok: torch.Tensor, Kc, R, t, v: int, kp: np.ndarray, size: np.ndarray,
                min_confidence: float, min_keypoints: int) -> np.ndarray:
    """(M,) as :func:`_errors` for M keypoint sets X (M,K,3) each against its own detection
    kp (M,K,3) of view v."""
    uv = _project(X, Kc, R, t, v)
    k = torch.as_tensor(kp, dtype=torch.float64)
    both = ok & (k[..., 2] >= max(min_confidence, 1e-9))
    d = (uv - k[..., :2]).norm(dim=-1)
    n = both.sum(-1)
    err = (d * both).sum(-1) / n.clamp(min=1) / torch.as_tensor(size, dtype=torch.float64)
    return torch.where(n >= min_keypoints, err, torch.full_like(err, float("inf"))).numpy()


def _triangulate_groups(groups: list[dict[int, int]], kps, cameras, min_confidence: float):
    """Triangulate M groups at once: (M,K,4) points."""
    V, K = len(kps), kps[0].shape[1]
    stack = np.zeros((len(groups), V, K, 3))
    for m, g in enumerate(groups):
        for v, i in g.items():
            stack[m, v] = kps[v][i]
    stack[..., 2] = np.where(stack[..., 2] >= max(min_confidence, 1e-9), stack[..., 2], 0.0)
    return torch.as_tensor(triangulate(stack, list(cameras), min_views=2, robust=False), dtype=torch.float64)


def _verify(groups: list[dict[int, int]], kps, sz, Kc, R, t, cameras, gate, min_confidence,
            min_keypoints) -> list[tuple[dict[int, int], dict[int, float], np.ndarray] | None]:
    """Cycle consistency: per group, triangulate from all its views and drop the worst view
    while one is over the gate; (group, {view: error over size}, points) or None (fewer than two
    consistent views)."""
    out: list = [None] * len(groups)
    todo = list(range(len(groups)))
    groups = [dict(g) for g in groups]
    while todo:
        pts = _triangulate_groups([groups[m] for m in todo], kps, cameras, min_confidence)
        ok = pts[..., 3] > 0
        err = np.full((len(todo), len(kps)), np.nan)  # (rows, V): each group's own detections
        for v in range(len(kps)):
            rows = [r for r, m in enumerate(todo) if v in groups[m]]
            if not rows:
                continue
            det = [groups[todo[r]][v] for r in rows]
            err[rows, v] = _own_errors(pts[rows, :, :3], ok[rows], Kc, R, t, v, kps[v][det], sz[v][det],
                                       min_confidence, min_keypoints)
        nxt = []
        for row, m in enumerate(todo):
            errs = {v: float(err[row, v]) for v in groups[m]}
            worst = max(errs, key=errs.get)
            if errs[worst] <= gate:
                out[m] = (groups[m], errs, pts[row].numpy())
            elif len(groups[m]) > 2:
                del groups[m][worst]
                nxt.append(m)
        todo = nxt
    return out


def _pair_hypotheses(kps, sz, n, Kc, R, t, cameras, min_confidence, min_keypoints):
    """Every pair hypothesis once (step 1 of the module docstring): the pairs ``[{a: i, b: j}]``
    (a < b, i as given, j as given or mirrored) and per view the error of every pair's
    triangulated keypoints in every detection of that view, ``{v: (M, len(kps[v]))}``; later
    rounds of the greedy choice only mask the detections taken."""
    V = len(kps)
    pairs = [{a: i, b: j} for a in range(V) for b in range(a + 1, V) for i in range(n[a])
             for j in range(len(kps[b]))]
    if not pairs:
        return pairs, {}
    pts = _triangulate_groups(pairs, kps, cameras, min_confidence)
    ok = pts[..., 3] > 0
    return pairs, {v: _errors(pts[..., :3], ok, Kc, R, t, v, kps[v], sz[v], min_confidence, min_keypoints)
                   for v in range(V)}


def _best_hypothesis(kps, sz, free, hypotheses, Kc, R, t, cameras, gate, min_confidence, min_keypoints):
    """The best consistent group among the free detections, as a PersonMatch (indices into
    ``kps``, mirrored detections at ``n_v + i``), or None. ``hypotheses``: :func:`_pair_hypotheses`
    (a pair's first detection is taken as given: a group and its mirror image are the same)."""
    V = len(kps)
    pairs, per_view = hypotheses
    live = [m for m, g in enumerate(pairs) if all(i in free[v] for v, i in g.items())]
    if not live:
        return None
    masked = {}
    for v in range(V):
        e = per_view[v][live].clone()
        taken = [i for i in range(e.shape[1]) if i not in free[v]]
        e[:, taken] = float("inf")
        masked[v] = e
    groups = []
    for row, m in enumerate(live):
        g = pairs[m]
        if not all(masked[v][row, i] <= gate for v, i in g.items()):
            continue
        full = dict(g)
        for v in range(V):
            e = masked[v]
            if v in g or e.shape[1] == 0:
                continue
            c = int(torch.argmin(e[row]))
            if e[row, c] <= gate:
                full[v] = c
        groups.append(full)
    if not groups:
        return None
    # Several pairs of one person give the same group: verify each distinct group once.
    uniq = list({tuple(sorted(g.items())): g for g in groups}.values())
    checked = [c for c in _verify(uniq, kps, sz, Kc, R, t, cameras, gate, min_confidence, min_keypoints)
               if c is not None]
    if not checked:
        return None
    g, errs, points = min(checked, key=lambda c: (-len(c[0]), float(np.mean(list(c[1].values())))))
    return PersonMatch(dict(sorted(g.items())),
                       {v: errs[v] * float(sz[v][i]) for v, i in sorted(g.items())},
                       {v: errs[v] for v in sorted(g)}, points)


def _why_alone(kps, sz, n, v, i, Kc, R, t, cameras, min_confidence, min_keypoints, gate) -> str:
    """Why detection i of view v joined nobody: its lowest pairwise error with any detection of
    another view."""
    best = (float("inf"), None, None)
    for w in range(len(kps)):
        if w == v or len(kps[w]) == 0:
            continue  # (with mirror, kps holds each detection twice: the closest of both counts)
        groups = [{v: i, w: j} for j in range(len(kps[w]))]
        pts = _triangulate_groups(groups, kps, cameras, min_confidence)
        ok = pts[..., 3] > 0
        for j in range(len(kps[w])):
            e = _errors(pts[j:j + 1, :, :3], ok[j:j + 1], Kc, R, t, v, kps[v][i:i + 1], sz[v][i:i + 1],
                        min_confidence, min_keypoints)
            e = float(e[0, 0])
            if e < best[0]:
                best = (e, w, j)
    if best[1] is None or not np.isfinite(best[0]):
        return "seen in one view only: no detection of another view shares enough keypoints with it"
    return (f"seen in one view only: no consistent detection in another view (closest: view {best[1]} "
            f"detection {best[2] % n[best[1]]}{' mirrored' if best[2] >= n[best[1]] else ''}, error "
            f"{best[0]:.2f} of its size, gate {gate:g}; or it was "
            "inconsistent with that person's other views)")
