"""Pose2Sim demo data: the wheel, its calibration, frames, views and cached keypoints (the
calibration file formats themselves: tests/test_calibration.py)."""
from pathlib import Path

import numpy as np
import pytest

from bodyfit.data import pose2sim
from bodyfit.data.pose2sim import demo_calibration, demo_frames


def test_wheel_download_failure_is_a_clear_runtime_error(tmp_path, monkeypatch):
    import subprocess

    def fake_run(cmd, **kw):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: no network here")

    monkeypatch.setattr(pose2sim.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="(?s)no network here.*pip download --no-deps pose2sim==0.10.49"):
        pose2sim.pose2sim_wheel(tmp_path / "empty_cache")


def test_wheel_download_lands_atomically(tmp_path, monkeypatch):
    """pip downloads into a private folder; the cache gets the whole wheel or nothing."""
    import subprocess
    import zipfile

    calls = []

    def fake_run(cmd, **kw):
        folder = Path(cmd[cmd.index("-d") + 1])
        calls.append(folder)
        assert folder.parent == tmp_path / "cache" and folder.is_dir()
        with zipfile.ZipFile(folder / pose2sim.WHEEL_NAME, "w") as zf:
            zf.writestr(f"{pose2sim.DEMO_ROOT}/calibration/Calib.qca.txt", "<calibration/>")
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved", stderr="")

    monkeypatch.setattr(pose2sim.subprocess, "run", fake_run)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / pose2sim.WHEEL_NAME).write_bytes(b"truncated")  # replaced
    wheel = pose2sim.pose2sim_wheel(tmp_path / "cache")
    assert wheel == tmp_path / "cache" / pose2sim.WHEEL_NAME and zipfile.is_zipfile(wheel)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [pose2sim.WHEEL_NAME]
    assert pose2sim.pose2sim_wheel(tmp_path / "cache") == wheel and len(calls) == 1  # cached


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


# -- decoded pixels vs the calibration's grid, multi-view frames, cached keypoints ---------------

def test_video_to_calibration_maps_the_letterbox():
    np.testing.assert_array_equal(pose2sim.video_to_calibration("cam03"), np.eye(3))
    np.testing.assert_array_equal(pose2sim.video_to_calibration("cam04"), np.eye(3))
    for cam in ("cam01", "cam02"):
        A = pose2sim.video_to_calibration(cam)
        # the picture's corners inside the letterbox -> the calibration picture's corners
        corners = np.array([[-0.5, 6.5, 1.0], [1079.5, 1912.5, 1.0]]) @ A.T
        np.testing.assert_allclose(corners[:, :2], [[-0.5, -0.5], [1087.5, 1919.5]], atol=1e-9)
        np.testing.assert_allclose(A[0, 0], 1088 / 1080)
    with pytest.raises(ValueError, match="cam09"):
        pose2sim.video_to_calibration("cam09")


def test_video_intrinsics_project_into_decoded_pixels(calib):
    for name, c in calib.items():
        A = pose2sim.video_to_calibration(name)
        X = c["R"] @ np.array([0.1, -0.2, 1.0]) + c["t"]  # a point near the treadmill
        p_cal = c["K"] @ X / X[2]
        p_vid = c["K_video"] @ X / X[2]
        np.testing.assert_allclose(A @ p_vid, p_cal, atol=1e-9)
        assert c["video_size"] == pose2sim.DEMO_VIDEO_SIZES[name]
    np.testing.assert_array_equal(calib["cam03"]["K_video"], calib["cam03"]["K"])


def test_cam01_cam02_decode_letterboxed(pose2sim_wheel):
    for name, img in demo_frames((0,), cameras=("cam01", "cam02"), cache_dir=pose2sim_wheel.parent):
        rows = img.astype(np.float64).mean(axis=(1, 2))
        assert rows[:7].max() < 6 and rows[1914:].max() < 10 and rows[1913] < 20, name  # black bars
        assert rows[8:1912].min() > 40, name  # picture everywhere else


