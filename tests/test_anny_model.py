import pytest
import torch

from bodyfit.body_models import CONVENTIONS, BodyParams, body_model


def _random_params(model, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = model.default_params(B)
    p.body_pose = torch.randn(p.body_pose.shape, generator=g, dtype=model.dtype) * 0.3
    p.shape = torch.rand(p.shape.shape, generator=g, dtype=model.dtype)
    p.transl = torch.randn(p.transl.shape, generator=g, dtype=model.dtype)
    return p


def test_joints_only_path_equals_vertex_regressor(anny):
    p = _random_params(anny, 3)
    out = anny(p, vertices=True)
    regressed = torch.einsum("kv,bvd->bkd", anny.vertex_regressor, out.vertices)
    fast = anny(p, vertices=False)
    assert fast.vertices is None
    n = regressed.shape[1]
    assert torch.allclose(fast.joints[:, :n], regressed, atol=5e-4)
    assert torch.allclose(fast.joints, out.joints, atol=1e-6)  # float round-off (metres)


def test_joints_only_path_has_the_full_forward_gradients(anny):
    """The joints-only path (needed bones only, bodyfit's own chain) against Anny's own forward
    kinematics of every bone: the same gradients for every parameter."""
    p = _random_params(anny, 3)
    p.transl = torch.tensor([[0.1, -0.2, 3.0], [0.0, 0.0, 2.0], [-0.3, 0.1, 5.0]])
    leaves = [p.global_orient, p.body_pose, p.shape, p.transl]
    for x in leaves:
        x.requires_grad_(True)
    w = torch.randn(anny(p, vertices=False).joints.shape, generator=torch.Generator().manual_seed(0))
    fast = torch.autograd.grad((anny(p, vertices=False).joints * w).sum(), leaves)
    full = torch.autograd.grad((anny(p, vertices=True).joints * w).sum(), leaves)
    for a, b in zip(fast, full):
        assert b.abs().max() > 0 and torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_output_shapes_and_faces(anny):
    out = anny(anny.default_params(2))
    assert out.vertices.shape == (2, 13718, 3)
    assert out.joints.shape == (2, len(anny.joint_names), 3)
    assert out.faces.dtype == torch.long and out.faces.max() < 13718


def test_default_params_face_the_camera_upright(anny):
    j = anny(anny.default_params(1)).joints[0]
    n = anny.joint_names
    assert j[n.index("nose"), 1] < j[n.index("left_ankle"), 1] - 1.0  # head above feet (y down)
    # The subject's left appears on the image's right when facing the camera.
    assert j[n.index("left_shoulder"), 0] > j[n.index("right_shoulder"), 0]
    assert j[n.index("nose"), 2] < j[n.index("neck"), 2]  # nose closer to the camera
    assert 4.0 < j[:, 2].mean() < 6.0


def test_low_poly_topology_shares_joints(anny):
    low = body_model("anny", topology="notoes_collapse3pc")
    p = _random_params(anny, 2)
    out = low(p)
    assert out.vertices.shape == (2, 369, 3)
    assert torch.allclose(out.joints, anny(p, vertices=False).joints, atol=1e-5)
    # The low-poly surface lies close to the full one.
    full = anny(p).vertices
    d = torch.cdist(out.vertices, full).amin(-1)
    assert d.max() < 0.05


def test_joint_gradients_match_finite_differences():
    model = body_model("anny", dtype=torch.float64)
    p = _random_params(model, 1)
    free = model.free_pose_joints[:4]

    def f(x):
        q = BodyParams(p.global_orient, p.body_pose.clone(), p.shape, p.transl)
        q.body_pose[:, free] = x
        return model(q, vertices=False).joints

    x = p.body_pose[:, free].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


def test_phenotype_gradients_match_finite_differences():
    """The rest skeleton's hand-written backward (_RestJoints: phenotype coefficients, blends,
    special Procrustes, offsets, rest frames, anchors) against finite differences, float64."""
    model = body_model("anny", dtype=torch.float64)
    p = _random_params(model, 2, seed=3)

    def f(phen):
        return model(BodyParams(p.global_orient, p.body_pose, phen, p.transl), vertices=False).joints

    x = p.shape.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


def test_root_only_path_equals_the_full_path(anny):
    """Only the root free (SMPLify's camera stage): the landmarks kept with the root at rest and
    moved by the root's transform, the same values and gradients as the whole chain's."""
    p = _random_params(anny, 3, seed=4)
    p.global_orient = torch.randn(3, 3, generator=torch.Generator().manual_seed(5))
    w = torch.randn(3, len(anny.joint_names), 3, generator=torch.Generator().manual_seed(6))
    outputs = []
    for pose_free in (True, False):
        g, t = p.global_orient.clone().requires_grad_(True), p.transl.clone().requires_grad_(True)
        pose = p.body_pose.clone().requires_grad_(pose_free)  # a free pose: the whole chain
        joints = anny(BodyParams(g, pose, p.shape, t), vertices=False).joints
        outputs.append((joints.detach(), *torch.autograd.grad((joints * w).sum(), [g, t])))
    for full, root_only in zip(*outputs):
        assert torch.allclose(full, root_only, atol=1e-5, rtol=1e-5)


def test_wrong_shapes_raise_naming_the_field(anny):
    p = anny.default_params(2)
    p.body_pose = p.body_pose[:, :10]
    with pytest.raises(ValueError, match="body_pose"):
        anny(p)
    p = anny.default_params(2)
    p.shape = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="phenotypes"):
        anny(p)


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_keypoint_maps_cover_conventions(anny, convention):
    index, weight = anny.keypoint_map(convention)
    assert index.shape == weight.shape == (len(CONVENTIONS[convention]),)
    assert int(index.max()) < len(anny.joint_names)
    assert ((weight >= 0) & (weight <= 1)).all()
    assert (weight > 0).float().mean() > 0.8


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="Unknown body model"):
        body_model("mano")
    with pytest.raises(ValueError, match="topology"):
        body_model("anny", topology="nope")
    with pytest.raises(ValueError, match="convention"):
        from bodyfit.body_models import keypoint_names
        keypoint_names("coco18")


