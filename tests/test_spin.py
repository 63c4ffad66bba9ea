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
from bodyfit.data.samples import synthetic_samples
from bodyfit.fitting.fit import load_config
from bodyfit.regressors.fit_store import FitStore
from bodyfit.regressors.keypoint_regressor import load_regressor
from bodyfit.regressors.spin import train

FAST = ["data=synthetic", "batch_size=8", "synthetic_batch=8",
        "fit_overrides=[stages.0.steps=3,stages.1.steps=5]"]


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
    cfg = load_config(FAST + ["epochs=2"], name="train")
    straight = load_regressor(anny, "mediapipe33")
    m1 = train(samples, tmp_path / "a", cfg, anny, regressor=straight, progress=False)
    half = load_config(FAST + ["epochs=1"], name="train")
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
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bodyfit.cli", "train", "--out", str(out), "--quiet",
           *FAST, "synthetic_samples=24", "epochs=3", "checkpoint_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and len(list((out / "store" / "fits").glob("*.npz"))) >= 8:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    time.sleep(1.5)  # somewhere in the middle of a step
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = FitStore(out / "store")
    before = {i: float(store.get(i)["energy"]) for i in store.ids()}
    assert before and all(math.isfinite(e) for e in before.values())
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from step" in done.stderr
    after = {i: float(store.get(i)["energy"]) for i in store.ids()}
    assert all(after[i] <= e for i, e in before.items())
    assert torch.load(ckpt, weights_only=False)["step"] == 9
    rows = (out / "metrics.csv").read_text().splitlines()
    assert int(rows[-1].split(",")[0]) == 9


@pytest.mark.slow
def test_two_ranks_agree_and_share_the_store(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = Path(__file__).parent / "helpers" / "ddp_train.py"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt")
    w1 = torch.load(tmp_path / "rank1.pt")
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
                              "plausibility.max_error_over_box=1.0", "plausibility.max_joint_limits=100"],
                      name="train")
    metrics = train(samples, tmp_path / "img", cfg, anny, regressor=reg, progress=False)
    assert metrics["step"] == 1 and metrics["samples"] == 6
    assert any(not torch.equal(before[k], v) for k, v in reg.state_dict().items())
    # an untrained network starts the fits far off: whatever was plausible got stored
    assert len(FitStore(tmp_path / "img" / "store")) == metrics["fits_plausible"] >= 1
