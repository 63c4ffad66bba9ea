import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bodyfit.body_models import body_model
from bodyfit.data.samples import KeypointSamples, synthetic_samples
from bodyfit.regressors.fit_store import FitStore
from bodyfit.regressors.keypoint_regressor import load_regressor
from bodyfit.regressors.spin import _log_metrics, _trim_metrics, load_checkpoint, train

FAST = ["data=synthetic", "batch_size=8", "synthetic_batch=8",
        "fit_overrides=['stages.camera.steps=3','stages.body.steps=5']"]
HELPERS = Path(__file__).parent / "helpers"


def load_config(overrides):
    """``configs/train.yaml`` with overrides (imported here: the tests that do not train run
    without the fitting stack)."""
    from bodyfit.regressors.train_config import load_train_config

    return load_train_config(overrides)


def _params(model, n, value=0.0):
    p = model.default_params(n)
    p.body_pose = p.body_pose + value
    return p


def test_store_keeps_the_better_plausible_fit(anny, tmp_path):
    store = FitStore(tmp_path / "s")
    p = _params(anny, 3)
    err = torch.tensor([0.01, 0.01, 0.01])
    ok = store.plausible(p, torch.ones(3, dtype=torch.bool), err, torch.zeros(3))
    assert ok.all()
    assert store.update(["a", "b", "c"], p, torch.tensor([1.0, 2.0, 3.0]), err, ok).all()
    better = _params(anny, 3, 0.01)
    stored = store.update(["a", "b", "c"], better, torch.tensor([0.5, 2.5, 3.0]), err, ok, step=7)
    assert stored.tolist() == [True, False, False]
    assert float(store.get("a")["energy"]) == 0.5 and int(store.get("a")["step"]) == 7
    assert float(store.get("b")["energy"]) == 2.0
    # guards: NaN, shape out of range, a large 2D error, invalid
    bad = _params(anny, 4)
    bad.body_pose[0, 0, 0] = math.nan
    bad.shape[1, 0] = 1.5
    err = torch.tensor([0.01, 0.01, 0.5, 0.01])
    valid = torch.tensor([True, True, True, False])
    assert store.plausible(bad, valid, err, torch.zeros(4)).tolist() == [False, False, False, False]
    assert not store.update(["d", "e", "f", "g"], bad, torch.zeros(4), err,
                            store.plausible(bad, valid, err, torch.zeros(4))).any()
    assert store.ids() == ["a", "b", "c"] and len(store) == 3
    assert not list((tmp_path / "s" / "fits").glob("*.tmp"))
    with pytest.raises(ValueError, match="sample id"):
        store.update(["../x"], _params(anny, 1), torch.zeros(1), torch.zeros(1), torch.ones(1, dtype=torch.bool))
    got, have = store.batch(["a", "zz"], _params(anny, 1))
    assert have.tolist() == [True, False] and torch.allclose(got.body_pose[0], better.body_pose[0])


def _writer(root, seed, pose_joints, shape_dim):
    from bodyfit.body_models.base import BodyParams

    store = FitStore(root)
    g = torch.Generator().manual_seed(seed)
    for _ in range(15):
        e = torch.rand(4, generator=g)
        p = BodyParams(torch.zeros(4, 3), torch.zeros(4, pose_joints, 3), torch.full((4, shape_dim), 0.5),
                       torch.zeros(4, 3))
        store.update(["a", "b", "c", "d"], p, e, torch.zeros(4), torch.ones(4, dtype=torch.bool))


def test_concurrent_writers_never_lose_the_best_fit(anny, tmp_path):
    root = tmp_path / "shared"
    FitStore(root)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(root, s, anny.num_pose_joints, anny.shape_dim)) for s in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    best = torch.stack([torch.stack([torch.rand(4, generator=g) for _ in range(15)]).amin(0)
                        for g in (torch.Generator().manual_seed(s) for s in (1, 2, 3))]).amin(0)
    store = FitStore(root)
    got = torch.tensor([float(store.get(i)["energy"]) for i in "abcd"])
    assert torch.allclose(got, best.double().float())


@pytest.mark.slow
def test_resume_is_exact_and_corrupt_samples_are_counted(anny, tmp_path):
    samples, _ = synthetic_samples(anny, 16, seed=1)
    samples.keypoints[3] = math.nan  # a corrupt sample
    cfg = load_config(FAST + ["epochs=2"])
    straight = load_regressor(anny, "mediapipe33")
    m1 = train(samples, tmp_path / "a", cfg, anny, regressor=straight, progress=False)
    half = load_config(FAST + ["epochs=1"])
    resumed = load_regressor(anny, "mediapipe33")
    train(samples, tmp_path / "b", half, anny, regressor=resumed, progress=False)
    resumed = load_regressor(anny, "mediapipe33")  # a fresh process would start from here
    m2 = train(samples, tmp_path / "b", cfg, anny, regressor=resumed, progress=False)
    assert m1["step"] == m2["step"] == 4
    for k, v in straight.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-6), k
    rows = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    skipped = sum(int(r.split(",")[5]) for r in rows[1:])
    assert skipped == 2  # once per epoch
    assert "syn_00003" not in FitStore(tmp_path / "a" / "store").ids()
    assert len(FitStore(tmp_path / "a" / "store")) >= 12


