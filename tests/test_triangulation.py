"""Multi-view triangulation: synthetic cameras, and the Pose2Sim demo's real views."""
import numpy as np
import pytest
import torch

from bodyfit.cameras import Camera
from bodyfit.triangulation import reprojection_errors, triangulate


def _look_at(centre, target):
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    return R, -R @ centre


def _rig(rng, V=4, size=(1080, 1920)):
    """V cameras ~3 m around a 2 m tall volume, looking at its middle (world Z up)."""
    W, H = size
    Ks, Rs, ts = [], [], []
    for v in range(V):
        a = 2 * np.pi * v / V + rng.uniform(-0.4, 0.4)
        c = np.array([3 * np.cos(a), 3 * np.sin(a), rng.uniform(1.0, 2.2)])
        R, t = _look_at(c, np.array([0.0, 0.0, 1.0]) + rng.normal(0, 0.1, 3))
        f = rng.uniform(1200, 1800)
        Ks.append([[f, 0, W / 2 + rng.uniform(-20, 20)], [0, f, H / 2 + rng.uniform(-20, 20)], [0, 0, 1]])
        Rs.append(R)
        ts.append(t)
    f32 = torch.float32
    return Camera(torch.tensor(Ks, dtype=f32), torch.tensor(np.array(Rs), dtype=f32),
                  torch.tensor(np.array(ts), dtype=f32), (H, W))


def _observe(cam, X, rng, noise_px=0.5, conf=0.9):
    """X (T,K,3) -> keypoints (T,V,K,3)."""
    T, J, _ = X.shape
    V = cam.batch_size
    pts = torch.tensor(X.reshape(1, -1, 3), dtype=torch.float32).expand(V, -1, 3)
    uv = cam.project(pts).reshape(V, T, J, 2).permute(1, 0, 2, 3).double().numpy()
    uv = uv + rng.normal(0, noise_px, uv.shape)
    return np.concatenate([uv, np.full(uv.shape[:-1] + (1,), conf)], -1)


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    cam = _rig(rng)
    X = rng.uniform([-0.4, -0.4, 0.0], [0.4, 0.4, 1.9], (5, 33, 3))
    return rng, cam, X


def test_recovers_points_from_noisy_views(scene):
    rng, cam, X = scene
    kp = _observe(cam, X, rng, noise_px=0.5)
    out = triangulate(kp, cam)
    assert isinstance(out, np.ndarray) and out.shape == (5, 33, 4) and out.dtype == np.float64
    err = np.linalg.norm(out[..., :3] - X, axis=-1)
    assert err.max() < 0.01 and np.median(err) < 0.003  # metres
    assert np.all(out[..., 3] > 0.8) and np.all(out[..., 3] <= 0.9)  # conf 0.9, ~1 px error
    e = reprojection_errors(out[..., :3], kp, cam)
    assert e.shape == (5, 4, 33) and np.median(e) < 1.0
    # exact observations: exact points, zero reprojection error
    exact = _observe(cam, X, rng, noise_px=0.0)
    out = triangulate(exact, cam)
    np.testing.assert_allclose(out[..., :3], X, atol=2e-4)
    assert reprojection_errors(out[..., :3], exact, cam).max() < 0.05


def test_single_frame_torch_and_camera_list(scene):
    rng, cam, X = scene
    kp = _observe(cam, X[:1], rng)[0]  # (V,K,3)
    ref = triangulate(kp, cam)
    assert ref.shape == (33, 4)
    t = triangulate(torch.tensor(kp, dtype=torch.float32), cam)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (33, 4)
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-4)
    # one Camera per view (as for views of different image sizes) gives the same
    views = [Camera(cam.K[v : v + 1], cam.R[v : v + 1], cam.t[v : v + 1], (100 + v, 200)) for v in range(4)]
    np.testing.assert_allclose(triangulate(kp, views), ref, atol=1e-9)
    e = reprojection_errors(torch.tensor(ref[:, :3]), torch.tensor(kp), views)
    assert isinstance(e, torch.Tensor) and e.shape == (4, 33)


def test_unseen_keypoints_get_quality_zero(scene):
    rng, cam, X = scene
    kp = _observe(cam, X, rng)
    kp[:, 1:, 0, 2] = 0.0  # keypoint 0: only view 0 sees it
    kp[:, :, 1, 2] = 0.0  # keypoint 1: nobody
    kp[:, 2:, 2, 2] = 0.0  # keypoint 2: views 0 and 1
    kp[:, 0, 3, :2] = np.nan  # keypoint 3: NaN in view 0 counts as missing
    kp[:, 1, 4, 2] = 0.2  # keypoint 4: a weak view
    out, used = triangulate(kp, cam, return_used=True)
    assert np.isfinite(out).all()
    assert np.all(out[:, :2, 3] == 0) and np.all(out[:, :2, :3] == 0)
    assert np.all(out[:, 2, 3] > 0)  # two views are enough ...
    assert np.all(triangulate(kp, cam, min_views=3)[:, 2, 3] == 0)  # ... unless asked for three
    assert np.all(out[:, 3, 3] > 0) and not used[:, 0, 3].any()
    np.testing.assert_allclose(out[:, 3, :3], X[:, 3], atol=0.01)
    assert used[:, 1, 4].all()
    assert not triangulate(kp, cam, min_confidence=0.3, return_used=True)[1][:, 1, 4].any()
    assert used.shape == (5, 4, 33) and used.dtype == bool


