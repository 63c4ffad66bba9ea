"""MediaPipe Pose detector: input checks, no-person pictures, and a real Pose2Sim frame."""
import sys

import numpy as np
import pytest

from bodyfit.detectors import Detection, MediaPipePose, NoPersonError
from bodyfit.detectors.mediapipe_pose import _check_image


def test_no_person_error_is_a_value_error():
    assert issubclass(NoPersonError, ValueError)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((32, 32, 3), np.float32),
        np.zeros((32, 32), np.uint8),
        np.zeros((32, 32, 4), np.uint8),
        np.zeros((0, 32, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
)
def test_input_validation(bad):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB"):
        _check_image(bad)


def test_missing_mediapipe_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` fail
    with pytest.raises(ImportError, match=r'pip install "bodyfit\[detect\]"'):
        MediaPipePose()


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("mediapipe")
    with MediaPipePose() as det:
        yield det


@pytest.mark.slow
def test_bad_input_through_detect(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float64))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        detector.detect(np.zeros((64, 64), np.uint8))


@pytest.mark.slow
def test_no_person(detector, nobody_picture):
    with pytest.raises(NoPersonError, match="No person"):
        detector.detect(nobody_picture)


@pytest.fixture(scope="module")
def frames(pose2sim_wheel):
    from bodyfit.data.pose2sim import demo_frames

    return demo_frames((0,), cameras=("cam01", "cam04"), cache_dir=pose2sim_wheel.parent)


@pytest.mark.slow
def test_real_frames(detector, frames):
    for name, img in frames:  # one instance, several pictures
        h, w = img.shape[:2]
        d = detector.detect(img)
        assert isinstance(d, Detection) and d.image_size == (h, w)
        kp = d.keypoints
        assert kp.shape == (33, 3) and kp.dtype == np.float32
        conf = kp[:, 2]
        assert np.all((conf >= 0) & (conf <= 1))
        assert (conf > 0.5).mean() > 0.75, name
        x0, y0, x1, y1 = d.box
        assert d.box.dtype == np.float32 and 0 <= x0 < x1 <= w - 1 and 0 <= y0 < y1 <= h - 1
        assert y1 - y0 > 100, name  # a full-body person, 1920-px-high frames
        good = kp[conf > 0.5]
        inside = (good[:, 0] >= x0) & (good[:, 0] <= x1) & (good[:, 1] >= y0) & (good[:, 1] <= y1)
        assert inside.all(), name
        # anatomy in the picture: head above hips above ankles (y down)
        nose, hips, ankles = kp[0, 1], kp[23:25, 1].mean(), kp[27:29, 1].mean()
        assert nose < hips < ankles, name
        assert d.mask is not None and d.mask.shape == (h, w) and d.mask.dtype == np.float32
        assert 0.0 <= d.mask.min() and d.mask.max() <= 1.0
        in_box = np.zeros((h, w), bool)
        in_box[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = True
        m_in, m_out = d.mask[in_box].mean(), d.mask[~in_box].mean()
        assert m_in > 0.2 and m_in > 10 * m_out, (name, m_in, m_out)
        assert d.world_keypoints is not None and d.world_keypoints.shape == (33, 3)


@pytest.mark.slow
def test_closed_detector_refuses(frames):
    pytest.importorskip("mediapipe")
    det = MediaPipePose(enable_segmentation=False)
    d = det.detect(frames[0][1])
    assert d.mask is None and d.box[3] - d.box[1] > 100
    det.close()
    det.close()  # twice is fine
    with pytest.raises(RuntimeError, match="close"):
        det.detect(frames[0][1])


@pytest.mark.slow
def test_same_person_as_the_legacy_api(detector, frames):
    """MediaPipePose runs MediaPipe's pose subgraphs itself; it must return what the legacy
    ``mp.solutions.pose`` API returns for the same picture (measured: within 0.07 px)."""
    mp = pytest.importorskip("mediapipe")
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                enable_segmentation=True) as legacy:
        for name, img in frames:
            h, w = img.shape[:2]
            res = legacy.process(img)
            ref = np.array([[p.x * w - 0.5, p.y * h - 0.5, p.visibility]
                            for p in res.pose_landmarks.landmark])
            d = detector.detect(img)
            np.testing.assert_allclose(d.keypoints[:, :2], ref[:, :2], atol=0.5, err_msg=name)
            inside = d.keypoints[:, 2] > 0
            np.testing.assert_allclose(d.keypoints[inside, 2], ref[inside, 2], atol=0.01)
            a, b = d.mask > 0.5, np.asarray(res.segmentation_mask) > 0.5
            assert (a & b).sum() / (a | b).sum() > 0.99, name
            assert d.score is not None and 0.5 <= d.score <= 1.0
