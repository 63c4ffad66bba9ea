"""Calibration files (Qualisys .qca.txt, Pose2Sim Calib.toml) and lens undistortion."""
import cv2
import numpy as np
import pytest

from bodyfit.data.calibration import (CalibratedCamera, load_calibration, read_qca_calibration,
                                      read_toml_calibration, undistort_image, undistort_keypoints)


def _rot(axis, angle):
    return cv2.Rodrigues(np.asarray(axis, float) / np.linalg.norm(axis) * angle)[0]


def _qca_text(cams):
    """A .qca.txt written the way Pose2Sim's toml -> qca converter writes one."""
    body = []
    for name, (K, R, t, dist, (w, h)) in cams.items():
        M = np.diag([1.0, -1.0, -1.0]) @ R  # y-up, looking-down--z camera frame
        c = -R.T @ t * 1000.0  # camera centre, mm
        r = {f"r{i + 1}{j + 1}": M[i, j] for i in range(3) for j in range(3)}
        attrs = " ".join(f'{k}="{v!r}"' for k, v in r.items())
        body.append(
            f'<camera active="1" avg-residual="0.4" model="none" serial="{name}">'
            f'<fov_video bottom="{h - 1}" left="0" right="{w - 1}" top="0"/>'
            f'<transform {attrs} x="{c[0]!r}" y="{c[1]!r}" z="{c[2]!r}"/>'
            f'<intrinsic centerPointU="{K[0, 2] * 64!r}" centerPointV="{K[1, 2] * 64!r}" '
            f'focalLengthU="{K[0, 0] * 64!r}" focalLengthV="{K[1, 1] * 64!r}" '
            f'radialDistortion1="{dist[0] * 64!r}" radialDistortion2="{dist[1] * 64!r}" '
            f'radialDistortion3="0.0" tangentalDistortion1="{dist[2] * 64!r}" '
            f'tangentalDistortion2="{dist[3] * 64!r}" skew="0.0"/></camera>'
        )
    return (
        "<?xml version='1.0' encoding='ASCII'?>\n<calibration><cameras>"
        + "".join(body)
        + "</cameras></calibration>"
    )


def test_qca_round_trip_from_known_opencv_cameras(tmp_path):
    K = np.array([[1000.0, 0, 320.5], [0, 1001.0, 240.25], [0, 0, 1]])
    K2 = K * [[1.1], [1.1], [1]]
    cams = {
        "camA": (K, _rot([0.3, -1, 0.2], 2.0), np.array([0.1, 0.2, 3.0]), [-1e-3, 2e-3, 1e-5, 0], (640, 480)),
        "camB": (K2, _rot([1, 0.5, 0], -1.2), np.array([-0.5, 0.3, 4.0]), [0, 0, 0, 0], (800, 600)),
    }
    text = _qca_text(cams)
    path = tmp_path / "Calib.qca.txt"
    path.write_text(text)
    for src in (text, text.encode(), path, str(path)):
        cal = read_qca_calibration(src)
        assert list(cal) == ["camA", "camB"]
        for name, (K0, R0, t0, d0, size) in cams.items():
            c = cal[name]
            np.testing.assert_allclose(c["K"], K0, atol=1e-9)
            np.testing.assert_allclose(c["R"], R0, atol=1e-9)
            np.testing.assert_allclose(c["t"], t0, atol=1e-9)
            np.testing.assert_allclose(c["dist"], list(d0) + [0.0], atol=1e-12)
            np.testing.assert_allclose(c["center"], -R0.T @ t0, atol=1e-9)
            assert c["size"] == size


def test_qca_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.qca.txt"):
        read_qca_calibration(tmp_path / "missing.qca.txt")
    with pytest.raises(ValueError, match="camera"):
        read_qca_calibration("<calibration><cameras/></calibration>")


