import numpy as np
import pytest
import torch

from bodyfit.body_models import body_model
from bodyfit.cameras import Camera, default_intrinsics, project
from bodyfit.renderers import RasterizeTorchContext
from bodyfit.renderers.views import overlay_picture, render_maps, silhouette

TORCH = RasterizeTorchContext()


@pytest.fixture(scope="module")
def low_poly():
    return body_model("anny", topology="notoes_collapse3pc", dtype=torch.float64)


def _scene(model, size=(96, 96), depth=3.0):
    p = model.default_params(1, depth=depth)
    cam = Camera.identity(default_intrinsics(size, dtype=model.dtype), size)
    return p, cam


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_silhouette_gradient_matches_central_differences(low_poly, axis):
    """Per-pixel derivative of the antialiased silhouette under a shift of the body along
    camera x, y and z (depth: the outline shrinks), forward-mode autograd against central
    differences: the total moving coverage agrees within 10% and the maps point the same way."""
    p, cam = _scene(low_poly, (256, 256))
    faces = low_poly.faces
    base = low_poly(p).vertices.detach()
    direction = torch.eye(3, dtype=torch.float64)[axis]

    def sil(d):
        return silhouette(base + d * direction, faces, cam, TORCH)[0]

    zero, one = torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
    _, analytic = torch.autograd.functional.jvp(sil, zero, one)
    eps = 0.01  # metres: about 0.8 pixels at 3 m here
    fd = (sil(zero + eps) - sil(zero - eps)) / (2 * eps)
    assert fd.abs().sum() > 100  # the outline moves
    assert abs(float(analytic.abs().sum() / fd.abs().sum()) - 1) < 0.15
    cosine = float((analytic * fd).sum() / (analytic.norm() * fd.norm()))
    assert cosine > 0.75


def test_silhouette_gradient_on_the_full_mesh(anny):
    """The same check on the 27k-triangle mesh, whose outline triangles are thinner than a
    pixel (the case that defeats a search among the pixel's own triangle's edges)."""
    p = anny.default_params(1, depth=3.0)
    cam = Camera.identity(default_intrinsics((192, 192)), (192, 192))
    base = anny(p).vertices.detach()
    direction = torch.tensor([0.0, 1.0, 0.0])

    def sil(d):
        return silhouette(base + d * direction, anny.faces, cam, context=TORCH)[0]

    zero, one = torch.zeros(()), torch.ones(())
    _, analytic = torch.autograd.functional.jvp(sil, zero, one)
    fd = (sil(zero + 0.01) - sil(zero - 0.01)) / 0.02
    assert abs(float(analytic.abs().sum() / fd.abs().sum()) - 1) < 0.15
    assert float((analytic * fd).sum() / (analytic.norm() * fd.norm())) > 0.75


def test_render_maps_are_consistent(low_poly):
    p, cam = _scene(low_poly, (120, 80))
    out = low_poly(p)
    parts = torch.arange(low_poly.faces.shape[0]) % 7 + 1
    maps = render_maps(out.vertices, low_poly.faces, cam, face_attributes={"part": parts})
    mask = maps["mask"][0]
    assert 300 < int(mask.sum()) < 120 * 80 * 0.5
    # The surface point under each pixel projects back onto that pixel.
    ys, xs = torch.nonzero(mask, as_tuple=True)
    uv = project(maps["surface"][0][ys, xs][None], cam.K)[0]
    assert (uv - torch.stack([xs, ys], 1).to(uv)).abs().max() < 1e-3
    # Depth is the surface point's camera z; normals face the camera; parts only where covered.
    assert torch.allclose(maps["depth"][0][mask], maps["surface"][0][mask][:, 2], atol=1e-6)
    assert (maps["normals"][0][mask][:, 2] < 0.3).float().mean() > 0.8
    assert (maps["part"][0][~mask] == 0).all() and (maps["part"][0][mask] > 0).all()
    # Picture rows top-down: the first covered row is where the top of the head projects.
    top = out.vertices[0][out.vertices[0][:, 1].argmin()]
    top_row = project(top[None, None], cam.K)[0, 0, 1]
    assert abs(float(top_row) - float(ys.min())) < 2.0


def test_overlay_picture_shape_and_effect(low_poly):
    p, cam = _scene(low_poly, (64, 48))
    v = low_poly(p).vertices[0].float().numpy()
    img = np.zeros((64, 48, 3), np.uint8)
    pic = overlay_picture(img, v, low_poly.faces.numpy(), cam.K[0].float().numpy())
    assert pic.shape == (64, 96, 3) and pic.dtype == np.uint8
    assert pic[:, :48].max() > 50  # the mesh shows on the black picture
    assert (pic[:, 48:] < 200).any()  # and in the side view on grey


def test_overlay_renders_only_the_mesh_box_and_matches_the_full_frame(low_poly):
    from bodyfit.renderers.views import _shade_in_box, shade

    p, cam = _scene(low_poly, (200, 150))
    p.transl = p.transl + torch.tensor([[0.4, 0.2, 0.0]], dtype=p.transl.dtype)
    v = low_poly(p).vertices.float()
    f = low_poly.faces
    K = cam.K[0].float()
    full_rgb, full_a = shade(v, f, Camera.identity(K[None], (200, 150)))
    box_rgb, box_a = _shade_in_box(v, f, K, (200, 150))
    assert full_a.sum() > 100
    assert (full_rgb[0] - box_rgb).abs().max() < 0.05
    assert (full_a[0] - box_a).abs().max() < 0.05


def test_views_take_a_context(low_poly):
    p, cam = _scene(low_poly, (64, 48), depth=2.0)
    v = low_poly(p).vertices
    own = render_maps(v, low_poly.faces, cam, context=TORCH)["mask"]
    default = render_maps(v, low_poly.faces, cam)["mask"]  # default_context("cpu")
    assert own.sum() > 100 and (own == default).float().mean() > 0.99
    with pytest.raises(TypeError, match="default_context"):
        silhouette(v, low_poly.faces, cam, "torch")  # a backend name is no context