def test_body_model_modules_do_not_import_each_other():
    """Layering: a model module (``*_model.py``) imports base, conventions, keypoint tables and
    its own file helpers, never another model's module (they share tables via keypoint_tables)."""
    import ast
    from pathlib import Path

    import bodyfit.body_models as bm

    folder = Path(bm.__file__).parent
    models = {p.stem for p in folder.glob("*_model.py")}
    assert {"anny_model", "smpl_model"} <= models
    for name in models:
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        others = {f"bodyfit.body_models.{m}" for m in models - {name}}
        assert not imported & others, f"{name} imports {imported & others}"


def test_rest_skeleton_is_reused_only_while_the_phenotypes_stay_the_same(anny):
    p = anny.default_params(2)
    first = anny(p, vertices=False).joints
    assert torch.equal(anny(p, vertices=False).joints, first)
    p.shape[0, 4] = 0.9  # changed in place: not the cached skeleton any more
    taller = anny(p, vertices=False).joints
    fresh = p.clone()
    fresh.shape = fresh.shape.clone().requires_grad_(True)  # a fitted shape: computed, with gradients
    out = anny(fresh, vertices=False).joints
    # equal up to float round-off (the kept skeleton's anchors are in their bones' frames)
    assert torch.allclose(out, taller, atol=1e-6) and not torch.allclose(taller[0], first[0])
    out.sum().backward()
    assert fresh.shape.grad is not None and fresh.shape.grad.abs().sum() > 0


def _phenotype_samples(seed=0):
    """Random phenotypes, the corners of the cube, points on anchors (0, 1/3, 1/2, 2/3, 1) and
    beyond the range (clamped): where Anny's interpolation has kinks and one-sided gradients."""
    g = torch.Generator().manual_seed(seed)
    corners = torch.tensor([[float(b) for b in f"{i:06b}"] for i in range(64)])
    on_anchors = torch.tensor([[0.0, 1 / 3, 2 / 3, 0.5, 1.0, 0.25], [0.5] * 6, [-0.1, 1.2, 0.5, 0.5, 1.3, -0.2]])
    return torch.cat([torch.rand(40, 6, generator=g), corners, on_anchors])