def test_undistort_keypoints_inverts_opencv_distortion():
    K = np.array([[1500.0, 0, 540], [0, 1490.0, 960], [0, 0, 1]])
    dist = np.array([-0.05, 0.14, 1e-3, -5e-4, 0.0])
    rng = np.random.default_rng(1)
    und = rng.uniform([0, 0], [1080, 1920], (2, 3, 7, 2))  # (..., K, 2) undistorted pixels
    rays = np.concatenate([(und - K[:2, 2]) / [K[0, 0], K[1, 1]], np.ones(und.shape[:-1] + (1,))], -1)
    dis = cv2.projectPoints(rays.reshape(-1, 3), np.zeros(3), np.zeros(3), K, dist)[0].reshape(und.shape)
    conf = rng.uniform(0.1, 1.0, und.shape[:-1] + (1,))
    kp = np.concatenate([dis, conf], -1)
    kp[0, 0, 0, 2] = 0.0  # missing: untouched
    kp[0, 0, 1, :2] = np.nan
    out = undistort_keypoints(kp, K, dist)
    assert out.shape == kp.shape and out.dtype == np.float64
    keep = np.ones(und.shape[:-1], bool)
    keep[0, 0, :2] = False
    np.testing.assert_allclose(out[keep][:, :2], und[keep], atol=1e-4)
    np.testing.assert_array_equal(out[..., 2], kp[..., 2])
    np.testing.assert_array_equal(out[0, 0, 0], kp[0, 0, 0])
    assert np.isnan(out[0, 0, 1, :2]).all()
    # new_K: into another pixel grid; float32 stays float32; (..., K, 2) works
    K2 = K * [[0.5], [0.5], [1]]
    out2 = undistort_keypoints(kp.astype(np.float32), K, dist, new_K=K2)
    assert out2.dtype == np.float32
    np.testing.assert_allclose(out2[keep][:, :2], (und[keep] - K[:2, 2]) * 0.5 + K2[:2, 2], atol=1e-3)
    np.testing.assert_allclose(undistort_keypoints(dis, K, dist), und, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(\.\.\., K, 3\)"):
        undistort_keypoints(np.zeros((5, 4)), K, dist)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        undistort_keypoints(kp, K[:2], dist)


def test_qca_refuses_entity_declarations(tmp_path):
    """A DOCTYPE with entities (billion laughs, external entities) is refused before parsing."""
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
              '<calibration><cameras><camera serial="&lol2;"/></cameras></calibration>')
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY x SYSTEM "file://{secret}">]>'
           '<calibration><cameras><camera serial="&x;"/></cameras></calibration>')
    for text in (laughs, xxe, laughs.encode()):
        with pytest.raises(ValueError, match="DOCTYPE"):
            read_qca_calibration(text)
    path = tmp_path / "evil.qca.txt"
    path.write_text(laughs)
    with pytest.raises(ValueError, match="evil.qca.txt.*DOCTYPE"):
        load_calibration(path)
    with pytest.raises(ValueError, match="not well-formed"):
        read_qca_calibration("<calibration><cameras>")


# -- Pose2Sim Calib.toml ----------------------------------------------------------------------

def _toml_camera(key, name, size, K, rvec, t, dist, fisheye=False):
    """A camera table written the way Pose2Sim writes Calib.toml."""
    rows = ", ".join("[ " + ", ".join(repr(float(v)) for v in row) + ",]" for row in K)
    return (f"[{key}]\n"
            + (f'name = "{name}"\n' if name is not None else "")
            + f"size = [ {float(size[0])!r}, {float(size[1])!r},]\n"
            + f"matrix = [ {rows},]\n"
            + "distortions = [ " + ", ".join(repr(float(d)) for d in dist) + ",]\n"
            + "rotation = [ " + ", ".join(repr(float(r)) for r in rvec) + ",]\n"
            + "translation = [ " + ", ".join(repr(float(v)) for v in t) + ",]\n"
            + f"fisheye = {'true' if fisheye else 'false'}\n\n")


K_A = np.array([[1676.5, 0.0, 543.25], [0.0, 1678.0, 961.5], [0.0, 0.0, 1.0]])
K_B = np.array([[900.0, 0.0, 640.0], [0.0, 900.0, 360.0], [0.0, 0.0, 1.0]])
RVEC_A = np.array([1.6, 1.0, -0.9])
RVEC_B = np.array([-0.2, 2.5, 0.1])
T_A = np.array([0.12, 0.85, 3.3])
T_B = np.array([-1.0, 0.4, 4.2])


