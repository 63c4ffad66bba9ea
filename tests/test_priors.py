import torch

from bodyfit.priors import joint_limits, pose_prior, shape_prior


def _pose_with(anny, bone, axis, angle):
    p = anny.default_params(1).body_pose.clone()
    p[0, anny.pose_joint_names.index(bone), axis] = angle
    return p


def test_rest_pose_is_within_limits(anny):
    limits = joint_limits(anny)
    assert float(limits(anny.default_params(1).body_pose)) == 0.0


def test_knee_flexes_but_does_not_hyperextend(anny):
    limits = joint_limits(anny)
    # +X about lowerleg01 moves the ankle backward: flexion (measured in the Anny model).
    assert float(limits(_pose_with(anny, "lowerleg01.L", 0, 1.5))) == 0.0
    assert float(limits(_pose_with(anny, "lowerleg01.L", 0, -0.6))) > 0.1
    assert float(limits(_pose_with(anny, "lowerleg01.R", 0, -0.6))) > 0.1


def test_elbow_hyperextension_penalized_flexion_free(anny):
    limits = joint_limits(anny)
    k = list(limits.joint_index).index(anny.pose_joint_names.index("lowerarm01.L"))
    flex_axis = limits.frames[k, 0]
    bent = anny.default_params(1).body_pose.clone()
    bent[0, anny.pose_joint_names.index("lowerarm01.L")] = 1.5 * flex_axis
    assert float(limits(bent)) == 0.0
    bent[0, anny.pose_joint_names.index("lowerarm01.L")] = -0.7 * flex_axis
    assert float(limits(bent)) > 0.1
    # Elbow flexion brings the wrist up (+Z) and forward (-Y) in Anny's frame.
    p = anny.default_params(1)
    p.global_orient = torch.zeros(1, 3)
    p.body_pose = bent.clone()
    p.body_pose[0, anny.pose_joint_names.index("lowerarm01.L")] = 1.2 * flex_axis
    wrist = anny.joint_names.index("left_wrist")
    rest = anny.default_params(1)
    rest.global_orient = torch.zeros(1, 3)
    moved = anny(p, vertices=False).joints[0, wrist] - anny(rest, vertices=False).joints[0, wrist]
    assert moved[2] > 0.1 and moved[1] < -0.02


def test_limit_gradient_pushes_back_inside(anny):
    limits = joint_limits(anny)
    pose = _pose_with(anny, "lowerleg01.L", 0, -0.6).requires_grad_(True)
    limits(pose).sum().backward()
    assert pose.grad[0, anny.pose_joint_names.index("lowerleg01.L"), 0] < 0


def test_shape_and_pose_priors():
    assert float(shape_prior(torch.full((1, 6), 0.5), "phenotypes")) == 0.0
    assert float(shape_prior(torch.ones(1, 6), "phenotypes")) == 6.0
    assert float(shape_prior(torch.ones(1, 10), "betas")) == 10.0
    pose = torch.zeros(1, 5, 3)
    pose[0, 1, 0] = 0.5
    pose[0, 3, 0] = 1.0
    assert float(pose_prior(pose, [1, 2])) == 0.25
