"""The one writer: a result folder is complete or absent, never a mix, and nothing of the
user's is deleted."""
import json

import numpy as np
import pytest
import torch

from bodyfit import fit
from bodyfit.data.synthetic import synthetic_batch
from bodyfit.results import save_result


@pytest.fixture(scope="module")
def result(anny):
    sb = synthetic_batch(anny, 2, "mediapipe33", noise=0.0, dropout=0.0, generator=torch.Generator().manual_seed(2))
    kp = sb.keypoints.clone()
    kp[1, :, 2] = 0.0  # not fitted
    return fit(kp, anny, K=sb.K, image_size=sb.image_size, overrides=["stages.camera.steps=2", "stages.body.steps=2"])


def test_result_folder_is_written_whole_and_replaced_whole(result, tmp_path, monkeypatch):
    out = tmp_path / "pic"
    picture = np.zeros((*result.cameras[0].image_size, 3), np.uint8)
    summary = save_result(result, 0, out, [picture])
    assert sorted(p.name for p in out.iterdir()) == ["fit.json", "fit.npz", "mesh.glb", "mesh.ply", "overlay.png"]
    written = json.loads((out / "fit.json").read_text())
    assert written["reprojection_error_px"] == summary["reprojection_error_px"]
    assert written["flagged"] == result.flagged[0]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import bodyfit.data.images as images

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images, "write_image", broken)
    with pytest.raises(OSError, match="No space"):
        save_result(result, 0, out, [picture], extra={"run": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old result, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pic"]  # no temporary folder left


def test_foreign_folders_and_invalid_fits_are_refused(result, tmp_path):
    (tmp_path / "mine.txt").write_text("the user's file")
    with pytest.raises(FileExistsError, match="other files"):
        save_result(result, 0, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "the user's file"
    with pytest.raises(ValueError, match="invalid fit"):
        save_result(result, 1, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.fixture
def pipeline_log(log_records):
    """Records of the bodyfit.results logger (the writers), info and up."""
    import logging

    return log_records("bodyfit.results", logging.INFO)


def test_done_result_knows_the_finished_fit_of_the_same_picture(result, tmp_path, pipeline_log):
    from bodyfit.results import done_result

    out = tmp_path / "pic"
    assert done_result(out, "aaa111") is None
    save_result(result, 0, out, extra={"source": "/pics/a.jpg", "source_sha1": "aaa111"})
    assert done_result(out, "aaa111")["source"] == "/pics/a.jpg"
    assert done_result(out, "aaa111", model="anny") is not None
    assert done_result(out, "bbb222") is None  # another picture under the same name
    assert done_result(out, "aaa111", model="smpl") is None  # another body model
    assert not pipeline_log
    save_result(result, 0, out, extra={"source": "/pics/a.jpg", "source_sha1": "aaa111"})  # a redo
    assert [r.levelname for r in pipeline_log] == ["INFO"]
    assert "replaced the previous result (anny fit of /pics/a.jpg, sha1 aaa111)" in pipeline_log[0].getMessage()
    save_result(result, 0, out, extra={"source": "/pics/b.jpg", "source_sha1": "bbb222"})
    assert pipeline_log[1].levelname == "WARNING"
    assert ("replaced the previous result (anny fit of /pics/a.jpg, sha1 aaa111) by the anny fit of "
            "/pics/b.jpg, sha1 bbb222") in pipeline_log[1].getMessage()
    (out / "fit.json").write_text("{ not json")
    assert done_result(out, "bbb222") is None  # unreadable: not done
    (out / "fit.json").write_text(json.dumps({"source_sha1": "bbb222", "model": "anny"}))
    (out / "fit.npz").unlink()
    assert done_result(out, "bbb222") is None  # incomplete: not done


def test_a_downscaled_picture_gets_its_overlay_at_its_size_and_results_at_full_size(result, tmp_path):
    import cv2

    H, W = result.cameras[0].image_size
    save_result(result, 0, tmp_path / "full", [np.zeros((H, W, 3), np.uint8)])
    save_result(result, 0, tmp_path / "half", [np.zeros((H // 2, W // 2, 3), np.uint8)])
    full = cv2.imread(str(tmp_path / "full" / "overlay.png"))[:, :W]  # the front view
    half = cv2.imread(str(tmp_path / "half" / "overlay.png"))
    assert half.shape[:2] == (H // 2, 2 * (W // 2))
    half = half[:, :W // 2]

    def centre(img):
        ys, xs = np.nonzero(img.max(-1) > 20)
        return np.array([xs.mean() + 0.5, ys.mean() + 0.5])

    # the body is drawn at the same place (markers keep their size in pixels: a few px of slack;
    # a K left at full resolution would put it about 200 px off)
    assert np.abs(centre(half) - centre(full) / 2).max() < 4.0
    for d in ("full", "half"):
        data = np.load(tmp_path / d / "fit.npz")
        np.testing.assert_allclose(data["K"], result.cameras[0].K[0].numpy(), rtol=1e-6)  # full resolution
        np.testing.assert_allclose(data["keypoints"], result.keypoints[0, 0].numpy(), rtol=1e-6)


def test_scene_maps_a_downscaled_picture_to_full_resolution():
    from bodyfit.pipeline import Scene, full_cameras

    scene = Scene([[np.zeros((300, 400, 3), np.uint8)]], ["a"], full_sizes=[(1200, 1600)])
    assert scene.full_size(0) == (1200, 1600) and scene.picture_scale(0) == 0.25
    assert scene.downscaled(["picture"]) == {"picture": {"original_hw": [1200, 1600], "working_hw": [300, 400],
                                                         "scale": 0.25}}
    cam = full_cameras(scene, 55.0)[0]
    assert cam.image_size == (1200, 1600) and float(cam.K[0, 0, 2]) == 800.0
    assert Scene([[np.zeros((30, 40, 3), np.uint8)]], ["b"]).downscaled(["picture"]) == {}


NOTES = [{"box": [10.0, 20.0, 110.0, 220.0], "score": 0.9, "truncated": False, "edges": [], "outside_landmarks": []},
         {"box": [0.0, 0.0, 50.0, 50.0], "score": 0.6, "truncated": True, "edges": ["left"],
          "outside_landmarks": ["left_wrist"]}]


def test_people_of_a_picture_are_written_whole_and_a_failed_person_sinks_nobody(result, tmp_path):
    import dataclasses

    import cv2

    from bodyfit.results import done_result, save_people

    H, W = result.cameras[0].image_size
    picture = np.zeros((H, W, 3), np.uint8)
    det = {"setting": "fast", "max_people": None, "min_box_height": 0.0}
    out = tmp_path / "pic"
    listing = save_people(result, out, NOTES, picture, extra={"source": "/p/a.jpg", "source_sha1": "abc"},
                          detector=det)
    assert json.loads((out / "people.json").read_text()) == listing
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "people.json", "person_0"]
    assert sorted(p.name for p in (out / "person_0").iterdir()) == ["fit.json", "fit.npz", "mesh.glb", "mesh.ply"]
    assert cv2.imread(str(out / "overlay.png")).shape[:2] == (H, W)
    p0, p1 = listing["people"]
    assert p0["valid"] and p0["files"]["mesh_glb"] == "person_0/mesh.glb" and p0["score"] == 0.9
    assert not p1["valid"] and p1["files"] is None and p1["message"] and p1["truncated"]  # sample 1 was not fitted
    assert listing["flagged"].count("person_1: not fitted") == 1
    assert listing["source"] == "/p/a.jpg" and listing["model"] == "anny" and listing["image_size"] == [H, W]
    fit0 = json.loads((out / "person_0" / "fit.json").read_text())
    assert (fit0["person_id"], fit0["box_xyxy_px"], fit0["detection_score"], fit0["truncated"]) == (0, NOTES[0]["box"], 0.9, False)
    assert fit0["source_sha1"] == "abc"

    assert done_result(out, "abc", "anny", det) is not None
    assert done_result(out, "abc", "anny", {**det, "max_people": 1}) is None  # other people asked for
    assert done_result(out, "abd", "anny", det) is None
    single = tmp_path / "single"
    save_result(result, 0, single, extra={"source_sha1": "abc"})
    assert done_result(single, "abc", "anny") is not None
    assert done_result(single, "abc", "anny", det) is None  # one person's result: not the people's
    save_people(result, single, NOTES, picture, extra={"source_sha1": "abc"}, detector=det)  # replaces it
    assert not (single / "fit.json").exists() and (single / "person_0" / "fit.json").exists()

    nobody = dataclasses.replace(result, valid=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no person could be fitted"):
        save_people(nobody, tmp_path / "nobody", NOTES, picture)
    assert not (tmp_path / "nobody").exists()
    (out / "person_0" / "my_notes.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="other files"):
        save_people(result, out, NOTES, picture)
    assert (out / "person_0" / "my_notes.txt").read_text() == "the user's"


def test_people_overlay_draws_the_nearer_person_over_the_farther(result):
    from bodyfit.results import PALETTE, _shade_crop, people_overlay

    H, W = result.cameras[0].image_size
    K = result.cameras[0].K[0].numpy()
    near = result.vertices[0].numpy()
    far = near + np.array([0.0, 0.0, 1.5], np.float32)
    faces = result.faces.numpy()
    both = (_shade_crop(near, faces, K, (H, W))[1] > 0.99) & (_shade_crop(far, faces, K, (H, W))[1] > 0.99)
    ys, xs = np.nonzero(both)
    y, x = ys[len(ys) // 2], xs[len(xs) // 2]
    picture = np.full((H, W, 3), 255, np.uint8)
    kp = np.zeros((33, 3), np.float32)
    people = [{"id": i, "vertices": v, "faces": faces, "K": K, "keypoints": kp, "projected": kp[:, :2],
               "box": [0, 0, 1, 1]} for i, v in ((0, near), (1, far))]
    for order in (people, people[::-1]):
        img = people_overlay(picture, order).astype(np.float32)
        assert img.shape == (H, W, 3)
        colour = img[y, x] / np.linalg.norm(img[y, x])
        hue = PALETTE[:2] / np.linalg.norm(PALETTE[:2], axis=1, keepdims=True)
        assert np.argmax(hue @ colour) == 0  # the near person's colour, whatever the list order
