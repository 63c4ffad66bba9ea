import pytest
import torch

from bodyfit.body_models import body_model
from bodyfit.body_models.base import BodyOutput
from bodyfit.data.synthetic import synthetic_views
from bodyfit import Fitter, Observations, fit_views, load_config
from bodyfit.densepose import anny_chart
from bodyfit.fitting.densepose import densepose_energy, sample_targets
from bodyfit.fitting.silhouette import SilhouetteEnergy, mask_energy
from bodyfit.renderers.views import silhouette
from bodyfit.metrics import pve


@pytest.fixture(scope="module")
def low_poly():
    return body_model("anny", topology="notoes_collapse3pc")


@pytest.fixture(scope="module")
def scene(low_poly):
    return synthetic_views(low_poly, 2, n_views=1, generator=torch.Generator().manual_seed(1),
                           iuv=True, distance=3.0)


def _out(vertices, model):
    return BodyOutput(joints=None, vertices=vertices, faces=model.faces)


def test_densepose_energy_is_zero_at_the_truth_and_its_gradient_matches(low_poly, scene):
    chart = anny_chart(low_poly)
    cam = scene.observations.cameras[0]
    camb = cam.expand(2)
    targets = sample_targets(chart, scene.observations.iuv[0], points=300, generator=torch.Generator().manual_seed(0))

    def energy(out, camera, t, scale):
        return densepose_energy(out.vertices, chart.faces, camera, t, scale, 0.3)

    assert targets.counts.tolist() == [300, 300]
    scale = torch.full((2,), 150.0)
    at_truth = energy(_out(scene.vertices, low_poly), camb, targets, scale)
    assert float(at_truth.max()) < 1e-6
    d = torch.tensor(0.03, requires_grad=True)
    shift = torch.stack([d, torch.zeros(()), torch.zeros(())])
    e = energy(_out(scene.vertices + shift, low_poly), camb, targets, scale).sum()
    (grad,) = torch.autograd.grad(e, d)
    eps = 1e-3
    hi = energy(_out(scene.vertices + torch.tensor([0.03 + eps, 0, 0]), low_poly), camb, targets, scale).sum()
    lo = energy(_out(scene.vertices + torch.tensor([0.03 - eps, 0, 0]), low_poly), camb, targets, scale).sum()
    assert float(e.detach()) > 1e-4 and grad > 0
    assert abs(float(grad) - float(hi - lo) / (2 * eps)) < 0.02 * abs(float(grad))


def test_silhouette_energy_prefers_the_truth_and_needs_masks(low_poly, scene):
    cam = scene.observations.cameras[0]
    camb = cam.expand(2)
    mask = scene.observations.masks[0]

    def energy(vertices, m):
        return mask_energy(silhouette(vertices, low_poly.faces, camb), m)

    truth = energy(scene.vertices, mask)
    moved = energy(scene.vertices + torch.tensor([0.05, 0, 0]), mask)
    assert torch.all(truth < 0.05) and torch.all(moved > 2 * truth)
    assert torch.all(energy(scene.vertices, torch.zeros_like(mask)) == 0)
    cfg = load_config(name="fit_views")
    no_masks = Observations(scene.observations.keypoints, scene.observations.cameras)
    assert SilhouetteEnergy(low_poly, cfg).prepare(Fitter(low_poly, cfg).problem(no_masks)) is None


def test_densepose_lowers_the_vertex_error_of_a_single_view_fit(low_poly):
    sv = synthetic_views(low_poly, 4, n_views=1, generator=torch.Generator().manual_seed(7),
                         iuv=True, distance=3.0, images=False, masks=False)
    fast = ["stages.camera.steps=20", "stages.body.steps=60", "stages.dense.steps=40"]
    kp = fit_views(sv.observations, low_poly, overrides=fast + ["stages.dense.weights.densepose=0"])
    dp = fit_views(sv.observations, low_poly, overrides=fast)
    assert "densepose" not in dp.skipped_energies
    e_kp = pve(kp.vertices, sv.vertices, kp.joints, sv.joints).mean()
    e_dp = pve(dp.vertices, sv.vertices, dp.joints, sv.joints).mean()
    assert e_dp < 0.95 * e_kp


def test_empty_densepose_foreground_is_reported(low_poly, scene):
    iuv = scene.observations.iuv[0].clone()
    iuv[1] = 0.0  # nobody in the second sample's IUV
    views = Observations(scene.observations.keypoints, scene.observations.cameras, iuv=[iuv], names=["cam0"])
    r = fit_views(views, low_poly, overrides=["stages.camera.steps=5", "stages.body.steps=5", "stages.dense.steps=5"])
    assert r.valid.all()
    assert r.messages[0] is None and "no DensePose foreground" in r.messages[1]
