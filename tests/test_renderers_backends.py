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
    covered = (ref[..., 3] > 0) | (got[..., 3] > 0)
    same = (ref[..., 3] == got[..., 3]) & covered
    assert covered.sum() > 5000
    assert (ref[..., :2][same] - got[..., :2][same]).abs().max() < 1e-5
    # Where the ids differ, both triangles must name the same surface point: a tie on the edge
    # they share (OpenGL snaps vertices to 1/256 px and applies the top-left rule; the torch
    # z-buffer gives edge pixels to the lower id).
    surface = pos[..., :3]
    a, _ = ops.interpolate(surface, ref, tri)
    b, _ = ops.interpolate(surface, got, tri)
    tie = ~same & covered & (ref[..., 3] > 0) & (got[..., 3] > 0) & ((a - b).norm(dim=-1) < 1e-3)
    assert same.sum() / covered.sum() >= 0.985
    assert (same | tie).sum() / covered.sum() >= 0.995


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
    color = (ref[..., 3:] > 0).float()
    aa_cpu = ops.antialias(color, ref, pos, tri)
    aa_gpu = ops.antialias(color.cuda(), got, pos.cuda(), tri.cuda()).cpu()
    # Antialiasing blends across silhouette edges, so a pixel whose 3x3 neighbourhood holds a
    # triangle id the two rasterizers resolve differently (depth ties) may blend differently.
    # Compare where the whole neighbourhood agrees.
    differ = (ref[..., 3] != got[..., 3].cpu()).float()[:, None]
    near_tie = torch.nn.functional.max_pool2d(differ, 3, stride=1, padding=1)[:, 0] > 0
    diff = (aa_cpu - aa_gpu).abs()[..., 0][~near_tie]
    assert diff.mean() < 1e-3, f"antialias differs by {float(diff.mean()):.2e} on average"
    assert (diff > 0.05).float().mean() < 0.005
