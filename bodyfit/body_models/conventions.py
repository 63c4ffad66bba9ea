"""Named 2D keypoint conventions.

Each convention is an ordered list of keypoint names; "left"/"right" are the subject's own sides.
Which model landmark each keypoint corresponds to, and how much it is trusted, is given per model
(``BodyModel.keypoint_map``, from the tables in ``bodyfit.body_models.keypoint_tables``), because
the same name sits in different places on different models (COCO hips are lower and wider than
SMPL's hip joints, for instance).

Sources: COCO keypoints (Lin et al. 2014) and COCO-WholeBody feet (Jin et al. 2020); MediaPipe
BlazePose 33 landmarks (Bazarevsky et al. 2020); OpenPose BODY_25 (Cao et al. 2019).
"""
from __future__ import annotations

COCO17 = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
]

COCO17_FEET = COCO17 + [
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
]

MEDIAPIPE33 = [
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_pinky", "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
]

OPENPOSE25 = [
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
    "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe",
    "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
]

CONVENTIONS: dict[str, list[str]] = {
    "coco17": COCO17,
    "coco17_feet": COCO17_FEET,
    "mediapipe33": MEDIAPIPE33,
    "openpose25": OPENPOSE25,
}

# Keypoints that define the torso: used to initialise the camera and in the first fitting stage.
TORSO = ["left_shoulder", "right_shoulder", "left_hip", "right_hip"]


def keypoint_names(convention: str) -> list[str]:
    """Ordered keypoint names of ``convention``; raises ValueError listing the known ones."""
    try:
        return CONVENTIONS[convention]
    except KeyError:
        raise ValueError(
            f"Unknown keypoint convention {convention!r}; known: {sorted(CONVENTIONS)}."
        ) from None



def mirror_index(convention: str = "mediapipe33") -> list[int]:
    """The permutation of a convention's K keypoints that swaps left and right
    (``left_wrist`` <-> ``right_wrist``; keypoints without a side stay). ``keypoints[mirror]``
    relabels a detection as if its left and right were swapped: what a detector that took a
    person seen from behind for one facing it (or the reverse) should have said.

    Raises:
        ValueError: an unknown convention.
    """
    names = list(keypoint_names(convention))
    other = [n.replace("left", "\0").replace("right", "left").replace("\0", "right") for n in names]
    return [names.index(o) if o in names else k for k, o in enumerate(other)]
