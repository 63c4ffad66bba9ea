import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pose2sim_wheel():
    """Path of the Pose2Sim 0.10.49 wheel (demo videos + calibration); skips if unobtainable."""
    from bodyfit.data.pose2sim import pose2sim_wheel as get_wheel

    try:
        return get_wheel()
    except RuntimeError as e:
        pytest.skip(f"Pose2Sim demo wheel not available: {e}")


@pytest.fixture(scope="session")
def two_people(pose2sim_wheel):
    """Two real people side by side: the Pose2Sim demo person seen by cam01 and by cam04
    (frame 0), each cropped around the single-person detection, scaled to 440 px high and
    pasted on a grey 480-px-high canvas. Returns (canvas, [(x0, y0, x1, y1) of each paste]).
    Used by tests/test_multi_person.py and tests/test_cli.py."""
    pytest.importorskip("mediapipe")
    import cv2
    import numpy as np

    from bodyfit.data.pose2sim import demo_frames
    from bodyfit.detectors import MediaPipePose

    frames = demo_frames((0,), cameras=("cam01", "cam04"), cache_dir=pose2sim_wheel.parent)
    crops = []
    with MediaPipePose(enable_segmentation=False) as det:
        for _, img in frames:
            x0, y0, x1, y1 = det.detect(img).box
            m = 0.08 * (y1 - y0)
            x0, y0 = int(max(x0 - m, 0)), int(max(y0 - m, 0))
            x1, y1 = int(min(x1 + m, img.shape[1])), int(min(y1 + m, img.shape[0]))
            c = img[y0:y1, x0:x1]
            s = 440 / c.shape[0]
            crops.append(cv2.resize(c, (int(round(c.shape[1] * s)), 440), interpolation=cv2.INTER_AREA))
    w = sum(c.shape[1] for c in crops) + 60
    canvas = np.full((480, w, 3), 200, np.uint8)
    places, x = [], 20
    for c in crops:
        canvas[20:460, x : x + c.shape[1]] = c
        places.append((x, 20, x + c.shape[1], 460))
        x += c.shape[1] + 20
    return canvas, places


@pytest.fixture(scope="session")
def anny():
    """The default Anny model (float32, CPU), built once per test session."""
    from bodyfit.body_models import body_model

    return body_model("anny")


@pytest.fixture
def folder_holder(tmp_path):
    """``hold(folder)``: start a child process that holds ``folder`` as a running ``bodyfit
    train`` does (``bodyfit.files.run_lock``, tests/helpers/hold_lock.py); returned once it
    holds it. Children still running at the end of the test are killed."""
    procs = []

    def hold(folder):
        marker = tmp_path / f"held-{len(procs)}"
        proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "helpers" / "hold_lock.py"),
                                 str(folder), str(marker)])
        procs.append(proc)
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the child never took the lock"
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.fixture
def log_records():
    """``capture(logger_name, level)``: a list that receives that logger's records from
    ``level`` up for the rest of the test (the CLI stops 'bodyfit' from propagating, so
    caplog does not see them)."""
    import logging

    undo = []

    def capture(name: str, level: int = logging.WARNING) -> list:
        records = []
        handler = logging.Handler(level)
        handler.emit = records.append
        logger = logging.getLogger(name)
        undo.append((logger, handler, logger.level))
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)
        return records

    yield capture
    for logger, handler, level in reversed(undo):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(params=["blank", "noise"])
def nobody_picture(request):
    """A 480x640 RGB picture without a person: uniform grey, or uniform noise."""
    import numpy as np

    if request.param == "blank":
        return np.full((480, 640, 3), 128, np.uint8)
    return np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
