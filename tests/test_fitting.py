import math

import pytest
import torch

from bodyfit.body_models.base import BodyParams
from bodyfit.cameras import Camera
from bodyfit.data.synthetic import synthetic_batch
from bodyfit.fitting import ReprojectionEnergy, fit, gmof, load_config
from bodyfit.fitting.optimizer import run_stage
from bodyfit.metrics import pa_mpjpe


def test_gmof_is_quadratic_near_zero_and_saturates():
    x = torch.tensor([1e-3, 1.0, 1e3])
    y = gmof(x, sigma=1.0)
    assert torch.allclose(y[0], torch.tensor(1e-6), rtol=1e-3)
    assert y[1] == 0.5
    assert 0.99 < y[2] <= 1.0


def test_reprojection_gradient_matches_finite_differences(anny):
    index, weight = anny.keypoint_map("coco17")
    energy = ReprojectionEnergy(index, weight.double(), 0.1)
    g = torch.Generator().manual_seed(1)
    joints = (torch.randn(2, len(anny.joint_names), 3, generator=g, dtype=torch.float64) * 0.3
              + torch.tensor([0, 0, 4.0], dtype=torch.float64))
    kp = torch.cat([torch.rand(2, 17, 2, generator=g, dtype=torch.float64) * 500,
                    torch.rand(2, 17, 1, generator=g, dtype=torch.float64)], -1)
    K = torch.tensor([[500.0, 0, 250], [0, 500, 250], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    cam = Camera.identity(K, (500, 500))
    scale = torch.tensor([400.0, 300.0], dtype=torch.float64)
    from bodyfit.body_models.base import BodyOutput

    def f(j):
        return energy(BodyOutput(j, None, anny.faces), cam, kp, scale)

    assert torch.autograd.gradcheck(f, (joints.requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_fit_recovers_known_bodies(anny):
    """Exact keypoints of bodies in known poses: the fit brings PA-MPJPE down to a few cm."""
    sb = synthetic_batch(anny, 6, "mediapipe33", noise=0.0, dropout=0.0,
                         generator=torch.Generator().manual_seed(3))
    r = fit(sb.keypoints, anny, "mediapipe33", K=sb.K, boxes=sb.boxes, vertices=False)
    assert r.valid.all()
    err_fit = pa_mpjpe(r.joints[:, :17], sb.joints[:, :17])
    err_init = pa_mpjpe(anny(r.init_params, vertices=False).joints[:, :17], sb.joints[:, :17])
    assert (r.reprojection_error_px / r.box_height_px).median() < 0.01
    assert err_fit.median() < 40.0
    assert err_fit.mean() < err_init.mean()
    assert torch.isfinite(r.params.body_pose).all()


def test_bad_samples_are_reported_and_the_rest_fitted(anny):
    sb = synthetic_batch(anny, 4, "coco17", noise=0.0, dropout=0.0,
                         generator=torch.Generator().manual_seed(4))
    kp = sb.keypoints.clone()
    kp[1, 3, 0] = math.nan
    kp[2, :, 2] = 0.0
    r = fit(kp, anny, "coco17", K=sb.K, overrides=["stages.1.steps=30"], vertices=False)
    assert r.valid.tolist() == [True, False, False, True]
    assert "NaN" in r.messages[1] and "keypoints with confidence" in r.messages[2]
    assert r.messages[0] is None and r.messages[3] is None
    for value in r.params.as_dict().values():
        assert torch.isfinite(value).all()
    assert torch.isfinite(r.reprojection_error_px[[0, 3]]).all()


def test_bad_shapes_and_arguments_raise(anny):
    with pytest.raises(ValueError, match=r"\(B, 33, 3\)"):
        fit(torch.zeros(2, 17, 3), anny, "mediapipe33", image_size=(100, 100))
    with pytest.raises(ValueError, match="image size"):
        fit(torch.zeros(1, 17, 3), anny, "coco17")
    with pytest.raises(ValueError, match="K must have shape"):
        fit(torch.zeros(2, 17, 3), anny, "coco17", K=torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError, match="convention"):
        fit(torch.zeros(1, 17, 3), anny, "coco18", image_size=(100, 100))


def test_config_overrides():
    cfg = load_config(["stages.1.steps=7", "init=mean"])
    assert cfg.stages[1].steps == 7 and cfg.init == "mean"
    with pytest.raises(ValueError, match="key=value"):
        load_config(["steps"])
    with pytest.raises(ValueError, match="no_such_key"):
        load_config(["no_such_key=1"])


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_run_stage_minimizes_and_freezes_non_finite_samples(anny, optimizer):
    target = torch.tensor([[0.1, 0.2, 5.0], [0.3, -0.1, 4.0], [0.0, 0.0, 3.0]])
    start = anny.default_params(3)

    def energy(p: BodyParams):
        e = ((p.transl - target) ** 2).sum(1)
        # Sample 2 blows up once it moves: its energy turns NaN away from the start.
        blown = (p.transl[2] - start.transl[2]).abs().sum() > 0.05
        e = torch.stack([e[0], e[1], torch.where(blown, torch.tensor(math.nan), e[2])])
        return {"data": e}

    res = run_stage(start, energy, free=["transl"], weights={"data": 1.0}, steps=200,
                    lr=0.05 if optimizer == "adam" else 1.0, optimizer=optimizer, check_every=5)
    assert torch.allclose(res.params.transl[:2], target[:2], atol=2e-2)
    assert res.failed.tolist() == [False, False, True]
    assert torch.isfinite(res.params.transl).all()
    assert (res.params.transl[2] - start.transl[2]).abs().sum() <= 0.05 + 1e-6
    with pytest.raises(ValueError, match="optimizer"):
        run_stage(start, energy, ["transl"], {"data": 1.0}, 1, 0.1, optimizer="sgd")
    with pytest.raises(ValueError, match="free parameters"):
        run_stage(start, energy, ["betas"], {"data": 1.0}, 1, 0.1)
