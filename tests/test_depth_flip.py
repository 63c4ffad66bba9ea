"""The limb-flip trial (``limb_flip``, bodyfit.fitting.depth_flip): a limb fitted at the wrong
one of its two depths is refitted flipped and kept where the energy says so; on synthetic
bodies of both families, and on a real Pose2Sim view where the trial fixes a leg."""
from __future__ import annotations

import pytest
import torch

from bodyfit import Observations, fit
from bodyfit.body_models.conventions import keypoint_names
from bodyfit.cameras import Camera
from bodyfit.fitting import Fitter
from bodyfit.fitting.config import ConfigError, load_config

K = torch.tensor([[1000.0, 0, 500], [0, 1000.0, 500], [0, 0, 1]])
#: 2D energy alone, pose only, from the given start: nothing but the trial can change the depth.
ONLY_2D = ["~stages.camera", "stages.body.free=[body_pose]", "stages.body.steps=60", "try_flip=false",
           "try_mirror=false", "stages.body.weights.init_prior=0", "stages.body.weights.gmm_prior=0",
           "stages.body.weights.pose_prior=0"]


def _thigh(model, hip: str, angle: float):
    """The default body facing the camera, 3 m in front of it, with the right hip flexed by
    ``angle`` radians about its lateral axis (< 0: the knee towards the camera)."""
    p = model.default_params(1)
    p.body_pose = p.body_pose.clone()
    p.body_pose[0, model.pose_joint_names.index(hip)] = torch.tensor([angle, 0.0, 0.0])
    if model.name != "anny":
        p.transl = torch.tensor([[0.0, 0.3, 3.0]])
    return p


def _knee_depth(model, joints):
    """Right knee minus right hip along the optical axis, metres (< 0: the knee is nearer)."""
    kpi, _ = model.keypoint_map("mediapipe33")
    return float(joints[0, kpi[26], 2] - joints[0, kpi[24], 2])


def _trial_flips_the_thigh(model, hip: str):
    truth, mirror = _thigh(model, hip, -0.9), _thigh(model, hip, 0.9)
    kpi, _ = model.keypoint_map("mediapipe33")
    lm = model(truth, vertices=False).joints[:, kpi].detach()
    kp = torch.cat([Camera.identity(K[None], (1000, 1000)).project(lm), torch.ones_like(lm[..., :1])], -1)
    obs = Observations.from_pictures(kp, (1000, 1000), K)
    assert _knee_depth(model, model(truth, vertices=False).joints) < -0.2
    runs = {flag: Fitter(model, overrides=ONLY_2D + [f"limb_flip={flag}"])(obs, vertices=False, start=lambda _: mirror)
            for flag in ("false", "true")}
    assert _knee_depth(model, runs["false"].joints) > 0.1, "2D alone was expected to keep the mirrored thigh"
    assert _knee_depth(model, runs["true"].joints) < -0.2
    assert float(runs["true"].energies["total"][0]) < float(runs["false"].energies["total"][0])
    assert bool(runs["true"].valid.all()) and runs["true"].flagged[0] is None
    assert "right leg refitted flipped in depth" in (runs["true"].messages[0] or "")
    assert "flipped in depth" not in (runs["false"].messages[0] or "")
    # a given init without a start function is refined, not questioned: no trial
    given = Fitter(model, overrides=ONLY_2D)(obs, mirror, vertices=False)
    assert _knee_depth(model, given.joints) > 0.1


def test_trial_flips_a_thigh_fitted_at_the_wrong_depth_anny(anny):
    _trial_flips_the_thigh(anny, "upperleg01.R")


def test_trial_flips_a_thigh_fitted_at_the_wrong_depth_smpl(tmp_path):
    from synthetic_smpl import write_synthetic_smpl

    from bodyfit.body_models import body_model

    smpl = body_model("smpl", model_path=write_synthetic_smpl(tmp_path / "SMPL_NEUTRAL.npz", "npz"))
    _trial_flips_the_thigh(smpl, "right_hip")


def test_limb_flip_config_is_checked():
    with pytest.raises(ConfigError, match="limb_flip_depth"):
        load_config(["limb_flip_depth=1.5"])
    with pytest.raises(ConfigError, match="limb_flip"):
        load_config(["limb_flip=sometimes"])
    with pytest.raises(ConfigError, match="limb_flip_reprojection"):
        load_config(["limb_flip_reprojection=0.9"])


def test_trial_fixes_a_real_view(pose2sim_wheel, anny):
    """Pose2Sim frame 89 in cam02 (held out of every fitted table): the leg the trial flips
    brings the single-view fit closer to the 4-view triangulation (59 -> 45 mm PA-MPJPE when
    measured)."""
    pytest.importorskip("mediapipe")
    from bodyfit.data.pose2sim import demo_cameras, demo_keypoints
    from bodyfit.metrics import pa_mpjpe
    from bodyfit.triangulation import triangulate

    kp = torch.as_tensor(demo_keypoints([89]))  # (1,4,33,3)
    cams = demo_cameras()
    ref = torch.as_tensor(triangulate(kp, cams))[0].float()
    cam = cams.index(slice(1, 2))
    kpi, _ = anny.keypoint_map("mediapipe33")
    coco = [keypoint_names("mediapipe33").index(n) for n in keypoint_names("coco17")]
    ok = [k for k in coco if ref[k, 3] > 0]

    def error(overrides):
        r = fit(kp[0, 1], anny, K=cam.K[0], image_size=cam.image_size, vertices=False, overrides=overrides)
        assert bool(r.valid.all()) and r.flagged[0] is None
        return float(pa_mpjpe(r.joints[:, kpi][:, ok], ref[None, ok, :3])[0])

    assert error([]) < error(["limb_flip=false"]) - 8.0
