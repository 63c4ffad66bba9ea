"""Detectors: 2D body keypoints, person boxes and masks from pictures.

``MediaPipePose`` (one person per picture, as the legacy MediaPipe API) and ``MultiPersonPose``
(every person) need the optional extra ``pip install "bodyfit[detect]"``; mediapipe itself is
imported only when a detector is built, so importing this package never requires it.
"""
from bodyfit.detectors.mediapipe_pose import Detection, MediaPipePose, NoPersonError
from bodyfit.detectors.multi_person import MultiPersonPose

__all__ = ["MediaPipePose", "MultiPersonPose", "Detection", "NoPersonError"]
