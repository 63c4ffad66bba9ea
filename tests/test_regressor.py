import roma
import torch
import pytest

from bodyfit.data.synthetic import synthetic_batch
from bodyfit.metrics import pa_mpjpe
from bodyfit.regressors.keypoint_regressor import (KeypointRegressor, load_regressor,
                                                   normalize_keypoints, weights_path)


def test_normalization_is_invariant_to_image_placement_and_scale():
    g = torch.Generator().manual_seed(0)
    kp = torch.cat([torch.rand(2, 33, 2, generator=g) * 300 + 100, torch.rand(2, 33, 1, generator=g)], -1)
    kp[0, 5, 2] = 0.0
    boxes = torch.tensor([[90.0, 80, 420, 410], [100, 100, 400, 420]])
    moved = kp.clone()
    moved[..., :2] = moved[..., :2] * 2.5 + torch.tensor([40.0, -7.0])
    moved_boxes = boxes * 2.5 + torch.tensor([40.0, -7.0, 40.0, -7.0])
    a, b = normalize_keypoints(kp, boxes), normalize_keypoints(moved, moved_boxes)
    assert torch.allclose(a, b, atol=1e-5)
    assert (a.view(2, 33, 3)[0, 5] == 0).all()  # missing keypoints carry no position


def test_weak_perspective_camera_converts_to_translation():
    K = torch.tensor([[[800.0, 0, 320], [0, 800, 240], [0, 0, 1]]])
    boxes = torch.tensor([[200.0, 50, 500, 450]])
    h, c = 400.0, torch.tensor([350.0, 250.0])
    transl = torch.tensor([[0.4, -0.1, 5.0]])
    # A point at the model origin projects to K @ transl; in box units u_norm = s (X + tx).
    s = 800.0 / (h * 5.0)
    uv = (K[0] @ transl[0])[:2] / 5.0
    txy = (uv - c) / h / s
    cam = torch.tensor([[s, float(txy[0]), float(txy[1])]])
    assert torch.allclose(KeypointRegressor.camera_to_transl(cam, boxes, K), transl, atol=1e-5)


def test_the_regressor_weights_ship_with_the_package():
    """Missing weights are a packaging bug (package-data in pyproject.toml), never a skip."""
    path = weights_path("anny", "mediapipe33")
    assert path.is_file(), f"the shipped keypoint regressor weights are missing: {path}"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["config"]["num_keypoints"] == 33 and state["state_dict"]
    # and a built wheel takes them along: pyproject's package-data covers the file
    import fnmatch
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    import bodyfit

    package = Path(bodyfit.__file__).resolve().parent
    pyproject = package.parent / "pyproject.toml"
    if pyproject.is_file():  # bodyfit imported from a source checkout (not an installed wheel)
        globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["bodyfit"]
        rel = path.resolve().relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), (rel, globs)


def test_shipped_regressor_beats_the_mean_body(anny):
    reg = load_regressor(anny, "mediapipe33")
    assert reg is not None, f"no shipped regressor at {weights_path('anny', 'mediapipe33')}"
    sb = synthetic_batch(anny, 64, "mediapipe33", generator=torch.Generator().manual_seed(7))
    pred = reg.predict(sb.keypoints, sb.K, anny)
    assert torch.isfinite(pred.body_pose).all()
    assert ((pred.shape >= 0) & (pred.shape <= 1)).all()
    err = pa_mpjpe(anny(pred, vertices=False).joints[:, :17], sb.joints[:, :17])
    mean = anny.default_params(64)
    err_mean = pa_mpjpe(anny(mean, vertices=False).joints[:, :17], sb.joints[:, :17])
    assert err.mean() < 0.7 * err_mean.mean()
    # Depth from the predicted camera: body height is unknown in 2D, so within 25% for most.
    rel = (pred.transl[:, 2] - sb.params.transl[:, 2]).abs() / sb.params.transl[:, 2]
    assert rel.median() < 0.25


def test_missing_or_mismatched_weights(anny, tmp_path):
    assert load_regressor(anny, "openpose25", path=tmp_path / "none.pt") is None
    reg = KeypointRegressor(17, len(anny.free_pose_joints), anny.shape_dim, hidden=8)
    path = tmp_path / "coco.pt"
    torch.save({"config": reg.config, "state_dict": reg.state_dict()}, path)
    with pytest.raises(ValueError, match="do not match"):
        load_regressor(anny, "mediapipe33", path=path)
    assert load_regressor(anny, "coco17", path=path) is not None


def test_the_regressors_start_from_the_upright_body_in_the_default_pose(anny):
    """The IEF start (init_output) decodes to identity rotations: no joint bent, the body
    upright and facing the camera (a degenerate 6D start would give NaN or random rotations)."""
    from bodyfit.regressors.image_regressor import ImageRegressor
    from bodyfit.regressors.keypoint_regressor import KeypointRegressor

    for reg in (KeypointRegressor(33, len(anny.free_pose_joints), anny.shape_dim, hidden=32),
                ImageRegressor(len(anny.free_pose_joints), anny.shape_dim, widths=(8, 8, 8, 8),
                               hidden=32)):
        params, cam = reg.decode(reg.init_output[None], anny)
        assert params.is_finite().all()
        assert torch.allclose(params.body_pose, torch.zeros_like(params.body_pose), atol=1e-6)
        upright = roma.rotmat_to_rotvec(anny.up_to_camera)
        assert torch.allclose(params.global_orient[0], upright, atol=1e-5)
        assert cam[0, 0] > 0.5
