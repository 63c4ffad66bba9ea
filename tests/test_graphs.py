"""Optimizer steps captured as CUDA graphs (bodyfit.fitting.graphs), checked on the CPU: the
capture is emulated (tests/device_probe.py's EmulatedCapture), every replayed step is checked to
be the captured one (the same operations, the same constants, the same memory read from outside
the step), and the fit equals the eager fit."""
import pytest
import torch
from device_probe import EmulatedCapture
from synthetic_smpl import write_synthetic_smpl

import bodyfit.fitting.optimizer as optimizer
from bodyfit import Fitter, Observations
from bodyfit.body_models import body_model
from bodyfit.data.synthetic import synthetic_batch
from bodyfit.fitting.graphs import HostReads


@pytest.fixture
def emulated(monkeypatch):
    capture = EmulatedCapture()
    monkeypatch.setattr(optimizer, "GRAPH_DEVICES", ("cpu",))
    monkeypatch.setattr(optimizer, "capture_step", capture)
    return capture


def _model(name, anny, tmp_path):
    if name == "anny":
        return anny
    write_synthetic_smpl(tmp_path / "SMPL_NEUTRAL.npz", "npz")
    return body_model("smpl", model_path=str(tmp_path / "SMPL_NEUTRAL.npz"))


@pytest.mark.parametrize("name", ["smpl", "anny"])
def test_replayed_steps_fit_as_eager_ones(name, anny, tmp_path, emulated):
    model = _model(name, anny, tmp_path)
    sb = synthetic_batch(model, 6, "mediapipe33", generator=torch.Generator().manual_seed(4))
    sb.keypoints[0, :, 2] = 0.0  # a sample not fitted: inactive rows in every step
    obs = Observations.from_pictures(sb.keypoints, K=sb.K, boxes=sb.boxes)
    overrides = ["try_mirror=false", "limb_flip=false"]
    eager = Fitter(model, overrides=overrides + ["cuda_graphs=false"])(obs, vertices=False)
    assert emulated.captured == 0
    graphed = Fitter(model, overrides=overrides)(obs, vertices=False)
    # both stages (and the compacted rounds) captured: Anny's rest frames too (a fixed number of
    # polar steps, the reflection where det <= 0 for every bone)
    assert emulated.captured >= 2 and emulated.refused == 0 and emulated.replays > 50
    assert torch.equal(eager.valid, graphed.valid) and not bool(graphed.valid[0])
    # the bias corrections from a float32 step count instead of Python floats: rounding apart
    valid = eager.valid
    assert (eager.joints[valid] - graphed.joints[valid]).abs().max() < 2e-3
    assert (eager.energies["total"][valid] - graphed.energies["total"][valid]).abs().max() \
        < 1e-2 * eager.energies["total"][valid].abs().max() + 1e-4


def test_replay_check_catches_a_baked_constant(emulated):
    """The check itself: a step whose constant changes from step to step (as Adam's bias
    correction does when computed in Python) cannot be replayed, and is caught."""
    x = torch.zeros(3, requires_grad=True)
    count = [0]

    def step():
        count[0] += 1
        with torch.no_grad():
            x.add_(1.0 / count[0])

    replay = emulated(step, [x])
    replay()
    with pytest.raises(AssertionError, match="differs from the captured one"):
        replay()


def test_replay_check_catches_a_replaced_input(emulated):
    """A step reading a tensor the caller replaces (instead of updating it in place) cannot be
    replayed: a graph would go on reading the old one."""
    state = {"mask": torch.zeros(3, dtype=torch.bool)}
    x = torch.zeros(3)

    def step():
        x.copy_(torch.where(state["mask"], x, x + 1))

    replay = emulated(step, [x])
    replay()
    state["mask"] = state["mask"] | torch.tensor([True, False, False])
    with pytest.raises(AssertionError, match="differs from the captured one"):
        replay()


def test_a_step_that_reads_from_the_host_is_not_captured(emulated):
    x = torch.ones(3)

    def step():
        if bool((x > 0).all()):
            x.mul_(0.5)

    assert emulated(step, [x]) is None and emulated.refused == 1
    reads = HostReads()
    with reads:
        x[x > 0] = 0.0
        x.to("meta")
    assert reads.reads == {"boolean mask": 1, "copy": 1}
