"""SMPL-family body models on synthetic SMPL-format files (the real ones are licensed)."""
from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("smplx")
pytest.importorskip("scipy")

from bodyfit.body_models import BodyParams, body_model  # noqa: E402
from bodyfit.body_models.conventions import CONVENTIONS  # noqa: E402
from bodyfit.body_models.smpl_files import load_model_arrays, read_model_file  # noqa: E402
from bodyfit.body_models.smpl_model import SMPLFamilyModel  # noqa: E402
from synthetic_smpl import fake_chumpy, synthetic_smpl_arrays, write_synthetic_smpl  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("smpl_models")
    return {
        "pkl": write_synthetic_smpl(root / "smpl" / "SMPL_NEUTRAL.pkl", "pkl"),
        "npz": write_synthetic_smpl(root / "flat" / "SMPL_NEUTRAL.npz", "npz"),
        "root": root,
    }


@pytest.fixture(scope="module")
def arrays():
    return synthetic_smpl_arrays()


@pytest.fixture(scope="module")
def model(files):
    return body_model("smpl", model_path=files["pkl"])


def rest_params(m, batch_size=2, dtype=torch.float32):
    z = dict(dtype=dtype)
    return BodyParams(global_orient=torch.zeros(batch_size, 3, **z),
                      body_pose=torch.zeros(batch_size, m.num_pose_joints, 3, **z),
                      shape=torch.zeros(batch_size, m.shape_dim, **z),
                      transl=torch.zeros(batch_size, 3, **z))


