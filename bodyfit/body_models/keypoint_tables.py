"""Which model landmark each named keypoint maps to, and how much it is trusted, per body model.

Keypoint names are those of :mod:`bodyfit.body_models.conventions` (any convention); each model's
table maps a name to a landmark of that model (one of its ``joint_names``) and a weight in [0, 1].
Weights live beside the tables because the same name sits in different places on different
models and conventions (COCO hips are lower and wider than SMPL's hip joints, OpenPose's higher
and closer together than COCO's), so a model trusts some keypoints less; per-convention
overrides adjust them. ``keypoint_table_map`` turns a table into the (index, weight) tensors of
``BodyModel.keypoint_map``. The body models import their tables from here (body models do not
import each other).

Sources: Anny's COCO keypoint regressor (``anny.KeypointsRegressor.coco``); smplx's joint names
and vertex landmarks (``VertexJointSelector``); OpenPose (Cao et al. 2019) for the hip overrides.
"""
from __future__ import annotations

import torch

from bodyfit.body_models.base import BodyModel

__all__ = ["ANNY_KEYPOINTS", "ANNY_KEYPOINT_OVERRIDES", "SMPL_KEYPOINTS",
           "SMPL_KEYPOINT_OVERRIDES", "keypoint_table_map"]

# --------------------------------------------------------------------------------------------
# Anny (bodyfit.body_models.anny_model.AnnyModel): landmarks are its ``joint_names``, i.e.
# COCO-17 + 6 foot points, neck, mid_hip and the hand knuckles ("left_pinky_knuckle", ...).
# --------------------------------------------------------------------------------------------
# Keypoint name (any convention) -> (Anny landmark, weight). Anny's regressor was made for COCO
# keypoints, so COCO/MediaPipe names map one to one; approximations carry a lower weight.
ANNY_KEYPOINTS: dict[str, tuple[str, float]] = {
    **{n: (n, 1.0) for n in [
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
        "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
        "right_ankle", "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe",
        "left_heel", "right_heel", "neck", "mid_hip",
    ]},
    "left_eye_inner": ("left_eye", 0.3), "left_eye_outer": ("left_eye", 0.3),
    "right_eye_inner": ("right_eye", 0.3), "right_eye_outer": ("right_eye", 0.3),
    "left_pinky": ("left_pinky_knuckle", 0.5), "right_pinky": ("right_pinky_knuckle", 0.5),
    "left_index": ("left_index_knuckle", 0.5), "right_index": ("right_index_knuckle", 0.5),
    "left_thumb": ("left_thumb_knuckle", 0.3), "right_thumb": ("right_thumb_knuckle", 0.3),
    "left_foot_index": ("left_big_toe", 0.7), "right_foot_index": ("right_big_toe", 0.7),
}
# OpenPose hips sit higher and closer together than COCO's (Cao et al. 2019): trust them less.
ANNY_KEYPOINT_OVERRIDES = {
    "openpose25": {"left_hip": ("left_hip", 0.5), "right_hip": ("right_hip", 0.5),
                   "mid_hip": ("mid_hip", 0.5)},
}

# --------------------------------------------------------------------------------------------
# SMPL / SMPL-H / SMPL-X (bodyfit.body_models.smpl_model.SMPLFamilyModel): landmarks are
# smplx's joint names; a model resolves the candidates against its own ``joint_names``.
# --------------------------------------------------------------------------------------------
# Keypoint name (any convention) -> (candidate landmarks, weight). The first candidate the model
# has is used; none -> the keypoint is absent (weight 0).
SMPL_KEYPOINTS: dict[str, tuple[tuple[str, ...] | None, float]] = {
    **{n: ((n,), 1.0) for n in [
        # SMPL skeleton joints
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
        "right_wrist", "left_knee", "right_knee", "left_ankle", "right_ankle", "neck",
        # smplx's vertex landmarks (VertexJointSelector)
        "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_big_toe",
        "right_big_toe", "left_small_toe", "right_small_toe", "left_heel", "right_heel",
    ]},
    # COCO/MediaPipe hips sit lower and wider than SMPL's hip joints: trust them less.
    "left_hip": (("left_hip",), 0.5), "right_hip": (("right_hip",), 0.5),
    "mid_hip": (("pelvis",), 0.5),
    "left_eye_inner": (("left_eye",), 0.3), "left_eye_outer": (("left_eye",), 0.3),
    "right_eye_inner": (("right_eye",), 0.3), "right_eye_outer": (("right_eye",), 0.3),
    "mouth_left": (None, 0.0), "mouth_right": (None, 0.0),
    # MediaPipe's hand points are knuckles: the SMPL-H/SMPL-X finger joints, else SMPL's hand joint.
    "left_pinky": (("left_pinky1", "left_hand"), 0.3),
    "right_pinky": (("right_pinky1", "right_hand"), 0.3),
    "left_index": (("left_index1", "left_hand"), 0.3),
    "right_index": (("right_index1", "right_hand"), 0.3),
    "left_thumb": (("left_thumb2", "left_hand"), 0.3),
    "right_thumb": (("right_thumb2", "right_hand"), 0.3),
    "left_foot_index": (("left_big_toe",), 0.7), "right_foot_index": (("right_big_toe",), 0.7),
}
# OpenPose hips sit close to SMPL's hip joints (SMPLify fits them directly).
SMPL_KEYPOINT_OVERRIDES = {
    "openpose25": {"left_hip": (("left_hip",), 1.0), "right_hip": (("right_hip",), 1.0)},
}


def keypoint_table_map(model: BodyModel, names: list[str], table: dict, overrides: dict):
    """(index (K,) long, weight (K,) float) mapping keypoint ``names`` onto model landmarks.

    Args:
        model: the body model; its ``joint_names``, ``device`` and ``dtype`` are used.
        names: the K keypoint names of a convention, in order.
        table: keypoint name -> (landmark name in ``model.joint_names`` or None, weight).
        overrides: entries of the same form that replace ``table``'s for this convention.

    Keypoints the model has no landmark for get weight 0 (and index 0)."""
    index, weight = [], []
    for n in names:
        landmark, w = overrides.get(n, table.get(n, (None, 0.0)))
        index.append(model.joint_names.index(landmark) if landmark is not None else 0)
        weight.append(w if landmark is not None else 0.0)
    return (torch.tensor(index, dtype=torch.long, device=model.device),
            torch.tensor(weight, dtype=model.dtype, device=model.device))