def test_video_frames_register_onto_the_calibration_pictures(pose2sim_wheel):
    """The demo's own 1088 x 1920 calibration pictures (same static room) fix the map: SIFT
    matches between a decoded frame and the picture agree with video_to_calibration to 0.1 px."""
    import zipfile

    import cv2

    sift = cv2.SIFT_create(3000)
    with zipfile.ZipFile(pose2sim_wheel) as zf:
        for cam in ("cam01", "cam03"):
            data = zf.read(f"{pose2sim.DEMO_ROOT}/calibration/extrinsics/{cam}_ext.png")
            ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            assert ref.shape == (1920, 1088)
            frame = demo_frames((50,), cameras=cam, cache_dir=pose2sim_wheel.parent)[0][1]
            k1, d1 = sift.detectAndCompute(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), None)
            k2, d2 = sift.detectAndCompute(ref, None)
            good = [a for a, b in cv2.BFMatcher().knnMatch(d1, d2, k=2) if a.distance < 0.7 * b.distance]
            p1 = np.array([k1[m.queryIdx].pt for m in good])
            p2 = np.array([k2[m.trainIdx].pt for m in good])
            A = pose2sim.video_to_calibration(cam)
            r = p2 - (p1 @ A[:2, :2].T + A[:2, 2])
            inl = np.linalg.norm(r, axis=1) < 2.0
            assert inl.sum() > 200 and inl.mean() > 0.7, (cam, inl.sum(), len(good))
            assert np.abs(np.median(r[inl], axis=0)).max() < 0.1, (cam, np.median(r[inl], axis=0))
            if cam == "cam01":  # reading cam01's pixels as the calibration's would be 7 px off
                assert np.median(np.linalg.norm(p2 - p1, axis=1)) > 3.0


def test_demo_views_share_the_calibration_grid(pose2sim_wheel):
    cache = pose2sim_wheel.parent
    mv = pose2sim.demo_views([7], cache_dir=cache)
    assert mv.names == pose2sim.DEMO_CAMERAS and mv.frames == [7] and mv.undistorted
    assert "BSD-3-Clause" in mv.source
    assert mv.image_size == (1920, 1088) and mv.cameras.image_size == (1920, 1088)
    assert mv.cameras.K.shape == (4, 3, 3) and mv.cameras.K.dtype == torch_float32()
    assert mv.stacked().shape == (1, 4, 1920, 1088, 3) and mv.dist.shape == (4, 5)
    calib = demo_calibration(cache)
    for v, name in enumerate(mv.names):
        img = mv.images[0][v]
        assert img.dtype == np.uint8 and img.shape == (1920, 1088, 3)
        assert img[:3].mean() > 20 and img[-3:].mean() > 20, name  # no letterbox bars left
        np.testing.assert_allclose(mv.cameras.K[v].numpy(), calib[name]["K"], rtol=1e-6)
    raw = dict(demo_frames((7,), cameras=("cam01", "cam03"), cache_dir=cache))
    plain = pose2sim.demo_views(7, cameras=("cam03", "cam01"), undistort=False, cache_dir=cache)
    assert plain.names == ("cam03", "cam01") and not plain.undistorted
    np.testing.assert_array_equal(plain.images[0][0], raw["cam03_frame007"])  # as decoded
    # cam01 resampled onto the 1088 grid: the same picture 1088/1080 larger, bars cut off
    import cv2

    A = pose2sim.video_to_calibration("cam01")
    expect = cv2.warpAffine(raw["cam01_frame007"], A[:2], (1088, 1920), flags=cv2.INTER_LINEAR)
    assert np.abs(plain.images[0][1][20:-20, 20:-20].astype(int) - expect[20:-20, 20:-20]).mean() < 1.0
    # undistortion moves pixels by at most 0.15 px here (the demo's distortion is tiny)
    diff = np.abs(plain.images[0][0].astype(int) - mv.images[0][2])
    assert 0 < diff.mean() < 1.5
    with pytest.raises(IndexError, match=r"\[0, 100\)"):
        pose2sim.demo_views([100], cache_dir=cache)
    with pytest.raises(ValueError, match="cam09"):
        pose2sim.demo_views([0], cameras=("cam09",), cache_dir=cache)


def torch_float32():
    import torch

    return torch.float32


class _FakeDetector:
    """Stands in for MediaPipePose: one fixed keypoint set; every second picture has no one."""

    calls = 0

    def __init__(self, **kw):
        pass

    def detect(self, img):
        from bodyfit.detectors.mediapipe_pose import Detection, NoPersonError

        type(self).calls += 1
        if type(self).calls % 2 == 0:
            raise NoPersonError("nobody")
        h, w = img.shape[:2]
        kp = np.zeros((33, 3), np.float32)
        kp[:, 0], kp[:, 1], kp[:, 2] = 100.0, np.linspace(100, 1800, 33), 0.9
        kp[5, 2] = 0.0
        mask = np.zeros((h, w), np.float32)
        mask[500:1500, 300:700] = 1.0
        return Detection(kp, np.array([0, 0, w - 1, h - 1], np.float32), mask, (h, w))

    def close(self):
        pass


