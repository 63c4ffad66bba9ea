"""People across frames (bodyfit.tracking) on synthetic tracks of known identities, and a few
frames of OpenCV's vtest.avi (pedestrians) when the opencv-doc package is there."""
from pathlib import Path

import numpy as np
import pytest
import torch

from bodyfit.body_models import body_model
from bodyfit.data.synthetic import synthetic_batch
from bodyfit.tracking import Tracker, box_iou, oks, track_people


@pytest.fixture(scope="module")
def templates():
    """Three people's MediaPipe-33 keypoints (K,2), centred at 0, about 200, 160, 180 px high."""
    model = body_model("anny", topology="notoes_collapse3pc")
    b = synthetic_batch(model, 3, image_size=(480, 640), noise=0.0, dropout=0.0,
                        generator=torch.Generator().manual_seed(4))
    out = []
    for p, h in zip(b.clean.numpy(), (200, 160, 180)):
        p = p - 0.5 * (p.min(0) + p.max(0))
        out.append(p * h / np.ptp(p[:, 1]))
    return out


def person(template, centre, rng, noise=1.5):
    """A detection (box (4,), keypoints (K,3)) of a template at ``centre`` px with noise."""
    xy = template + np.asarray(centre) + rng.normal(0, noise, template.shape)
    kp = np.concatenate([xy, np.full((len(xy), 1), 0.9)], 1)
    pad = 0.1 * np.ptp(xy[:, 1])
    return np.concatenate([xy.min(0) - pad, xy.max(0) + pad]), kp


def frames_of(paths, rng):
    """paths: per person a list of (frame -> centre or None). Returns the frames (boxes,
    keypoints) with detections in a random order, and per frame the true person of each."""
    T = len(paths[0][1])
    frames, truth = [], []
    for t in range(T):
        dets = [(p, person(tpl, c[t], rng)) for p, (tpl, c) in enumerate(paths) if c[t] is not None]
        order = rng.permutation(len(dets))
        dets = [dets[i] for i in order]
        boxes = np.array([d[1][0] for d in dets]).reshape(-1, 4)
        kps = np.array([d[1][1] for d in dets]).reshape(-1, 33, 3)
        frames.append((boxes, kps))
        truth.append([d[0] for d in dets])
    return frames, truth


def id_sets(ids, truth):
    """{true person: set of track ids it got}, and {track id: set of true people}."""
    by_person, by_track = {}, {}
    for per_ids, per_truth in zip(ids, truth):
        for i, p in zip(per_ids, per_truth):
            by_person.setdefault(p, set()).add(i)
            by_track.setdefault(i, set()).add(p)
    return by_person, by_track


def test_crossing_people_keep_their_ids(templates):
    rng = np.random.default_rng(0)
    T = 25
    a = [(100 + 18 * t, 240) for t in range(T)]  # left to right
    b = [(540 - 18 * t, 250) for t in range(T)]  # right to left, crossing at t ~ 12
    c = [(320, 120 + 2 * t) for t in range(T)]  # slowly down, crossed by both
    frames, truth = frames_of([(templates[0], a), (templates[1], b), (templates[2], c)], rng)
    ids, tracks = track_people(frames)
    by_person, by_track = id_sets(ids, truth)
    assert all(len(s) == 1 for s in by_person.values()), by_person
    assert all(len(s) == 1 for s in by_track.values()), by_track
    assert [len(t.frames) for t in tracks] == [T, T, T]


def test_missed_detection_and_a_person_who_leaves_and_comes_back(templates):
    rng = np.random.default_rng(1)
    T = 24
    a = [(150 + 5 * t, 240) if t != 7 else None for t in range(T)]  # one missed frame
    b = [(480, 240) if not 8 <= t < 16 else None for t in range(T)]  # away for 8 frames
    frames, truth = frames_of([(templates[0], a), (templates[1], b)], rng)
    ids, tracks = track_people(frames, max_missed=3)
    by_person, by_track = id_sets(ids, truth)
    assert len(by_person[0]) == 1  # kept through the missed frame
    assert len(by_person[1]) == 2  # left for longer than max_missed: a new id when back
    assert all(len(s) == 1 for s in by_track.values())  # an id is never given to two people
    (first, second) = sorted(by_person[1])
    assert tracks[first].frames == list(range(8)) and tracks[second].frames == list(range(16, T))
    assert tracks[next(iter(by_person[0]))].frames == [t for t in range(T) if t != 7]


def test_empty_frames_and_bad_input(templates):
    rng = np.random.default_rng(2)
    tr = Tracker(max_missed=1)
    assert tr.update(np.zeros((0, 4)), np.zeros((0, 33, 3))) == []
    box, kp = person(templates[0], (200, 200), rng)
    assert tr.update(box[None], kp[None]) == [0]
    assert tr.update(np.zeros((0, 4)), np.zeros((0, 33, 3))) == []
    assert tr.update(box[None], kp[None]) == [0]  # one missed frame is allowed
    tr.update(np.zeros((0, 4)), np.zeros((0, 33, 3)))
    tr.update(np.zeros((0, 4)), np.zeros((0, 33, 3)))
    assert tr.update(box[None], kp[None]) == [1]  # two are not
    with pytest.raises(ValueError, match="same N"):
        tr.update(box[None], kp[None].repeat(2, 0))
    with pytest.raises(ValueError, match="finite"):
        tr.update(np.full((1, 4), np.nan), kp[None])
    with pytest.raises(ValueError, match="max_missed"):
        Tracker(max_missed=-1)


