"""nvdiffrast-style ops on the pure-torch context: coverage, barycentrics, conventions,
gradients, bad input; and nvdiffrast's documented usage run as written on our contexts."""
import math

import numpy as np
import pytest
import torch

import bodyfit.renderers
from bodyfit.cameras import project
from bodyfit.renderers import ops, zbuffer
from bodyfit.renderers.ops import antialias, clip_matrix, interpolate, texture

TORCH = ops.RasterizeTorchContext()


def rasterize(pos_clip, tri, resolution, **kwargs):
    """These tests pin the pure-torch context's exact semantics (edge ties, skipping);
    test_renderers_backends.py checks the other contexts against it."""
    return ops.rasterize(TORCH, pos_clip, tri, resolution, **kwargs)


def _centres(H, W):
    """NDC of the pixel centres, (H,W) each: nvdiffrast's grid."""
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64),
                          torch.arange(W, dtype=torch.float64), indexing="ij")
    return (2 * x + 1) / W - 1, (2 * y + 1) / H - 1


def _inside(tri2d, px, py):
    """Pixel centres strictly inside a 2D triangle (3,2), either winding."""
    a, b, c = tri2d

    def e(p, q):
        return (q[0] - p[0]) * (py - p[1]) - (q[1] - p[1]) * (px - p[0])
    e0, e1, e2 = e(b, c), e(c, a), e(a, b)
    return ((e0 > 0) & (e1 > 0) & (e2 > 0)) | ((e0 < 0) & (e1 < 0) & (e2 < 0))


def _homog(xyz):
    return torch.cat([xyz, torch.ones_like(xyz[..., :1])], -1)


def test_triangle_coverage_ids_and_empty_pixels():
    H, W = 9, 11
    xy = torch.tensor([[-0.83, -0.71], [0.77, -0.31], [-0.13, 0.88]])
    pos = torch.cat([xy, torch.full((3, 1), 0.3), torch.ones(3, 1)], -1)[None]
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast, rast_db = rasterize(pos, tri, (H, W))
    assert rast.shape == (1, H, W, 4) and rast.dtype == torch.float32
    assert rast_db.shape == (1, H, W, 4)
    px, py = _centres(H, W)
    expect = _inside(xy.double(), px, py)
    assert expect.sum() > 10
    covered = rast[0, ..., 3] > 0
    assert torch.equal(covered, expect)
    assert torch.all(rast[0, ..., 3][covered] == 1)
    assert torch.all(rast[0][~covered] == 0) and torch.all(rast_db[0][~covered] == 0)
    assert torch.allclose(rast[0, ..., 2][covered], torch.tensor(0.3))


def test_quad_ids_rows_and_barycentrics():
    # left half of the image, rows 0..1 of 4 at NDC y < 0 (row 0 is NDC y = -1)
    pos = torch.tensor([[[-1, -1, 0, 1], [0, -1, 0, 1], [0, 0, 0, 1], [-1, 0, 0, 1.0]]])
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast, rast_db = rasterize(pos, tri, (4, 4))
    ids = rast[0, ..., 3]
    assert torch.equal(ids > 0, torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0],
                                              [0, 0, 0, 0]], dtype=torch.bool))
    # diagonal from (-1,-1) to (0,0): pixel (x=1, y=0) is below it -> triangle 0 (id 1)
    assert ids[0, 1] == 1 and ids[1, 0] == 2
    # pixel (0,0) centre (-0.75,-0.75) lies on the diagonal: both triangles, the lower id wins
    assert ids[0, 0] == 1
    # u, v at pixel (x=1, y=0), centre (-0.25, -0.75) in triangle (v0, v1, v2)
    u, v = rast[0, 0, 1, 0].item(), rast[0, 0, 1, 1].item()
    p = u * pos[0, 0, :2] + v * pos[0, 1, :2] + (1 - u - v) * pos[0, 2, :2]
    assert torch.allclose(p, torch.tensor([-0.25, -0.75]), atol=1e-6)
    # rast_db in 1/pixel: u, v are affine here (w = 1), so one pixel step is the derivative
    ur = rast[0, 0, 1, :2] - rast[0, 0, 0, :2]  # same triangle, one pixel to the right
    assert torch.allclose(rast_db[0, 0, 1, [0, 2]], ur, atol=1e-6)


