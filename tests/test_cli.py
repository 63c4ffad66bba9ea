import json

import numpy as np
import pytest

from bodyfit.cli import main
from bodyfit.data.images import write_image

pytest.importorskip("mediapipe")


@pytest.fixture(scope="module")
def real_frame(pose2sim_wheel):
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
                 "--out", str(out), "--quiet", "stages.1.steps=80"])
    assert code == 1
    err = capsys.readouterr().err
    assert "corrupt" in err and "blank" in err and "missing" in err
    d = out / "walker"
    for name in ["fit.npz", "fit.json", "mesh.ply", "overlay.png"]:
        assert (d / name).stat().st_size > 0
    summary = json.loads((d / "fit.json").read_text())
    assert summary["model"] == "anny" and summary["keypoint_convention"] == "mediapipe33"
    assert 0 < summary["reprojection_error_px"] < 0.05 * summary["box_height_px"]
    assert set(summary["runtime_s"]) >= {"detection", "init", "fit"}
    data = np.load(d / "fit.npz")
    assert data["vertices"].shape == (13718, 3) and np.isfinite(data["vertices"]).all()
    assert data["phenotypes"].shape == (6,) and data["K"].shape == (3, 3)
    assert not (out / "blank").exists() and not (out / "corrupt").exists()


def test_bad_usage_exits_2(tmp_path, capsys):
    assert main(["fit", "x.png", "--out", str(tmp_path), "no_such_key=3"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert main(["fit", "x.png", "--out", str(tmp_path), "--model", "smpl",
                 "--model-path", str(tmp_path / "nothing")]) == 2
    assert "smpl.is.tue.mpg.de" in capsys.readouterr().err


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
