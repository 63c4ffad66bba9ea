"""People across frames: which detection of each frame continues which track.

A small online tracker in the way of SORT (Bewley et al. 2016: predict each track, match by box
overlap with the Hungarian algorithm, start and end tracks) with a keypoint term in the way of
PoseTrack-style trackers (OKS, the COCO object keypoint similarity, between a track's predicted
keypoints and a detection's), no appearance:

1. **Predict.** Each live track moves its last box and keypoints by its velocity (the box
   centre's, pixels per frame, smoothed over matches) times the frames since it was last seen.
2. **Similarity.** ``s = iou_weight * IoU(predicted box, box) + (1 - iou_weight) * OKS`` with
   ``OKS = mean_k exp(-d_k^2 / (2 * area * kappa^2))`` over keypoints confident in both (``d_k``
   pixels, ``area`` the predicted box's area in pixels^2); no common keypoint: OKS 0.
3. **Assign.** Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on ``1 - s``;
   pairs below ``min_similarity`` are not matched.
4. **Birth and death.** An unmatched detection starts a new track (ids count up from 0, never
   reused); a track not matched for more than ``max_missed`` frames in a row ends. A person who
   leaves for longer and comes back gets a new id.

Conventions: boxes ``(4,)`` x0, y0, x1, y1 pixels; keypoints ``(K, 3)`` x, y pixels and a
confidence in [0, 1] (0 = missing).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Track", "Tracker", "track_people", "box_iou", "oks"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``a`` (N,4) and ``b`` (M,4), x0, y0, x1, y1 pixels ->
    (N,M) in [0, 1] (0 for empty boxes)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def oks(pred: np.ndarray, kps: np.ndarray, area: np.ndarray, kappa: float = 0.1,
        min_confidence: float = 0.3) -> np.ndarray:
    """Keypoint similarity of N predicted keypoint sets ``pred`` (N,K,3) with M detections'
    ``kps`` (M,K,3): (N,M) in [0, 1], ``mean_k exp(-d^2 / (2 area kappa^2))`` over keypoints
    with confidence >= ``min_confidence`` in both (COCO's OKS with one ``kappa`` for every
    keypoint); ``area`` (N,) pixels^2 per prediction; 0 where no keypoint is shared."""
    p = np.asarray(pred, np.float64)
    k = np.asarray(kps, np.float64)
    if len(p) == 0 or len(k) == 0:
        return np.zeros((len(p), len(k)))
    both = (p[:, None, :, 2] >= min_confidence) & (k[None, :, :, 2] >= min_confidence)
    d2 = ((p[:, None, :, :2] - k[None, :, :, :2]) ** 2).sum(-1)
    s = np.exp(-d2 / (2 * np.maximum(np.asarray(area, np.float64), 1.0)[:, None, None] * kappa ** 2))
    n = both.sum(-1)
    return np.where(n > 0, (s * both).sum(-1) / np.maximum(n, 1), 0.0)


@dataclass
class Track:
    """One person followed over frames: ``id``; ``box`` (4,) and ``keypoints`` (K,3) as last
    seen, in frame ``last_frame``; ``velocity`` (2,) of the box centre, pixels per frame;
    ``frames`` and ``detections``: where it was seen (frame index, detection index there)."""

    id: int
    box: np.ndarray
    keypoints: np.ndarray
    last_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    frames: list[int] = field(default_factory=list)
    detections: list[int] = field(default_factory=list)

    def predict(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(box (4,), keypoints (K,3)) moved by the velocity to ``frame``."""
        shift = self.velocity * (frame - self.last_frame)
        kp = self.keypoints.copy()
        kp[:, :2] += shift
        return self.box + np.tile(shift, 2), kp


