"""The one writer: a result folder is complete or absent, never a mix, and nothing of the
user's is deleted."""
import json

import numpy as np
import pytest
import torch

from bodyfit import fit
from bodyfit.data.synthetic import synthetic_batch
from bodyfit.pipeline import save_result


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
    assert sorted(p.name for p in out.iterdir()) == ["fit.json", "fit.npz", "mesh.ply", "overlay.png"]
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