@pytest.mark.slow
def test_killed_run_resumes_with_every_committed_fit(tmp_path):
    """Killed mid-step, in the middle of writing a fit: every committed fit survives, the half
    record never shows, and the run resumes to the same end. The child stops at that point by
    itself (tests/helpers/spin_run.py --pause-marker) and says so with a file: no timing."""
    out = tmp_path / "run"
    marker = tmp_path / "paused"
    args = [str(out), *FAST, "synthetic_samples=24", "epochs=3", "checkpoint_every=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(tmp_path / "first.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(HELPERS / "spin_run.py"), "--pause-marker",
                                 str(marker), *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600  # generous: 2 cores shared with other test runs
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert marker.exists(), ("the run never reached the pause point: "
                                     + (tmp_path / "first.log").read_text()[-3000:])
            assert proc.poll() is None  # it waits at the pause point until killed
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    fits = out / "store" / "fits"
    assert list(fits.glob(".*.tmp"))  # killed mid-write: the half record is a temporary file
    store = FitStore(out / "store")
    before = {i: float(store.get(i)["energy"]) for i in store.ids()}
    assert len(before) >= 8 and all(math.isfinite(e) for e in before.values())
    done = subprocess.run([sys.executable, str(HELPERS / "spin_run.py"), *args], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from step" in done.stderr
    after = {i: float(store.get(i)["energy"]) for i in store.ids()}
    assert all(after[i] <= e for i, e in before.items())
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 9
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 10))  # each step once: the redone ones replace nothing twice


@pytest.mark.slow
def test_two_ranks_agree_and_share_the_store(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = HELPERS / "ddp_train.py"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    start = load_regressor(body_model("anny"), "mediapipe33").state_dict()
    assert any(not torch.equal(w0[k], start[k].float()) for k in w0)  # it trained
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    ids = FitStore(tmp_path / "store").ids()
    assert len(ids) >= 12  # both ranks' samples: one rank alone fits 8 of the 16


def test_the_loop_also_trains_the_image_regressor(anny, tmp_path):
    from bodyfit.regressors.image_regressor import ImageRegressor, synthetic_renders

    crops, sb, sq = synthetic_renders(anny, 6, generator=torch.Generator().manual_seed(4),
                                      image_size=(256, 256))
    samples, _ = synthetic_samples(anny, 6, seed=4)
    samples.crops = (crops * 255).round().to(torch.uint8)
    samples.crop_boxes = sq
    reg = ImageRegressor(len(anny.free_pose_joints), anny.shape_dim, widths=(8, 16, 32, 64),
                         blocks=(1, 1, 1, 1), hidden=128, crop_size=96)  # 224 px crops resized
    before = {k: v.clone() for k, v in reg.state_dict().items()}
    cfg = load_config(FAST + ["epochs=1", "synthetic_batch=2", "batch_size=6",
                              "plausibility.max_error_over_box=1.0", "plausibility.max_joint_limits=100"])
    metrics = train(samples, tmp_path / "img", cfg, anny, regressor=reg, progress=False)
    assert metrics["step"] == 1 and metrics["samples"] == 6
    assert any(not torch.equal(before[k], v) for k, v in reg.state_dict().items())
    # an untrained network starts the fits far off: whatever was plausible got stored
    assert len(FitStore(tmp_path / "img" / "store")) == metrics["fits_plausible"] >= 1


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: the file appears if the pickle is obeyed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    from omegaconf import OmegaConf

    # the payload is real: an unrestricted load runs it
    probe = tmp_path / "probe.pt"
    torch.save({"regressor": {}, "optimizer": {}, "step": 1, "config": _RunsCode(tmp_path / "ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "ran").exists()
    # the same in a run folder's checkpoint.pt: refused before anything is built
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "marker"
    torch.save({"regressor": {}, "optimizer": {}, "step": 1, "config": _RunsCode(marker)},
               run / "checkpoint.pt")
    samples = KeypointSamples(["a"], torch.zeros(1, 33, 3), torch.eye(3)[None], (100, 100))
    with pytest.raises(ValueError, match="checkpoint.pt.*refused"):
        train(samples, run, OmegaConf.create({"seed": 0}), regressor=None, progress=False)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(run / "checkpoint.pt")
    assert not marker.exists()
    # plain data that is not a checkpoint, and garbage, are clear errors too
    torch.save({"step": 1}, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="needs keys"):
        load_checkpoint(run / "checkpoint.pt")
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable bodyfit checkpoint"):
        load_checkpoint(run / "checkpoint.pt")


def test_a_held_run_folder_is_refused_before_anything_is_read(tmp_path, folder_holder):
    from omegaconf import OmegaConf

    from bodyfit.files import FolderLockedError

    run = tmp_path / "run"
    holder = folder_holder(run)
    (run / "checkpoint.pt").write_bytes(b"the other run's, half written")
    samples = KeypointSamples(["a"], torch.zeros(1, 33, 3), torch.eye(3)[None], (100, 100))
    with pytest.raises(FolderLockedError, match=f"pid {holder.pid}"):
        train(samples, run, OmegaConf.create({"seed": 0}), regressor=None, progress=False)


def test_metrics_rows_are_whole_and_resume_keeps_the_checkpointed_steps(tmp_path):
    path = tmp_path / "metrics.csv"
    for step in range(1, 6):
        _log_metrics(path, {"step": step, "loss": 0.5 / step, "note": "a,b"})
    lines = path.read_text().splitlines()
    assert lines[0] == "step,loss,note" and len(lines) == 6 and lines[-1].endswith(',"a,b"')
    _trim_metrics(path, 3)  # resumed from step 3: steps 4 and 5 are run again
    assert [ln.split(",")[0] for ln in path.read_text().splitlines()] == ["step", "1", "2", "3"]
    _log_metrics(path, {"step": 4, "loss": 0.1, "note": ""})
    assert path.read_text().splitlines()[-1] == "4,0.1,"
    _trim_metrics(path, 0)  # a run killed before its first checkpoint starts over
    _log_metrics(path, {"step": 1, "loss": 0.2, "note": ""})
    assert path.read_text().splitlines() == ["step,loss,note", "1,0.2,"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
