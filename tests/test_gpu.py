"""Checks that need CUDA (skipped cleanly without it): the nvdiffrast backend's gradients against
the pure-torch reference, and the same fit on CUDA and on CPU."""
import pytest
import torch

from bodyfit.cameras import default_intrinsics
from bodyfit.renderers import backends, ops

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _scene(anny, size=256):
    p = anny.default_params(2)
    p.transl = torch.tensor([[0.0, 0.1, 2.6], [0.2, 0.0, 3.2]])
    p.body_pose[:, anny.pose_joint_names.index("lowerarm01.L"), 0] = -0.8
    verts = anny(p).vertices
    K = default_intrinsics((size, size))
    M = ops.clip_matrix(K, torch.eye(3)[None], torch.zeros(1, 3), (size, size))
    pos = torch.cat([verts, torch.ones_like(verts[..., :1])], -1) @ M.transpose(1, 2)
    return pos.detach(), anny.faces, (size, size)


def _grads(context, pos, tri, size, device, keep):
    """d/dpos of a loss on interpolated attributes (barycentric path) and on an antialiased
    coverage (silhouette-edge path), counting only the pixels in ``keep`` (B,H,W)."""
    pos = pos.to(device).clone().requires_grad_(True)
    tri = tri.to(device)
    g = torch.Generator().manual_seed(0)
    attr = torch.rand(pos.shape[1], 3, generator=g).to(device)
    weight = (torch.rand(pos.shape[0], *size, 3, generator=g) * keep[..., None]).to(device)
    rast, _ = ops.rasterize(context, pos, tri, size)
    image, _ = ops.interpolate(attr[None].expand(pos.shape[0], -1, -1).contiguous(), rast, tri)
    (image * weight).sum().backward()
    g_interp = pos.grad.detach().cpu().clone()
    pos.grad = None
    rast, _ = ops.rasterize(context, pos, tri, size)
    cover = ops.antialias((rast[..., 3:] > 0).float(), rast, pos, tri)
    (cover * weight[..., :1]).sum().backward()
    return g_interp, pos.grad.detach().cpu()


def _triangle_ids(context, pos, tri, size, device):
    rast, _ = ops.rasterize(context, pos.to(device), tri.to(device), size)
    return rast[..., 3].cpu()


@needs_cuda
def test_nvdiffrast_gradients_match_torch(anny):
    if "nvdiffrast" not in backends.available_backends("cuda"):
        pytest.skip("nvdiffrast backend unavailable here (needs nvcc and diffrp-nvdiffrast)")
    pos, tri, size = _scene(anny)
    ref_ids = _triangle_ids(ops.RasterizeTorchContext(), pos, tri, size, "cpu")
    got_ids = _triangle_ids(ops.RasterizeCudaContext(), pos, tri, size, "cuda")
    # Sub-pixel triangles put many pixel centres within nvdiffrast's 1/256-px vertex snapping of
    # a shared edge, where the two rasterizers break the tie differently (the test of
    # test_renderers_backends checks that both name the same surface there). A pixel given to
    # another triangle moves its gradient to other vertices, so the comparison counts the pixels
    # whose 3x3 neighbourhood (antialiasing looks at neighbours) has the same ids in both.
    differ = (ref_ids != got_ids).float()[:, None]
    keep = torch.nn.functional.max_pool2d(differ, 3, stride=1, padding=1)[:, 0] == 0
    assert keep.float().mean() > 0.8 and (keep & (ref_ids > 0)).sum() > 2000
    ref_i, ref_a = _grads(ops.RasterizeTorchContext(), pos, tri, size, "cpu", keep)
    got_i, got_a = _grads(ops.RasterizeCudaContext(), pos, tri, size, "cuda", keep)
    for ref, got in ((ref_i, got_i), (ref_a, got_a)):
        ref_n, err = ref.norm(dim=-1), (ref - got).norm(dim=-1)  # per vertex
        hit = ref_n > 0
        assert hit.sum() > 300 and not bool(((got.norm(dim=-1) > 0) & ~hit).any())
        rel = err[hit] / (ref_n[hit] + 0.01 * ref_n[hit].median())
        # Barycentric gradients scale with 1/area: on the few sliver triangles nvdiffrast's
        # fixed-point vertex snapping shows (measured on an H100: per-vertex error median 0.3%,
        # 90th percentile 2.7%); a wrong convention or sign gives errors of order 100%.
        assert rel.median() < 0.01 and rel.quantile(0.9) < 0.05, rel.quantile(torch.tensor([0.5, 0.9]))


@needs_cuda
def test_fit_on_cuda_matches_cpu(anny):
    from bodyfit import Fitter, Observations
    from bodyfit.body_models import body_model
    from bodyfit.data.synthetic import synthetic_batch
    from bodyfit.metrics import pa_mpjpe

    sb = synthetic_batch(anny, 8, generator=torch.Generator().manual_seed(3))
    obs = Observations.from_pictures(sb.keypoints, K=sb.K, boxes=sb.boxes)
    cpu = Fitter(anny)(obs, vertices=False)
    gpu_model = body_model("anny", device="cuda")
    gpu = Fitter(gpu_model)(obs, vertices=False)
    assert gpu.params.transl.device.type == "cuda" and bool(gpu.valid.all())
    pa_cpu = pa_mpjpe(cpu.joints[:, :17], sb.joints[:, :17])
    pa_gpu = pa_mpjpe(gpu.joints[:, :17].cpu(), sb.joints[:, :17])
    # Float32 reductions differ between devices; the optimizer may end a little apart.
    assert (pa_gpu.mean() - pa_cpu.mean()).abs() < 5.0, (pa_cpu, pa_gpu)
    assert (gpu.error_over_box.cpu() - cpu.error_over_box).abs().max() < 0.005


@needs_cuda
@pytest.mark.parametrize("name", ["anny", "smpl"])
def test_cuda_graph_fit_matches_eager(name, anny, tmp_path, monkeypatch):
    """On CUDA, with cuda_graphs (the default) every Adam stage's step is captured and replayed,
    and the fit equals the eager one (cuda_graphs=false) to rounding."""
    import bodyfit.fitting.optimizer as optimizer
    from bodyfit import Fitter, Observations
    from bodyfit.body_models import body_model
    from bodyfit.data.synthetic import synthetic_batch

    if name == "anny":
        cpu_model, model = anny, body_model("anny", device="cuda")
    else:
        from synthetic_smpl import write_synthetic_smpl

        write_synthetic_smpl(tmp_path / "SMPL_NEUTRAL.npz", "npz")
        cpu_model, model = (body_model("smpl", model_path=str(tmp_path / "SMPL_NEUTRAL.npz"), device=d)
                            for d in ("cpu", "cuda"))
    captured, capture = [], optimizer.capture_step

    def counting(step, leaves):
        replay = capture(step, leaves)
        captured.append(replay is not None)
        return replay

    monkeypatch.setattr(optimizer, "capture_step", counting)
    sb = synthetic_batch(cpu_model, 64, generator=torch.Generator().manual_seed(3))
    obs = Observations.from_pictures(sb.keypoints, K=sb.K, boxes=sb.boxes)
    eager = Fitter(model, overrides=["cuda_graphs=false"])(obs, vertices=False)
    assert not captured
    graphed = Fitter(model)(obs, vertices=False)
    assert len(captured) >= 2 and all(captured), captured
    assert torch.equal(eager.valid, graphed.valid)
    assert (eager.joints - graphed.joints).abs().max() < 2e-3
