import math

import pytest
import torch

from bodyfit.body_models.conventions import TORSO, keypoint_names
from bodyfit.cameras import Camera, default_intrinsics, init_translation, project


def test_default_intrinsics_from_field_of_view():
    K = default_intrinsics((480, 640), batch_size=2, fov_deg=55)
    f = 320 / math.tan(math.radians(27.5))
    assert K.shape == (2, 3, 3)
    assert torch.allclose(K[0], torch.tensor([[f, 0, 320], [0, f, 240], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="image_size"):
        default_intrinsics((0, 640))
    with pytest.raises(ValueError, match="fov"):
        default_intrinsics((480, 640), fov_deg=180)


def test_project_pinhole_and_extrinsics():
    K = torch.tensor([[[100.0, 0, 50], [0, 200, 60], [0, 0, 1]]])
    X = torch.tensor([[[1.0, -2.0, 4.0]]])
    assert torch.allclose(project(X, K), torch.tensor([[[75.0, -40.0]]]))
    # A camera moved 1 m along +x sees the point 1 m further left.
    cam = Camera(K, torch.eye(3)[None], torch.tensor([[-1.0, 0, 0]]), (120, 100))
    assert torch.allclose(cam.project(X), torch.tensor([[[50.0, -40.0]]]))
    behind = project(torch.tensor([[[0.1, 0.1, -1.0]]]), K)
    assert torch.isfinite(behind).all()
    with pytest.raises(ValueError, match="B,N,3"):
        project(torch.zeros(3, 3), K)


def test_init_translation_recovers_depth(anny):
    names = keypoint_names("coco17")
    index, weight = anny.keypoint_map("coco17")
    p = anny.default_params(1)
    p.transl = torch.zeros(1, 3)
    joints0 = anny(p, vertices=False).joints
    K = default_intrinsics((1000, 1000))
    true_t = torch.tensor([[0.3, -0.2, 6.0]])
    uv = project(joints0[:, index] + true_t[:, None], K)
    kp = torch.cat([uv, torch.ones(1, len(names), 1)], -1)
    t = init_translation(joints0, kp, index, weight, K, TORSO, names)
    assert abs(t[0, 2] - 6.0) < 0.3
    assert (t[0, :2] - true_t[0, :2]).abs().max() < 0.05
