"""2D body keypoints, a person box and a person mask from one picture, with MediaPipe Pose.

MediaPipe Pose is BlazePose (Bazarevsky et al. 2020, "BlazePose: On-device Real-time Body Pose
tracking", CVPR Workshop on Computer Vision for AR/VR): a person detector followed by a landmark
network that predicts 33 body landmarks (the ``mediapipe33`` convention in
:mod:`bodyfit.body_models.conventions`), a per-landmark visibility and a person segmentation mask.

:class:`MediaPipePose` returns the one person the legacy ``mediapipe.solutions.pose.Pose`` API
returns (the most confident person detection on the full picture). It is built on
:class:`bodyfit.detectors.multi_person.MultiPersonPose` (MediaPipe's own pose subgraphs, the same
ones the legacy API runs): the keypoints agree with the legacy API to within 0.07 px, the masks
exactly (measured on 8 Pose2Sim frames and OpenCV's basketball2.png). Use ``MultiPersonPose``
for every person in a picture. ``mediapipe==0.10.21`` (Apache-2.0) is the last release whose wheel
ships the pose models; ``model_complexity=1`` selects ``pose_landmark_full.tflite``, which is
inside the wheel, so nothing is downloaded and it runs offline. Install it with
``pip install "bodyfit[detect]"``.

Pixel convention: keypoints and boxes are in the pixel coordinates of the input picture with the
OpenCV convention used by intrinsics ``K`` everywhere in bodyfit: x to the right, y down, and the
*centre* of pixel ``(col, row)`` at ``(col, row)``. (MediaPipe's normalized coordinates place the
picture on ``[0, 1]``, edges included, so ``x_px = x_norm * W - 0.5``.)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

__all__ = ["MediaPipePose", "Detection", "NoPersonError", "person_box"]

_INSTALL_HINT = (
    'MediaPipe is needed for 2D keypoint detection: pip install "bodyfit[detect]" '
    "(this installs mediapipe==0.10.21, the last release that ships its pose models)."
)


class NoPersonError(ValueError):
    """The detector found no person in the picture."""


@dataclass
class Detection:
    """One detected person in one picture.

    Attributes:
        keypoints: ``(33, 3)`` float32: x, y in pixels (OpenCV convention, see the module
            docstring) and a confidence in [0, 1], in MediaPipe-33 order
            (:data:`bodyfit.body_models.conventions.MEDIAPIPE33`). Confidence is MediaPipe's
            landmark visibility; landmarks that fall outside the picture have confidence 0
            (= missing) but keep their predicted coordinates.
        box: ``(4,)`` float32 person box ``x0, y0, x1, y1`` in pixels, clipped to the picture
            (``0 <= x <= W - 1``, ``0 <= y <= H - 1``): the extent of the confident landmarks,
            padded on each side by ``box_padding`` (10 %) of its larger side, grown where needed
            to hold the person mask (head top, feet) with a 2 % margin.
        mask: ``(H, W)`` float32 person probability in [0, 1], or None when segmentation is off.
        image_size: ``(H, W)`` of the picture, in pixels.
        world_keypoints: ``(33, 3)`` float32 metric 3D landmarks in metres from MediaPipe
            (origin between the hips; x right, y down, z away from the camera, roughly), or None.
        score: the person detector's confidence in [0, 1] for this person (BlazePose's detector
            score, a sigmoid), or None where the detector does not report it (the legacy
            ``mp.solutions.pose`` API). Compare scores of one picture, not across pictures.
    """

    keypoints: np.ndarray
    box: np.ndarray
    mask: np.ndarray | None
    image_size: tuple[int, int]
    world_keypoints: np.ndarray | None = field(default=None, repr=False)
    score: float | None = None

    convention: ClassVar[str] = "mediapipe33"

    @property
    def box_height(self) -> float:
        """Height of ``box`` in pixels."""
        return float(self.box[3] - self.box[1])

    @property
    def mean_confidence(self) -> float:
        """Mean keypoint confidence over the 33 landmarks."""
        return float(self.keypoints[:, 2].mean())


def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    if not isinstance(image_rgb, np.ndarray):
        raise ValueError(
            f"Expected an (H, W, 3) uint8 RGB numpy array, got {type(image_rgb).__name__}."
        )
    if image_rgb.dtype != np.uint8:
        raise ValueError(
            f"Expected an (H, W, 3) uint8 RGB array, got dtype {image_rgb.dtype} "
            "(convert with (img * 255).round().astype(np.uint8) for [0, 1] floats)."
        )
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or min(image_rgb.shape[:2]) < 1:
        raise ValueError(
            f"Expected an (H, W, 3) uint8 RGB array, got shape {image_rgb.shape} "
            "(gray or RGBA pictures: use bodyfit.data.images.read_image, which returns RGB)."
        )
    return np.ascontiguousarray(image_rgb)


class MediaPipePose:
    """BlazePose 33-landmark detector for single pictures (one person per picture).

    The person returned is the legacy ``mp.solutions.pose`` API's: the most confident person
    detection on the full picture (not necessarily the largest person; for every person, use
    :class:`~bodyfit.detectors.multi_person.MultiPersonPose`, of which this is the ``"full"``
    setting keeping the top-scoring person). The MediaPipe graphs are built once, in the
    constructor, and reused for every picture; each call to :meth:`detect` runs person detection
    afresh, so pictures need not be related. Instances are not thread-safe: use one per thread.
    Close the instance (or use it as a context manager) to free the graphs::

        with MediaPipePose() as det:
            d = det.detect(read_image("person.jpg"))
            d.keypoints  # (33, 3): x_px, y_px, confidence

    Args:
        min_detection_confidence: person-detector score threshold in (0, 1].
        enable_segmentation: also predict the person mask (``Detection.mask``).
        model_complexity: 1 (``pose_landmark_full``, shipped in the wheel); 0 (lite) and 2
            (heavy) need ``landmark_model_path``.
        box_padding: fraction of the landmarks' larger extent (the height, for a standing
            person) added on each side of the box
            (the landmarks stop at the eyes and the toes, so the head top and soles need room).
        landmark_model_path: the lite or heavy landmark model (a ``.tflite`` file, or a folder
            holding it under MediaPipe's name), e.g. from the npm package ``@mediapipe/pose``;
            see :class:`~bodyfit.detectors.multi_person.MultiPersonPose`.

    Raises:
        ImportError: mediapipe is not installed (the message says how to install it).
        ValueError: model_complexity 0 or 2 without its model file, or a bad threshold.
    """

    def __init__(
        self,
        min_detection_confidence: float = 0.5,
        enable_segmentation: bool = True,
        model_complexity: int = 1,
        box_padding: float = 0.1,
        landmark_model_path=None,
    ):
        from bodyfit.detectors.multi_person import MultiPersonPose

        self._closed = True
        self.enable_segmentation = bool(enable_segmentation)
        self.box_padding = float(box_padding)
        # The legacy graph: full picture, the first (most confident) detection, MediaPipe's own
        # landmark-presence threshold (0.5), no landmark-count filter.
        self._multi = MultiPersonPose(
            "full",
            min_detection_confidence=min_detection_confidence,
            enable_segmentation=self.enable_segmentation,
            model_complexity=model_complexity,
            landmark_model_path=landmark_model_path,
            min_presence=0.5,
            min_visible_landmarks=0,
            order="score",
            max_people=1,
            box_padding=self.box_padding,
        )
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Free the MediaPipe graphs. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._multi.close()

    def __enter__(self) -> "MediaPipePose":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; close() is the reliable way
        if sys.is_finalizing():  # MediaPipe's threads can no longer take the GIL: let exit free it
            return
        try:
            self.close()
        except Exception:
            pass

    # -- detection -------------------------------------------------------------------------
    def detect(self, image_rgb: np.ndarray) -> Detection:
        """Detect the most prominent person in one picture.

        Args:
            image_rgb: ``(H, W, 3)`` uint8 RGB picture (not BGR: convert OpenCV frames first).

        Returns:
            A :class:`Detection` (keypoints in pixels, box, mask, image size, world keypoints,
            detector score).

        Raises:
            ValueError: the picture is not an ``(H, W, 3)`` uint8 array.
            NoPersonError: no person was found.
            RuntimeError: the detector was closed.
        """
        img = _check_image(image_rgb)
        if self._closed:
            raise RuntimeError("MediaPipePose.detect called after close().")
        people = self._multi.detect_all(img)
        if not people:
            h, w = img.shape[:2]
            raise NoPersonError(
                f"No person was found in the {w}x{h} picture by MediaPipe Pose "
                "(is a person fully or mostly in view, and large enough?)."
            )
        return people[0]

    def _box(self, kp: np.ndarray, size: tuple[int, int], mask: np.ndarray | None) -> np.ndarray:
        """Person box of one detection: :func:`person_box` with this detector's padding."""
        return person_box(kp, size, mask, self.box_padding)


def person_box(
    kp: np.ndarray, size: tuple[int, int], mask: np.ndarray | None, padding: float = 0.1
) -> np.ndarray:
    """Person box from 33 landmarks, padded, grown to hold the person mask.

    The confident landmarks' extent is padded on each side by ``padding`` times its larger
    side. The landmarks stop at the eyes, so the padded landmark box can cut the top of the
    head; where a mask exists, the box is grown to contain the mask blobs (> 0.5) that hold a
    confident landmark (bystanders are left out unless they touch the person), searched within
    2.5x the padding of the landmarks, plus a 2 % margin. Clipped to the picture.

    Args:
        kp: ``(33, 3)`` x, y in pixels (OpenCV convention), confidence in [0, 1].
        size: ``(H, W)`` of the picture.
        mask: ``(H, W)`` person probability in [0, 1], or None.
        padding: fraction of the landmarks' larger extent added on each side.

    Returns:
        ``(4,)`` float32 ``x0, y0, x1, y1`` in pixels, ``0 <= x <= W - 1``, ``0 <= y <= H - 1``.
    """
    h, w = size
    conf = kp[:, 2]
    use = conf > 0.5
    if use.sum() < 4:
        use = conf > 0
    if use.sum() < 2:  # everything outside the picture: fall back to all predictions
        use = np.ones(len(kp), dtype=bool)
    xy = kp[use, :2].astype(np.float64)
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    extent = max(y1 - y0, x1 - x0, 1.0)
    pad = padding * extent
    box = np.array([x0 - pad, y0 - pad, x1 + pad, y1 + pad])
    if mask is not None:
        r = 2.5 * pad
        c0, r0 = int(max(np.floor(x0 - r), 0)), int(max(np.floor(y0 - r), 0))
        c1, r1 = int(min(np.ceil(x1 + r), w - 1)), int(min(np.ceil(y1 + r), h - 1))
        if c1 > c0 and r1 > r0:
            import cv2

            fg = (mask[r0 : r1 + 1, c0 : c1 + 1] > 0.5).astype(np.uint8)
            n, labels = cv2.connectedComponents(fg, connectivity=8)
            # Keep the mask blobs that hold a confident landmark (not a bystander's).
            pts = np.round(xy - [c0, r0]).astype(int)
            inside = (pts >= 0).all(axis=1) & (pts[:, 0] < fg.shape[1]) & (pts[:, 1] < fg.shape[0])
            ids = np.unique(labels[pts[inside, 1], pts[inside, 0]])
            ids = ids[ids > 0]
            if n > 1 and ids.size:
                keep = np.isin(labels, ids)
                rows, cols = np.nonzero(keep.any(axis=1))[0], np.nonzero(keep.any(axis=0))[0]
                m = 0.02 * extent
                box = np.minimum(box, [c0 + cols[0] - m, r0 + rows[0] - m, np.inf, np.inf])
                box = np.maximum(box, [-np.inf, -np.inf, c0 + cols[-1] + m, r0 + rows[-1] + m])
    box[[0, 2]] = np.clip(box[[0, 2]], 0.0, w - 1.0)
    box[[1, 3]] = np.clip(box[[1, 3]], 0.0, h - 1.0)
    return box.astype(np.float32)