def random_params(m, batch_size=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return BodyParams(global_orient=0.3 * torch.randn(batch_size, 3, generator=g),
                      body_pose=0.2 * torch.randn(batch_size, m.num_pose_joints, 3, generator=g),
                      shape=torch.randn(batch_size, m.shape_dim, generator=g),
                      transl=torch.randn(batch_size, 3, generator=g))


@pytest.mark.parametrize("kind", ["pkl", "npz"])
def test_loads_and_forward_shapes(files, kind):
    m = body_model("smpl", model_path=files[kind])
    assert isinstance(m, SMPLFamilyModel)
    assert m.name == "smpl" and m.shape_name == "betas" and m.shape_dim == 10
    assert m.num_pose_joints == 23 and m.pose_joint_names[0] == "left_hip"
    assert m.pose_joint_names[-2:] == ["left_hand", "right_hand"]
    assert m.free_pose_joints == list(range(23))
    assert list(m.parameters()) == []  # smplx's own parameters are not created
    out = m(random_params(m, 3))
    assert out.joints.shape == (3, len(m.joint_names), 3) == (3, 45, 3)
    assert out.vertices.shape == (3, 6890, 3)
    assert out.faces.dtype == torch.long and out.faces.shape == (13776, 3)
    assert torch.isfinite(out.vertices).all()
    assert m.dtype == torch.float32 and torch.allclose(
        m.up_to_camera, torch.diag(torch.tensor([1.0, -1.0, -1.0])))


def test_pkl_and_npz_agree(files, model):
    other = body_model("smpl", model_path=files["npz"])
    p = random_params(model)
    a, b = model(p), other(p)
    assert torch.allclose(a.vertices, b.vertices, atol=1e-6)
    assert torch.allclose(a.joints, b.joints, atol=1e-6)


def test_chumpy_and_sparse_values_become_arrays(files, arrays):
    assert "chumpy" not in sys.modules and "chumpy.ch" not in sys.modules
    raw = read_model_file(files["pkl"])
    assert isinstance(raw["shapedirs"], np.ndarray) and isinstance(raw["J_regressor"], np.ndarray)
    np.testing.assert_array_equal(raw["shapedirs"], arrays["shapedirs"])
    np.testing.assert_array_equal(raw["J_regressor"], arrays["J_regressor"])
    clean = load_model_arrays(files["pkl"], "smpl")
    assert clean["kintree_table"][0, 0] == -1


@pytest.mark.parametrize("protocol", [0, 1, 2, 4])
def test_restricted_unpickler_protocols(tmp_path, protocol):
    import scipy.sparse

    value = np.arange(6.0).reshape(2, 3)
    with fake_chumpy() as Ch:
        data = {"ch": Ch(value), "sp": scipy.sparse.csc_matrix(value), "a": value.astype(np.float32),
                "s": np.float64(2.5), "t": ("x", {1, 2}), "derived": Ch(value)}
        del data["derived"].x  # a chumpy expression without a stored value
        path = tmp_path / "f.pkl"
        path.write_bytes(pickle.dumps({k: v for k, v in data.items() if k != "derived"},
                                      protocol=protocol))
        bad = tmp_path / "derived.pkl"
        bad.write_bytes(pickle.dumps({"v": data["derived"]}, protocol=protocol))
    raw = read_model_file(path)
    for key in ("ch", "sp", "a"):
        np.testing.assert_array_equal(raw[key], value)
    assert raw["s"] == 2.5 and raw["t"] == ("x", {1, 2})
    with pytest.raises(ValueError, match="no stored value"):
        read_model_file(bad)


def test_zero_pose_and_betas_give_template(model, arrays):
    out = model(rest_params(model))
    v0 = torch.as_tensor(arrays["v_template"], dtype=torch.float32)
    assert torch.allclose(out.vertices, v0.expand(2, -1, -1), atol=1e-6)
    J0 = torch.as_tensor(arrays["J_regressor"] @ arrays["v_template"], dtype=torch.float32)
    assert torch.allclose(out.joints[:, :24], J0.expand(2, -1, -1), atol=1e-6)
    # smplx's vertex landmarks come after the 24 joints: nose is vertex 332.
    assert torch.allclose(out.joints[0, model.joint_names.index("nose")], v0[332])


def test_float64_is_exact(files, arrays):
    m = body_model("smpl", model_path=files["npz"], dtype=torch.float64)
    out = m(rest_params(m, 1, torch.float64))
    assert out.vertices.dtype == torch.float64
    np.testing.assert_allclose(out.vertices[0].numpy(), arrays["v_template"], atol=1e-12)


def test_betas_move_vertices_by_shapedirs(model, arrays):
    p = rest_params(model, 1)
    p.shape = torch.linspace(-2, 2, 10)[None]
    out = model(p)
    expected = arrays["v_template"] + arrays["shapedirs"] @ p.shape[0].double().numpy()
    np.testing.assert_allclose(out.vertices[0].numpy(), expected, atol=1e-5)


def test_global_orient_rotates_about_the_pelvis(model, arrays):
    import roma

    p = rest_params(model, 1)
    p.global_orient = torch.tensor([[0.0, 0.0, np.pi]])
    p.transl = torch.tensor([[0.1, 0.2, 3.0]])
    out = model(p)
    R = roma.rotvec_to_rotmat(p.global_orient[0])
    v0 = torch.as_tensor(arrays["v_template"], dtype=torch.float32)
    j0 = torch.as_tensor(arrays["J_regressor"][0] @ arrays["v_template"], dtype=torch.float32)
    expected = (v0 - j0) @ R.T + j0 + p.transl
    assert torch.allclose(out.vertices[0], expected, atol=1e-5)


def test_default_params_upright_facing_camera(model):
    out = model(model.default_params(1, depth=4.0))
    j = out.joints[0]
    names = model.joint_names
    assert j[names.index("head"), 1] < j[names.index("pelvis"), 1]  # head up (y down)
    assert j[names.index("left_shoulder"), 0] > j[names.index("right_shoulder"), 0]  # mirror view
    assert 3.5 < j[:, 2].mean() < 4.5


def test_joints_only_matches_full(model):
    p = random_params(model)
    full, fast = model(p), model(p, vertices=False)
    assert fast.vertices is None
    assert torch.allclose(full.joints, fast.joints, atol=1e-5)  # float32; exact in float64 (below)


def test_gradients_flow(model):
    p = random_params(model, 2)
    for v in p.as_dict().values():
        v.requires_grad_(True)
    model(p).joints.square().sum().backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in p.as_dict().values())


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_keypoint_map_every_convention(model, convention):
    index, weight = model.keypoint_map(convention)
    names = CONVENTIONS[convention]
    assert index.shape == weight.shape == (len(names),)
    assert index.dtype == torch.long and weight.dtype == model.dtype
    assert ((index >= 0) & (index < len(model.joint_names))).all()
    assert ((weight >= 0) & (weight <= 1)).all()
    table = {n: (i, round(w, 6)) for n, i, w in zip(names, index.tolist(), weight.tolist())}
    hips = 1.0 if convention == "openpose25" else 0.5
    assert table["left_hip"] == (model.joint_names.index("left_hip"), hips)
    assert table["left_shoulder"] == (model.joint_names.index("left_shoulder"), 1.0)
    assert table["nose"] == (model.joint_names.index("nose"), 1.0)
    if convention == "mediapipe33":
        assert table["mouth_left"][1] == 0.0
        assert table["left_pinky"] == (model.joint_names.index("left_hand"), 0.3)
        assert table["left_eye_inner"] == (model.joint_names.index("left_eye"), 0.3)
    if convention == "openpose25":
        assert table["mid_hip"] == (model.joint_names.index("pelvis"), 0.5)
        assert table["neck"][0] == model.joint_names.index("neck")
    with pytest.raises(ValueError):
        model.keypoint_map("nope")


