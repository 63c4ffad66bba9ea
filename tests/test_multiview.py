import pytest
import torch

from bodyfit.body_models import body_model
from bodyfit.cameras import Camera
from bodyfit.data.synthetic import look_at_camera, sample_params, synthetic_views
from bodyfit import Fitter, Observations, fit_views, load_config
from bodyfit.fitting.energy import Evaluation, render_model
from bodyfit.fitting.start import camera_to_world
from bodyfit.fitting.texture import TextureConsistencyEnergy
from bodyfit.priors import temporal_smoothness

FAST = ["stages.camera.steps=20", "stages.body.steps=50", "stages.dense.steps=25"]


@pytest.fixture(scope="module")
def low_poly():
    return body_model("anny", topology="notoes_collapse3pc")


@pytest.fixture(scope="module")
def scene(low_poly):
    return synthetic_views(low_poly, 2, n_views=2, generator=torch.Generator().manual_seed(3))


def _pve_mm(result, scene):
    return float((result.vertices - scene.vertices).norm(dim=-1).mean() * 1000)


def test_camera_to_world_is_exact(low_poly):
    p = sample_params(low_poly, 3, torch.Generator().manual_seed(0))
    p.transl = torch.tensor([[0.1, -0.2, 3.0]]).expand(3, 3).clone()
    cam = look_at_camera((2.0, -0.5, -3.0))
    R, t = cam.R.expand(3, 3, 3), cam.t.expand(3, 3)
    world = camera_to_world(low_poly, p, R, t)
    j_cam = low_poly(p, vertices=False).joints
    j_world = low_poly(world, vertices=False).joints
    back = torch.einsum("bij,bnj->bni", R, j_world) + t[:, None]
    assert torch.allclose(back, j_cam, atol=1e-4)


def test_two_views_recover_the_body_and_the_silhouette_helps(low_poly, scene):
    kp_only = fit_views(scene.observations, low_poly, overrides=FAST + ["stages.dense.weights.silhouette=0",
                                                                  "stages.dense.weights.texture=0"])
    assert kp_only.valid.all()
    assert kp_only.skipped_energies == ["densepose", "temporal"]
    assert float(kp_only.reprojection_error_px.mean()) < 5.0  # pixels, 256 px pictures
    with_sil = fit_views(scene.observations, low_poly, overrides=FAST + ["stages.dense.weights.texture=0"])
    assert _pve_mm(kp_only, scene) < 90
    assert _pve_mm(with_sil, scene) < 0.9 * _pve_mm(kp_only, scene)  # 19.0 vs 23.1 mm at 20+50+25 steps


def test_bad_view_is_left_out_and_reported(low_poly, scene):
    bad = Camera(torch.zeros(1, 3, 3), torch.eye(3)[None], torch.zeros(1, 3), (256, 256))
    v = scene.observations
    r = fit_views(Observations(v.keypoints, [v.cameras[0], bad], names=["good", "broken"]), low_poly,
                  overrides=FAST)
    assert r.view_names == ["good", "broken"] and r.valid.all()
    assert all("broken" in m and "focal" in m for m in r.messages)
    assert torch.isnan(r.view_error_px[:, 1]).all() and torch.isfinite(r.view_error_px[:, 0]).all()
    only_bad = fit_views(Observations(v.keypoints[:, :1], [bad], names=["broken"]), low_poly, overrides=FAST)
    assert not only_bad.valid.any() and all("not fitted" in m for m in only_bad.messages)
    assert torch.isfinite(only_bad.params.transl).all()


def test_mismatched_observations_raise(low_poly, scene):
    v = scene.observations
    with pytest.raises(ValueError, match="mask of cam0"):
        Observations(v.keypoints, v.cameras, masks=[torch.ones(2, 10, 10), None], names=v.names)
    with pytest.raises(ValueError, match="IUV of cam1 .* resize the IUV"):
        Observations(v.keypoints, v.cameras, iuv=[None, torch.zeros(2, 3, 64, 64)], names=v.names)
    with pytest.raises(ValueError, match=r"keypoints must have shape \(B, V=2"):
        Observations(v.keypoints[:, :1], v.cameras)


def test_sequence_shares_shape_and_skips_a_frame_without_person(low_poly):
    sv = synthetic_views(low_poly, 4, n_views=2, generator=torch.Generator().manual_seed(5),
                         images=False, masks=False)
    kp = sv.observations.keypoints.clone()
    kp[2] = 0.0  # nobody in frame 2
    obs = Observations(kp, sv.observations.cameras, names=sv.observations.names, sequence=True)
    r = fit_views(obs, low_poly, overrides=FAST)
    assert r.valid.tolist() == [True, True, False, True]
    assert "not fitted" in r.messages[2]
    assert torch.isfinite(r.vertices).all()
    shapes = r.params.shape[r.valid]
    assert torch.allclose(shapes, shapes[:1].expand_as(shapes))