def test_interpolate_affine_attribute_and_barycentric_sum():
    torch.manual_seed(0)
    H, W = 16, 12
    pos = torch.tensor([[[-0.9, -0.8, 0.1, 1], [0.9, -0.9, 0.2, 1], [0.8, 0.9, 0.3, 1],
                         [-0.7, 0.95, 0.4, 1.0]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast, _ = rasterize(pos, tri, (H, W))
    cov = rast[0, ..., 3] > 0
    assert cov.sum() > 100
    u, v = rast[0, ..., 0], rast[0, ..., 1]
    assert torch.all((u[cov] >= -1e-9) & (v[cov] >= -1e-9) & (u[cov] + v[cov] <= 1 + 1e-9))
    A = torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)
    c = torch.tensor([0.25, -4.0], dtype=torch.float64)
    attr = pos[0, :, :2] @ A.T + c  # (V,C), shared by the batch
    out, da = interpolate(attr, rast, tri)
    assert da.shape == (1, H, W, 0) and out.shape == (1, H, W, 2)  # as nvdiffrast
    px, py = _centres(H, W)
    expect = torch.stack([px, py], -1) @ A.T + c
    assert torch.allclose(out[0][cov], expect[cov], atol=1e-10)
    assert torch.all(out[0][~cov] == 0)


def test_perspective_correct_slanted_quad():
    # a quad slanted in depth (z from 2 to 6 m), camera at the origin
    H, W = 24, 32
    K = torch.tensor([[[30.0, 0, 15.5], [0, 28.0, 11.5], [0, 0, 1]]], dtype=torch.float64)
    M = clip_matrix(K, torch.eye(3, dtype=torch.float64)[None],
                    torch.zeros(1, 3, dtype=torch.float64), (H, W))
    X = torch.tensor([[[-1.0, -0.8, 2.0], [1.0, -0.8, 2.0], [1.5, 1.2, 6.0],
                       [-1.5, 1.2, 6.0]]], dtype=torch.float64)
    pos = _homog(X) @ M.transpose(1, 2)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast, _ = rasterize(pos, tri, (H, W))
    cov = rast[0, ..., 3] > 0
    assert cov.sum() > 150
    P, _ = interpolate(X, rast, tri)  # world (= camera) positions at the pixel centres
    uv = project(P[0][cov][None], K)[0]
    rows, cols = torch.nonzero(cov, as_tuple=True)
    assert torch.allclose(uv, torch.stack([cols, rows], -1).double(), atol=1e-8)
    # screen-space (affine) interpolation would be off by pixels here
    zw = rast[0, ..., 2][cov]
    near, far = 0.01, 100.0
    z = P[0][cov][:, 2]
    expect = (far + near) / (far - near) - 2 * far * near / ((far - near) * z)
    assert torch.allclose(zw, expect, atol=1e-9)


def test_clip_matrix_matches_opencv_projection_top_down():
    torch.manual_seed(1)
    H, W = 40, 50
    ang = torch.tensor(0.3, dtype=torch.float64)
    R = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0],
                      [-math.sin(ang), 0, math.cos(ang)]], dtype=torch.float64)[None]
    t = torch.tensor([[0.1, -0.2, 4.0]], dtype=torch.float64)
    K = torch.tensor([[[60.0, 0.5, 24.0], [0, 55.0, 20.0], [0, 0, 1]]], dtype=torch.float64)
    M = clip_matrix(K, R, t, (H, W))
    assert M.shape == (1, 4, 4) and M.dtype == torch.float64
    X = torch.tensor([[[-0.6, -0.9, 0.2], [0.7, -0.5, -0.1], [0.0, 0.8, 0.3]]],
                     dtype=torch.float64)
    pos = _homog(X) @ M.transpose(1, 2)
    uv = project(X, K, R, t)[0]  # OpenCV pixels, centres at integers
    ndc = pos[0, :, :2] / pos[0, :, 3:]
    assert torch.allclose(ndc[:, 0], (uv[:, 0] + 0.5) / W * 2 - 1, atol=1e-12)
    assert torch.allclose(ndc[:, 1], (uv[:, 1] + 0.5) / H * 2 - 1, atol=1e-12)
    tri = torch.tensor([[0, 1, 2]])
    rast, _ = rasterize(pos, tri, (H, W))
    cov = rast[0, ..., 3] > 0
    P, _ = interpolate(X, rast, tri)
    rows, cols = torch.nonzero(cov, as_tuple=True)
    uvp = project(P[0][cov][None], K, R, t)[0]
    assert torch.allclose(uvp, torch.stack([cols, rows], -1).double(), atol=1e-8)
    # vertex 2 is the lowest in the picture (largest v): the covered rows near it are the
    # highest row indices, i.e. rast rows run top-down like the picture
    assert uv[2, 1] > uv[0, 1]
    assert rows.max() >= int(uv[2, 1]) - 1 and rows.min() <= int(uv[0, 1]) + 2
    # the triangle's centroid pixel is covered, at the OpenCV pixel it projects to
    cu, cv = project(X.mean(1, keepdim=True), K, R, t)[0, 0].round().long()
    assert cov[cv, cu]