class Tracker:
    """Online multi-person tracker (see the module docstring); call :meth:`update` once per
    frame, in order.

    Args:
        max_missed: frames a track may go unmatched before it ends.
        min_similarity: least similarity ``s`` in [0, 1] for a match.
        iou_weight: share of IoU in ``s`` (the rest is OKS).
        kappa: OKS falloff, share of the box's size.
        velocity_smoothing: weight of the previous velocity when a match updates it.
        min_confidence: keypoints below it are ignored.
    Raises:
        ValueError: a parameter out of range.
    """

    def __init__(self, max_missed: int = 3, min_similarity: float = 0.1, iou_weight: float = 0.5,
                 kappa: float = 0.1, velocity_smoothing: float = 0.5, min_confidence: float = 0.3):
        if max_missed < 0 or not 0 <= min_similarity <= 1 or not 0 <= iou_weight <= 1 or kappa <= 0 \
                or not 0 <= velocity_smoothing < 1:
            raise ValueError("Tracker: max_missed >= 0, min_similarity and iou_weight in [0, 1], "
                             f"kappa > 0, velocity_smoothing in [0, 1); got {max_missed}, {min_similarity}, "
                             f"{iou_weight}, {kappa}, {velocity_smoothing}")
        self.max_missed, self.min_similarity, self.iou_weight = int(max_missed), min_similarity, iou_weight
        self.kappa, self.smoothing, self.min_confidence = kappa, velocity_smoothing, min_confidence
        self.live: list[Track] = []
        self.ended: list[Track] = []
        self.frame = -1
        self._next = 0

    @property
    def tracks(self) -> list[Track]:
        """Every track so far, ended or live, by id."""
        return sorted(self.ended + self.live, key=lambda t: t.id)

    def update(self, boxes, keypoints) -> list[int]:
        """Match one frame's detections to the tracks.

        Args:
            boxes: (N,4) x0, y0, x1, y1 pixels. keypoints: (N,K,3) pixels + confidence.
        Returns:
            N track ids, one per detection, in the detections' order.
        Raises:
            ValueError: shapes that do not fit, non-finite boxes.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
        kps = np.asarray(keypoints, np.float64)
        if len(boxes) != len(kps) or (len(kps) and (kps.ndim != 3 or kps.shape[-1] != 3)):
            raise ValueError(f"Tracker.update: boxes {boxes.shape} and keypoints {kps.shape} must be "
                             "(N,4) and (N,K,3) for the same N")
        if not np.isfinite(boxes).all():
            raise ValueError("Tracker.update: boxes must be finite")
        self.frame += 1
        f = self.frame
        ids = [-1] * len(boxes)
        if self.live and len(boxes):
            pred = [t.predict(f) for t in self.live]
            pb = np.stack([b for b, _ in pred])
            pk = np.stack([k for _, k in pred])
            area = np.clip(pb[:, 2:] - pb[:, :2], 1, None).prod(-1)
            sim = self.iou_weight * box_iou(pb, boxes)
            if self.iou_weight < 1 and kps.shape[1] == pk.shape[1]:
                sim = sim + (1 - self.iou_weight) * oks(pk, kps, area, self.kappa, self.min_confidence)
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(1.0 - sim)
            for r, c in zip(rows, cols):
                if sim[r, c] >= self.min_similarity:
                    self._extend(self.live[r], f, c, boxes[c], kps[c])
                    ids[c] = self.live[r].id
        for c in range(len(boxes)):
            if ids[c] < 0:
                t = Track(self._next, boxes[c].copy(), kps[c].copy(), f, frames=[f], detections=[c])
                self._next += 1
                self.live.append(t)
                ids[c] = t.id
        keep = []
        for t in self.live:
            (keep if f - t.last_frame <= self.max_missed else self.ended).append(t)
        self.live = keep
        return ids

    def _extend(self, t: Track, f: int, c: int, box: np.ndarray, kp: np.ndarray) -> None:
        centre = lambda b: 0.5 * (b[:2] + b[2:])  # noqa: E731
        v = (centre(box) - centre(t.box)) / max(f - t.last_frame, 1)
        t.velocity = v if len(t.frames) == 1 else self.smoothing * t.velocity + (1 - self.smoothing) * v
        t.box, t.keypoints, t.last_frame = box.copy(), kp.copy(), f
        t.frames.append(f)
        t.detections.append(c)


def track_people(frames, **tracker_options) -> tuple[list[list[int]], list[Track]]:
    """Track the people of consecutive frames.

    Args:
        frames: per frame a list of detections, each with ``box`` (4,) and ``keypoints`` (K,3)
            (e.g. :class:`bodyfit.detectors.Detection`), or a pair ``(boxes (N,4), keypoints
            (N,K,3))``.
        tracker_options: :class:`Tracker` options.
    Returns:
        (per frame the track id of each detection, in order; the tracks, by id).
    """
    tracker = Tracker(**tracker_options)
    ids = []
    for dets in frames:
        if isinstance(dets, tuple):
            boxes, kps = dets
        else:
            boxes = [d.box for d in dets]
            kps = [d.keypoints for d in dets]
        ids.append(tracker.update(np.asarray(boxes) if len(boxes) else np.zeros((0, 4)),
                                  np.asarray(kps) if len(kps) else np.zeros((0, 0, 3))))
    return ids, tracker.tracks
