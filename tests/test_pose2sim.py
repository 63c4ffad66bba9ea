"""Pose2Sim demo data: Qualisys calibration parsing and frame reading."""
import numpy as np
import pytest

from bodyfit.data import pose2sim
from bodyfit.data.pose2sim import demo_calibration, demo_frames, read_qca_calibration


def _rot(axis, angle):
    import cv2

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


def test_wheel_download_failure_is_a_clear_runtime_error(tmp_path, monkeypatch):
    import subprocess

    def fake_run(cmd, **kw):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: no network here")

    monkeypatch.setattr(pose2sim.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="(?s)no network here.*pip download --no-deps pose2sim==0.10.49"):
        pose2sim.pose2sim_wheel(tmp_path / "empty_cache")


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BODYFIT_CACHE_DIR", str(tmp_path / "c"))
    assert pose2sim.default_cache_dir() == tmp_path / "c"


@pytest.fixture(scope="module")
def calib(pose2sim_wheel):
    return demo_calibration(pose2sim_wheel.parent)


def test_demo_calibration_cameras(calib):
    assert list(calib) == ["cam01", "cam02", "cam03", "cam04"]
    for name, c in calib.items():
        K, R, t, (w, h) = c["K"], c["R"], c["t"], c["size"]
        assert (w, h) == (1088, 1920)
        assert K.shape == (3, 3) and R.shape == (3, 3) and t.shape == (3,)
        assert K[0, 0] > 0 and K[1, 1] > 0 and abs(K[0, 0] / K[1, 1] - 1) < 0.01
        assert 0 < K[0, 2] < w and 0 < K[1, 2] < h
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-9)
        assert c["dist"].shape == (5,) and np.abs(c["dist"]).max() < 0.01
        np.testing.assert_allclose(c["center"], -R.T @ t, atol=1e-9)


def test_demo_cameras_are_metres_apart_above_the_floor(calib):
    centres = np.stack([-c["R"].T @ c["t"] for c in calib.values()])
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(4, 1)]
    assert d.min() > 1.5 and d.max() < 10.0  # metres, not millimetres
    assert np.all((centres[:, 2] > 1.0) & (centres[:, 2] < 3.0))  # Z up: cameras ~2 m high


def test_world_origin_projects_into_every_view(calib):
    for name, c in calib.items():
        p = c["K"] @ c["t"]  # the world origin in camera coordinates, projected
        assert p[2] > 1.0, name  # in front of the camera, metres away
        u, v = p[:2] / p[2]
        w, h = c["size"]
        assert -0.1 * w < u < 1.1 * w and -0.1 * h < v < 1.1 * h, (name, u, v)


def test_demo_frames(pose2sim_wheel):
    cache = pose2sim_wheel.parent
    out = demo_frames((0, 7), cameras=("cam01", "cam03"), cache_dir=cache)
    assert [n for n, _ in out] == ["cam01_frame000", "cam01_frame007", "cam03_frame000", "cam03_frame007"]
    for name, img in out:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.shape[0] == 1920 and img.shape[1] in (1080, 1088)
        assert img.std() > 10  # a real picture
    assert not np.array_equal(out[0][1], out[1][1])
    # the extracted video is reused, and the same frame decodes the same
    again = dict(demo_frames((7,), cameras="cam01", cache_dir=cache))
    np.testing.assert_array_equal(again["cam01_frame007"], out[1][1])
    assert (cache / "pose2sim_demo" / "cam01.mp4").is_file()
    with pytest.raises(IndexError, match="past the end"):
        demo_frames((100,), cameras=("cam02",), cache_dir=cache)
    with pytest.raises(ValueError, match="cam09"):
        demo_frames((0,), cameras=("cam09",), cache_dir=cache)
