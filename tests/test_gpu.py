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


def _grads(context, pos, tri, size, device):
    """d/dpos of a loss on interpolated attributes (barycentric path) and on an antialiased
    coverage (silhouette-edge path)."""
    pos = pos.to(device).clone().requires_grad_(True)
    tri = tri.to(device)
    g = torch.Generator().manual_seed(0)
    attr = torch.rand(pos.shape[1], 3, generator=g).to(device)
    weight = torch.rand(1, *size, 3, generator=g).to(device)
    rast, _ = ops.rasterize(context, pos, tri, size)
    image, _ = ops.interpolate(attr[None].expand(pos.shape[0], -1, -1).contiguous(), rast, tri)
    (image * weight).sum().backward()
    g_interp = pos.grad.detach().cpu().clone()
    pos.grad = None
    rast, _ = ops.rasterize(context, pos, tri, size)
    cover = ops.antialias((rast[..., 3:] > 0).float(), rast, pos, tri)
    (cover * weight[..., :1]).sum().backward()
    return g_interp, pos.grad.detach().cpu(), rast[..., 3].detach().cpu()


@needs_cuda
def test_nvdiffrast_gradients_match_torch(anny):
    if "nvdiffrast" not in backends.available_backends("cuda"):
        pytest.skip("nvdiffrast backend unavailable here (needs nvcc and diffrp-nvdiffrast)")
    pos, tri, size = _scene(anny)
    ref_i, ref_a, ref_ids = _grads(ops.RasterizeTorchContext(), pos, tri, size, "cpu")
    got_i, got_a, got_ids = _grads(ops.RasterizeCudaContext(), pos, tri, size, "cuda")
    covered = (ref_ids > 0) | (got_ids > 0)
    assert ((ref_ids == got_ids) & covered).sum() / covered.sum() > 0.98
    for ref, got in ((ref_i, got_i), (ref_a, got_a)):
        assert ref.abs().sum() > 0
        rel = (ref - got).norm() / ref.norm()
        cos = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0)
        # Edge pixels that the two rasterizers give to different triangles change a few
        # vertices' gradients; the field as a whole must agree.
        assert rel < 0.1 and cos > 0.99, (float(rel), float(cos))


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