def test_depth_test_nearest_wins_and_batch():
    # two full-screen-ish triangles, the second nearer in view 0 and farther in view 1
    base = torch.tensor([[-2.0, -2.0], [6.0, -2.0], [-2.0, 6.0]])
    def view(z0, z1):
        a = torch.cat([base, torch.full((3, 1), z0), torch.ones(3, 1)], -1)
        b = torch.cat([base, torch.full((3, 1), z1), torch.ones(3, 1)], -1)
        return torch.cat([a, b])
    pos = torch.stack([view(0.5, -0.2), view(-0.2, 0.5)])
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]])
    rast, _ = rasterize(pos, tri, (6, 7))
    assert torch.all(rast[0, ..., 3] == 2) and torch.all(rast[1, ..., 3] == 1)
    assert torch.allclose(rast[..., 2], torch.tensor(-0.2))
    # a (V,4) pos is a batch of one
    r1, _ = rasterize(pos[0], tri, (6, 7))
    assert torch.equal(r1, rast[:1])


def test_chunking_does_not_change_result(monkeypatch):
    torch.manual_seed(2)
    V = 60
    pos = torch.cat([torch.rand(1, V, 2) * 2 - 1, torch.rand(1, V, 1) * 0.8,
                     0.5 + torch.rand(1, V, 1)], -1)
    tri = torch.randint(0, V, (40, 3))
    ref, _ = rasterize(pos, tri, (20, 24))
    monkeypatch.setattr(zbuffer, "_CHUNK", 7)
    small, _ = rasterize(pos, tri, (20, 24))
    assert torch.equal(ref, small)


def test_triangles_behind_camera_skipped_and_depth_clip():
    pos = torch.tensor([[[-0.9, -0.9, 0.0, 1.0], [0.9, -0.9, 0.0, 1.0], [0.0, 0.9, 0.0, 1.0],
                         [-0.9, -0.9, 0.0, 1.0], [0.9, -0.9, 0.0, 1.0], [0.0, 0.9, 0.0, -1.0],
                         [-0.9, -0.9, 0.0, 0.0], [0.9, -0.9, 0.0, 1.0], [0.0, 0.9, 0.0, 1.0]]])
    pos[0, :3, 2] = 0.5  # the visible one is farther than the others would be
    tri = torch.tensor([[3, 4, 5], [6, 7, 8], [0, 1, 2]])
    rast, rast_db = rasterize(pos, tri, (8, 8))
    assert torch.isfinite(rast).all() and torch.isfinite(rast_db).all()
    ids = rast[0, ..., 3]
    assert (ids > 0).any() and torch.all((ids == 0) | (ids == 3))
    # everything behind: empty, no NaN
    rast, _ = rasterize(pos[:, 3:6], torch.tensor([[0, 1, 2]]), (8, 8))
    assert torch.all(rast == 0)
    # beyond the far plane (z/w > 1): discarded
    far = pos[:, :3].clone()
    far[..., 2] = 1.5
    rast, _ = rasterize(far, torch.tensor([[0, 1, 2]]), (8, 8))
    assert torch.all(rast == 0)