def test_outlier_view_is_rejected(scene):
    rng, cam, X = scene
    kp = _observe(cam, X, rng)
    kp[:, 2, :10, :2] += rng.choice([-1, 1], (5, 10, 2)) * rng.uniform(60, 150, (5, 10, 2))
    out, used = triangulate(kp, cam, return_used=True)
    plain = triangulate(kp, cam, robust=False)
    err = np.linalg.norm(out[..., :3] - X, axis=-1)
    err_plain = np.linalg.norm(plain[..., :3] - X, axis=-1)
    assert not used[:, 2, :10].any() and used[:, :, 10:].all()
    assert err[:, :10].max() < 0.01 < err_plain[:, :10].min()
    assert plain[:, :10, 3].max() < out[:, :10, 3].min()  # the quality shows it
    # with a stricter min_views the outlier cannot be dropped
    strict = triangulate(kp, cam, min_views=4, return_used=True)[1]
    assert strict.all()


def test_point_behind_the_cameras_gets_quality_zero():
    K = torch.tensor([[1000.0, 0, 500], [0, 1000.0, 500], [0, 0, 1]]).expand(2, 3, 3)
    R = torch.eye(3).expand(2, 3, 3)
    t = torch.tensor([[0.0, 0, 0], [-0.5, 0, 0]])
    cam = Camera(K, R, t, (1000, 1000))
    X = np.array([0.2, 0.1, -3.0])  # behind both cameras
    kp = []
    for v in range(2):
        Xc = X + t[v].numpy()
        kp.append([[*(K[v].numpy() @ (Xc / Xc[2]))[:2], 1.0]])
    out = triangulate(np.array(kp), cam)
    assert out.shape == (1, 4) and out[0, 3] == 0 and np.all(out[0, :3] == 0)


def test_bad_input_raises(scene):
    rng, cam, X = scene
    kp = _observe(cam, X, rng)
    with pytest.raises(ValueError, match=r"\(V, K, 3\)"):
        triangulate(kp[..., :2], cam)
    with pytest.raises(ValueError, match="3 views .* 4 cameras"):
        triangulate(kp[:, :3], cam)
    with pytest.raises(ValueError, match="at least 2 cameras"):
        triangulate(kp[:, :1], cam.index([0]))
    with pytest.raises(ValueError, match="min_views"):
        triangulate(kp, cam, min_views=1)
    with pytest.raises(ValueError, match="min_views"):
        triangulate(kp, cam, min_views=5)
    with pytest.raises(ValueError, match="Camera"):
        triangulate(kp, "cam01")
    with pytest.raises(ValueError, match="disagree"):
        reprojection_errors(X[:, :5], kp, cam)
    with pytest.raises(ValueError, match="3 views but 4 cameras"):
        reprojection_errors(X, kp[:, :3], cam)
    with pytest.raises(ValueError, match=r"\(\.\.\., K, 3\)"):
        reprojection_errors(X[..., :2], kp, cam)


# -- Pose2Sim demo: 4 real calibrated views, MediaPipe keypoints ---------------------------------

@pytest.fixture(scope="module")
def demo_kp(pose2sim_wheel):
    pytest.importorskip("mediapipe")
    from bodyfit.data.pose2sim import demo_cameras, demo_keypoints

    frames = [0, 50]
    kp, misses = demo_keypoints(frames, cache_dir=pose2sim_wheel.parent, return_misses=True)
    return frames, kp, misses, demo_cameras(cache_dir=pose2sim_wheel.parent)


def test_demo_keypoints_triangulate_consistently(demo_kp):
    frames, kp, misses, cam = demo_kp
    assert misses == [] and kp.shape == (2, 4, 33, 3) and kp.dtype == np.float32
    assert np.isfinite(kp).all()
    out, used = triangulate(kp, cam, return_used=True)
    e = reprojection_errors(out[..., :3], kp, cam)
    ok = used & (out[:, None, :, 3] > 0)
    assert ok.sum() > 0.7 * (kp[..., 2] > 0).sum()
    per_view = [float(np.median(e[:, v][ok[:, v]])) for v in range(4)]
    # Measured on frames 0 and 50 (1920-pixel-high pictures): medians 8.4, 8.7, 13.0, 6.3 px in
    # cam01..cam04 over the views kept (74 % of the detections), 8.4 px over all; MediaPipe's
    # landmarks lie on the visible body surface, so views disagree by 10-30 px even when right.
    assert max(per_view) < 16.0, per_view
    assert np.median(e[ok]) < 12.0
    # without the robust pass every view keeps its keypoints: larger, still bounded (22 px)
    plain = triangulate(kp, cam, robust=False)
    ep = reprojection_errors(plain[..., :3], kp, cam)
    assert np.median(ep[(kp[..., 2] > 0) & (plain[:, None, :, 3] > 0)]) < 30.0
    # metric, Z-up world: eyes ~1.4-1.7 m above the floor, ankles below 0.6 m, person ~ on the belt
    eyes, ankles = out[:, [2, 5]], out[:, [27, 28]]
    assert np.all((eyes[..., 2] > 1.2) & (eyes[..., 2] < 1.9))
    assert np.all(ankles[..., 2] < 0.6)
    assert np.abs(out[:, 11:13, :2]).max() < 1.5  # shoulders within 1.5 m of the origin