def test_iou_and_oks():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = np.array([[5, 0, 15, 10]])
    assert np.allclose(box_iou(a, b), [[1 / 3], [0]])
    kp = np.zeros((1, 3, 3))
    kp[0, :, 2] = 1
    other = kp.copy()
    other[0, 0, 2] = 0
    other[0, 1, :2] = 10
    assert np.allclose(oks(kp, other, np.array([100.0]), kappa=1.0), [[0.5 * (np.exp(-1) + 1)]])
    assert oks(kp, np.zeros((1, 3, 3)), np.array([100.0])).tolist() == [[0.0]]


def _vtest() -> Path | None:
    for root in ("/usr/share/doc/opencv-doc/examples/data",
                 "/tmp/opencv-doc/usr/share/doc/opencv-doc/examples/data"):
        if (Path(root) / "vtest.avi").is_file():
            return Path(root) / "vtest.avi"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_vtest() is None, reason="vtest.avi of the opencv-doc package is not installed")
def test_vtest_pedestrians_are_tracked():
    """The first ten frames of OpenCV's vtest.avi (768x576, pedestrians, small: the detector's
    ``thorough`` tiling finds 2-4 of them per frame, ``fast`` almost none): the people are
    tracked with stable ids (of each frame's ids, most were there the frame before; three
    people are followed over 8 frames or more)."""
    pytest.importorskip("mediapipe")
    from bodyfit.data.images import read_video_frames
    from bodyfit.detectors import MultiPersonPose

    frames = [im for _, im in read_video_frames(str(_vtest()), every=1, max_frames=10)]
    with MultiPersonPose("thorough") as det:
        found = [det.detect_all(f) for f in frames]
    ids, tracks = track_people(found)
    assert min(len(f) for f in found) >= 2
    kept = [len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(ids, ids[1:])]
    assert np.mean(kept) >= 0.7, (kept, [len(f) for f in found])
    long = [t for t in tracks if len(t.frames) >= 8]
    assert len(long) >= 3


class FakeVideoDetector:
    """Stands in for MultiPersonPose: a picture's first pixel names its frame; ``detect_all``
    returns that frame's detections."""

    def __init__(self, per_frame):
        self.per_frame = per_frame

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def detect_all(self, picture):
        return list(self.per_frame[int(picture[0, 0, 0])])


@pytest.mark.slow
def test_fit_video_fits_each_track_with_one_shape(tmp_path, monkeypatch):
    """Two synthetic people walking past each other in 6 frames (nobody in frame 3, person 1
    missed in frame 4): per frame a folder with person_<track id>/ and people.json, the same
    ids in every frame, one shape per track, the empty frame reported."""
    import json

    from bodyfit import load_config, pipeline
    from bodyfit.cameras import Camera, default_intrinsics
    from bodyfit.data.synthetic import sample_params
    from bodyfit.detectors import Detection
    from bodyfit.pipeline import Scene, fit_scenes

    model = body_model("anny", topology="notoes_collapse3pc")
    g = torch.Generator().manual_seed(5)
    params = sample_params(model, 2, g)
    H, W = 480, 640
    cam = Camera.identity(default_intrinsics((H, W), 1, 55.0), (H, W))
    kp_index, _ = model.keypoint_map("mediapipe33")
    per_frame = []
    T = 6
    for t in range(T):
        dets = []
        for p, (x0, dx, z) in enumerate([(-1.2, 0.4, 5.0), (1.0, -0.4, 6.0)]):
            if t == 3 or (p == 1 and t == 4):
                continue
            q = sample_params(model, 1)
            q.global_orient, q.body_pose, q.shape = (params.global_orient[p:p + 1], params.body_pose[p:p + 1],
                                                     params.shape[p:p + 1])
            q.transl = torch.tensor([[x0 + dx * t, 0.0, z]])
            with torch.no_grad():
                xy = cam.project(model(q, vertices=False).joints[:, kp_index])[0].numpy()
            kp = np.concatenate([xy, np.full((33, 1), 0.9)], 1).astype(np.float32)
            box = np.concatenate([xy.min(0), xy.max(0)]).astype(np.float32)
            dets.append(Detection(kp, box, None, (H, W), score=0.9))
        per_frame.append(sorted(dets, key=lambda d: -d.box_height))
    monkeypatch.setattr(pipeline, "_open_detector", lambda cfg, people: FakeVideoDetector(per_frame))
    pictures = [np.full((H, W, 3), t, np.uint8) for t in range(T)]
    names = [f"frame_{t:06d}" for t in range(T)]
    cfg = load_config(["stages.camera.steps=15", "stages.body.steps=30", "stages.dense.steps=10",
                       "init=mean"], name="fit_views")
    reports = fit_scenes([Scene([pictures], names, sequence=True)], tmp_path, model, cfg, progress=False,
                         people=True)
    assert [r.ok for r in reports] == [True, True, True, False, True, True]
    assert "no person" in reports[3].error
    seen = {}
    for t in (0, 1, 2, 4, 5):
        listing = json.loads((tmp_path / names[t] / "people.json").read_text())
        for p in listing["people"]:
            x = p["box"][0]  # person 0 starts left, moves right; person 1 the other way
            seen.setdefault(p["id"], []).append((t, x))
            assert (tmp_path / names[t] / f"person_{p['id']}" / "fit.npz").is_file()
    assert sorted(seen) == [0, 1]
    assert [t for t, _ in seen[0]] == [0, 1, 2, 4, 5] and [t for t, _ in seen[1]] == [0, 1, 2, 5]
    # Person 1 missed in frames 3 and 4, within max_missed=3: the same id after the gap.
    shapes = [np.load(tmp_path / names[t] / "person_0" / "fit.npz")["phenotypes"] for t in (0, 1, 2, 4, 5)]
    assert all(np.allclose(s, shapes[0]) for s in shapes)
    xs0 = [x for _, x in seen[0]]
    assert xs0 == sorted(xs0)  # person 0 always the one walking right
