import importlib.util
import json

import numpy as np
import pytest

from bodyfit.cli import main, split_words
from bodyfit.data.images import write_image

needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                     reason="the detector extra (mediapipe) is not installed")


@pytest.fixture(scope="module")
def real_frame(pose2sim_wheel):
    pytest.importorskip("mediapipe")
    from bodyfit.data.pose2sim import demo_frames

    return demo_frames(frame_indices=(0,), cameras=("cam02",))[0][1]


@pytest.mark.slow
def test_fit_writes_files_and_skips_bad_pictures(tmp_path, real_frame, capsys):
    good = tmp_path / "walker.png"
    write_image(good, real_frame)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    blank = tmp_path / "blank.png"
    write_image(blank, np.full((240, 320, 3), 128, np.uint8))
    out = tmp_path / "out"
    code = main(["fit", str(good), str(corrupt), str(blank), str(tmp_path / "missing.png"),
                 "--out", str(out), "--quiet", "stages.body.steps=80"])
    assert code == 1
    err = capsys.readouterr().err
    assert "corrupt" in err and "blank" in err and "missing" in err
    d = out / "walker"
    listing = json.loads((d / "people.json").read_text())
    assert len(listing["people"]) >= 1 and listing["source"] == str(good.resolve())
    assert (d / "overlay.png").stat().st_size > 0
    p = d / "person_0"  # the largest person: the walker
    for name in ["fit.npz", "fit.json", "mesh.ply", "mesh.glb"]:
        assert (p / name).stat().st_size > 0
    summary = json.loads((p / "fit.json").read_text())
    assert summary["model"] == "anny" and summary["keypoint_convention"] == "mediapipe33"
    assert 0 < summary["reprojection_error_px"] < 0.05 * summary["box_height_px"]
    assert set(summary["runtime_s"]) >= {"detection", "init", "fit"}
    assert summary["person_id"] == 0 and summary["truncated"] is False
    data = np.load(p / "fit.npz")
    assert data["vertices"].shape == (13718, 3) and np.isfinite(data["vertices"]).all()
    assert data["phenotypes"].shape == (6,) and data["K"].shape == (3, 3)
    assert not (out / "blank").exists() and not (out / "corrupt").exists()


