"""The label-swap trial (``try_mirror``): a detector that takes a person seen from behind for one
facing the camera swaps left and right; one view's fit then keeps the labels that fit clearly
better. Checked on the real case that motivated it: MediaPipe in Pose2Sim's cam02."""
from __future__ import annotations

import pytest
import torch

from bodyfit import Observations, fit
from bodyfit.body_models.conventions import keypoint_names, mirror_index

FRAME = 55  # cam02 sees the person from the front; MediaPipe labels them as seen from behind
COCO_IN_MP = [keypoint_names("mediapipe33").index(n) for n in keypoint_names("coco17")]  # COCO-17 among MP-33


@pytest.fixture(scope="module")
def frame(pose2sim_wheel):
    pytest.importorskip("mediapipe")
    from bodyfit.data.pose2sim import demo_cameras, demo_keypoints
    from bodyfit.triangulation import triangulate

    kp = torch.as_tensor(demo_keypoints([FRAME]))  # (1,4,33,3)
    cams = demo_cameras()
    return kp[0], cams, torch.as_tensor(triangulate(kp, cams))[0].float()  # reference (33,4)


def _pa(result, model, ref):
    from bodyfit.metrics import pa_mpjpe

    kpi, _ = model.keypoint_map("mediapipe33")
    ok = [k for k in COCO_IN_MP if ref[k, 3] > 0]
    return float(pa_mpjpe(result.joints[:, kpi][:, ok], ref[None, ok, :3])[0])


def test_swapped_detection_is_fitted_with_its_labels_swapped_back(frame, anny):
    kp, cams, ref = frame
    mirror = mirror_index("mediapipe33")
    # The detector's labels disagree with the 4-view triangulation, mirrored they agree.
    cam = cams.index(slice(1, 2))
    err = lambda k: float((cam.project(ref[None, :, :3])[0] - k[:, :2])[ref[:, 3] > 0].norm(dim=-1).median())  # noqa: E731
    assert err(kp[1][mirror]) < 0.3 * err(kp[1])

    over = ["stages.camera.steps=20", "stages.body.steps=60"]
    trial = fit(kp[1], anny, K=cam.K[0], image_size=cam.image_size, vertices=False, overrides=over)
    plain = fit(kp[1], anny, K=cam.K[0], image_size=cam.image_size, vertices=False,
                overrides=over + ["try_mirror=false"])
    assert "left and right keypoints swapped" in (trial.messages[0] or "")
    assert torch.equal(trial.keypoints[0, 0], kp[1][mirror].to(trial.keypoints.dtype))
    assert _pa(trial, anny, ref) < 0.6 * _pa(plain, anny, ref)
    assert bool(trial.valid.all()) and trial.flagged[0] is None


def test_correct_labels_are_kept(frame, anny):
    kp, cams, ref = frame
    cam = cams.index(slice(0, 1))
    r = fit(kp[0], anny, K=cam.K[0], image_size=cam.image_size, vertices=False,
            overrides=["stages.camera.steps=20", "stages.body.steps=60"])
    assert "keypoints swapped" not in (r.messages[0] or "") and torch.equal(r.keypoints[0, 0], kp[0].to(r.keypoints.dtype))


def test_a_given_start_without_a_start_function_is_not_second_guessed(frame, anny):
    from bodyfit import Fitter, initialize

    kp, cams, _ = frame
    cam = cams.index(slice(1, 2))
    obs = Observations.from_pictures(kp[1][None], cam.image_size, cam.K)
    fitter = Fitter(anny, overrides=["stages.camera.steps=5", "stages.body.steps=5"])
    r = fitter(obs, initialize(obs, anny), vertices=False)
    assert not r.messages[0]


def test_mirrored_samples_swap_labels_and_turn_world_landmarks_front_to_back():
    from bodyfit.fitting.fitter import _with_mirrored_labels

    kp = torch.rand(2, 33, 3) * 100
    world = torch.randn(2, 1, 33, 3)
    obs = Observations.from_pictures(kp, (200, 200), world_keypoints=world[:, 0])
    both = _with_mirrored_labels(obs)
    m = mirror_index("mediapipe33")
    assert both.batch_size == 4 and torch.equal(both.keypoints[:2], obs.keypoints)
    assert torch.equal(both.keypoints[2:], obs.keypoints[:, :, m])
    w = obs.world_keypoints[:, :, m]
    assert torch.equal(both.world_keypoints[2:, ..., :2], w[..., :2])
    assert torch.equal(both.world_keypoints[2:, ..., 2], -w[..., 2])