def test_empty_mesh():
    pos = torch.zeros(2, 0, 4)
    tri = torch.zeros(0, 3, dtype=torch.int32)
    rast, rast_db = rasterize(pos, tri, (5, 6))
    assert rast.shape == (2, 5, 6, 4) and torch.all(rast == 0) and torch.all(rast_db == 0)
    out, _ = interpolate(torch.zeros(2, 0, 3), rast, tri)
    assert out.shape == (2, 5, 6, 3) and torch.all(out == 0)
    color = torch.rand(2, 5, 6, 3)
    assert torch.equal(antialias(color, rast, pos, tri), color)


def test_bad_input():
    pos = torch.zeros(1, 3, 4)
    tri = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="pos must"):
        rasterize(torch.zeros(1, 3, 3), tri, (4, 4))
    with pytest.raises(ValueError, match="pos must"):
        rasterize(torch.zeros(1, 3, 4, dtype=torch.int32), tri, (4, 4))
    with pytest.raises(ValueError, match=r"tri must have shape \(F,3\)"):
        rasterize(pos, torch.tensor([0, 1, 2]), (4, 4))
    with pytest.raises(ValueError, match="tri must be int32 or int64"):
        rasterize(pos, tri.float(), (4, 4))
    with pytest.raises(ValueError, match=r"tri indices must lie in \[0, 3\)"):
        rasterize(pos, torch.tensor([[0, 1, 3]]), (4, 4))
    with pytest.raises(ValueError, match="tri indices"):
        rasterize(pos, torch.tensor([[0, -1, 2]]), (4, 4))
    with pytest.raises(ValueError, match="resolution"):
        rasterize(pos, tri, (0, 4))
    with pytest.raises(ValueError, match="resolution"):
        rasterize(pos, tri, 4)
    with pytest.raises(TypeError, match="context first"):
        ops.rasterize("torch", pos, tri, (4, 4))
    with pytest.raises(TypeError, match="context first"):
        ops.rasterize(pos, tri, (4, 4), (4, 4))
    with pytest.raises(TypeError):
        ops.rasterize(pos, tri, (4, 4))  # the call without a context
    with pytest.raises(ValueError, match="range mode"):
        rasterize(pos, tri, (4, 4), ranges=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="ranges row"):
        rasterize(pos[0], tri, (4, 4), ranges=torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="ranges must be"):
        rasterize(pos[0], tri, (4, 4), ranges=torch.zeros(0, 2, dtype=torch.int32))
    rast = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="attr"):
        interpolate(torch.zeros(3), rast, tri)
    with pytest.raises(ValueError, match="rast"):
        interpolate(torch.zeros(3, 2), torch.zeros(4, 4, 4), tri)
    with pytest.raises(ValueError, match="batch size"):
        interpolate(torch.zeros(3, 3, 2), rast, tri)
    bad = rast.clone()
    bad[0, 0, 0, 3] = 5
    with pytest.raises(ValueError, match="triangle ids"):
        interpolate(torch.zeros(3, 2), bad, tri)
    with pytest.raises(ValueError, match="tex"):
        texture(torch.zeros(4, 4, 3), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="uv"):
        texture(torch.zeros(1, 4, 4, 3), torch.zeros(1, 2, 2, 3))
    with pytest.raises(ValueError, match="filter_mode"):
        texture(torch.zeros(1, 4, 4, 3), torch.zeros(1, 2, 2, 2), filter_mode="linear-mipmap-linear")
    with pytest.raises(ValueError, match="boundary_mode"):
        texture(torch.zeros(1, 4, 4, 3), torch.zeros(1, 2, 2, 2), boundary_mode="cube")
    with pytest.raises(ValueError, match="batch size"):
        texture(torch.zeros(2, 4, 4, 3), torch.zeros(3, 2, 2, 2))
    with pytest.raises(ValueError, match="color"):
        antialias(torch.zeros(4, 4, 3), rast, pos, tri)
    with pytest.raises(ValueError, match="same B, H, W"):
        antialias(torch.zeros(1, 5, 4, 3), rast, pos, tri)
    eye = torch.eye(3)[None]
    with pytest.raises(ValueError, match=r"K must have shape \(B,3,3\)"):
        clip_matrix(torch.eye(3), eye, torch.zeros(1, 3), (4, 4))
    with pytest.raises(ValueError, match=r"t must have shape \(B,3\)"):
        clip_matrix(eye, eye, torch.zeros(3), (4, 4))
    with pytest.raises(ValueError, match="image_size"):
        clip_matrix(eye, eye, torch.zeros(1, 3), (0, 4))
    with pytest.raises(ValueError, match="near"):
        clip_matrix(eye, eye, torch.zeros(1, 3), (4, 4), near=0.0)
    with pytest.raises(ValueError, match="diff_attrs needs rast_db"):
        interpolate(torch.zeros(3, 2), rast, tri, diff_attrs="all")
    with pytest.raises(ValueError, match="diff_attrs"):
        interpolate(torch.zeros(3, 2), rast, tri, rast_db=torch.zeros(1, 4, 4, 4), diff_attrs=[2])


