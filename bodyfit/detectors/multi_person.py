"""Every person in a picture: 33 body landmarks, a box, a mask and world landmarks per person.

The legacy ``mp.solutions.pose`` API (:class:`bodyfit.detectors.MediaPipePose`) returns one
person per picture by design: its graph keeps only the best detection. This module builds
MediaPipe's own calculator graphs from Python (``mp.CalculatorGraph`` with a text graph config)
around two subgraphs that ship registered inside the ``mediapipe==0.10.21`` wheel:

* ``PoseDetectionCpu``: picture -> every person detection (BlazePose's detector, a 224x224
  SSD-like network, with weighted non-maximum suppression inside). Each detection carries a
  score, a box and four keypoints: 0 the hip centre, 1 a point on the circle around the whole
  body (its distance from the hip centre gives the body's scale and direction), 2 and 3 the
  same for the upper body.
* ``PoseLandmarkByRoiCpu``: picture + a person region (a rotated square, ``NormalizedRect``) ->
  33 landmarks, world landmarks (metres) and a segmentation mask, for that one region.

How :meth:`MultiPersonPose.detect_all` finds everyone:

1. **Windows.** The detector sees its input letterboxed to 224x224, so in a wide picture small
   or distant people are only a few pixels tall. It runs on the full picture and, by the
   ``setting``, on overlapping square tiles: level 1 with the picture's short side as the tile
   side, level 2 with half of it, level 3 with a quarter (tiles overlap by ``tile_overlap`` of
   their side; none smaller than ``min_tile_side``). Detections are mapped from each tile back
   to the picture.
2. **Person regions**, exactly as MediaPipe's pose graph (``PoseDetectionToRoi``:
   ``AlignmentPointsRectsCalculator`` then ``RectTransformationCalculator``): centre = the
   detection's hip centre (keypoint 0), side = 2 x its distance to keypoint 1, rotated so that
   the hip-to-keypoint-1 direction points up (target angle 90 degrees), then scaled by 1.25 and
   made square on its long side (in pixels).
3. **Duplicate regions** (the same person seen in several windows) are merged by non-maximum
   suppression on the overlap (IoU) of the detection boxes, in priority order: coarser windows
   first (full picture, then level 1, 2, 3), then higher score. So a person the full
   picture finds keeps the full picture's region, which is the region the legacy API uses, and
   tiles only add people the coarser windows missed. (The regions themselves are too coarse to
   tell apart two people standing shoulder to shoulder: their IoU is ~0.7. The detection
   boxes, which hug the torso and head, are not.)
4. **Landmarks**: the landmark subgraph runs once per kept region. Its pose-presence score
   must reach ``min_presence`` (MediaPipe's graph gates at 0.5; the default 0.8 drops most of
   the false people tiles bring: cones, litter, a leg seen alone, while keeping every real
   person in our test pictures).
5. **People**: normalized landmarks become pixels (``x_px = x_norm * W - 0.5``, as in
   :mod:`bodyfit.detectors.mediapipe_pose`); a person with fewer than
   ``min_visible_landmarks`` confident landmarks inside the picture is dropped, and so is a
   person that repeats one already kept: the same person (their confident landmarks agree, or
   their masks overlap by IoU > ``duplicate_iou``) or a part of them (a tile that saw only a
   leg or a head: a smaller person whose mask lies mostly on the kept person's mask).

The result is sorted by person box area, largest first (ties: higher score first), or by
detector score with ``order="score"``.

Known limits (BlazePose's detector, not the tiling): people in a tight group are often found as
one (the detector gives one detection for the group, and the landmarks then follow the front
person); person-like objects at the detector's threshold (litter on a lawn, a lab's skeleton
model) can pass as people; raise ``min_detection_confidence`` or ``min_presence`` to trade
recall for fewer of them.

Source: BlazePose (Bazarevsky et al. 2020, "BlazePose: On-device Real-time Body Pose tracking",
CVPR Workshop on Computer Vision for AR/VR) and MediaPipe's pose graph
(``mediapipe/modules/pose_landmark/pose_landmark_cpu.pbtxt`` and ``pose_detection_to_roi.pbtxt``
in google-ai-edge/mediapipe, Apache-2.0). The subgraph and node names are internal to MediaPipe:
this module needs exactly ``mediapipe==0.10.21`` (``pip install "bodyfit[detect]"``), whose wheel
ships ``pose_detection.tflite`` and ``pose_landmark_full.tflite``; nothing is downloaded.

Pixel convention: keypoints and boxes are in the pixel coordinates of the input picture with the
OpenCV convention used everywhere in bodyfit: x to the right, y down, the *centre* of pixel
``(col, row)`` at ``(col, row)``.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from bodyfit.detectors.mediapipe_pose import (
    _INSTALL_HINT,
    Detection,
    NoPersonError,
    _check_image,
    person_box,
)

__all__ = [
    "MultiPersonPose",
    "SETTINGS",
    "MEDIAPIPE_VERSION",
    "tile_windows",
    "person_regions",
    "box_iou",
]

MEDIAPIPE_VERSION = "0.10.21"
"""The MediaPipe release whose internal subgraphs this module builds on."""

SETTINGS: dict[str, int] = {"full": 0, "fast": 1, "thorough": 2, "exhaustive": 3}
"""Tile levels per setting: ``"full"`` runs the person detector on the full picture only (what
the legacy API does), ``"fast"`` adds square tiles of the picture's short side, ``"thorough"``
also tiles of half of it, ``"exhaustive"`` also tiles of a quarter of it. The detector finds
people best when they are a third to a half of its input's height: each level finds people
about half as tall as the level before, for ~3-4x the detector runs (measured on OpenCV's
vtest.avi, people ~80 px high in 768x576 frames: full and fast find almost nobody, thorough a
third of them, exhaustive most)."""

REGION_SCALE = 1.25
"""Margin of a person region around the detector's body circle (MediaPipe's pose graph)."""

_LANDMARK_FILES = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite",
                   2: "pose_landmark_heavy.tflite"}
_MODEL_PATH_NODE = ("poselandmarkbyroicpu__poselandmarkmodelloader__switchcontainer__"
                    "ConstantSidePacketCalculator_{}")
_SCORE_NODE = "posedetectioncpu__TensorsToDetectionsCalculator"
_PRESENCE_STREAM = "poselandmarkbyroicpu__tensorstoposelandmarksandsegmentation__pose_presence_score"

_DETECTION_GRAPH = """
input_stream: "image"
output_stream: "detections"
node {
  calculator: "PoseDetectionCpu"
  input_stream: "IMAGE:image"
  output_stream: "DETECTIONS:detections"
}
"""

_LANDMARK_GRAPH = """
input_stream: "image"
input_stream: "roi"
input_side_packet: "model_complexity"
input_side_packet: "enable_segmentation"
output_stream: "landmarks"
output_stream: "world_landmarks"
output_stream: "mask"
node {
  calculator: "PoseLandmarkByRoiCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  input_side_packet: "MODEL_COMPLEXITY:model_complexity"
  input_side_packet: "ENABLE_SEGMENTATION:enable_segmentation"
  output_stream: "LANDMARKS:landmarks"
  output_stream: "WORLD_LANDMARKS:world_landmarks"
  output_stream: "SEGMENTATION_MASK:mask"
}
"""

# set_resource_dir is process-wide; building graphs in two threads at once must not interleave.
_BUILD_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Geometry (pure numpy; no MediaPipe needed)
# --------------------------------------------------------------------------------------------
def tile_windows(
    height: int, width: int, levels: int, overlap: float = 0.25, min_side: int = 128
) -> np.ndarray:
    """Windows the person detector runs on: the full picture, then overlapping square tiles.

    Level 1 tiles have the picture's short side (skipped for a square picture, where the one
    tile is the full picture); level 2 tiles half of it, level 3 a quarter. Along each axis the
    tiles are spread evenly from edge to edge with at least ``overlap`` of their side shared by
    neighbours. A level whose side would be below ``min_side`` pixels is skipped.

    Args:
        height: picture height in pixels.
        width: picture width in pixels.
        levels: number of tile levels, 0 (full picture only) to 3.
        overlap: least shared fraction of a tile side between neighbours, in [0, 0.9].
        min_side: smallest tile side in pixels.

    Returns:
        ``(N, 5)`` int64: ``x0, y0, w, h, level`` per window, in pixels (the window covers
        columns ``x0 .. x0 + w - 1`` and rows ``y0 .. y0 + h - 1``); row 0 is the full picture.

    Raises:
        ValueError: a size below 1, levels outside 0..3 or overlap outside [0, 0.9].
    """
    height, width, levels = int(height), int(width), int(levels)
    if height < 1 or width < 1:
        raise ValueError(f"Picture size must be positive, got {height}x{width}.")
    if not 0 <= levels <= 3:
        raise ValueError(f"levels must be 0, 1, 2 or 3, got {levels}.")
    if not 0.0 <= overlap <= 0.9:
        raise ValueError(f"overlap must be in [0, 0.9], got {overlap}.")
    wins = [(0, 0, width, height, 0)]
    short = min(height, width)
    for level in range(1, levels + 1):
        side = short // (2 ** (level - 1))
        if side < min_side or (level == 1 and height == width):
            continue
        xs, ys = _starts(width, side, overlap), _starts(height, side, overlap)
        wins += [(x, y, side, side, level) for y in ys for x in xs]
    return np.array(wins, dtype=np.int64)


def _starts(length: int, side: int, overlap: float) -> list[int]:
    if side >= length:
        return [0]
    step = side * (1.0 - overlap)
    n = int(math.ceil((length - side) / step - 1e-9)) + 1
    return [int(v) for v in np.round(np.linspace(0, length - side, n))]


def person_regions(hip: np.ndarray, scale_point: np.ndarray, scale: float = REGION_SCALE) -> np.ndarray:
    """Person regions from detection keypoints, as MediaPipe's ``PoseDetectionToRoi``.

    ``AlignmentPointsRectsCalculator`` (start keypoint 0, end keypoint 1, target angle 90 deg)
    then ``RectTransformationCalculator`` (scale 1.25 x 1.25, square on the long side), worked
    in pixels: the centre is the hip centre, the side is ``2 * |scale_point - hip| * scale``, and
    the rotation turns the hip-to-scale-point direction to straight up.

    Args:
        hip: ``(N, 2)`` detection keypoint 0 (hip centre), in continuous pixel coordinates
            (MediaPipe's normalized coordinates times the picture size: 0 is the left edge of
            the picture, not the centre of the first pixel).
        scale_point: ``(N, 2)`` detection keypoint 1, same coordinates.
        scale: margin factor (1.25 in MediaPipe's pose graph).

    Returns:
        ``(N, 4)`` float64: ``cx, cy, side, rotation`` (pixels, pixels, pixels, radians in
        [-pi, pi), counter-clockwise positive in MediaPipe's sense: 0 for an upright person).
    """
    hip = np.asarray(hip, np.float64).reshape(-1, 2)
    sp = np.asarray(scale_point, np.float64).reshape(-1, 2)
    d = sp - hip
    side = 2.0 * np.hypot(d[:, 0], d[:, 1]) * scale
    rot = 0.5 * np.pi - np.arctan2(-d[:, 1], d[:, 0])
    rot = rot - 2 * np.pi * np.floor((rot + np.pi) / (2 * np.pi))  # MediaPipe's NormalizeRadians
    return np.stack([hip[:, 0], hip[:, 1], side, rot], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of axis-aligned boxes.

    Args:
        a: ``(N, 4)`` boxes ``x0, y0, x1, y1``. b: ``(M, 4)`` boxes, same units.

    Returns:
        ``(N, M)`` float64 IoU in [0, 1] (0 where both boxes are empty).
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _same_landmarks(a: np.ndarray, b: np.ndarray, tol: float, min_common: int = 4) -> bool:
    """Do two (33, 3) keypoint sets describe the same person? Half or more of the landmarks
    confident in both lie within ``tol`` pixels of each other."""
    both = (a[:, 2] > 0.5) & (b[:, 2] > 0.5)
    if both.sum() < min_common:
        return False
    dist = np.linalg.norm(a[both, :2] - b[both, :2], axis=1)
    return bool(np.mean(dist < tol) >= 0.5)


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------
class MultiPersonPose:
    """BlazePose 33-landmark detector for every person in a picture.

    Both MediaPipe graphs are built once, in the constructor, and reused for every picture;
    pictures need not be related (no tracking). Instances are not thread-safe: use one per
    thread. Close the instance (or use it as a context manager) to free the graphs::

        with MultiPersonPose("fast") as det:
            people = det.detect_all(read_image("people.jpg"))   # largest person first
            people[0].keypoints  # (33, 3): x_px, y_px, confidence

    Args:
        setting: ``"fast"`` (full picture + tiles of the short side), ``"thorough"`` (also tiles
            of half the short side: finds smaller, more distant people; slower),
            ``"exhaustive"`` (also tiles of a quarter: people down to ~1/8 of the short side;
            slowest) or ``"full"`` (full picture only: what the legacy single-person API sees,
            but every person). See :data:`SETTINGS`.
        min_detection_confidence: person-detector score threshold in (0, 1] (MediaPipe's own
            default is 0.5).
        enable_segmentation: also predict each person's mask (``Detection.mask``).
        model_complexity: landmark model, 0 (lite), 1 (full, in the wheel) or 2 (heavy: most
            accurate, ~4x slower). 0 and 2 need ``landmark_model_path``.
        landmark_model_path: the ``.tflite`` file for ``model_complexity`` 0 or 2, or a folder
            (a resource folder) that holds it under its MediaPipe name
            (``pose_landmark_lite.tflite`` / ``pose_landmark_heavy.tflite``). Both ship in the npm
            package ``@mediapipe/pose`` (Apache-2.0), whose ``pose_landmark_full.tflite`` is the
            wheel's byte for byte. Never downloaded by bodyfit.
        tile_overlap: least shared fraction of a tile's side between neighbouring tiles.
        min_tile_side: no tiles smaller than this, in pixels.
        region_iou: two detections whose boxes overlap by more (IoU) are the same person.
        min_presence: the landmark model's pose-presence score a person needs, in (0, 1].
        min_visible_landmarks: a person needs at least this many landmarks inside the picture
            with confidence > 0.5 (of 33).
        duplicate_iou: two people whose masks (> 0.5) overlap by more (IoU) are one person.
        order: ``"area"`` (person box area, largest first) or ``"score"`` (detector score,
            highest first).
        max_people: keep at most this many people (the first in ``order``), or None for all.
            With ``order="score"`` and the ``"full"`` setting the landmark model stops once
            that many are found (the legacy single-person API is ``max_people=1`` there).
        box_padding: see :func:`bodyfit.detectors.mediapipe_pose.person_box`.

    Raises:
        ImportError: mediapipe is not installed (the message says how to install it), or its
            graphs cannot be built (another mediapipe version than :data:`MEDIAPIPE_VERSION`).
        ValueError: an unknown setting or order, a model complexity outside 0..2, a missing or
            invalid landmark model file (one that MediaPipe cannot run as its landmark model is
            refused here, by one run on a blank picture), or a threshold outside its range.
    """

    def __init__(
        self,
        setting: str = "fast",
        *,
        min_detection_confidence: float = 0.5,
        enable_segmentation: bool = True,
        model_complexity: int = 1,
        landmark_model_path: str | os.PathLike | None = None,
        tile_overlap: float = 0.25,
        min_tile_side: int = 128,
        region_iou: float = 0.4,
        min_presence: float = 0.8,
        min_visible_landmarks: int = 8,
        duplicate_iou: float = 0.5,
        order: str = "area",
        max_people: int | None = None,
        box_padding: float = 0.1,
    ):
        self._closed = True  # until both graphs run
        if setting not in SETTINGS:
            raise ValueError(f"Unknown setting {setting!r}; choose one of {sorted(SETTINGS)}.")
        for name, v in (("min_detection_confidence", min_detection_confidence),
                        ("region_iou", region_iou), ("min_presence", min_presence),
                        ("duplicate_iou", duplicate_iou)):
            if not 0.0 < float(v) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}.")
        if order not in ("area", "score"):
            raise ValueError(f"order must be 'area' or 'score', got {order!r}.")
        if max_people is not None and int(max_people) < 1:
            raise ValueError(f"max_people must be None or >= 1, got {max_people}.")
        if not 0 <= int(min_visible_landmarks) <= 33:
            raise ValueError(f"min_visible_landmarks must be in 0..33, got {min_visible_landmarks}.")
        if int(model_complexity) not in _LANDMARK_FILES:
            raise ValueError(f"model_complexity must be 0, 1 or 2, got {model_complexity}.")
        self.setting = setting
        self.levels = SETTINGS[setting]
        self.enable_segmentation = bool(enable_segmentation)
        self.model_complexity = int(model_complexity)
        self.tile_overlap = float(tile_overlap)
        self.min_tile_side = int(min_tile_side)
        self.region_iou = float(region_iou)
        self.min_presence = float(min_presence)
        self.min_visible_landmarks = int(min_visible_landmarks)
        self.duplicate_iou = float(duplicate_iou)
        self.order = order
        self.max_people = None if max_people is None else int(max_people)
        self.box_padding = float(box_padding)
        tile_windows(64, 64, self.levels, self.tile_overlap)  # checks overlap

        mp = _import_mediapipe()
        self._mp = mp
        model_file = _landmark_model_file(mp, self.model_complexity, landmark_model_path)
        self.landmark_model_file = model_file
        self._det_graph = self._lm_graph = None
        self._det_out: list = []
        self._lm_out: dict[str, list] = {"landmarks": [], "world_landmarks": [], "mask": [],
                                         _PRESENCE_STREAM: []}
        self._ts_det = self._ts_lm = 0
        try:
            with _BUILD_LOCK:
                mp.resource_util.set_resource_dir(str(Path(mp.__file__).resolve().parent.parent))
                det_cfg = _expand(mp, _DETECTION_GRAPH)
                _set_score_threshold(det_cfg, float(min_detection_confidence))
                lm_cfg = _expand(mp, _LANDMARK_GRAPH)
                _set_model_path(lm_cfg, self.model_complexity, model_file)
                self._det_graph = mp.CalculatorGraph(graph_config=det_cfg)
                self._det_graph.observe_output_stream(  # (no reference to self: no cycle)
                    "detections", lambda _s, p, sink=self._det_out: sink.append(p))
                self._det_graph.start_run()
                self._lm_graph = mp.CalculatorGraph(graph_config=lm_cfg)
                for s, sink in self._lm_out.items():
                    self._lm_graph.observe_output_stream(s, lambda _s, p, sink=sink: sink.append(p))
                self._lm_graph.start_run(input_side_packets={
                    "model_complexity": mp.packet_creator.create_int(self.model_complexity),
                    "enable_segmentation": mp.packet_creator.create_bool(self.enable_segmentation),
                })
        except Exception as e:
            self._free()
            version = getattr(mp, "__version__", "?")
            raise ImportError(
                f"Could not build MediaPipe's pose graphs ({type(e).__name__}: {e}). bodyfit's "
                f"multi-person detector uses MediaPipe's internal subgraphs and needs exactly "
                f"mediapipe=={MEDIAPIPE_VERSION} (installed: {version}). {_INSTALL_HINT}"
            ) from e
        self._closed = False
        if model_file is not None:  # a user's model: check that it works as MediaPipe's does
            try:
                self._landmarks(np.zeros((64, 64, 3), np.uint8),
                                [{"region": (32.0, 32.0, 64.0, 0.0), "score": 0.0}], [])
            except RuntimeError as e:
                self.close()
                raise ValueError(
                    f"The landmark model {model_file} does not run as MediaPipe's "
                    f"{_LANDMARK_FILES[self.model_complexity]} ({e})."
                ) from e

    # -- lifecycle -------------------------------------------------------------------------
    def _free(self) -> None:
        for g in (self._det_graph, self._lm_graph):
            if g is not None:
                try:
                    g.close()
                except Exception:
                    pass
        self._det_graph = self._lm_graph = None

    def close(self) -> None:
        """Free the MediaPipe graphs. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._free()

    def __enter__(self) -> "MultiPersonPose":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; close() is the reliable way
        # Not while the interpreter shuts down: MediaPipe's worker threads could no longer take
        # the GIL, and closing would wait for them forever. The process exit frees the graphs.
        if sys.is_finalizing():
            return
        try:
            self.close()
        except Exception:
            pass

    # -- detection -------------------------------------------------------------------------
    def detect_all(self, image_rgb: np.ndarray) -> list[Detection]:
        """Detect every person in one picture.

        Args:
            image_rgb: ``(H, W, 3)`` uint8 RGB picture (not BGR: convert OpenCV frames first).

        Returns:
            One :class:`~bodyfit.detectors.mediapipe_pose.Detection` per person (keypoints
            ``(33, 3)`` in pixels, box, per-person mask ``(H, W)``, world keypoints, detector
            score), sorted by ``order``: box area, largest first (ties: higher score first), or
            detector score, highest first; at most ``max_people``. An empty list when nobody is
            found.

        Raises:
            ValueError: the picture is not an ``(H, W, 3)`` uint8 array.
            RuntimeError: the detector was closed, or a MediaPipe graph failed.
        """
        img = _check_image(image_rgb)
        if self._closed:
            raise RuntimeError("MultiPersonPose.detect_all called after close().")
        cands = self._candidates(img)
        if self.order == "score" and self.max_people is not None and self.levels == 0:
            # One window: candidates are already in score order, so stop once enough are found.
            people: list[Detection] = []
            for k in range(0, len(cands), self.max_people):
                people = self._landmarks(img, cands[k : k + self.max_people], people)
                if len(people) >= self.max_people:
                    break
        else:
            people = self._landmarks(img, cands, [])
        if self.order == "area":
            people.sort(key=lambda d: (-_area(d.box), -(d.score or 0.0)))
        else:
            people.sort(key=lambda d: -(d.score or 0.0))
        return people[: self.max_people] if self.max_people is not None else people

    def detect(self, image_rgb: np.ndarray) -> Detection:
        """The first person of :meth:`detect_all` (the largest, with the default ``order``).

        Raises:
            NoPersonError: nobody was found. ValueError, RuntimeError: as :meth:`detect_all`.
        """
        people = self.detect_all(image_rgb)
        if not people:
            h, w = image_rgb.shape[:2]
            raise NoPersonError(
                f"No person was found in the {w}x{h} picture by MediaPipe Pose "
                f"(setting {self.setting!r}; is a person mostly in view, and large enough?)."
            )
        return people[0]

    # -- steps -----------------------------------------------------------------------------
    def _run_detector(self, img: np.ndarray, windows: np.ndarray) -> list[tuple[int, list]]:
        """Person detections of each window: ``[(window index, [Detection proto, ...]), ...]``."""
        mp = self._mp
        self._det_out.clear()
        first = self._ts_det + 1
        for x0, y0, ww, hh, _lvl in windows:
            crop = np.ascontiguousarray(img[y0 : y0 + hh, x0 : x0 + ww])
            self._ts_det += 1
            pkt = mp.packet_creator.create_image_frame(image_format=mp.ImageFormat.SRGB, data=crop)
            self._det_graph.add_packet_to_input_stream("image", pkt.at(self._ts_det))
        _wait(self._det_graph)
        out = []
        for p in self._det_out:
            out.append((int(p.timestamp.value) - first, mp.packet_getter.get_proto_list(p)))
        self._det_out.clear()
        return out

    def _candidates(self, img: np.ndarray) -> list[dict]:
        """Person regions from every window, mapped to the picture, duplicates merged."""
        h, w = img.shape[:2]
        windows = tile_windows(h, w, self.levels, self.tile_overlap, self.min_tile_side)
        cands = []
        for wi, dets in self._run_detector(img, windows):
            x0, y0, ww, hh, lvl = (float(v) for v in windows[wi])
            for d in dets:
                score = float(d.score[0]) if len(d.score) else 0.0
                ld = d.location_data
                bb = ld.relative_bounding_box
                kps = np.array([[k.x, k.y] for k in ld.relative_keypoints], np.float64)
                if kps.shape[0] < 2:
                    continue
                kps = kps * [ww, hh] + [x0, y0]  # continuous picture pixels
                box = np.array([bb.xmin * ww + x0, bb.ymin * hh + y0,
                                (bb.xmin + bb.width) * ww + x0, (bb.ymin + bb.height) * hh + y0])
                cands.append({"level": int(lvl), "score": score, "box": box,
                              "region": person_regions(kps[0], kps[1])[0]})
        cands.sort(key=lambda c: (c["level"], -c["score"]))
        kept: list[dict] = []
        for c in cands:
            if kept and box_iou(c["box"], np.stack([k["box"] for k in kept])).max() > self.region_iou:
                continue
            if c["region"][2] < 1.0:  # degenerate: keypoints 0 and 1 coincide
                continue
            kept.append(c)
        return kept

    def _landmarks(self, img: np.ndarray, cands: list[dict], people: list[Detection]) -> list[Detection]:
        """Run the landmark subgraph once per region; build people, drop those with too few
        landmarks in the picture and those that repeat one in ``people`` (or an earlier one),
        and return ``people`` with the new ones appended, in ``cands`` order."""
        if not cands:
            return people
        mp = self._mp
        from mediapipe.framework.formats import rect_pb2

        h, w = img.shape[:2]
        for sink in self._lm_out.values():
            sink.clear()
        image_pkt = mp.packet_creator.create_image_frame(image_format=mp.ImageFormat.SRGB, data=img)
        stamps = []
        for c in cands:
            cx, cy, side, rot = c["region"]
            rect = rect_pb2.NormalizedRect(x_center=cx / w, y_center=cy / h, width=side / w,
                                           height=side / h, rotation=rot)
            self._ts_lm += 1
            stamps.append(self._ts_lm)
            self._lm_graph.add_packet_to_input_stream("image", image_pkt.at(self._ts_lm))
            self._lm_graph.add_packet_to_input_stream(
                "roi", mp.packet_creator.create_proto(rect).at(self._ts_lm))
        _wait(self._lm_graph)
        by_ts = {s: {int(p.timestamp.value): p for p in sink} for s, sink in self._lm_out.items()}
        for sink in self._lm_out.values():
            sink.clear()

        people = list(people)
        for c, ts in zip(cands, stamps):
            lp, pp = by_ts["landmarks"].get(ts), by_ts[_PRESENCE_STREAM].get(ts)
            if lp is None or pp is None:  # the landmark model saw no person in this region
                continue
            if mp.packet_getter.get_float(pp) < self.min_presence:
                continue
            lm = mp.packet_getter.get_proto(lp).landmark
            norm = np.array([[p.x, p.y, p.visibility] for p in lm], np.float64)
            inside = (norm[:, 0] >= 0) & (norm[:, 0] < 1) & (norm[:, 1] >= 0) & (norm[:, 1] < 1)
            kp = np.empty((len(lm), 3), np.float32)
            kp[:, 0] = norm[:, 0] * w - 0.5
            kp[:, 1] = norm[:, 1] * h - 0.5
            kp[:, 2] = np.where(inside, np.clip(norm[:, 2], 0.0, 1.0), 0.0)
            if np.count_nonzero(kp[:, 2] > 0.5) < self.min_visible_landmarks:
                continue
            world = None
            wp = by_ts["world_landmarks"].get(ts)
            if wp is not None:
                world = np.array([[p.x, p.y, p.z] for p in mp.packet_getter.get_proto(wp).landmark],
                                 np.float32)
            mask = None
            mpk = by_ts["mask"].get(ts)
            if self.enable_segmentation and mpk is not None:
                mask = np.array(mp.packet_getter.get_image(mpk).numpy_view(), np.float32)
                mask = np.clip(mask.reshape(mask.shape[0], mask.shape[1]), 0.0, 1.0)
                if mask.shape != (h, w):  # never seen, but keep the documented shape
                    import cv2

                    mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
            box = person_box(kp, (h, w), mask, self.box_padding)
            det = Detection(keypoints=kp, box=box, mask=mask, image_size=(h, w),
                            world_keypoints=world, score=c["score"])
            if any(self._repeats(det, k) for k in people):
                continue
            people.append(det)
        return people

    def _repeats(self, new: Detection, kept: Detection) -> bool:
        """Is ``new`` (found later: in a finer window or with a lower score) ``kept`` again?

        The same person: half or more of the landmarks confident in both lie within 10 % of
        the taller box's height, or the masks (> 0.5) overlap by IoU > ``duplicate_iou``.
        A part of ``kept`` (a tile that saw only a leg or the head, which the landmark model
        then reads as a small whole person): ``new``'s box is smaller and 80 % of its mask lies
        on ``kept``'s mask (without masks: 90 % of its confident landmarks inside ``kept``'s box,
        and its box less than half as large).
        """
        tol = 0.1 * max(kept.box_height, new.box_height, 1.0)
        if _same_landmarks(new.keypoints, kept.keypoints, tol):
            return True
        if new.mask is not None and kept.mask is not None:
            fn, fk = new.mask > 0.5, kept.mask > 0.5
            inter = np.count_nonzero(fn & fk)
            union = np.count_nonzero(fn | fk)
            if union and inter / union > self.duplicate_iou:
                return True
            n_new = np.count_nonzero(fn)
            return bool(_area(new.box) < _area(kept.box) and n_new and inter / n_new >= 0.8)
        xy = new.keypoints[new.keypoints[:, 2] > 0.5, :2]
        if len(xy) == 0 or _area(new.box) >= 0.5 * _area(kept.box):
            return False
        x0, y0, x1, y1 = kept.box
        inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        return bool(np.mean(inside) >= 0.9)


def _wait(graph) -> None:
    """Wait for a graph to finish its packets; its failures become RuntimeError (pybind11
    reports MediaPipe's INVALID_ARGUMENT status as ValueError, which would read as bad input)."""
    try:
        graph.wait_until_idle()
    except Exception as e:
        raise RuntimeError(f"A MediaPipe graph failed: {e}") from e


def _area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def _import_mediapipe():
    try:
        import mediapipe as mp  # lazy: an optional extra
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    version = getattr(mp, "__version__", "?")
    if version != MEDIAPIPE_VERSION:
        warnings.warn(
            f"bodyfit's multi-person detector is built on MediaPipe {MEDIAPIPE_VERSION}'s internal "
            f"subgraphs; mediapipe {version} is installed and may lack them.",
            RuntimeWarning, stacklevel=3,
        )
    return mp


def _landmark_model_file(mp, complexity: int, path) -> str | None:
    """Absolute path of the landmark model for ``complexity``, or None for the wheel's own."""
    name = _LANDMARK_FILES[complexity]
    if path is None:
        in_wheel = Path(mp.__file__).resolve().parent / "modules" / "pose_landmark" / name
        if in_wheel.is_file():
            return None
        raise ValueError(
            f"model_complexity={complexity} needs {name}, which the mediapipe wheel does not ship "
            f"(it ships {_LANDMARK_FILES[1]}, model_complexity=1). Pass landmark_model_path: the "
            f"file, or a folder holding it; it is in the npm package @mediapipe/pose "
            f"(Apache-2.0): npm pack @mediapipe/pose, then untar. bodyfit never downloads it."
        )
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise ValueError(f"Landmark model {p} does not exist (model_complexity={complexity} "
                         f"expects {name}).")
    _check_tflite(p)
    return str(p.resolve())


def _check_tflite(path: Path) -> None:
    """Raise ValueError unless ``path`` looks like a TensorFlow Lite model (schema 3).

    MediaPipe does not report a malformed model as an error: it logs one and crashes the
    process later, so the file's FlatBuffer header is read here first (root table, ``version``
    field = 3, ``subgraphs`` present).
    """
    import struct

    data = path.read_bytes()
    bad = ValueError(f"{path} is not a TensorFlow Lite model (schema version 3): expected "
                     f"MediaPipe's pose_landmark_*.tflite.")
    if len(data) < 64 or data[4:8] != b"TFL3":
        raise bad
    try:
        root = struct.unpack_from("<I", data, 0)[0]
        vtable = root - struct.unpack_from("<i", data, root)[0]
        vt_size = struct.unpack_from("<H", data, vtable)[0]
        fields = struct.unpack_from(f"<{(vt_size - 4) // 2}H", data, vtable + 4)
        version = struct.unpack_from("<I", data, root + fields[0])[0] if fields and fields[0] else 0
        has_subgraphs = len(fields) > 2 and fields[2] != 0
    except struct.error:
        raise bad from None
    if version != 3 or not has_subgraphs:
        raise bad


def _expand(mp, text: str):
    """The graph config with MediaPipe's subgraphs expanded (so inner nodes can be edited)."""
    from mediapipe.framework import calculator_pb2

    v = mp.ValidatedGraphConfig()
    v.initialize(graph_config=text)
    cfg = calculator_pb2.CalculatorGraphConfig()
    cfg.ParseFromString(v.binary_config)
    return cfg


def _node(cfg, name: str):
    for n in cfg.node:
        if n.name == name:
            return n
    raise RuntimeError(f"MediaPipe graph node {name} not found")


def _set_score_threshold(cfg, threshold: float) -> None:
    from mediapipe.calculators.tensor import tensors_to_detections_calculator_pb2 as t2d

    node = _node(cfg, _SCORE_NODE)
    node.options.Extensions[t2d.TensorsToDetectionsCalculatorOptions.ext].min_score_thresh = threshold


def _set_model_path(cfg, complexity: int, model_file: str | None) -> None:
    if model_file is None:
        return
    from mediapipe.calculators.core import constant_side_packet_calculator_pb2 as csp

    node = _node(cfg, _MODEL_PATH_NODE.format(complexity + 1))
    opts = node.options.Extensions[csp.ConstantSidePacketCalculatorOptions.ext]
    if not opts.packet[0].string_value.endswith(_LANDMARK_FILES[complexity]):
        raise RuntimeError(f"unexpected model loader node {node.name}")
    opts.packet[0].string_value = model_file
