"""Soft joint limits from anatomical ranges of motion.

Each limited joint has an anatomical frame (flexion axis, abduction axis, twist axis along the
segment) and a box [lo, hi] in degrees per axis. The rotation vector of the joint is expressed
in that frame and every excess beyond the box is penalized quadratically, which also acts as
SMPLify's angle prior (no knee or elbow hyperextension: their flexion lower bound is ~0).

Ranges are the adult normal values of the American Academy of Orthopaedic Surgeons, "Joint
Motion: Method of Measuring and Recording" (AAOS 1965), as tabulated by Soucie et al. 2011,
"Range of motion measurements: reference values and a database for comparison studies",
Haemophilia 17(3):500-507. Spine and neck totals are split evenly over Anny's bones.
"""
from __future__ import annotations

import math

import torch

# bone: (flexion direction, abduction direction, (flex lo, hi), (abd lo, hi), (twist lo, hi)) deg.
# Directions say where the distal end of the segment moves under positive flexion / abduction,
# in Anny's rest frame (Z up, -Y anterior, +X the subject's left).
_ANT, _POST, _UP = (0.0, -1.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
_LEFT, _RIGHT = (1.0, 0.0, 0.0), (-1.0, 0.0, 0.0)


def _side(spec_l: tuple, side: str) -> tuple:
    flex_dir, abd_dir, *ranges = spec_l
    if side == "R":
        abd_dir = tuple(-c if i == 0 else c for i, c in enumerate(abd_dir))
    return (flex_dir, abd_dir, *ranges)


_LIMB_SPECS = {
    # hip: flexion 120, extension 30, abduction 45, adduction 30, rotation 45/45
    "upperleg01": (_ANT, _LEFT, (-30, 120), (-30, 45), (-45, 45)),
    # knee: flexion 135, no hyperextension (5 deg slack), little rotation
    "lowerleg01": (_POST, _LEFT, (-5, 140), (-5, 5), (-15, 15)),
    # ankle: dorsiflexion 20 (toes up), plantarflexion 50; inversion/eversion ~25
    "foot": (_UP, _LEFT, (-50, 20), (-25, 25), (-20, 20)),
    # shoulder: flexion 180, extension 60, abduction 180, adduction 30 (anatomical zero, arm down)
    "upperarm01": (_ANT, _LEFT, (-60, 180), (-30, 180), (-80, 80)),
    # elbow: flexion 150, no hyperextension; pronation/supination 80 lives in the forearm
    "lowerarm01": (_ANT, _LEFT, (-5, 150), (-10, 10), (-80, 80)),
    # wrist: flexion 80, extension 70, radial 20, ulnar 30 (palm orientation varies: symmetric)
    "wrist": (_ANT, _LEFT, (-75, 75), (-30, 30), (-15, 15)),
}
# Thoracolumbar: flexion 80, extension 25, lateral 35, rotation 45 -> split over 3 bones.
# Cervical: flexion 50, extension 60, lateral 45, rotation 80 -> neck01 takes 2/3, head 1/3.
_AXIAL_SPECS = {
    "spine05": ((-9, 27), (-12, 12), (-15, 15)),
    "spine03": ((-9, 27), (-12, 12), (-15, 15)),
    "spine01": ((-9, 27), (-12, 12), (-15, 15)),
    "neck01": ((-40, 34), (-30, 30), (-54, 54)),
    "head": ((-20, 17), (-15, 15), (-27, 27)),
}


class JointLimits(torch.nn.Module):
    """Soft box limits on joint rotations expressed in anatomical frames.

    Args:
        joint_index: (M,) indices into ``body_pose``'s joint dimension.
        frames: (M,3,3) rows = flexion, abduction, twist axes (unit vectors, parent frame).
        lo: (M,3) lower limits, radians.
        hi: (M,3) upper limits, radians.

    ``forward(body_pose (B,P,3)) -> (B,)`` squared radians of excess beyond the limits.
    """

    def __init__(self, joint_index, frames, lo, hi):
        super().__init__()
        self.register_buffer("joint_index", torch.as_tensor(joint_index, dtype=torch.long))
        self.register_buffer("frames", torch.as_tensor(frames))
        self.register_buffer("lo", torch.as_tensor(lo, dtype=self.frames.dtype))
        self.register_buffer("hi", torch.as_tensor(hi, dtype=self.frames.dtype))

    def angles(self, body_pose: torch.Tensor) -> torch.Tensor:
        """(B,M,3) rotation vectors of the limited joints in their anatomical frames, radians
        (one broadcast product: fewer operations per step than an einsum)."""
        return (body_pose.index_select(1, self.joint_index)[:, :, None, :] * self.frames).sum(-1)

    def forward(self, body_pose: torch.Tensor) -> torch.Tensor:
        a = self.angles(body_pose)
        excess = a - torch.clamp(a, self.lo, self.hi)  # beyond hi: a - hi, below lo: -(lo - a)
        return (excess * excess).sum(dim=(1, 2))


def _frame(direction: torch.Tensor, flex_dir, abd_dir) -> torch.Tensor:
    """Rows: flexion axis, abduction axis, twist axis for a segment along ``direction``.

    Rotating by +theta about ``a = d x m`` moves the segment's end towards ``m``."""
    d = direction / direction.norm()
    a_flex = torch.linalg.cross(d, torch.tensor(flex_dir, dtype=d.dtype))
    a_flex = a_flex / a_flex.norm()
    a_abd = torch.linalg.cross(d, torch.tensor(abd_dir, dtype=d.dtype))
    a_abd = a_abd - (a_abd @ a_flex) * a_flex
    a_abd = a_abd / a_abd.norm()
    return torch.stack([a_flex, a_abd, d])


def anny_joint_limits(model) -> JointLimits:
    """Joint limits for ``bodyfit.body_models.anny_model.AnnyModel``.

    Frames are built from the mean body's rest bone directions; Anny's rest pose holds the arms
    about 45 degrees out (an A-pose), so the shoulder box is shifted by the rest abduction to stay
    relative to the anatomical zero (arm hanging down)."""
    params = model.default_params(1)
    coeffs = model.anny._get_phenotype_blendshape_coefficients(
        params.shape, params.shape.new_zeros(1, 0), params.shape.new_zeros(1, 0))
    rest = model._skeleton.get_rest_model(coeffs)
    heads = rest["rest_bone_heads"][0].double().cpu()  # limits are built on the CPU, then moved
    parents = [int(p) for p in model.anny.bone_parents]
    names = model.pose_joint_names
    idx, frames, lo, hi = [], [], [], []
    for bone in names:
        base, _, side = bone.partition(".")
        j = model.bone_labels.index(bone)
        children = [c for c, p in enumerate(parents) if p == j]
        direction = heads[children].mean(0) - heads[j] if children else heads[j] - heads[parents[j]]
        if base in _LIMB_SPECS and side:
            flex_dir, abd_dir, fr, ar, tr = _side(_LIMB_SPECS[base], side)
            frame = _frame(direction, flex_dir, abd_dir)
            ar = tuple(ar)
            if base == "upperarm01":
                rest_abd = math.degrees(math.acos(max(-1.0, min(1.0, float(-direction[2] / direction.norm())))))
                ar = (ar[0] - rest_abd, ar[1] - rest_abd)
        elif bone in _AXIAL_SPECS:
            fr, ar, tr = _AXIAL_SPECS[bone]
            # Axial bones point up: flexion bends forward, abduction bends to the left.
            frame = _frame(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), _ANT, _LEFT)
        else:
            continue
        idx.append(names.index(bone))
        frames.append(frame)
        lo.append([math.radians(fr[0]), math.radians(ar[0]), math.radians(tr[0])])
        hi.append([math.radians(fr[1]), math.radians(ar[1]), math.radians(tr[1])])
    return JointLimits(idx, torch.stack(frames).to(model.dtype), lo, hi)


def smpl_joint_limits(model) -> JointLimits:
    """SMPLify's angle prior as limits for SMPL-family models: knees flex about +x, the left
    elbow about -y and the right elbow about +y (Bogo et al. 2016); no hyperextension beyond
    ~6 degrees, other axes free."""
    big = math.pi
    spec = {"left_knee": (0, 1), "right_knee": (0, 1), "left_elbow": (1, -1), "right_elbow": (1, 1)}
    idx, lo, hi = [], [], []
    for name, (axis, sign) in spec.items():
        if name not in model.pose_joint_names:
            continue
        l, h = [-big] * 3, [big] * 3
        l[axis], h[axis] = (-0.1, 2.7) if sign > 0 else (-2.7, 0.1)
        idx.append(model.pose_joint_names.index(name))
        lo.append(l)
        hi.append(h)
    frames = torch.eye(3, dtype=model.dtype).expand(len(idx), 3, 3).clone()
    return JointLimits(idx, frames, lo, hi)