def test_demo_keypoints_cache_and_misses(pose2sim_wheel, tmp_path, monkeypatch, caplog):
    import bodyfit.detectors.mediapipe_pose as mpp

    store = tmp_path / "kp.npz"
    monkeypatch.setattr(pose2sim, "_detection_cache_path", lambda cache_dir: store)
    monkeypatch.setattr(mpp, "MediaPipePose", _FakeDetector)
    _FakeDetector.calls = 0
    cache = pose2sim_wheel.parent
    kp, misses = pose2sim.demo_keypoints([3], cameras=("cam01", "cam03"), cache_dir=cache,
                                         undistort=False, return_misses=True)
    assert _FakeDetector.calls == 2 and store.is_file()
    assert kp.shape == (1, 2, 33, 3) and kp.dtype == np.float32
    assert misses == [(3, "cam03")] and "no person" in caplog.text
    assert np.all(kp[0, 1] == 0)  # a miss: zeros, never NaN
    A = pose2sim.video_to_calibration("cam01")
    raw = _FakeDetector().detect(np.zeros((1920, 1080, 3), np.uint8)).keypoints
    np.testing.assert_allclose(kp[0, 0, :, :2], raw[:, :2] @ A[:2, :2].T + A[:2, 2], atol=1e-4)
    np.testing.assert_array_equal(kp[0, 0, :, 2], raw[:, 2])
    # cached: no detection again, in any order; undistortion only moves x, y slightly
    _FakeDetector.calls = 0
    again = pose2sim.demo_keypoints(3, cameras=("cam03", "cam01"), cache_dir=cache)
    assert _FakeDetector.calls == 0
    assert np.all(again[0, 0] == 0)
    assert np.abs(again[0, 1, :, :2] - kp[0, 0, :, :2]).max() < 2.0
    np.testing.assert_array_equal(again[0, 1, :, 2], kp[0, 0, :, 2])
    # a new frame detects only what is missing
    pose2sim.demo_keypoints([3, 4], cameras=("cam01",), cache_dir=cache)
    assert _FakeDetector.calls == 1
    # masks come from the same store, on the views' grid
    mv = pose2sim.demo_views([3], cameras=("cam01", "cam03"), masks=True, cache_dir=cache)
    assert _FakeDetector.calls == 1
    m = mv.masks[0][0]
    assert m.shape == (1920, 1088) and m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1
    assert m[1000, 500] > 0.9 and m[100, 500] < 0.1 and np.all(mv.masks[0][1] == 0)
    with pytest.raises(IndexError):
        pose2sim.demo_keypoints([-1], cache_dir=cache)


def test_demo_keypoints_are_deterministic(pose2sim_wheel, tmp_path, monkeypatch):
    pytest.importorskip("mediapipe")
    cache = pose2sim_wheel.parent
    shared = pose2sim.demo_keypoints([0], cameras=("cam01",), cache_dir=cache)  # the shared cache
    monkeypatch.setattr(pose2sim, "_detection_cache_path", lambda cache_dir: tmp_path / "kp.npz")
    fresh = pose2sim.demo_keypoints([0], cameras=("cam01",), cache_dir=cache)  # detected again
    np.testing.assert_array_equal(fresh, shared)
    assert (fresh[..., 2] > 0.5).sum() > 20


def test_pose2sim_member_extracts_other_demos_under_their_own_names(pose2sim_wheel):
    import zipfile

    from bodyfit.data.pose2sim import pose2sim_member

    member = "Pose2Sim/Demo_MultiPerson/calibration/Calib.qca.txt"
    path = pose2sim_member(member, cache_dir=pose2sim_wheel.parent)
    assert path.name == "Demo_MultiPerson_Calib.qca.txt"
    with zipfile.ZipFile(pose2sim_wheel) as z:
        assert path.read_bytes() == z.read(member)
    with pytest.raises(KeyError):
        pose2sim_member("Pose2Sim/Demo_None/x.txt", cache_dir=pose2sim_wheel.parent)
