"""Bad inputs get messages that say what was wrong (issue 11, finding 8): a folder passed as a
picture, files that are not SMPL model files, malformed API input, a NaN K, a NaN or zero focal
length in a calibration."""
import math
import pickle
import struct

import numpy as np
import pytest
import torch

from bodyfit.body_models.smpl_files import UnsafePickleError, load_model_arrays


def test_a_folder_passed_as_a_picture_is_called_a_folder(tmp_path, capsys):
    pytest.importorskip("mediapipe")
    from bodyfit.cli import main

    folder = tmp_path / "pictures"
    folder.mkdir()
    assert main(["fit", str(folder), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"'{folder}' is a folder, not a picture file" in err and "not found" not in err


def _bad_model_files(folder):
    folder.mkdir()
    files = {
        "garbage.pkl": np.random.default_rng(0).bytes(4000),
        "text.pkl": b"v_template = 1, 2, 3\nthis is a note, not a model\n",
        "truncated.pkl": pickle.dumps({"v_template": np.zeros((6890, 3))}, protocol=2)[:5000],
        # protocol 5 BYTEARRAY8 of 2**62 bytes: the unpickler asks for 4 EiB
        "huge.pkl": b"\x80\x05\x96" + struct.pack("<Q", 2 ** 62) + b"abc",
        "garbage.npz": b"PK\x03\x04" + np.random.default_rng(1).bytes(500),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def test_files_that_are_not_model_files_are_value_errors_naming_the_file(tmp_path):
    for name, path in _bad_model_files(tmp_path / "models").items():
        with pytest.raises(ValueError) as e:
            load_model_arrays(path, "smpl")
        message = str(e.value)
        assert f"{path} is not a readable SMPL model file" in message, name
        assert "https://smpl.is.tue.mpg.de" in message  # where the real files come from
        if name == "huge.pkl":
            assert "asks for more memory than there is" in message


def test_a_forbidden_global_is_still_refused_as_unsafe(tmp_path):
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(UnsafePickleError, match=r"SMPL_NEUTRAL\.pkl.*refusing to load global posix\.system") as e:
        load_model_arrays(path, "smpl")
    assert isinstance(e.value, pickle.UnpicklingError) and isinstance(e.value, ValueError)


def test_the_cli_reports_a_garbage_model_file_and_exits_2(tmp_path, capsys):
    pytest.importorskip("smplx")
    from bodyfit.cli import main

    bad = _bad_model_files(tmp_path / "models")["truncated.pkl"]
    code = main(["fit", str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "--model", "smpl",
                 "--model-path", str(bad)])
    assert code == 2
    assert f"{bad} is not a readable SMPL model file" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    (dict(keypoints=torch.zeros(0, 33, 3), image_size=(480, 640)), "batch size 0"),
    (dict(keypoints=torch.rand(2, 33, 3) * 100, image_size=(480, 640), boxes=torch.zeros(1, 3)),
     r"boxes must have shape \(B,4\) = \(2,4\), got \(1, 3\)"),
    (dict(keypoints=torch.rand(2, 33, 3) * 100, image_size=640), r"image_size must be \(H, W\) in pixels, got 640"),
    (dict(keypoints=torch.rand(2, 33, 3) * 100, image_size=torch.tensor(640)), r"image_size must be \(H, W\)"),
    (dict(keypoints=torch.rand(2, 17, 3) * 100, image_size=(480, 640)), r"keypoints must have shape \(B, V=1, 33, 3\)"),
])
def test_malformed_api_input_is_a_clear_value_error_at_the_entry(anny, kwargs, message):
    import bodyfit

    with pytest.raises(ValueError, match=message):
        bodyfit.fit(model=anny, **kwargs)


def test_a_nan_k_says_k_is_not_finite(anny):
    import bodyfit

    from bodyfit.cameras import default_intrinsics

    K = default_intrinsics((480, 640), 2)
    K[0, 0, 0] = math.nan
    r = bodyfit.fit(torch.rand(2, 33, 3) * 300 + 100, anny, K=K, image_size=(480, 640),
                    overrides=["stages.camera.steps=1", "stages.body.steps=1"], vertices=False)
    assert not bool(r.valid[0]) and "K is not finite (NaN or inf)" in r.messages[0]
    assert "diverged" not in r.messages[0]


def _qca(fx="1000", fy="1000"):
    return ("<calibration><cameras>"
            '<camera active="1" serial="left"><fov_video bottom="479" left="0" right="639" top="0"/>'
            '<transform r11="1" r12="0" r13="0" r21="0" r22="-1" r23="0" r31="0" r32="0" r33="-1" '
            'x="0" y="0" z="0"/><intrinsic centerPointU="20480" centerPointV="15360" '
            f'focalLengthU="{fx}" focalLengthV="{fy}"/></camera>'
            "</cameras></calibration>")


@pytest.mark.parametrize("fx, fy", [("nan", "64000"), ("0", "64000"), ("64000", "-64000"), ("inf", "64000")])
def test_a_nan_or_zero_focal_length_in_a_calibration_is_refused_naming_the_camera(tmp_path, fx, fy):
    from bodyfit.data.calibration import load_calibration

    path = tmp_path / "Calib.qca.txt"
    path.write_text(_qca(fx, fy))
    with pytest.raises(ValueError, match="Camera 'left': the focal lengths must be finite and positive") as e:
        load_calibration(path)
    assert str(path) in str(e.value)
    path.write_text(_qca("64000", "64000"))
    assert load_calibration(path)[0].camera.K[0, 0, 0] == 1000.0


def test_a_nan_rotation_in_a_calibration_is_refused(tmp_path):
    from bodyfit.data.calibration import load_calibration

    path = tmp_path / "Calib.qca.txt"
    path.write_text(_qca("64000", "64000").replace('r11="1"', 'r11="nan"'))
    with pytest.raises(ValueError, match="Camera 'left': the <transform> rotation r11..r33 holds NaN"):
        load_calibration(path)
