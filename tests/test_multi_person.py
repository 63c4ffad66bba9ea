"""Multi-person detector: geometry, arguments, and real people (two Pose2Sim views in one picture)."""
import sys

import numpy as np
import pytest

from bodyfit.detectors import Detection, MediaPipePose, MultiPersonPose, NoPersonError
from bodyfit.detectors.multi_person import box_iou, person_regions, tile_windows


# -- geometry (no MediaPipe) ------------------------------------------------------------------
def test_tile_windows_cover_the_picture():
    h, w = 1080, 1920
    for levels, count in ((0, 1), (1, 1 + 3), (2, 1 + 3 + 15), (3, 1 + 3 + 15 + 50)):
        wins = tile_windows(h, w, levels)
        assert wins.shape == (count, 5)
        assert wins[0].tolist() == [0, 0, w, h, 0]  # the full picture first
        for lvl in range(1, levels + 1):
            t = wins[wins[:, 4] == lvl]
            side = min(h, w) // 2 ** (lvl - 1)
            assert (t[:, 2] == side).all() and (t[:, 3] == side).all()  # squares
            assert (t[:, 0] >= 0).all() and (t[:, 0] + side <= w).all()
            assert (t[:, 1] >= 0).all() and (t[:, 1] + side <= h).all()
            covered = np.zeros((h, w), bool)
            for x, y, _, _, _ in t:
                covered[y : y + side, x : x + side] = True
            assert covered.all(), lvl
            xs = np.unique(t[:, 0])  # neighbours share at least a quarter of a side
            assert (np.diff(xs) <= 0.75 * side + 1).all()


def test_tile_windows_edge_cases():
    assert len(tile_windows(500, 500, 1)) == 1  # a square picture: level 1 is the full picture
    assert len(tile_windows(500, 500, 2)) == 1 + 9
    assert len(tile_windows(200, 400, 2)) == 1 + 3  # 100-px tiles are below min_side: skipped
    assert len(tile_windows(480, 640, 3)) == len(tile_windows(480, 640, 2))  # 120 px: skipped
    with pytest.raises(ValueError, match="levels"):
        tile_windows(100, 100, 4)
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(100, 100, 1, overlap=0.95)
    with pytest.raises(ValueError, match="positive"):
        tile_windows(0, 100, 1)


def test_person_region_matches_mediapipe():
    # A detection of MediaPipe's PoseDetectionCpu on OpenCV's basketball2.png (640x480) and the
    # ROI its PoseDetectionToRoi subgraph made of it (x_center, y_center, width, height, rotation).
    w, h = 640, 480
    hip = np.array([0.108122021 * w, 0.544579923 * h])
    top = np.array([0.140850067 * w, 0.157929242 * h])
    cx, cy, side, rot = person_regions(hip, top)[0]
    np.testing.assert_allclose([cx / w, cy / h, side / w, side / h, rot],
                               [0.108122014, 0.544579923, 0.729572654, 0.972763538, 0.112384439],
                               rtol=1e-6, atol=1e-7)


def test_person_region_upright_and_upside_down():
    r = person_regions([[100.0, 200.0], [100.0, 200.0]], [[100.0, 120.0], [100.0, 280.0]])
    np.testing.assert_allclose(r[:, 2], 2 * 80 * 1.25)
    np.testing.assert_allclose(r[0, 3], 0.0, atol=1e-12)  # head up: no rotation
    assert abs(abs(r[1, 3]) - np.pi) < 1e-12  # head down: half a turn
    assert (-np.pi <= r[:, 3]).all() and (r[:, 3] < np.pi).all()


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0, 1], [0, 0, 0]])