def _calib_toml():
    return (_toml_camera("cam_1", "cam01", (1088, 1920), K_A, RVEC_A, T_A, [-0.04, 0.2, -6e-4, 3e-4])
            + _toml_camera("cam_2", "side", (1280, 720), K_B, RVEC_B, T_B, [0.1, -0.05, 0.01, 0.002],
                           fisheye=True)
            + "[metadata]\nadjusted = false\nerror = 0.0\n")


def test_toml_calibration_loads_pose2sim_cameras(tmp_path):
    path = tmp_path / "Calib.toml"
    path.write_text(_calib_toml())
    cams = load_calibration(path)
    assert [c.name for c in cams] == ["cam01", "side"]  # file order; metadata skipped
    a, b = cams
    assert isinstance(a, CalibratedCamera) and a.camera.batch_size == 1
    np.testing.assert_allclose(a.camera.K[0].double().numpy(), K_A, rtol=1e-6)
    R_a = cv2.Rodrigues(RVEC_A)[0]
    np.testing.assert_allclose(a.camera.R[0].double().numpy(), R_a, atol=1e-6)
    np.testing.assert_allclose(a.camera.t[0].double().numpy(), T_A, atol=1e-6)
    assert a.camera.image_size == (1920, 1088)  # (H, W) from size = [W, H]
    np.testing.assert_allclose(a.dist, [-0.04, 0.2, -6e-4, 3e-4, 0.0])
    assert not a.fisheye and b.fisheye
    np.testing.assert_allclose(b.dist, [0.1, -0.05, 0.01, 0.002])
    np.testing.assert_allclose(b.camera.R[0].double().numpy(), cv2.Rodrigues(RVEC_B)[0], atol=1e-6)
    assert b.camera.image_size == (720, 1280)
    # R, t are OpenCV's rvec/tvec: the camera projects a world point as cv2.projectPoints does
    X = np.array([[0.1, -0.3, 0.5], [0.0, 0.2, -0.1]])
    expected = cv2.projectPoints(X, RVEC_A, T_A, K_A, None)[0].reshape(-1, 2)
    import torch

    got = a.camera.project(torch.tensor(X, dtype=torch.float32)[None])[0].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-2)
    # the same from text, and the raw reader's extras
    raw = read_toml_calibration(_calib_toml())
    np.testing.assert_allclose(raw["cam01"]["center"], -R_a.T @ T_A, atol=1e-12)
    assert raw["cam01"]["size"] == (1088, 1920) and raw["side"]["fisheye"] is True
    # without a name key the table's key names the camera
    path.write_text(_toml_camera("cam_7", None, (640, 480), K_B, RVEC_B, T_B, [0, 0, 0, 0]))
    assert [c.name for c in load_calibration(path)] == ["cam_7"]


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("matrix = ", "matrixx = ", 1), "camera 'cam01'.*missing 'matrix'"),
    (lambda s: s.replace("size = [ 1088.0, 1920.0,]", "size = [ 1088.0,]"),
     "camera 'cam01'.*'size' must be 2 finite numbers"),
    (lambda s: s.replace("size = [ 1088.0, 1920.0,]", "size = [ 1088.5, 1920.0,]"),
     "'size' must be \\[width, height\\] in whole pixels"),
    (lambda s: s.replace("rotation = [ 1.6, 1.0, -0.9,]", 'rotation = [ 1.6, "a", -0.9,]'),
     "camera 'cam01'.*'rotation' must be 3 finite numbers"),
    (lambda s: s.replace("translation = [ 0.12", "translation = [ nan", 1),
     "'translation' must be 3 finite numbers"),
    (lambda s: s.replace("[ 1676.5, 0.0, 543.25,]", "[ -1676.5, 0.0, 543.25,]"), "fx, fy > 0"),
    (lambda s: s.replace("fisheye = true", 'fisheye = "yes"'),
     "camera 'side'.*'fisheye' must be true or false"),
    (lambda s: s.replace("[ 0.1, -0.05, 0.01, 0.002,]", "[ 0.1, -0.05, 0.01, 0.002, 0.0,]"),
     "camera 'side'.*'distortions' must be 4 finite numbers"),
    (lambda s: s.replace('name = "side"', 'name = "cam01"'), "camera 'cam01'.*appears twice"),
    (lambda s: s.replace("[cam_1]", "[cam_1", 1), "not valid TOML"),
    (lambda s: "[metadata]\nerror = 0.0\n", "no camera table"),
    (lambda s: "stray = 1\n" + s, "top-level 'stray' is not a camera table"),
])
def test_malformed_toml_is_a_clear_value_error(tmp_path, edit, message):
    path = tmp_path / "Calib.toml"
    text = edit(_calib_toml())
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        load_calibration(path)
    assert "Calib.toml" in str(e.value)  # the message names the file


