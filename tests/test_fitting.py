import math

import pytest
import torch

from bodyfit import ConfigError, Fitter, Observations, fit, load_config
from bodyfit.body_models.base import BodyParams
from bodyfit.cameras import Camera
from bodyfit.data.synthetic import synthetic_batch
from bodyfit.fitting import ENERGIES, gmof
from bodyfit.fitting.optimizer import run_stage
from bodyfit.fitting.reprojection import reprojection
from bodyfit.metrics import pa_mpjpe


def test_gmof_is_quadratic_near_zero_and_saturates():
    x = torch.tensor([1e-3, 1.0, 1e3])
    y = gmof(x, sigma=1.0)
    assert torch.allclose(y[0], torch.tensor(1e-6), rtol=1e-3)
    assert y[1] == 0.5
    assert 0.99 < y[2] <= 1.0


def test_reprojection_gradient_matches_finite_differences(anny):
    index, weight = anny.keypoint_map("coco17")
    g = torch.Generator().manual_seed(1)
    joints = (torch.randn(2, len(anny.joint_names), 3, generator=g, dtype=torch.float64) * 0.3
              + torch.tensor([0, 0, 4.0], dtype=torch.float64))
    kp = torch.cat([torch.rand(2, 17, 2, generator=g, dtype=torch.float64) * 500,
                    torch.rand(2, 17, 1, generator=g, dtype=torch.float64)], -1)
    K = torch.tensor([[500.0, 0, 250], [0, 500, 250], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    cam = Camera.identity(K, (500, 500))
    scale = torch.tensor([400.0, 300.0], dtype=torch.float64)
    def f(j):
        return reprojection(j, cam, kp, scale, index, weight.double(), 0.1)

    assert torch.autograd.gradcheck(f, (joints.requires_grad_(True),), eps=1e-6, atol=1e-6)


def test_reprojection_equals_its_formula_with_the_same_gradients():
    """The hand-written backward against autograd through Camera.project and gmof: a rotated,
    moved camera, a keypoint read twice from one landmark, a landmark behind the camera."""
    import roma

    g = torch.Generator().manual_seed(1)
    B, J, K = 3, 10, 12
    joints = torch.randn(B, J, 3, generator=g, dtype=torch.float64) * 0.5 + torch.tensor([0, 0, 3.0], dtype=torch.float64)
    joints[0, 2, 2] = -1.0
    index = torch.randint(0, J, (K,), generator=g)
    index[1] = index[0]
    index[2] = 2
    kp = torch.cat([torch.rand(B, K, 2, generator=g, dtype=torch.float64) * 500,
                    torch.rand(B, K, 1, generator=g, dtype=torch.float64)], -1)
    K_ = torch.tensor([[500.0, 0, 250], [0, 480, 240], [0, 0, 1]], dtype=torch.float64).expand(B, 3, 3)
    cam = Camera(K_, roma.rotvec_to_rotmat(torch.randn(B, 3, generator=g, dtype=torch.float64) * 0.2),
                 torch.randn(B, 3, generator=g, dtype=torch.float64) * 0.1, (480, 500))
    scale = torch.tensor([400.0, 300.0, 200.0], dtype=torch.float64)
    weight = torch.rand(K, generator=g, dtype=torch.float64)
    joints.requires_grad_(True)
    fast = reprojection(joints, cam, kp, scale, index, weight, 0.1)
    r = (cam.project(joints[:, index]) - kp[..., :2]) / scale[:, None, None]
    slow = ((weight * kp[..., 2] ** 2)[..., None] * gmof(r, 0.1)).sum(dim=(1, 2))
    assert torch.allclose(fast, slow, atol=1e-14, rtol=1e-12)
    w = torch.rand(B, generator=g, dtype=torch.float64)
    g_fast, = torch.autograd.grad((fast * w).sum(), joints)
    g_slow, = torch.autograd.grad((slow * w).sum(), joints)
    assert torch.allclose(g_fast, g_slow, atol=1e-14, rtol=1e-12)


def test_fit_recovers_known_bodies(anny):
    """Exact keypoints of bodies in known poses: the fit brings PA-MPJPE down to a few cm. Twelve
    bodies: single-view depth is ambiguous, so a few fits end worse than their start, and six
    random bodies left the mean's margin to chance."""
    sb = synthetic_batch(anny, 12, "mediapipe33", noise=0.0, dropout=0.0,
                         generator=torch.Generator().manual_seed(3))
    r = fit(sb.keypoints, anny, "mediapipe33", K=sb.K, boxes=sb.boxes, vertices=False)
    assert r.valid.all()
    err_fit = pa_mpjpe(r.joints[:, :17], sb.joints[:, :17])
    err_init = pa_mpjpe(anny(r.init_params, vertices=False).joints[:, :17], sb.joints[:, :17])
    assert r.keypoints.shape == (12, 1, 33, 3) and r.view_error_px.shape == (12, 1)
    assert r.error_over_box.median() < 0.015  # 0.7-1.4% of the box after the default 80 steps
    assert err_fit.median() < 40.0
    assert err_fit.mean() < err_init.mean()
    assert torch.isfinite(r.params.body_pose).all()
    assert r.flagged == [None] * 12


def test_far_off_fits_are_flagged_not_reported_as_good(anny):
    """Keypoints no body can match (one sample scrambled): the fit is returned but flagged; the
    good sample beside it is not."""
    sb = synthetic_batch(anny, 2, "mediapipe33", noise=0.0, dropout=0.0, generator=torch.Generator().manual_seed(9))
    kp = sb.keypoints.clone()
    kp[1, :, :2] = kp[1, torch.randperm(33, generator=torch.Generator().manual_seed(0)), :2]
    r = fit(kp, anny, K=sb.K, image_size=sb.image_size, vertices=False,
            overrides=["stages.camera.steps=20", "stages.body.steps=40"])
    assert r.valid.all()
    assert r.flagged[0] is None
    assert "keypoint error above 5%" in r.flagged[1] and float(r.error_over_box[1]) > 0.05


def test_bad_samples_are_reported_and_the_rest_fitted(anny):
    sb = synthetic_batch(anny, 4, "coco17", noise=0.0, dropout=0.0,
                         generator=torch.Generator().manual_seed(4))
    kp = sb.keypoints.clone()
    kp[1, 3, 0] = math.nan
    kp[2, :, 2] = 0.0
    r = fit(kp, anny, "coco17", K=sb.K, overrides=["stages.body.steps=30", "limb_flip=false"], vertices=False)
    assert r.valid.tolist() == [True, False, False, True]
    assert "NaN" in r.messages[1] and "keypoints with confidence" in r.messages[2]
    assert r.messages[0] is None and r.messages[3] is None
    for value in r.params.as_dict().values():
        assert torch.isfinite(value).all()
    assert torch.isfinite(r.reprojection_error_px[[0, 3]]).all()


def test_bad_shapes_and_arguments_raise(anny):
    with pytest.raises(ValueError, match=r"\(B, V=1, 33, 3\)"):
        fit(torch.zeros(2, 17, 3), anny, "mediapipe33", image_size=(100, 100))
    with pytest.raises(ValueError, match="image size"):
        fit(torch.zeros(1, 17, 3), anny, "coco17")
    with pytest.raises(ValueError, match="K must have shape"):
        fit(torch.zeros(2, 17, 3), anny, "coco17", K=torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError, match="convention"):
        fit(torch.zeros(1, 17, 3), anny, "coco18", image_size=(100, 100))


def test_config_overrides_and_errors_name_the_key():
    cfg = load_config(["stages.body.steps=7", "init=mean", "+stages.body.weights.silhouette=0.5"])
    assert cfg.stages["body"].steps == 7 and cfg.init == "mean"
    assert cfg.stages["body"].weights["silhouette"] == 0.5
    assert list(load_config(["~stages.camera"]).stages) == ["body"]
    assert list(load_config(name="fit_views").stages) == ["camera", "body", "dense"]
    bad = {"steps": "key=value", "no_such_key=1": "no_such_key", "stages.body.steps=abc": "stages.body.steps",
           "stages.body.steps=0": "stages.body.steps", "stages.body.lr=-1": "stages.body.lr",
           "sigma=0": "sigma", "init=foo": "init", "fov_deg=179.5": "fov_deg", "check_every=0": "check_every",
           "try_flip=maybe": "try_flip", "ftol=abc": "ftol", "+stages.body.weights.nope=1": "nope",
           "stages.body.free=[shoulders]": "stages.body.free", "model=nope": "model/nope"}
    for override, key in bad.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config([override])


def test_observations_validate_once_and_flag_bad_samples(anny):
    cam = Camera.identity(torch.eye(3)[None] * 500 + torch.tensor([[0, 0, 250.0], [0, 0, 250], [0, 0, -499]]), (500, 500))
    kp = torch.rand(3, 1, 17, 3) * 400
    with pytest.raises(ValueError, match=r"\(B, V=2, 17, 3\)"):
        Observations(kp, [cam, cam], "coco17")
    with pytest.raises(ValueError, match="batch 2"):
        Observations(kp, [Camera(cam.K.expand(2, 3, 3), cam.R.expand(2, 3, 3), cam.t.expand(2, 3), (500, 500))], "coco17")
    with pytest.raises(ValueError, match="mask of view0"):
        Observations(kp, [cam], "coco17", masks=[torch.ones(3, 10, 10)])
    with pytest.raises(ValueError, match="no sample"):
        Observations(kp[:0], [cam], "coco17")
    with pytest.raises(ValueError, match="image_size"):
        Observations.from_pictures(kp[:, 0], image_size=500, convention="coco17")
    with pytest.raises(ValueError, match=r"boxes must have shape \(B,4\) = \(3,4\)"):
        Observations.from_pictures(kp[:, 0], image_size=(500, 500), convention="coco17", boxes=torch.zeros(1, 3))
    # per-sample problems: a zero, a negative and a NaN focal length, one good camera
    K = cam.K.expand(4, 3, 3).clone()
    K[0] = 0.0
    K[1, 0, 0] = -500.0
    K[2, 1, 1] = math.nan
    obs = Observations.from_pictures(torch.rand(4, 17, 3) * 400, K=K, image_size=(500, 500), convention="coco17")
    problems = obs.problems()
    assert "focal" in problems[0][0] and "focal" in problems[1][0] and "NaN" in problems[2][0]
    assert problems[3] == [] and obs.usable_views()[:, 0].tolist() == [False, False, False, True]


def test_fitter_precomputes_once_and_returns_one_result_type(anny):
    """One Fitter serves pictures and several views; energies_at names every energy in use."""
    sb = synthetic_batch(anny, 3, "mediapipe33", noise=0.0, dropout=0.0, generator=torch.Generator().manual_seed(5))
    fitter = Fitter(anny, load_config(["stages.camera.steps=10", "stages.body.steps=20"]))
    assert set(fitter.energies) == {"reprojection", "joint_limits", "pose_prior", "init_prior", "shape_prior", "gmm_prior"}
    limits = fitter.energies["joint_limits"].limits
    obs = Observations.from_pictures(sb.keypoints, K=sb.K, image_size=sb.image_size)
    r1 = fitter(obs, vertices=False)
    r2 = fitter(obs.index(slice(0, 2)), vertices=False)
    assert fitter.energies["joint_limits"].limits is limits
    assert r1.valid.all() and r2.valid.all() and r1.batch_size == 3 and r2.batch_size == 2
    at_truth = fitter.energies_at(obs, sb.params)
    assert set(at_truth) == set(fitter.energies)
    assert float(at_truth["reprojection"].max()) < 1e-6  # exact keypoints of the true body
    assert all(v.shape == (3,) for v in at_truth.values())


def test_flip_trial_turns_a_body_seen_from_the_side_only_where_needed(anny):
    """A body seen side-on, started facing the wrong way: the 180-degree trial runs for the
    ambiguous samples only and keeps the lower energy."""
    from bodyfit.body_models.conventions import keypoint_names
    from bodyfit.fitting.start import flip_about_vertical, torso_is_ambiguous

    sb = synthetic_batch(anny, 24, "mediapipe33", noise=0.0, dropout=0.0, generator=torch.Generator().manual_seed(8))
    ambiguous = torso_is_ambiguous(sb.keypoints, keypoint_names("mediapipe33"))
    pick = torch.cat([torch.nonzero(ambiguous)[:1, 0], torch.nonzero(~ambiguous)[:1, 0]])
    assert len(pick) == 2, "the seed must give one side-on and one frontal body"
    sb_kp, sb_K, truth = sb.keypoints[pick], sb.K[pick], sb.params.index(pick)
    obs = Observations.from_pictures(sb_kp, K=sb_K, image_size=sb.image_size)
    fitter = Fitter(anny, load_config(["stages.camera.steps=60", "~stages.body"]))
    start = truth.clone()
    start.global_orient = flip_about_vertical(start.global_orient)
    r = fitter(obs, start, vertices=False)
    no_flip = Fitter(anny, load_config(["stages.camera.steps=60", "~stages.body", "try_flip=false"]))(
        obs, start, vertices=False)
    assert r.energies["total"][0] < 0.01 * no_flip.energies["total"][0]  # side-on: the flip wins
    assert torch.allclose(r.params.global_orient[1], no_flip.params.global_orient[1], atol=1e-5)


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


def test_converged_samples_leave_the_batch_and_the_rest_go_on_unchanged(anny):
    """Pausing at compaction and going on with the samples still moving (their Adam moments
    and step count carried over) gives the fit of one uninterrupted stage, and samples that
    converge stop moving at their own step."""
    target = torch.tensor([[0.0, 0.0, 5.01], [0.3, -0.1, 4.0], [1.0, 1.0, 2.0], [0.0, 0.0, 5.2]])
    start = anny.default_params(4)

    def energy_of(rows):
        def energy(p: BodyParams):
            return {"data": ((p.transl - target[rows]) ** 2).sum(1) + 0.01}
        return energy

    kw = dict(free=["transl"], weights={"data": 1.0}, steps=300, lr=0.05, ftol=1e-4, check_every=5)
    whole = run_stage(start, energy_of(torch.arange(4)), **kw)
    assert whole.state is None and bool(whole.converged.all())
    assert whole.sample_steps.min() < whole.sample_steps.max() <= 300  # each stopped at its own step
    rows = torch.arange(4)
    part = run_stage(start, energy_of(rows), compact=0.75, **kw)
    assert part.state is not None and 0 < int(part.moving.sum()) <= 3
    paused, merged = part.state, part
    while part.state is not None:
        keep = torch.nonzero(part.moving).flatten()
        rows = rows[keep]
        part = run_stage(part.params.index(keep), energy_of(rows), compact=0.75,
                         state=part.state.index(keep), **kw)
        merged = merged.put(rows, part)
    assert torch.allclose(merged.params.transl, whole.params.transl, atol=1e-6)
    assert torch.equal(merged.sample_steps, whole.sample_steps) and bool(merged.converged.all())
    with pytest.raises(ValueError, match="resumed"):
        run_stage(start, energy_of(torch.arange(4)), optimizer="lbfgs", state=paused, **kw)


def test_compacting_fitter_gives_the_uncompacted_fit(anny, monkeypatch):
    import bodyfit.fitting.fitter as fitter_module

    batches = []

    def counting(params, *args, **kwargs):
        batches.append(params.batch_size)
        return run_stage(params, *args, **kwargs)

    monkeypatch.setattr(fitter_module, "run_stage", counting)
    sb = synthetic_batch(anny, 6, "mediapipe33", generator=torch.Generator().manual_seed(4))
    obs = Observations.from_pictures(sb.keypoints, K=sb.K, boxes=sb.boxes)
    results = []
    for c in (0, 0.9):
        batches.clear()
        results.append(Fitter(anny, overrides=["ftol=1e-2", "stages.body.steps=60", f"compact={c}"])(
            obs, vertices=False))
    assert any(b < 6 for b in batches)  # the compacted fit went on with fewer samples
    assert torch.allclose(results[0].joints, results[1].joints, atol=1e-4)
    assert torch.equal(results[0].converged, results[1].converged) and bool(results[0].converged.any())
