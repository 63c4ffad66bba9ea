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
