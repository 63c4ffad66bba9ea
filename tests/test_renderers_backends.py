"""Every rasterizer context against the pure-torch reference, on the Anny body; choosing one."""
import logging

import pytest
import torch

from bodyfit.cameras import default_intrinsics
from bodyfit.renderers import backends, ops

TORCH = ops.RasterizeTorchContext()


def _available(name):
    return name in backends.available_backends("cuda" if name == "nvdiffrast" else "cpu")


def _context(name):
    return backends.default_context("cuda" if name == "nvdiffrast" else "cpu", backend=name)


@pytest.fixture(scope="module")
def body_scene(anny):
    p = anny.default_params(1)
    p.transl = torch.tensor([[0.0, 0.1, 2.6]])
    p.body_pose[0, anny.pose_joint_names.index("lowerarm01.L"), 0] = -0.8
    verts = anny(p).vertices
    H = W = 384
    K = default_intrinsics((H, W))
    M = ops.clip_matrix(K, torch.eye(3)[None], torch.zeros(1, 3), (H, W))
    pos = torch.cat([verts, torch.ones_like(verts[..., :1])], -1) @ M.transpose(1, 2)
    return pos, anny.faces, (H, W)


@pytest.mark.parametrize("backend", ["moderngl", "nvdiffrast"])
def test_backend_agrees_with_torch(body_scene, backend):
    if not _available(backend):
        pytest.skip(f"{backend} backend unavailable here")
    pos, tri, size = body_scene
    device = "cuda" if backend == "nvdiffrast" else "cpu"
    ref, _ = ops.rasterize(TORCH, pos, tri, size)
    got, _ = ops.rasterize(_context(backend), pos.to(device), tri.to(device), size)
    got = got.cpu()
    ref_in, got_in = ref[..., 3] > 0, got[..., 3] > 0
    covered = ref_in | got_in
    same = (ref[..., 3] == got[..., 3]) & covered
    assert covered.sum() > 5000
    assert (ref_in ^ got_in).sum() / covered.sum() < 0.01
    # Where both name the same triangle, the barycentrics put the pixel at the same place in it:
    # within 0.02 px on screen (nvdiffrast snaps vertices to 1/256 px before rasterizing).
    screen = pos[..., :2] / pos[..., 3:] * pos.new_tensor([size[1] / 2, size[0] / 2])
    a, _ = ops.interpolate(screen, ref, tri)
    b, _ = ops.interpolate(screen, got, tri)
    assert (a - b).norm(dim=-1)[same].max() < 0.02
    # Where the ids differ, both must see the same surface: a tie on an edge the two triangles
    # share (OpenGL and nvdiffrast snap vertices and apply the top-left rule; the torch z-buffer
    # gives edge pixels to the lower id). Camera depth (clip w, metres) tells a tie from a wrong
    # occlusion.
    depth = pos[..., 3:]
    za, _ = ops.interpolate(depth, ref, tri)
    zb, _ = ops.interpolate(depth, got, tri)
    both = ref_in & got_in
    assert same.sum() / covered.sum() >= 0.9
    assert ((za - zb).abs()[..., 0][both] < 0.01).float().mean() >= 0.995


def test_moderngl_skips_triangles_behind_the_camera_like_torch():
    if not _available("moderngl"):
        pytest.skip("moderngl backend unavailable here")
    pos = torch.tensor([[[-0.9, -0.9, 0.5, 1.0], [0.9, -0.9, 0.5, 1.0], [0.0, 0.9, 0.5, 1.0],
                         [-0.9, -0.9, 0.0, 1.0], [0.9, -0.9, 0.0, 1.0], [0.0, 0.9, 0.0, -1.0]]])
    tri = torch.tensor([[3, 4, 5], [0, 1, 2]])
    a, _ = ops.rasterize(TORCH, pos, tri, (16, 16))
    b, _ = ops.rasterize(ops.RasterizeGLContext(), pos, tri, (16, 16))
    assert torch.isfinite(b).all()
    assert set(b[..., 3].unique().tolist()) <= {0.0, 2.0}
    assert ((a[..., 3] == b[..., 3]).float().mean()) > 0.95


def test_default_context_is_reported_shared_and_unavailable_ones_explain(caplog, monkeypatch):
    monkeypatch.setattr(backends, "_defaults", {})
    with caplog.at_level(logging.INFO, logger="bodyfit"):
        ctx = backends.default_context("cpu")
    best = backends.available_backends("cpu")[0]
    assert ctx.backend == best and best in backends.BACKENDS
    assert "rasterizer for cpu tensors" in caplog.text and type(ctx).__name__ in caplog.text
    assert backends.default_context("cpu") is ctx  # shared, created once
    assert isinstance(backends.default_context("cpu", "torch"), ops.RasterizeTorchContext)
    assert backends.resolve_backend("torch") == "torch"
    with pytest.raises(ValueError, match="backend must be"):
        backends.default_context("cpu", "opengl")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="nvdiffrast.*CUDA"):
            backends.default_context("cpu", "nvdiffrast")
        with pytest.raises(RuntimeError, match="CUDA"):
            ops.RasterizeCudaContext()


def test_no_silent_fallback_without_egl(monkeypatch):
    """RasterizeGLContext fails loudly, naming the alternative, where no EGL context exists."""
    from bodyfit.renderers import moderngl_backend

    def no_egl(self):
        raise moderngl_backend.ModernGLUnavailable("no headless EGL context (test)")
    monkeypatch.setattr(moderngl_backend.ModernGLTriangleIds, "__init__", no_egl)
    with pytest.raises(RuntimeError, match="RasterizeTorchContext"):
        ops.RasterizeGLContext()


@pytest.mark.gpu
def test_nvdiffrast_interpolate_and_antialias_match_cpu(body_scene):
    if not _available("nvdiffrast"):
        pytest.skip("nvdiffrast backend unavailable here (needs CUDA, nvcc, diffrp-nvdiffrast)")
    pos, tri, size = body_scene
    attr = pos[..., :3].clone()
    ref, _ = ops.rasterize(TORCH, pos, tri, size)
    got, _ = ops.rasterize(ops.RasterizeCudaContext(), pos.cuda(), tri.cuda(), size)
    same = (ref[..., 3] == got[..., 3].cpu()) & (ref[..., 3] > 0)
    a, _ = ops.interpolate(attr, ref, tri)
    b, _ = ops.interpolate(attr.cuda(), got, tri.cuda())
    assert (a[same] - b.cpu()[same]).abs().max() < 1e-4
    # antialias runs in torch on both devices; nvdiffrast's visibility must feed it the same
    # blends. A pixel whose 3x3 neighbourhood holds a triangle id the two rasterizers resolve
    # differently (edge ties) may blend differently: compare where the neighbourhood agrees.
    color = (ref[..., 3:] > 0).float()
    aa_cpu = ops.antialias(color, ref, pos, tri)
    aa_gpu = ops.antialias(color.cuda(), got, pos.cuda(), tri.cuda()).cpu()
    assert (aa_cpu - color).abs().sum() > 100  # the silhouette is blended
    differ = (ref[..., 3] != got[..., 3].cpu()).float()[:, None]
    near_tie = torch.nn.functional.max_pool2d(differ, 3, stride=1, padding=1)[:, 0] > 0
    diff = (aa_cpu - aa_gpu).abs()[..., 0][~near_tie]
    assert diff.max() < 0.02, f"antialias differs by up to {float(diff.max()):.2e}"