def test_texture_conventions():
    Ht, Wt = 3, 4
    tex = torch.arange(Ht * Wt, dtype=torch.float64).view(1, Ht, Wt, 1)
    i, j = torch.meshgrid(torch.arange(Ht, dtype=torch.float64),
                          torch.arange(Wt, dtype=torch.float64), indexing="ij")
    uv = torch.stack([(j + 0.5) / Wt, (i + 0.5) / Ht], -1)[None]
    assert torch.allclose(texture(tex, uv), tex)  # texel centres give the texel exactly
    assert torch.allclose(texture(tex, uv, filter_mode="nearest"), tex)
    assert torch.allclose(texture(tex, uv, boundary_mode="clamp"), tex)
    # v = 0 is row 0, u = 0 is column 0; halfway between two texel centres -> mean
    probe = torch.tensor([[[[0.01, 0.01], [0.25, 1 / 6], [0.5, 0.5], [0.99, 0.99]]]],
                         dtype=torch.float64)
    out = texture(tex, probe, boundary_mode="clamp")[0, 0, :, 0]
    assert torch.allclose(out, torch.tensor([0.0, 0.5, 5.5, 11.0], dtype=torch.float64))
    # nvdiffrast's default boundary mode is 'wrap'
    assert texture(tex, probe)[0, 0, 0, 0].item() == pytest.approx(
        texture(tex, probe, boundary_mode="wrap")[0, 0, 0, 0].item())
    # boundary modes just outside the left edge, on row 0
    outside = torch.tensor([[[[-0.125, 0.5 / Ht]]]], dtype=torch.float64)  # x = -1 texel
    assert texture(tex, outside, boundary_mode="clamp").item() == pytest.approx(0.0)
    assert texture(tex, outside, boundary_mode="wrap").item() == pytest.approx(3.0)
    assert texture(tex, outside, boundary_mode="zero").item() == pytest.approx(0.0)
    # shared texture (batch 1) for a batch of uv
    assert texture(tex, uv.expand(2, -1, -1, -1)).shape == (2, Ht, Wt, 1)


