"""The world-landmark energy (bodyfit.fitting.world_landmarks): gradients, frames, and that the
detector's 3D landmarks fix a limb's depth that 2D keypoints alone leave wrong."""
from __future__ import annotations

import pytest
import torch

from bodyfit import Observations
from bodyfit.body_models.base import BodyOutput
from bodyfit.cameras import Camera
from bodyfit.fitting import Fitter
from bodyfit.fitting.energy import Evaluation
from bodyfit.fitting.world_landmarks import WorldLandmarksEnergy, bone_pairs, view_rotation

K = torch.tensor([[1000.0, 0, 500], [0, 1000.0, 500], [0, 0, 1]])


def _leg_pose(model, angle: float):
    """The default body (camera frame, facing the camera) with the right hip flexed by ``angle``
    radians about its lateral axis: > 0 moves the knee away from the camera, < 0 towards it."""
    p = model.default_params(1)
    p.body_pose = p.body_pose.clone()
    p.body_pose[0, model.pose_joint_names.index("upperleg01.R")] = torch.tensor([angle, 0.0, 0.0])
    return p


def _observe(model, params, world: bool):
    kpi, _ = model.keypoint_map("mediapipe33")
    lm = model(params, vertices=False).joints[:, kpi].detach()
    cam = Camera.identity(K[None], (1000, 1000))
    kp = torch.cat([cam.project(lm), torch.ones_like(lm[..., :1])], -1)
    root = lm[:, [23, 24]].mean(1, keepdim=True)
    return Observations.from_pictures(kp, (1000, 1000), K,
                                      world_keypoints=(lm - root) if world else None)


def test_world_term_recovers_depth_order_that_2d_alone_gets_wrong(anny):
    """The true right thigh swings towards the camera; the fit starts from it swung away (the
    same picture, nearly: 2D cannot tell). 2D alone stays there; with the world landmarks the
    knee comes in front of the hip."""
    truth, mirror = _leg_pose(anny, -0.5), _leg_pose(anny, 0.5)
    kpi, _ = anny.keypoint_map("mediapipe33")
    over = ["~stages.camera", "stages.body.free=[body_pose]", "stages.body.steps=150", "try_flip=false",
            "stages.body.weights.init_prior=0", "stages.body.weights.gmm_prior=0"]

    def knee_depth(result):
        lm = result.joints[0, kpi]
        return float(lm[26, 2] - lm[24, 2])  # right knee minus right hip, metres (+ = farther)

    true_depth = knee_depth(type("R", (), {"joints": anny(truth, vertices=False).joints})())
    assert true_depth < -0.05
    r2d = Fitter(anny, overrides=over + ["stages.body.weights.world_landmarks=0"])(
        _observe(anny, truth, world=True), mirror, vertices=False)
    r3d = Fitter(anny, overrides=over + ["stages.body.weights.world_landmarks=1.0"])(
        _observe(anny, truth, world=True), mirror, vertices=False)
    assert knee_depth(r2d) > 0.05, "2D alone was expected to keep the mirrored thigh"
    assert knee_depth(r3d) < -0.05
    assert abs(knee_depth(r3d) - true_depth) < 0.05
    assert bool(r3d.valid.all())


def test_no_world_landmarks_leaves_the_energy_out(anny):
    fitter = Fitter(anny, overrides=["stages.body.steps=2", "stages.camera.steps=2",
                                     "stages.body.weights.world_landmarks=0.01"])
    obs = _observe(anny, _leg_pose(anny, 0.0), world=False)
    assert WorldLandmarksEnergy(anny, fitter.config).prepare(fitter.problem(obs)) is None
    r = fitter(obs, vertices=False)
    assert "world_landmarks" in r.skipped_energies
    # all-zero landmarks (a view whose detector gave none) count as none
    obs0 = Observations.from_pictures(obs.keypoints[:, 0], (1000, 1000), K,
                                      world_keypoints=torch.zeros(1, 33, 3))
    assert WorldLandmarksEnergy(anny, fitter.config).prepare(fitter.problem(obs0)) is None


def test_world_keypoints_shape_is_checked():
    with pytest.raises(ValueError, match="world_keypoints"):
        Observations.from_pictures(torch.rand(2, 33, 3), (100, 100), world_keypoints=torch.zeros(2, 17, 3))
    with pytest.raises(ValueError, match="world_keypoints"):
        Observations(torch.rand(2, 1, 33, 3), [Camera.identity(K[None], (100, 100))],
                     world_keypoints=torch.zeros(2, 2, 33, 3))
    obs = Observations.from_pictures(torch.rand(3, 33, 3), (100, 100), world_keypoints=torch.rand(3, 33, 3))
    assert obs.index([2, 0]).world_keypoints.shape == (2, 1, 33, 3)


