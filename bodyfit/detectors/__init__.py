"""Detectors: 2D body keypoints, person boxes and masks from pictures.

``MediaPipePose`` needs the optional extra ``pip install "bodyfit[detect]"``; mediapipe itself is
imported only when a detector is built, so importing this package never requires it.
"""
from bodyfit.detectors.mediapipe_pose import Detection, MediaPipePose, NoPersonError

__all__ = ["MediaPipePose", "Detection", "NoPersonError"]
