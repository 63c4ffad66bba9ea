"""Camera intrinsics of a photo (issue 14, part 3): EXIF focal length (Pillow), --focal, --K,
the field-of-view default, and what fit.json records."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bodyfit.cli import picture_intrinsics, read_intrinsics
from bodyfit.data.images import exif_focal_px


def _jpeg(path, size=(300, 400), **tags):
    """A JPEG of ``size`` (H, W) whose Exif sub-IFD holds ``tags`` (tag id -> value)."""
    from PIL import Image

    im = Image.fromarray(np.full((*size, 3), 100, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 1
    if tags:
        ifd = exif.get_ifd(0x8769)
        for k, v in tags.items():
            ifd[int(k)] = v
    im.save(path, exif=exif)
    return path


def test_focal_from_35mm_equivalent(tmp_path):
    p = _jpeg(tmp_path / "a.jpg", **{str(0xA405): 28})
    f, source, note = exif_focal_px(p, (300, 400))
    assert source == "exif35" and note is None
    assert f == pytest.approx(28 * 500 / math.hypot(36, 24))


def test_focal_from_focal_length_and_sensor_resolution(tmp_path):
    # a phone: 4.2 mm lens, 6250 px per cm on a 6.4 mm sensor, written 4000x3000: 2625 px at
    # 4000 wide, 262.5 px at the 400 px we fit
    p = _jpeg(tmp_path / "b.jpg", **{str(0x920A): 4.2, str(0xA20E): 6250.0, str(0xA210): 3,
                                     str(0xA002): 4000, str(0xA003): 3000})
    f, source, note = exif_focal_px(p, (300, 400))
    assert source == "exif" and note is None
    assert f == pytest.approx(4.2 * 625.0 * 400 / 4000)


def test_bad_exif_is_ignored_with_a_note(tmp_path):
    p = _jpeg(tmp_path / "c.jpg", **{str(0xA405): 5000})  # a 5000 mm "equivalent": ~0.5 deg
    f, source, note = exif_focal_px(p, (300, 400))
    assert f is None and source == "default" and "ignored" in note
    p = _jpeg(tmp_path / "d.jpg", **{str(0x920A): 4.2})  # no sensor size
    f, source, note = exif_focal_px(p, (300, 400))
    assert f is None and source == "default" and "FocalPlaneXResolution" in note
    assert exif_focal_px(_jpeg(tmp_path / "e.jpg"), (300, 400)) == (None, "default", None)
    (tmp_path / "f.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    f, source, note = exif_focal_px(tmp_path / "f.jpg", (300, 400))
    assert f is None and source == "default" and "not readable" in note


def test_picture_intrinsics_order_user_exif_default(tmp_path):
    p = _jpeg(tmp_path / "a.jpg", **{str(0xA405): 28})
    K, note = picture_intrinsics(p, (300, 400), 55.0)
    assert note["focal_source"] == "exif35" and K[0, 0] == pytest.approx(note["focal_px"])
    assert K[0, 2] == 200 and K[1, 2] == 150
    K, note = picture_intrinsics(p, (300, 400), 55.0, focal=321.0)
    assert note == {"focal_source": "user", "focal_px": 321.0} and K[1, 1] == 321.0
    K, note = picture_intrinsics(_jpeg(tmp_path / "b.jpg"), (300, 400), 55.0)
    assert note["focal_source"] == "default" and K[0, 0] == pytest.approx(200 / math.tan(math.radians(27.5)))
    Kfile = tmp_path / "K.txt"
    np.savetxt(Kfile, [[500, 0, 190], [0, 510, 160], [0, 0, 1]])
    K, note = picture_intrinsics(p, (300, 400), 55.0, K=read_intrinsics(Kfile))
    assert note["focal_source"] == "user" and torch.equal(K, read_intrinsics(Kfile))
    np.savetxt(Kfile, [[500, 0, 190], [0, 510, 160]])
    with pytest.raises(ValueError, match="3x3"):
        read_intrinsics(Kfile)


@pytest.mark.slow
def test_fit_records_the_focal_source(tmp_path, pose2sim_wheel, capsys):
    """bodyfit fit on a real frame saved as a JPEG with EXIF: fit.json says exif35 and the fitted
    camera's focal is the EXIF one; --focal overrides it."""
    pytest.importorskip("mediapipe")
    from PIL import Image

    from bodyfit.cli import main
    from bodyfit.data.pose2sim import demo_frames

    frame = demo_frames(frame_indices=(0,), cameras=("cam04",))[0][1]
    pic = tmp_path / "walker.jpg"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 35
    Image.fromarray(frame).save(pic, exif=exif, quality=92)
    H, W = frame.shape[:2]
    for args, source, focal in (([], "exif35", 35 * math.hypot(W, H) / math.hypot(36, 24)),
                                (["--focal", "1500"], "user", 1500.0)):
        out = tmp_path / source
        code = main(["fit", str(pic), "--out", str(out), "--quiet", "stages.body.steps=10",
                     "stages.camera.steps=5", *args])
        assert code in (0, 3), capsys.readouterr().err
        s = json.loads((out / "walker" / "person_0" / "fit.json").read_text())
        assert s["focal_source"] == source and s["focal_px"] == pytest.approx(focal, rel=1e-5)
        K = np.load(out / "walker" / "person_0" / "fit.npz")["K"]
        assert K[0, 0] == pytest.approx(focal, rel=1e-4)