def _tiny_scene():
    # two triangles, slightly perspective (w varies), over an 8x8 image; no pixel centre
    # is near an edge, so the triangle ids do not change under gradcheck's perturbations
    pos = torch.tensor([[[-0.83, -0.77, 0.1, 1.1], [0.71, -0.93, 0.2, 0.9],
                         [0.13, 0.81, 0.3, 1.0], [-0.9, 0.6, 0.15, 1.2]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return pos, tri


def test_gradcheck_interpolate():
    pos, tri = _tiny_scene()
    attr = torch.randn(1, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def f(pos, attr):
        rast, _ = rasterize(pos, tri, (8, 8))
        return interpolate(attr, rast, tri)[0]
    assert (rasterize(pos, tri, (8, 8))[0][..., 3] > 0).sum() > 20
    assert torch.autograd.gradcheck(f, (pos.requires_grad_(), attr.requires_grad_()))


def test_gradcheck_texture():
    g = torch.Generator().manual_seed(4)
    tex = torch.randn(2, 4, 5, 3, dtype=torch.float64, generator=g)
    # uv away from the lines through texel centres (where bilinear weights have kinks)
    uv = (torch.randint(0, 5, (2, 3, 3, 2), generator=g) + 0.2 +
          0.6 * torch.rand(2, 3, 3, 2, dtype=torch.float64, generator=g)) / 5 - 0.1
    for mode in ("clamp", "wrap", "zero"):
        assert torch.autograd.gradcheck(
            lambda t, u: texture(t, u, boundary_mode=mode),
            (tex.clone().requires_grad_(), uv.clone().requires_grad_()))


def test_antialias_gradients_and_silhouette_only():
    pos, tri = _tiny_scene()
    rast, _ = rasterize(pos, tri, (8, 8))
    # flat colour on both triangles: the shared (non-silhouette) diagonal changes nothing,
    # the outer (silhouette) edges do
    color = torch.where(rast[..., 3:] > 0, torch.tensor(1.0, dtype=torch.float64),
                        torch.tensor(0.0, dtype=torch.float64))
    aa = antialias(color, rast, pos, tri)
    changed = (aa - color).abs() > 1e-12
    assert changed.any()
    ids = rast[0, ..., 3]
    # no change in pixels whose 4-neighbours are all covered (interior, incl. the diagonal)
    cov = ids > 0
    interior = cov.clone()
    interior[1:] &= cov[:-1]
    interior[:-1] &= cov[1:]
    interior[:, 1:] &= cov[:, :-1]
    interior[:, :-1] &= cov[:, 1:]
    interior[0] = interior[-1] = False
    interior[:, 0] = interior[:, -1] = False
    assert not changed[0, ..., 0][interior].any()
    assert (ids[interior] == 1).any() and (ids[interior] == 2).any()

    col = torch.randn(1, 8, 8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def f(col, pos):
        r, _ = rasterize(pos, tri, (8, 8))
        return antialias(col, r, pos, tri)
    assert torch.autograd.gradcheck(f, (col.requires_grad_(), pos.clone().requires_grad_()))
    # silhouette gradients reach the positions
    p = pos.clone().requires_grad_()
    antialias(color, rast, p, tri).sum().backward()
    assert p.grad.abs().sum() > 0
    # a precomputed topology gives the same result; a wrong one is refused
    topo = ops.antialias_construct_topology_hash(tri)
    assert torch.equal(topo, torch.tensor([[-1, -1, 1], [0, -1, -1]]))
    assert torch.equal(antialias(color, rast, pos, tri, topology_hash=topo), aa)
    with pytest.raises(ValueError, match="topology_hash"):
        antialias(color, rast, pos, tri, topology_hash=topo[:1])


def test_antialias_coverage_and_its_gradient_match_the_area():
    """Antialiased mask of one triangle: its sum is the triangle's area in pixels, and its
    derivative with respect to a scaling of the triangle is the area's (2 * area)."""
    H = W = 64
    tri = torch.tensor([[0, 1, 2]])
    base = torch.tensor([[-0.7, -0.2], [0.5, -0.6], [0.3, 0.75]], dtype=torch.float64)
    s = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    xy = base * s
    pos = torch.cat([xy, torch.zeros(3, 1, dtype=torch.float64),
                     torch.ones(3, 1, dtype=torch.float64)], -1)[None]
    rast, _ = rasterize(pos, tri, (H, W))
    mask = (rast[..., 3:] > 0).double()
    cov = antialias(mask, rast, pos, tri).sum()
    cov.backward()
    e1, e2 = base[1] - base[0], base[2] - base[0]
    area = 0.5 * abs(e1[0] * e2[1] - e1[1] * e2[0]).item() * (W / 2) * (H / 2)
    assert cov.item() == pytest.approx(area, rel=0.01)
    assert s.grad.item() == pytest.approx(2 * area, rel=0.03)


def test_body_silhouette_matches_projection():
    """The default body at ~5 m: covered pixels reproject onto themselves via the OpenCV camera."""
    from bodyfit.body_models import body_model
    from bodyfit.cameras import default_intrinsics

    m = body_model()
    out = m(m.default_params(1))
    verts, faces = out.vertices.detach(), out.faces
    H = W = 256
    K = default_intrinsics((H, W))
    M = clip_matrix(K, torch.eye(3)[None], torch.zeros(1, 3), (H, W))
    pos = _homog(verts) @ M.transpose(1, 2)
    rast, _ = rasterize(pos, faces, (H, W))
    cov = rast[0, ..., 3] > 0
    assert cov.sum() > 500
    P, _ = interpolate(verts, rast, faces)
    uv = project(P[0][cov][None], K)[0]
    rows, cols = torch.nonzero(cov, as_tuple=True)
    assert (uv - torch.stack([cols, rows], -1)).abs().max() < 1e-2
    # head (smallest camera y) at the top rows of the image
    head = project(verts[:, verts[0, :, 1].argmin()][None], K)[0, 0]
    assert abs(rows.min().item() - head[1].item()) < 3
    color, _ = interpolate(torch.rand(1, verts.shape[1], 3), rast, faces)
    aa = antialias(color, rast, pos, faces)
    assert torch.isfinite(aa).all() and not torch.equal(aa, color)
    assert np.isfinite(rast.numpy()).all()


def test_rast_db_matches_finite_differences_under_perspective():
    pos = torch.tensor([[[-0.8, -0.7, 0.1, 1.0], [2.1, -1.2, 0.2, 3.0], [0.3, 1.9, 0.3, 2.2]]],
                       dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]])
    H, W, h = 16, 20, 1e-4
    rast, rast_db = rasterize(pos, tri, (H, W))

    def shifted(dx, dy):  # the image sampled dx, dy pixels off the pixel centres
        p = pos.clone()
        p[..., 0] -= dx * 2 / W * p[..., 3]
        p[..., 1] -= dy * 2 / H * p[..., 3]
        return rasterize(p, tri, (H, W))[0]
    shots = [shifted(h, 0), shifted(-h, 0), shifted(0, h), shifted(0, -h)]
    cov = rast[..., 3] > 0
    for s in shots:
        cov &= s[..., 3] > 0
    assert cov.sum() > 50
    dX = (shots[0] - shots[1])[..., :2] / (2 * h)
    dY = (shots[2] - shots[3])[..., :2] / (2 * h)
    fd = torch.stack([dX[..., 0], dY[..., 0], dX[..., 1], dY[..., 1]], -1)
    assert torch.allclose(rast_db[cov], fd[cov], atol=1e-8)


def _context(kind):
    dr = bodyfit.renderers
    if kind == "gl":
        try:
            return dr.RasterizeGLContext()
        except dr.ModernGLUnavailable as e:
            pytest.skip(f"no OpenGL here: {e}")
    return dr.RasterizeTorchContext()


@pytest.mark.parametrize("kind", ["torch", "gl"])
def test_nvdiffrast_documented_usage_runs_as_written(kind):
    """nvdiffrast's own usage (its triangle sample), with ``dr`` being bodyfit.renderers."""
    dr = bodyfit.renderers
    glctx = _context(kind)
    pos = torch.tensor([[[-0.83, -0.71, 0, 1], [0.77, -0.31, 0, 1], [-0.13, 0.88, 0, 1]]],
                       dtype=torch.float32)
    col = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=torch.float32)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)

    rast, _ = dr.rasterize(glctx, pos, tri, resolution=[64, 48])
    out, _ = dr.interpolate(col, rast, tri)
    out = dr.antialias(out, rast, pos, tri)

    assert rast.shape == (1, 64, 48, 4) and out.shape == (1, 64, 48, 3)
    px, py = _centres(64, 48)
    expect = _inside(pos[0, :, :2].double(), px, py)
    covered = rast[0, ..., 3] > 0
    # the triangle covers exactly the pixel centres inside it (OpenGL may differ on a pixel
    # whose centre is within its 1/256-pixel vertex snapping of an edge)
    assert (covered != expect).sum() <= (0 if kind == "torch" else 2)
    assert expect.sum() > 500
    # the colours blend to 1 inside, so the antialiased picture sums to the triangle's area
    e1, e2 = pos[0, 1, :2] - pos[0, 0, :2], pos[0, 2, :2] - pos[0, 0, :2]
    area = 0.5 * abs(float(e1[0] * e2[1] - e1[1] * e2[0])) * (48 / 2) * (64 / 2)
    assert float(out.sum()) == pytest.approx(area, rel=0.02)
    assert torch.allclose(out[0][covered].sum(-1).max(), torch.tensor(1.0), atol=1e-5)


def test_contexts_agree_on_triangle_ids():
    gl = _context("gl")
    torch.manual_seed(7)
    V = 40
    pos = torch.cat([torch.rand(2, V, 2) * 2 - 1, torch.rand(2, V, 1) * 0.8,
                     torch.ones(2, V, 1)], -1)
    tri = torch.randint(0, V, (30, 3))
    a, _ = ops.rasterize(TORCH, pos, tri, (40, 50))
    b, _ = ops.rasterize(gl, pos, tri, (40, 50))
    same = a[..., 3] == b[..., 3]
    assert (a[..., 3] > 0).sum() > 1000
    assert same.float().mean() > 0.99
    assert torch.allclose(a[same], b[same], atol=1e-5)


def test_range_mode_and_output_db():
    pos = torch.tensor([[-0.9, -0.9, 0.2, 1.0], [0.9, -0.9, 0.2, 1.0], [0.0, 0.9, 0.2, 1.0],
                        [-0.5, -0.5, 0.1, 1.0], [0.5, -0.5, 0.1, 1.0], [0.0, 0.5, 0.1, 1.0]])
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    rast, rast_db = rasterize(pos, tri, (8, 8), ranges=torch.tensor([[0, 1], [1, 1]]))
    assert rast.shape == (2, 8, 8, 4) and rast_db.shape == (2, 8, 8, 4)
    assert set(rast[0, ..., 3].unique().tolist()) == {0.0, 1.0}
    assert set(rast[1, ..., 3].unique().tolist()) == {0.0, 2.0}  # ids index the whole tri
    alone, _ = rasterize(pos, tri[1:], (8, 8))
    assert torch.equal(rast[1, ..., :3], alone[0, ..., :3])
    # output_db=False: an empty rast_db, as nvdiffrast returns it
    _, db = ops.rasterize(ops.RasterizeTorchContext(output_db=False), pos[None], tri, (8, 8))
    assert db.shape == (1, 8, 8, 0)
    # grad_db: gradients of rast_db reach pos only when asked for
    p = pos[None].clone().requires_grad_()
    assert rasterize(p, tri, (8, 8))[1].requires_grad
    assert not rasterize(p, tri, (8, 8), grad_db=False)[1].requires_grad


def test_interpolate_pixel_derivatives():
    """diff_attrs: for w = 1 an attribute equal to NDC (x, y) has dA/dX = 2/W, dA/dY = 2/H."""
    H, W = 12, 10
    pos = torch.tensor([[[-0.83, -0.71, 0.3, 1.0], [0.77, -0.31, 0.3, 1.0],
                         [-0.13, 0.88, 0.3, 1.0]]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]])
    rast, rast_db = rasterize(pos, tri, (H, W))
    attr = pos[..., :2].clone()
    out, none = interpolate(attr, rast, tri)
    assert none.shape == (1, H, W, 0)
    out, da = interpolate(attr, rast, tri, rast_db=rast_db, diff_attrs="all")
    cov = rast[..., 3] > 0
    assert da.shape == (1, H, W, 4) and torch.all(da[~cov] == 0)
    want = torch.tensor([2 / W, 0.0, 0.0, 2 / H], dtype=torch.float64)
    assert torch.allclose(da[cov], want.expand(int(cov.sum()), 4), atol=1e-12)
    _, da_y = interpolate(attr, rast, tri, rast_db=rast_db, diff_attrs=[1])
    assert torch.equal(da_y, da[..., 2:])


def test_antialias_pos_gradient_boost():
    pos, tri = _tiny_scene()
    rast, _ = rasterize(pos, tri, (8, 8))
    color = (rast[..., 3:] > 0).double()
    grads = []
    for boost in (1.0, 2.5):
        p = pos.clone().requires_grad_()
        out = antialias(color, rast, p, tri, pos_gradient_boost=boost)
        out.sum().backward()
        grads.append(p.grad)
        assert torch.equal(out, antialias(color, rast, pos, tri))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[1], 2.5 * grads[0])