@pytest.mark.parametrize("frame", ["camera", "ray"])  # procrustes holds its rotation fixed (no gradient)
def test_gradient_matches_finite_differences(anny, frame):
    """d E / d landmarks against central differences (float64)."""
    fitter = Fitter(anny, overrides=[f"world_frame={frame}"])
    truth = _leg_pose(anny, -0.4)
    obs = _observe(anny, truth, world=True)
    problem = fitter.problem(obs)
    problem.cameras = [Camera(c.K.double(), c.R.double(), c.t.double(), c.image_size) for c in problem.cameras]
    problem.keypoints = problem.keypoints.double()
    problem.kp_weight = problem.kp_weight.double()
    energy = WorldLandmarksEnergy(anny, fitter.config)
    data = energy.prepare(problem)
    data = {k: v.double() if v.is_floating_point() else v for k, v in data.items()}
    joints0 = anny(_leg_pose(anny, 0.3), vertices=False).joints.detach().double()
    joints0 = joints0 + 0.01 * torch.randn_like(joints0)

    def f(j):
        ev = Evaluation(truth, truth, problem, anny, False, None, output=BodyOutput(joints=j, vertices=None,
                                                                                      faces=anny.faces))
        return energy(ev, data)

    assert torch.autograd.gradcheck(f, (joints0.requires_grad_(True),), eps=1e-6, atol=1e-5,
                                    check_undefined_grad=False)
    assert float(f(joints0).detach()) > 0


def test_ray_rotation_turns_z_onto_the_ray():
    kp = torch.zeros(1, 33, 3)
    kp[0, 23] = torch.tensor([900.0, 700.0, 1.0])
    kp[0, 24] = torch.tensor([800.0, 700.0, 1.0])
    R = view_rotation(kp, K[None], "ray", (23, 24))[0]
    ray = torch.linalg.solve(K, torch.tensor([850.0, 700.0, 1.0]))
    assert torch.allclose(R[:, 2], ray / ray.norm(), atol=1e-6)
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6) and float(torch.linalg.det(R)) > 0.99
    assert torch.equal(view_rotation(kp, K[None], "camera", (23, 24))[0], torch.eye(3))
    with pytest.raises(ValueError, match="world_frame"):
        view_rotation(kp, K[None], "sideways", (23, 24))
    assert len(bone_pairs("coco17")) == len(bone_pairs("mediapipe33"))


def test_observe_carries_world_landmarks_per_person():
    """pipeline.observe: each person's world landmarks go to their sample; a person without any
    gets zeros; nobody with any -> None."""
    import numpy as np

    from bodyfit.detectors.mediapipe_pose import Detection
    from bodyfit.pipeline import Scene, observe

    pic = np.zeros((100, 80, 3), np.uint8)
    kp = np.concatenate([np.random.rand(33, 2) * 50, np.ones((33, 1))], 1).astype(np.float32)
    world = np.random.rand(33, 3).astype(np.float32)
    det = Detection(keypoints=kp, box=np.array([0, 0, 50, 50], np.float32), mask=None,
                    image_size=(100, 80), world_keypoints=world)
    bare = Detection(keypoints=kp, box=det.box, mask=None, image_size=(100, 80))
    scene = Scene(pictures=[[pic]], out_names=["a", "b"])
    obs, _ = observe(scene, [[det, bare]], 55.0, dense=False, frames=[0, 0])
    assert obs.world_keypoints.shape == (2, 1, 33, 3)
    assert torch.allclose(obs.world_keypoints[0, 0], torch.as_tensor(world))
    assert not bool(obs.world_keypoints[1].any())
    assert obs.clean_world_keypoints()[1, 0, :, 3].sum() == 0
    obs, _ = observe(scene, [[bare, None]], 55.0, dense=False, frames=[0, 0])
    assert obs.world_keypoints is None


def test_flip_point_keeps_projection_and_length():
    from bodyfit.fitting.depth_flip import flip_point, place_on_ray

    p = torch.tensor([0.1, -0.2, 3.0])
    c = torch.tensor([0.3, 0.1, 3.2])
    c2 = flip_point(p, c)
    assert torch.allclose(c2[:2] / c2[2], c[:2] / c[2], atol=1e-6)  # same pixel
    assert torch.allclose((c2 - p).norm(), (c - p).norm(), atol=1e-6)
    assert float(c2[2]) < float(c[2])  # the other (nearer) root
    near = place_on_ray(p, c, (c - p).norm(), torch.tensor(True))
    assert torch.allclose(near, c2, atol=1e-5)
    assert torch.allclose(place_on_ray(p, c, (c - p).norm(), torch.tensor(False)), c, atol=1e-5)


def test_limb_flip_trial_fixes_a_mirrored_thigh(anny):
    """2D energy alone in the stage; the trial, triggered by the world landmarks, flips the
    thigh to the depth they say, and the fit keeps it (lower energy with the world term)."""
    truth, mirror = _leg_pose(anny, -0.5), _leg_pose(anny, 0.5)
    kpi, _ = anny.keypoint_map("mediapipe33")
    over = ["~stages.camera", "stages.body.free=[body_pose]", "stages.body.steps=60", "try_flip=false",
            "stages.body.weights.init_prior=0", "stages.body.weights.gmm_prior=0", "stages.body.weights.world_landmarks=0"]
    obs = _observe(anny, truth, world=True)
    start = lambda o: mirror  # noqa: E731  (a start the trials may question)
    plain = Fitter(anny, overrides=over + ["limb_flip=false"])(obs, vertices=False, start=start)
    flipped = Fitter(anny, overrides=over + ["limb_flip=false", "world_flip=1.0"])(obs, vertices=False, start=start)
    depth = lambda r: float(r.joints[0, kpi[26], 2] - r.joints[0, kpi[24], 2])  # noqa: E731
    assert depth(plain) > 0.05 and depth(flipped) < -0.05
    assert bool(flipped.valid.all()) and float(flipped.reprojection_error_px[0]) < 3.0