def test_bad_usage_exits_2(tmp_path, capsys):
    assert main(["fit", "x.png", "--out", str(tmp_path), "no_such_key=3"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert main(["fit", "x.png", "--out", str(tmp_path), "stages.body.steps=abc"]) == 2
    assert "stages.body.steps" in capsys.readouterr().err
    assert main(["fit", "x.png", "--out", str(tmp_path), "--model", "smpl",
                 "--model-path", str(tmp_path / "nothing")]) == 2
    assert "smpl.is.tue.mpg.de" in capsys.readouterr().err


def test_pictures_and_overrides_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "init=mean").write_text("a file named like an override")
    pictures, overrides = split_words(["dir/a=b.jpg", "init=mean", "photo.PNG", "+stages.body.weights.silhouette=1",
                                       "~stages.camera", "noext", "--", "x.jpg=1"])
    assert pictures == ["dir/a=b.jpg", "photo.PNG", "noext"]
    assert overrides == ["init=mean", "+stages.body.weights.silhouette=1", "~stages.camera", "x.jpg=1"]


@pytest.mark.slow
def test_same_stem_pictures_get_their_own_folders(tmp_path, real_frame):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_image(tmp_path / d / "walker.png", real_frame)
    out = tmp_path / "out"
    assert main(["fit", str(tmp_path / "a" / "walker.png"), str(tmp_path / "b" / "walker.png"), "--out", str(out),
                 "--quiet", "stages.body.steps=10"]) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 2 and all(f.startswith("walker-") for f in folders)
    sources = {json.loads((out / f / "person_0" / "fit.json").read_text())["source"] for f in folders}
    assert sources == {str((tmp_path / d / "walker.png").resolve()) for d in ("a", "b")}


@needs_mediapipe
@pytest.mark.slow
def test_demo_fits_four_real_views(tmp_path, pose2sim_wheel):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == [f"cam0{i}_frame000" for i in range(1, 5)]
    for d in dirs:
        s = json.loads((out / d / "fit.json").read_text())
        assert s["reprojection_error_px"] / s["box_height_px"] < 0.05
        assert "Pose2Sim" in s["source"]


@pytest.fixture(scope="module")
def calibration_file(pose2sim_wheel, tmp_path_factory):
    from bodyfit.data.pose2sim import DEMO_ROOT, pose2sim_member

    return pose2sim_member(f"{DEMO_ROOT}/calibration/Calib.qca.txt")


def test_fit_views_bad_usage_exits_2(tmp_path, calibration_file, capsys):
    one = tmp_path / "one.png"
    write_image(one, np.zeros((8, 8, 3), np.uint8))
    assert main(["fit-views", str(one), "--calib", str(calibration_file), "--out", str(tmp_path)]) == 2
    assert "1 pictures for the 4 cameras" in capsys.readouterr().err
    assert main(["fit-views", str(one), "--calib", str(tmp_path / "none.qca.txt"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


@needs_mediapipe
@pytest.mark.slow
def test_fit_views_on_four_real_views(tmp_path, calibration_file):
    from bodyfit.data.pose2sim import demo_views

    mv = demo_views([0])
    paths = []
    for name, image in zip(mv.names, mv.images[0]):
        paths.append(tmp_path / f"{name}.png")
        write_image(paths[-1], image)
    out = tmp_path / "views"
    assert main(["fit-views", *map(str, paths), "--calib", str(calibration_file), "--out", str(out),
                 "--keypoints-only", "--quiet"]) == 0
    people = json.loads((out / "people.json").read_text())
    assert len(people["people"]) == 1  # the demo's one person, associated across the 4 views
    assert list(people["people"][0]["views"]) == list(mv.names)
    s = json.loads((out / "person_0" / "fit.json").read_text())
    assert list(s["views"]) == list(mv.names)
    assert all(v["reprojection_error_over_box"] < 0.05 for v in s["views"].values())
    for name in mv.names:
        assert (out / f"overlay_{name}.png").stat().st_size > 0
    assert np.load(out / "person_0" / "fit.npz")["K"].shape == (4, 3, 3)


@needs_mediapipe
@pytest.mark.slow
def test_fit_video_skips_a_frame_without_person(tmp_path, pose2sim_wheel, capsys):
    import cv2

    from bodyfit.data.pose2sim import demo_frames

    frames = [im for _, im in demo_frames(frame_indices=(0, 5, 10, 15), cameras=("cam04",))]
    frames[2] = np.full_like(frames[2], 90)  # nobody in the third frame
    video = tmp_path / "walk.mp4"
    h, w = frames[0].shape[0] // 2, frames[0].shape[1] // 2
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(cv2.resize(f, (w, h)), cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "video"
    code = main(["fit-video", str(video), "--out", str(out), "--keypoints-only", "--quiet",
                 "stages.dense.steps=10"])
    assert code == 1
    err = capsys.readouterr().err
    assert "frame_000002" in err
    fitted = sorted(p.name for p in out.iterdir())
    assert fitted == ["frame_000000", "frame_000001", "frame_000003"]
    tracks = []  # the walking person (the largest box) keeps one track id, one shape
    for d in fitted:
        people = json.loads((out / d / "people.json").read_text())["people"]
        tracks.append(max(people, key=lambda p: p["box_height_px"] or 0)["id"])
    assert len(set(tracks)) == 1
    shapes = [np.load(out / d / f"person_{tracks[0]}" / "fit.npz")["phenotypes"] for d in fitted]
    assert np.allclose(shapes[0], shapes[1]) and np.allclose(shapes[0], shapes[2])


def test_second_train_on_a_run_folder_stops_at_once(tmp_path, folder_holder, capsys):
    run = tmp_path / "run"
    holder = folder_holder(run)
    code = main(["train", "--out", str(run), "--quiet", "data=synthetic", "synthetic_samples=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(run) in err and f"pid {holder.pid}" in err and "in use by another run" in err
    assert sorted(p.name for p in run.iterdir()) == ["run.lock"]  # nothing of the running one touched


@needs_mediapipe
def test_bombs_folders_and_missing_pictures_are_reported_one_by_one(tmp_path, capsys):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"  # declares 100000 x 100000 RGB (30 GB) in 74 bytes
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    folder = tmp_path / "holiday"
    folder.mkdir()
    blank = write_image(tmp_path / "blank.png", np.full((240, 320, 3), 128, np.uint8))
    code = main(["fit", str(bomb), str(folder), str(tmp_path / "missing.jpg"), str(blank),
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "bomb.png" in err and "declares a 100000x100000 picture" in err and "decompression bomb" in err
    assert f"{folder}' is a folder, not a picture file" in err
    assert "missing.jpg" in err and "not found" in err
    assert "blank not fitted: no person found" in err  # the run went on to the last picture
    assert "0 fitted (0 flagged as far off), 4 failed" in captured.out


@pytest.mark.slow
def test_big_pictures_are_fitted_downscaled_and_reruns_skip_what_is_done(tmp_path, real_frame, capsys):
    """A picture above detector.max_pixels is detected and fitted at the working size and
    written at full size; a rerun skips it (same content, same model) unless --redo; a changed
    picture under the same name is fitted again and the replaced result is named."""
    import cv2

    h, w = real_frame.shape[:2]
    pic = tmp_path / "walker.jpg"
    big = cv2.resize(real_frame, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
    write_image(pic, big)
    out = tmp_path / "out"
    args = ["fit", str(pic), "--out", str(out), "--quiet", "stages.body.steps=10", f"detector.max_pixels={h * w}"]
    assert main(args) == 0
    d = out / "walker"
    s = json.loads((d / "person_0" / "fit.json").read_text())
    note = s["downscaled"]
    assert "detector.max_pixels" in note.pop("note")
    assert note == {"original_hw": [2 * h, 2 * w], "working_hw": [h, w], "scale": 0.5}
    first = np.load(d / "person_0" / "fit.npz")
    assert abs(first["K"][0, 2] - w) < 1e-3 and abs(first["K"][1, 2] - h) < 1e-3  # the full picture's camera
    assert cv2.imread(str(d / "overlay.png")).shape[:2] == (h, w)  # drawn at the working size
    first_box = np.array(json.loads((d / "people.json").read_text())["people"][0]["box"])
    capsys.readouterr()

    written = {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")}
    assert main(args) == 0  # the same picture again: already done
    captured = capsys.readouterr()
    assert "walker: already done" in captured.out and "0 fitted (0 flagged as far off), 1 already done" in captured.out
    assert {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")} == written

    write_image(pic, real_frame)  # another picture under the same name, at the working size
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "1 fitted" in captured.out
    assert f"replaced the previous result (anny fit of {pic.resolve()}, sha1" in captured.err
    second = np.load(d / "person_0" / "fit.npz")
    assert "downscaled" not in json.loads((d / "person_0" / "fit.json").read_text())
    seen = (first["keypoints"][:, 2] > 0.5) & (second["keypoints"][:, 2] > 0.5)
    assert seen.sum() > 15
    gap = np.linalg.norm((first["keypoints"][seen, :2] + 0.5) / 2 - 0.5 - second["keypoints"][seen, :2], axis=1)
    assert np.median(gap) < 3.0  # the same detections, mapped back to full resolution
    second_box = np.array(json.loads((d / "people.json").read_text())["people"][0]["box"])
    assert np.abs((first_box + 0.5) / 2 - 0.5 - second_box).max() < 6.0  # boxes too

    assert main([*args, "--redo"]) == 0  # asked to redo: fitted again
    assert "1 fitted" in capsys.readouterr().out
    assert {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")} != written


@needs_mediapipe
@pytest.mark.slow
def test_fit_every_person_of_a_picture(tmp_path, two_people, capsys):
    """Two real people in one picture: each gets its folder and a good fit, people.json lists
    both with their own boxes, one overlay at the picture's size, meshes that load back as
    glTF; a rerun skips the picture, max_people=1 keeps only the largest."""
    import cv2
    import trimesh

    from bodyfit.detectors.multi_person import box_iou

    canvas, places = two_people
    pic = write_image(tmp_path / "two.png", canvas)
    out = tmp_path / "out"
    args = ["fit", str(pic), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "two: 2 of 2 people fitted" in capsys.readouterr().out
    d = out / "two"
    listing = json.loads((d / "people.json").read_text())
    people = listing["people"]
    assert [p["id"] for p in people] == [0, 1] and listing["dropped"] == [] and listing["flagged"] is None
    boxes = np.array([p["box"] for p in people])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert areas[0] >= areas[1]  # person_0 is the largest
    assert box_iou(boxes[:1], boxes[1:])[0, 0] == 0.0
    for x0, y0, x1, y1 in places:  # one person in each pasted crop
        assert sum(x0 - 2 <= b[0] and b[2] <= x1 + 2 for b in boxes) == 1
    for p in people:
        assert p["valid"] and not p["flagged"] and not p["truncated"] and 0.5 <= p["score"] <= 1.0
        assert p["reprojection_error_over_box"] < 0.02, p  # measured 0.8% and 0.7%
        assert p["depth_m"] > 0
        k = p["id"]
        summary = json.loads((d / p["files"]["fit_json"]).read_text())
        assert summary["person_id"] == k and summary["box_xyxy_px"] == p["box"]
        assert summary["reprojection_error_px"] == p["reprojection_error_px"]
        assert summary["source"] == str(pic.resolve())
        vertices = np.load(d / p["files"]["fit_npz"])["vertices"]
        mesh = trimesh.load(d / p["files"]["mesh_glb"], force="mesh", process=False)
        assert mesh.vertices.shape == vertices.shape == (13718, 3)
        np.testing.assert_allclose(np.sort(mesh.vertices, 0), np.sort(vertices, 0), atol=1e-5)
    overlay = cv2.imread(str(d / "overlay.png"))
    assert overlay.shape[:2] == canvas.shape[:2]
    assert sorted(p.name for p in d.iterdir()) == ["overlay.png", "people.json", "person_0", "person_1"]

    written = {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")}
    assert main(args) == 0  # the same picture, the same options: done
    assert "two: already done" in capsys.readouterr().out
    assert {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")} == written

    assert main([*args, "detector.max_people=1"]) == 0  # other options: fitted again, the largest only
    listing = json.loads((d / "people.json").read_text())
    assert len(listing["people"]) == 1 and listing["detector"]["max_people"] == 1
    np.testing.assert_allclose(listing["people"][0]["box"], boxes[0], atol=1.0)
    assert len(listing["dropped"]) == 1 and "max_people=1" in listing["dropped"][0]["why"]
    assert sorted(p.name for p in d.iterdir()) == ["overlay.png", "people.json", "person_0"]


@needs_mediapipe
@pytest.mark.slow
def test_people_cut_by_the_frame_are_fitted_and_noted_truncated(tmp_path, two_people, capsys):
    canvas, _ = two_people
    pic = write_image(tmp_path / "cut.png", canvas[:330])  # the frame cuts both people below the knees
    out = tmp_path / "out"
    assert main(["fit", str(pic), "--out", str(out), "--quiet"]) == 0  # a note, not a failure
    listing = json.loads((out / "cut" / "people.json").read_text())
    assert len(listing["people"]) == 2 and listing["flagged"] is None
    for p in listing["people"]:
        assert p["valid"] and p["truncated"] and "bottom" in p["truncation"]["edges"]
        assert {"left_ankle", "right_ankle"} & set(p["truncation"]["outside_landmarks"])
        assert p["reprojection_error_over_box"] < 0.03  # fitted on what is seen; measured 1.4% and 1.0%
        summary = json.loads((out / "cut" / p["files"]["fit_json"]).read_text())
        assert summary["truncated"] is True and summary["truncation"] == p["truncation"]
    capsys.readouterr()
    # people too small for min_box_height: nobody left, reported as a picture without a person
    assert main(["fit", str(pic), "--out", str(tmp_path / "none"), "--quiet", "detector.min_box_height=0.99"]) == 1
    err = capsys.readouterr().err
    assert "cut not fitted: no person found (2 found, none kept" in err and "min_box_height=0.99" in err
    assert not (tmp_path / "none" / "cut").exists()


def test_people_options_are_checked():
    from bodyfit.config import ConfigError
    from bodyfit.fitting import load_config

    cfg = load_config(["detector.max_people=2", "detector.min_box_height=0.1", "detector.setting=thorough"])
    assert (cfg.detector.max_people, cfg.detector.min_box_height, cfg.detector.setting) == (2, 0.1, "thorough")
    assert load_config().detector.max_people is None
    cfg = load_config(["detector.setting=exhaustive", "detector.association_gate=0.1",
                       "detector.track_max_missed=5", "detector.track_min_similarity=0.2"])
    d = cfg.detector
    assert (d.setting, d.association_gate, d.track_max_missed, d.track_min_similarity) == ("exhaustive", 0.1, 5, 0.2)
    for bad, key in (("detector.max_people=0", "detector.max_people"),
                     ("detector.min_box_height=1.5", "detector.min_box_height"),
                     ("detector.min_box_height=-0.1", "detector.min_box_height"),
                     ("detector.setting=everything", "detector.setting"),
                     ("detector.association_gate=0", "detector.association_gate"),
                     ("detector.track_max_missed=-1", "detector.track_max_missed"),
                     ("detector.track_min_similarity=2", "detector.track_min_similarity")):
        with pytest.raises(ConfigError, match=key):
            load_config([bad])
