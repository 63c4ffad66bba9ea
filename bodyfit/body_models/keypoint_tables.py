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

__all__ = ["ANNY_KEYPOINTS", "ANNY_KEYPOINT_OVERRIDES", "ANNY_LANDMARK_OFFSETS", "SMPL_KEYPOINTS",
           "SMPL_KEYPOINT_OVERRIDES", "keypoint_table_map", "landmark_shift_basis", "mirrored_offsets",
           "shifted_landmark_weights"]

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
# Where the detector puts Anny's regressed landmarks: rest-frame offsets (metres; Anny's frame: x to
# the body's left, -y forward, z up) of the left-side and middle landmarks, mirrored for the right
# side (x negated). Measured by scripts/calibrate_anny_landmarks.py: multi-view fits of Pose2Sim's
# demos (MediaPipe keypoints in 4 calibrated views, triangulated) leave these mean residuals.
# MediaPipe's ears sit about 45 mm inside and in front of the ears of Anny's COCO regressor.
ANNY_LANDMARK_OFFSETS: dict[str, tuple[float, float, float]] = {
    "nose": (0.000, -0.003, 0.014),
    "left_eye": (-0.008, -0.002, 0.010),
    "left_ear": (-0.028, -0.038, 0.006),
    "left_shoulder": (0.011, 0.009, 0.006),
    "left_elbow": (-0.001, 0.004, 0.003),
    "left_wrist": (0.006, 0.005, -0.006),
    "left_hip": (-0.006, -0.014, -0.010),
    "left_knee": (-0.005, 0.005, -0.001),
    "left_ankle": (-0.005, -0.014, 0.008),
    "left_heel": (-0.006, -0.014, 0.009),
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


def landmark_shift_basis(weights_row: torch.Tensor, rest_vertices: torch.Tensor, radius: float = 0.08,
                         min_vertices: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """How to move one regressed landmark ``l = w v`` by ``d`` (metres) in the rest pose.

    The change of ``w`` on the vertices within ``radius`` of ``l`` (at least the ``min_vertices``
    nearest) that solves ``sum dw (v - l) = d`` and ``sum dw = 0`` (the weights still sum to 1)
    with the least norm is ``dw[near] = G d``.

    Args:
        weights_row: (V,) the landmark's regressor weights. rest_vertices: (V,3) metres.
    Returns:
        ``(near, G)``: (n,) vertex indices and (n,3).
    """
    landmark = weights_row @ rest_vertices
    dist = (rest_vertices - landmark).norm(dim=-1)
    near = torch.nonzero(dist < radius).squeeze(1)
    if near.numel() < min_vertices:
        near = dist.topk(min_vertices, largest=False).indices
    M = torch.cat([(rest_vertices[near] - landmark).T,
                   torch.ones(1, len(near), dtype=rest_vertices.dtype, device=rest_vertices.device)])  # (4,n)
    return near, (M.T @ torch.linalg.inv(M @ M.T))[:, :3]


def mirrored_offsets(offsets: dict[str, tuple[float, float, float]]) -> dict[str, tuple[float, float, float]]:
    """``offsets`` with each ``left_`` entry's ``right_`` twin added, mirrored (x negated: Anny's
    rest frame has +x to the subject's left)."""
    table = dict(offsets)
    for n, d in offsets.items():
        if n.startswith("left_"):
            table.setdefault("right_" + n[5:], (-d[0], d[1], d[2]))
    return table


def shifted_landmark_weights(weights: torch.Tensor, rest_vertices: torch.Tensor, names: list[str],
                             offsets: dict[str, tuple[float, float, float]]) -> torch.Tensor:
    """Vertex-regressor weights whose landmarks sit ``offsets`` away from the given ones in the
    rest pose (:func:`landmark_shift_basis`); posed and reshaped, a shifted landmark follows the
    vertices near it (their skinning and blend shapes) as the regressed one does.

    Args:
        weights: (K,V) regressor weights (rows sum to 1). rest_vertices: (V,3) metres, rest pose.
        names: the K landmark names. offsets: name -> (3,) metres in the rest frame, mirrored
            onto right-side twins (:func:`mirrored_offsets`); names not in ``names`` are ignored.
    Returns:
        (K,V) weights; rows without an offset unchanged.
    """
    table = mirrored_offsets(offsets)
    out = weights.clone()
    for k, n in enumerate(names):
        if n in table:
            near, G = landmark_shift_basis(weights[k], rest_vertices)
            out[k, near] += G @ torch.tensor(table[n], dtype=weights.dtype, device=weights.device)
    return out