def test_load_calibration_picks_the_reader_by_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.toml"):
        load_calibration(tmp_path / "nothing.toml")
    other = tmp_path / "calib.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match=r"\.qca\.txt.*\.toml"):
        load_calibration(other)
    cams = {"camA": (K_A, _rot([0.3, -1, 0.2], 2.0), np.array([0.1, 0.2, 3.0]), [0, 0, 0, 0], (1088, 1920))}
    (tmp_path / "c.qca.txt").write_text(_qca_text(cams))
    (tmp_path / "c.toml").write_text(_toml_camera("cam_1", "camA", (1088, 1920), K_A,
                                                  cv2.Rodrigues(cams["camA"][1])[0].ravel(),
                                                  cams["camA"][2], [0, 0, 0, 0]))
    q, t = load_calibration(tmp_path / "c.qca.txt")[0], load_calibration(tmp_path / "c.toml")[0]
    assert q.name == t.name == "camA" and q.camera.image_size == t.camera.image_size
    for x, y in ((q.camera.K, t.camera.K), (q.camera.R, t.camera.R), (q.camera.t, t.camera.t)):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-5)


def test_demo_calibration_as_toml_matches_the_qca(pose2sim_wheel, tmp_path):
    """The demo's Calib.qca.txt rewritten as Pose2Sim's Calib.toml (as its converter does) loads
    to the same cameras."""
    from bodyfit.data.pose2sim import demo_calibration

    calib = demo_calibration(pose2sim_wheel.parent)
    text = "".join(_toml_camera(f"cam_{i + 1}", name, c["size"], c["K"], cv2.Rodrigues(c["R"])[0].ravel(),
                                c["t"], c["dist"][:4]) for i, (name, c) in enumerate(calib.items()))
    path = tmp_path / "Calib.toml"
    path.write_text(text + "[metadata]\nadjusted = false\nerror = 0.0\n")
    got = read_toml_calibration(path)
    assert list(got) == list(calib)
    for name, c in calib.items():
        for key, atol in (("K", 1e-9), ("R", 1e-9), ("t", 1e-12), ("center", 1e-9)):
            np.testing.assert_allclose(got[name][key], c[key], atol=atol, err_msg=f"{name} {key}")
        assert got[name]["size"] == c["size"]


def test_fisheye_undistortion_of_keypoints_and_pictures():
    K = np.array([[400.0, 0, 320], [0, 400.0, 240], [0, 0, 1]])
    D = np.array([0.05, -0.02, 0.01, -0.003])
    rng = np.random.default_rng(2)
    und = rng.uniform([40, 40], [600, 440], (9, 2))
    norm = ((und - K[:2, 2]) / [K[0, 0], K[1, 1]]).reshape(-1, 1, 2)
    dis = cv2.fisheye.distortPoints(norm, K, D).reshape(-1, 2)
    kp = np.concatenate([dis, np.ones((9, 1))], -1)
    np.testing.assert_allclose(undistort_keypoints(kp, K, D, fisheye=True)[:, :2], und, atol=1e-3)
    with pytest.raises(ValueError, match="4 numbers"):
        undistort_keypoints(kp, K, np.zeros(5), fisheye=True)
    import torch

    from bodyfit.cameras import Camera

    cam = CalibratedCamera("f", Camera(torch.tensor(K, dtype=torch.float32)[None], torch.eye(3)[None],
                                       torch.zeros(1, 3), (480, 640)), D, fisheye=True)
    img = np.zeros((480, 640, 3), np.uint8)
    x, y = np.round(dis[0]).astype(int)
    img[y - 2:y + 3, x - 2:x + 3] = 255  # a dot at a distorted position moves to the undistorted one
    out = undistort_image(img, cam)
    ys, xs = np.nonzero(out[..., 0] > 100)
    assert abs(xs.mean() - und[0, 0]) < 1.5 and abs(ys.mean() - und[0, 1]) < 1.5