# -- arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"setting": "everything"}, "setting"),
        ({"min_detection_confidence": 0.0}, "min_detection_confidence"),
        ({"min_presence": 1.5}, "min_presence"),
        ({"order": "height"}, "order"),
        ({"max_people": 0}, "max_people"),
        ({"model_complexity": 3}, "model_complexity"),
        ({"min_visible_landmarks": 40}, "min_visible_landmarks"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiPersonPose(**kwargs)


def test_missing_mediapipe_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` fail
    with pytest.raises(ImportError, match=r'pip install "bodyfit\[detect\]"'):
        MultiPersonPose()


def test_landmark_model_files(tmp_path):
    mp = pytest.importorskip("mediapipe")
    with pytest.raises(ValueError, match="@mediapipe/pose"):  # heavy: not in the wheel
        MultiPersonPose("full", model_complexity=2)
    with pytest.raises(ValueError, match="does not exist"):
        MultiPersonPose("full", model_complexity=2, landmark_model_path=tmp_path)
    bad = tmp_path / "pose_landmark_heavy.tflite"
    bad.write_bytes(b"\x20\x00\x00\x00TFL3" + bytes(200))  # the identifier, but no model
    with pytest.raises(ValueError, match="not a TensorFlow Lite model"):
        MultiPersonPose("full", model_complexity=2, landmark_model_path=tmp_path)
    # A real model that is not a landmark model: refused when built, not at the first picture.
    from pathlib import Path

    det_model = Path(mp.__file__).parent / "modules" / "pose_detection" / "pose_detection.tflite"
    with pytest.raises(ValueError, match="does not run as MediaPipe's pose_landmark_heavy"):
        MultiPersonPose("full", model_complexity=2, landmark_model_path=det_model)


# -- real people ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast():
    pytest.importorskip("mediapipe")
    with MultiPersonPose("fast") as det:
        yield det


@pytest.mark.slow
def test_two_people_found_apart(fast, two_people):
    canvas, places = two_people
    h, w = canvas.shape[:2]
    people = fast.detect_all(canvas)
    assert len(people) == 2
    assert all(isinstance(p, Detection) and p.image_size == (h, w) for p in people)
    areas = [(p.box[2] - p.box[0]) * (p.box[3] - p.box[1]) for p in people]
    assert areas[0] >= areas[1]  # largest first
    assert box_iou(people[0].box, people[1].box)[0, 0] == 0.0
    # one person in each pasted crop, each box inside its crop (2 px slack)
    for x0, y0, x1, y1 in places:
        mine = [p for p in people if x0 <= p.keypoints[0, 0] <= x1]
        assert len(mine) == 1
        bx0, by0, bx1, by1 = mine[0].box
        assert bx0 >= x0 - 2 and bx1 <= x1 + 2 and by0 >= y0 - 2 and by1 <= y1 + 2
        assert by1 - by0 > 300  # a full-body person in a 440-px crop
    for p, q in ((people[0], people[1]), (people[1], people[0])):
        kp = p.keypoints
        assert kp.shape == (33, 3) and kp.dtype == np.float32
        assert (kp[:, 2] > 0.5).sum() >= 25
        assert 0.5 <= p.score <= 1.0
        assert p.world_keypoints.shape == (33, 3) and p.world_keypoints.dtype == np.float32
        # per-person masks: this person's box is mostly its own, the other's box not
        assert p.mask.shape == (h, w) and p.mask.dtype == np.float32
        assert 0.0 <= p.mask.min() and p.mask.max() <= 1.0
        x0, y0, x1, y1 = p.box.astype(int)
        qx0, qy0, qx1, qy1 = q.box.astype(int)
        own = p.mask[y0:y1, x0:x1].mean()
        other = p.mask[qy0:qy1, qx0:qx1].mean()
        assert own > 0.2 and other < 0.01, (own, other)


@pytest.mark.slow
def test_each_person_agrees_with_single_person_detection(fast, two_people):
    canvas, places = two_people
    people = fast.detect_all(canvas)
    with MediaPipePose(enable_segmentation=False) as single:
        for x0, y0, x1, y1 in places:
            d = single.detect(np.ascontiguousarray(canvas[y0:y1, x0:x1]))
            ref = d.keypoints[:, :2] + [x0, y0]
            p = [q for q in people if x0 <= q.keypoints[0, 0] <= x1][0]
            both = (p.keypoints[:, 2] > 0.5) & (d.keypoints[:, 2] > 0.5)
            assert both.sum() >= 25
            err = np.linalg.norm(p.keypoints[both, :2] - ref[both], axis=1)
            # Different framings of the person region: ~2 px typical on a ~380-px-high person.
            assert np.median(err) < 4.0 and err.max() < 0.05 * p.box_height, err


@pytest.mark.slow
def test_tiles_find_small_people(two_people):
    """Two people 150 px high in a 1280x720 picture: the detector, which sees the full picture
    letterboxed to 224x224, misses them; square tiles find both (measured: at 100-180 px high
    and four placements the full picture found nobody, the thorough setting everybody at 150)."""
    import cv2

    canvas, places = two_people
    big = np.full((720, 1280, 3), 128, np.uint8)
    pasted = []
    for (x0, y0, x1, y1), (bx, by) in zip(places, ((900, 400), (200, 150))):
        c = canvas[y0:y1, x0:x1]
        c = cv2.resize(c, (round(c.shape[1] * 150 / c.shape[0]), 150), interpolation=cv2.INTER_AREA)
        big[by : by + 150, bx : bx + c.shape[1]] = c
        pasted.append((bx, by, bx + c.shape[1], by + 150))
    with MultiPersonPose("full") as full, MultiPersonPose("thorough") as thorough:
        assert full.detect_all(big) == []
        people = thorough.detect_all(big)
    assert len(people) == 2
    for x0, y0, x1, y1 in pasted:
        mine = [p for p in people if x0 <= p.keypoints[0, 0] <= x1 and y0 <= p.keypoints[0, 1] <= y1]
        assert len(mine) == 1
        bx0, by0, bx1, by1 = mine[0].box
        assert x0 - 15 <= bx0 and bx1 <= x1 + 15 and y0 - 15 <= by0 and by1 <= y1 + 15
        assert by1 - by0 > 100


@pytest.mark.slow
def test_order_and_max_people(two_people):
    canvas, _ = two_people
    with MultiPersonPose("full", order="score", max_people=1) as top:
        people = top.detect_all(canvas)
        assert len(people) == 1
    with MultiPersonPose("full", order="score") as det:
        everyone = det.detect_all(canvas)
    assert [p.score for p in everyone] == sorted((p.score for p in everyone), reverse=True)
    np.testing.assert_array_equal(people[0].keypoints, everyone[0].keypoints)


@pytest.mark.slow
def test_nobody(fast, nobody_picture):
    assert fast.detect_all(nobody_picture) == []
    with pytest.raises(NoPersonError, match="No person"):
        fast.detect(nobody_picture)


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((64, 64), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((64, 64, 4), np.uint8), r"\(H, W, 3\)"),
        ([[[0, 0, 0]]], "numpy"),
    ],
)
def test_bad_pictures(fast, bad, match):
    with pytest.raises(ValueError, match=match):
        fast.detect_all(bad)


@pytest.mark.slow
def test_closed_detector_refuses(two_people):
    pytest.importorskip("mediapipe")
    det = MultiPersonPose("full", enable_segmentation=False)
    people = det.detect_all(two_people[0])
    assert len(people) == 2 and all(p.mask is None for p in people)
    det.close()
    det.close()  # twice is fine
    with pytest.raises(RuntimeError, match="close"):
        det.detect_all(two_people[0])


@pytest.mark.slow
def test_landmark_model_from_a_resource_folder(tmp_path, two_people):
    """model_complexity=2 loads pose_landmark_heavy.tflite from the folder given. The wheel's
    full model stands in for the heavy one here (same inputs and outputs), so the landmarks
    must be the full model's exactly: proof that the file given is the file run."""
    mp = pytest.importorskip("mediapipe")
    from pathlib import Path

    full = Path(mp.__file__).parent / "modules" / "pose_landmark" / "pose_landmark_full.tflite"
    (tmp_path / "pose_landmark_heavy.tflite").symlink_to(full)
    with MultiPersonPose("full", model_complexity=2, landmark_model_path=tmp_path) as heavy, \
            MultiPersonPose("full") as ref:
        a, b = heavy.detect_all(two_people[0]), ref.detect_all(two_people[0])
    assert len(a) == len(b) == 2
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.keypoints, q.keypoints)