def test_phenotype_coefficients_equal_annys_with_the_same_gradients(anny):
    """PhenotypeCoefficients (hand-written Jacobian) against Anny's own coefficients and autograd."""
    from bodyfit.body_models.anny_model import PhenotypeCoefficients

    table = PhenotypeCoefficients(anny.anny)
    phen = _phenotype_samples()
    a, b = phen.clone().requires_grad_(True), phen.clone().requires_grad_(True)
    ours = table(a)
    theirs = anny.anny._get_phenotype_blendshape_coefficients(b, b.new_zeros(len(b), 0), b.new_zeros(len(b), 0))
    assert torch.allclose(ours, theirs, atol=1e-6)
    w = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1))
    ga, = torch.autograd.grad((ours * w).sum(), a)
    gb, = torch.autograd.grad((theirs * w).sum(), b)
    assert gb.abs().max() > 0 and torch.allclose(ga, gb, atol=1e-4, rtol=1e-5)
    assert torch.equal(table.with_jacobian(phen, jacobian=False)[0], ours.detach())


def test_special_procrustes_equals_romas_with_the_same_gradients(anny):
    """kinematics.special_procrustes (Newton's polar iteration, hand-written backward) against
    roma's on Anny's rest-orientation blends, including matrices of negative determinant
    (neck03 of young phenotypes: from an SVD, the same backward)."""
    import roma

    from bodyfit.body_models.kinematics import special_procrustes

    phen = torch.cat([_phenotype_samples(), torch.tensor([[0.05, 0.05, 0.4, 0.5, 0.3, 0.7]])])
    with torch.no_grad():
        M = anny._orient0 + torch.einsum("ba,akij->bkij", anny._coefficients(phen), anny._orientD)
    M = M.double()
    assert bool((torch.linalg.det(M) <= 0).any())  # the SVD branch is exercised
    a, b = M.clone().requires_grad_(True), M.clone().requires_grad_(True)
    ours, theirs = special_procrustes(a), roma.special_procrustes(b)
    assert torch.allclose(ours, theirs, atol=1e-10)
    w = torch.randn(M.shape, generator=torch.Generator().manual_seed(2), dtype=M.dtype)
    ga, = torch.autograd.grad((ours * w).sum(), a)
    gb, = torch.autograd.grad((theirs * w).sum(), b)
    assert torch.allclose(ga, gb, atol=1e-3, rtol=1e-4)  # roma damps 1/t by 1e-5
    assert torch.allclose(special_procrustes(M.float()).double(), theirs, atol=1e-6)
    small = M[:2, :4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(special_procrustes, (small,), fast_mode=True)


def test_special_procrustes_without_host_reads_equals_the_checked_one(anny):
    """Where host reads are not allowed (a step captured as a CUDA graph: bodyfit.replayable),
    the polar iteration runs a fixed number of steps and the reflection for det(M) <= 0 comes
    from a closed-form eigenvector for every matrix instead of an SVD of the negative ones:
    the same rotations, on Anny's rest-orientation blends and on random matrices of condition
    up to 1e6 (with the two smallest singular values 1% apart, where the answer is defined)."""
    from bodyfit.body_models.kinematics import special_procrustes
    from bodyfit.replayable import host_reads_allowed, replayable

    phen = torch.cat([_phenotype_samples(), torch.tensor([[0.05, 0.05, 0.4, 0.5, 0.3, 0.7]])])
    with torch.no_grad():
        M = anny._orient0 + torch.einsum("ba,akij->bkij", anny._coefficients(phen), anny._orientD)
    assert bool((torch.linalg.det(M) <= 0).any())
    g = torch.Generator().manual_seed(5)
    N = 4000
    Q1, Q2 = (torch.linalg.qr(torch.randn(N, 3, 3, generator=g))[0] for _ in range(2))
    smallest = 10 ** (-6 * torch.rand(N, generator=g))
    middle = smallest + 0.01 + (1 - smallest - 0.01) * torch.rand(N, generator=g)
    R = (Q1 * torch.stack([torch.ones(N), middle, smallest], 1)[:, None]) @ Q2
    R[: N // 2, :, 0] *= -1  # half of them of negative determinant
    for matrices, atol in [(M, 1e-6), (R * 3.0, 1e-3)]:
        checked = special_procrustes(matrices)
        with replayable():
            assert not host_reads_allowed()
            fixed = special_procrustes(matrices)
        assert host_reads_allowed()
        assert (fixed - checked).abs().max() < atol
        assert torch.allclose(torch.linalg.det(fixed), torch.ones(()), atol=1e-5)