def test_missing_file_says_where_to_get_it(tmp_path):
    folder = tmp_path / "models"
    with pytest.raises(FileNotFoundError) as e:
        body_model("smpl", model_path=folder)
    msg = str(e.value)
    assert "https://smpl.is.tue.mpg.de" in msg and "licensed" in msg
    assert str(folder / "smpl" / "SMPL_NEUTRAL.pkl") in msg
    with pytest.raises(FileNotFoundError, match="smpl-x.is.tue.mpg.de"):
        body_model("smplx", model_path=folder)
    with pytest.raises(FileNotFoundError, match="mano.is.tue.mpg.de"):
        body_model("smplh", model_path=folder, gender="male")
    missing = tmp_path / "SMPL_MALE.pkl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        body_model("smpl", model_path=missing)


def test_model_path_none_and_env_var(files, monkeypatch):
    monkeypatch.delenv("BODYFIT_SMPL_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="BODYFIT_SMPL_DIR"):
        body_model("smpl")
    monkeypatch.setenv("BODYFIT_SMPL_DIR", str(files["root"]))
    m = body_model("smpl")  # <root>/smpl/SMPL_NEUTRAL.pkl
    assert m.model_file == files["pkl"]
    flat = body_model("smpl", model_path=files["npz"].parent)  # <folder>/SMPL_NEUTRAL.npz
    assert flat.model_file == files["npz"]


def test_forbidden_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        body_model("smpl", model_path=path)
    assert not marker.exists()


def test_wrong_content_is_a_value_error(tmp_path):
    small = write_synthetic_smpl(tmp_path / "small.npz", "npz", n_verts=100)
    with pytest.raises(ValueError, match="v_template") as e:
        body_model("smpl", model_path=small)
    assert "https://smpl.is.tue.mpg.de" in str(e.value) and str(small) in str(e.value)
    data = synthetic_smpl_arrays()
    del data["weights"]
    partial = tmp_path / "partial.npz"
    np.savez(partial, **data)
    with pytest.raises(ValueError, match="weights"):
        body_model("smpl", model_path=partial)
    with pytest.raises(ValueError, match="gender"):
        body_model("smpl", model_path=partial, gender="other")


def test_wrong_params_shape_names_the_field(model):
    p = rest_params(model)
    p.body_pose = torch.zeros(2, 21, 3)
    with pytest.raises(ValueError, match="body_pose"):
        model(p)
    p = rest_params(model)
    p.shape = torch.zeros(2, 6)
    with pytest.raises(ValueError, match="shape"):
        model(p)


@pytest.mark.parametrize("name,n_joints", [("smplh", 73), ("smplx", 127)])
def test_smplh_and_smplx(tmp_path, name, n_joints):
    n_verts = 10475 if name == "smplx" else 6890
    path = write_synthetic_smpl(tmp_path / name / f"{name.upper()}_NEUTRAL.npz", "npz",
                                n_verts=n_verts, model=name)
    m = body_model(name, model_path=tmp_path)
    assert m.num_pose_joints == 21 and m.pose_joint_names[-1] == "right_wrist"
    assert list(m.parameters()) == []
    p = random_params(m, 2)
    out = m(p)
    assert out.joints.shape == (2, len(m.joint_names), 3) == (2, n_joints, 3)
    assert out.vertices.shape == (2, n_verts, 3)
    assert torch.allclose(m(p, vertices=False).joints, out.joints, atol=1e-5)
    index, weight = m.keypoint_map("mediapipe33")
    names = CONVENTIONS["mediapipe33"]
    assert m.joint_names[index[names.index("left_pinky")]] == "left_pinky1"
    assert m.joint_names[index[names.index("right_thumb")]] == "right_thumb2"
    # smplx-built joints line up with the names: the skeleton joints are J_regressor @ vertices.
    rest = m(rest_params(m, 1))
    with np.load(path) as arrays:
        J0 = arrays["J_regressor"] @ arrays["v_template"]
    np.testing.assert_allclose(rest.joints[0, :len(J0)].numpy(), J0, atol=1e-5)
    assert m.model_file == path


@pytest.mark.parametrize("name", ["smpl", "smplh", "smplx"])
def test_joints_only_path_is_smplx_exactly_with_the_same_gradients(tmp_path, name):
    """forward(vertices=False) skins only the landmark vertices: same joints and gradients as
    smplx's full forward, to float64 rounding, for every landmark (skeleton, vertex joints,
    SMPL-X face landmarks), at random poses and shapes, hands at their mean pose."""
    n_verts = 10475 if name == "smplx" else 6890
    write_synthetic_smpl(tmp_path / name / f"{name.upper()}_NEUTRAL.npz", "npz", n_verts=n_verts, model=name)
    m = body_model(name, model_path=tmp_path, dtype=torch.float64)
    p = random_params(m, 4, seed=3)
    p = BodyParams(**{k: v.double().requires_grad_(True) for k, v in p.as_dict().items()})
    full, fast = m(p).joints, m(p, vertices=False).joints
    assert fast.shape == full.shape and torch.allclose(fast, full, atol=1e-12, rtol=0)
    w = torch.randn(full.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_full = torch.autograd.grad((full * w).sum(), list(p.as_dict().values()))
    g_fast = torch.autograd.grad((fast * w).sum(), list(p.as_dict().values()))
    for a, b in zip(g_full, g_fast):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["smpl", "smplx"])
def test_body_turned_whole_equals_the_posed_body(tmp_path, name):
    """Where body_pose and betas need no gradient (the camera stage), the body below the root is
    posed once and only turned and moved: the same joints and global_orient / transl gradients
    as posing it whole, and posed again when the pose changes."""
    n_verts = 10475 if name == "smplx" else 6890
    write_synthetic_smpl(tmp_path / name / f"{name.upper()}_NEUTRAL.npz", "npz", n_verts=n_verts, model=name)
    m = body_model(name, model_path=tmp_path, dtype=torch.float64)
    p = random_params(m, 3, seed=5)
    whole = BodyParams(**{k: v.double().requires_grad_(True) for k, v in p.as_dict().items()})
    turned = BodyParams(whole.global_orient.detach().clone().requires_grad_(True), whole.body_pose.detach(),
                        whole.shape.detach(), whole.transl.detach().clone().requires_grad_(True))
    for _ in range(2):  # the second call reuses the posed body
        a, b = m(whole, vertices=False).joints, m(turned, vertices=False).joints
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
        w = torch.randn(a.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        for x, y in zip(torch.autograd.grad((a * w).sum(), [whole.global_orient, whole.transl]),
                        torch.autograd.grad((b * w).sum(), [turned.global_orient, turned.transl])):
            assert torch.allclose(x, y, atol=1e-10, rtol=0)
    with torch.no_grad():
        turned.body_pose.mul_(0.5)
        whole.body_pose.mul_(0.5)
    assert torch.allclose(m(whole, vertices=False).joints, m(turned, vertices=False).joints, atol=1e-12, rtol=0)


def test_kinematics_hand_written_gradients_are_exact():
    """axis_angle_to_matrix, KinematicTree.compose and .skinned_body (hand-written backward
    passes) against finite differences (gradcheck, float64), at random rotations, a tiny one and
    the zero rotation (where smplx's + 1e-8 keeps the gradient finite); the chain and the
    skinned body against a plain per-joint loop."""
    from bodyfit.body_models.kinematics import KinematicTree, axis_angle_to_matrix
    from synthetic_smpl import SMPL_PARENTS

    g = torch.Generator().manual_seed(0)
    rotvec = torch.randn(3, 24, 3, generator=g, dtype=torch.float64)
    rotvec[0, 0], rotvec[0, 1] = 0.0, 1e-6
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (rotvec.requires_grad_(True),), fast_mode=True)
    tree = KinematicTree(SMPL_PARENTS)
    R = axis_angle_to_matrix(rotvec).detach().requires_grad_(True)
    offsets = torch.randn(3, 24, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tree.compose, (R, offsets), fast_mode=True)

    def loop(R, offsets):
        world_R, world_t = [R[:, 0]], [offsets[:, 0]]
        for k, p in enumerate(SMPL_PARENTS[1:], 1):
            world_t.append(world_t[p] + (world_R[p] @ offsets[:, k, :, None])[..., 0])
            world_R.append(world_R[p] @ R[:, k])
        return torch.stack(world_R, 1), torch.stack(world_t, 1)

    for a, b in zip(tree.compose(R, offsets), loop(R, offsets)):
        assert torch.allclose(a, b, atol=1e-12)
    N, S = 5, 4
    tables = (torch.randn(6 * 24 + 3 * N, generator=g, dtype=torch.float64),
              torch.randn(S, 6 * 24 + 3 * N, generator=g, dtype=torch.float64) * 0.1,
              torch.randn(9 * 24, 3 * N, generator=g, dtype=torch.float64) * 0.1,
              torch.rand(N, 24, generator=g, dtype=torch.float64))
    shape = torch.randn(3, S, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, s: tree.skinned_body(v, s, *tables), (rotvec, shape), fast_mode=True)
    const, shape_blend, pose_blend, weights = tables
    R = axis_angle_to_matrix(rotvec)
    rest, offsets, vertices = (const + shape @ shape_blend).split([72, 72, 3 * N], 1)
    vertices = (vertices + R.flatten(1) @ pose_blend).view(3, N, 3)
    rest = rest.view(3, 24, 3)
    world_R, world_t = loop(R, offsets.view(3, 24, 3))
    skinned = sum(weights[None, :, k, None] * ((world_R[:, None, k] @ (vertices - rest[:, None, k])[..., None])[..., 0]
                                               + world_t[:, None, k]) for k in range(24))
    assert torch.allclose(tree.skinned_body(rotvec, shape, *tables), torch.cat([world_t, skinned], 1), atol=1e-12)


def test_kinematic_tree_refuses_a_parent_after_its_child():
    from bodyfit.body_models.kinematics import KinematicTree

    with pytest.raises(ValueError, match="parent 2 must come before"):
        KinematicTree([-1, 2, 0])


def test_fit_runs_on_smpl_and_recovers_a_pose(model):
    """The same fit() serves SMPL: keypoints of a known pose, fitted from the mean body."""
    from bodyfit.data.synthetic import synthetic_batch
    from bodyfit import fit

    sb = synthetic_batch(model, 2, "coco17", noise=0.0, dropout=0.0,
                         generator=torch.Generator().manual_seed(0))
    r = fit(sb.keypoints, model, "coco17", K=sb.K, vertices=False,
            overrides=["init=mean", "stages.body.steps=200"])
    assert r.valid.all()
    start = fit(sb.keypoints, model, "coco17", K=sb.K, vertices=False,
                overrides=["init=mean", "stages.camera.steps=1", "stages.body.steps=1"])
    assert (r.reprojection_error_px < 0.5 * start.reprojection_error_px).all()
    assert (r.error_over_box < 0.03).all()


@pytest.mark.slow
def test_compiled_steps_give_the_eager_fit(model):
    """compile=true (torch.compile of the steps) fits what eager steps fit."""
    import shutil

    from bodyfit import Fitter, Observations
    from bodyfit.data.synthetic import synthetic_batch

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("torch.compile on CPU needs a C++ compiler")
    sb = synthetic_batch(model, 4, "coco17", generator=torch.Generator().manual_seed(2))
    obs = Observations.from_pictures(sb.keypoints, K=sb.K, boxes=sb.boxes, convention="coco17")
    steps = ["stages.camera.steps=5", "stages.body.steps=10", "init=mean"]
    eager = Fitter(model, overrides=steps)(obs, vertices=False)
    compiled = Fitter(model, overrides=[*steps, "compile=true"])(obs, vertices=False)
    assert torch.allclose(compiled.params.body_pose, eager.params.body_pose, atol=1e-4)
    assert torch.allclose(compiled.joints, eager.joints, atol=1e-4)
