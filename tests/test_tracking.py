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
    for root in ("/usr/share/doc/opencv-doc/examples/data", "/tmp/opencv-doc/usr/share/doc/opencv-doc/examples/data"):
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