def test_temporal_smoothness_is_free_for_steady_motion_and_ignores_gaps():
    t = torch.arange(5, dtype=torch.float32)
    steady = torch.zeros(5, 2, 3)
    steady[..., 0] = t[:, None] * 0.1
    assert torch.allclose(temporal_smoothness(steady), torch.zeros(5), atol=1e-6)
    jerk = steady.clone()
    jerk[2, :, 1] = 0.3
    e = temporal_smoothness(jerk)
    assert e[2] > 0 and e[1] > 0 and e[0] == 0 and e[4] == 0
    gap = temporal_smoothness(jerk, torch.tensor([True, True, False, True, True]))
    assert torch.all(gap == 0)
    with pytest.raises(ValueError):
        temporal_smoothness(torch.zeros(5, 3))


def test_texture_energy_prefers_the_truth_and_its_gradient_matches_finite_differences():
    """Two views 45 degrees apart of a textured body: the energy is lowest at the true body, and
    its derivative under a sideways shift matches central differences (the visibility and the
    chosen pixels stay fixed for small steps, so the energy is smooth there, up to the kinks of
    bilinear sampling)."""
    from bodyfit.body_models.base import BodyOutput

    model = body_model("anny", topology="notoes_collapse3pc", dtype=torch.float64)
    sv = synthetic_views(model, 1, n_views=2, spread_deg=45.0, distance=3.0,
                         generator=torch.Generator().manual_seed(2), masks=False)
    cfg = load_config(name="fit_views")
    energy = TextureConsistencyEnergy(model, cfg)
    problem = Fitter(model, cfg).problem(sv.observations)
    data = energy.prepare(problem)
    direction = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)

    def e(d):
        out = BodyOutput(joints=None, vertices=sv.vertices + d * direction, faces=model.faces)
        return energy(Evaluation(None, None, problem, model, True, None, output=out), data)[0]

    at = {d: float(e(torch.tensor(d, dtype=torch.float64))) for d in (-0.03, 0.0, 0.03)}
    assert at[0.0] < 0.5 * min(at[-0.03], at[0.03])
    d0 = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(e(d0), d0)
    eps = 1e-5
    fd = (e(torch.tensor(0.01 + eps, dtype=torch.float64)) - e(torch.tensor(0.01 - eps, dtype=torch.float64))) / (2 * eps)
    # bilinear sampling is only piecewise smooth: 10%
    assert abs(float(grad) - float(fd)) < 0.1 * abs(float(fd))
    one_view = Fitter(model, cfg).problem(sv.observations.index(slice(0, 1)))
    one_view.observations.images[1] = None
    assert energy.prepare(one_view) is None  # one picture of one frame: nothing to compare


def test_dense_energies_render_a_low_poly_mesh_of_the_same_body(anny):
    coarse = render_model(anny, "notoes_collapse10pc")
    assert render_model(anny, None) is anny and render_model(anny, "default") is anny
    assert render_model(coarse, "notoes_collapse3pc") is coarse  # already low-poly: as is
    assert render_model(anny, "notoes_collapse10pc") is coarse and coarse.anny is anny.anny  # shared
    p = sample_params(anny, 2, torch.Generator().manual_seed(5))
    assert torch.allclose(coarse(p, vertices=False).joints, anny(p, vertices=False).joints)
    assert coarse.faces.shape[0] < anny.faces.shape[0] / 5
    # fitting the full mesh with the coarse one rendered: full-mesh result, and the silhouette
    # (rendered from the coarse mesh, observed on the full one) still helps
    sv = synthetic_views(anny, 1, n_views=2, generator=torch.Generator().manual_seed(6))
    views = Observations(sv.observations.keypoints, sv.observations.cameras, masks=sv.observations.masks,
                         names=sv.observations.names)
    base = FAST + ["render_topology=notoes_collapse10pc"]
    kp_only = fit_views(views, anny, overrides=base + ["stages.dense.weights.silhouette=0"])
    with_sil = fit_views(views, anny, overrides=base)
    assert with_sil.vertices.shape == sv.vertices.shape
    assert _pve_mm(with_sil, sv) < 0.9 * _pve_mm(kp_only, sv)
