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
