"""Fitting speed (fits/s) and accuracy (PA-MPJPE) on synthetic problems, per model, device and
batch size, in one run: the table of issue 13.

    python benchmarks/bench_speed.py [--models anny smpl] [--batches 1 16 64] [--device cpu]
        [--n 64] [--start perturbed|mean] [--threads N] [--profile K] [overrides...]

Problems: bodies sampled inside the model's joint limits (``bodyfit.data.synthetic``), MediaPipe-33
keypoints projected with a random camera, 1.5% of the person's height of noise, 10% dropped.
Start: ``perturbed`` (default, as in SPIN's SMPLify comparisons: the true pose with 0.2 rad of
noise per joint and axis, the heading off by up to 30 degrees, the mean shape, the depth off by
up to 20%) or ``mean`` (bodyfit's own start from the torso, no learned model). The SMPL model is
a synthetic SMPL-format file with SMPL's kinematic tree and sizes (tests/synthetic_smpl.py): its
speed is SMPL's, its accuracy figures are not comparable to real SMPL's.

Timed: the fit alone (``FitResult.runtime_s['fit']``), after one warm-up batch, with one Fitter
per model. On CUDA the result's read-back synchronizes. PA-MPJPE on the 17 COCO landmarks, mm.
``cpu fits/s`` divides by the process's CPU time instead of the wall time: on a machine other
work shares, with ``--threads 1``, it is the figure that does not depend on the others' load.
``--profile K``: after each row, one more batch under ``torch.profiler``, and the K operations
that took the most CPU time themselves (where the time goes).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import roma
import torch

from bodyfit import Fitter, Observations
from bodyfit.body_models import body_model
from bodyfit.data.synthetic import synthetic_batch
from bodyfit.metrics import pa_mpjpe


def perturbed_start(model, params, generator):
    """The true body, perturbed: pose noise, heading error, mean shape, depth error."""
    g = generator
    p = params.clone()
    B = p.batch_size
    noise = torch.randn(p.body_pose.shape, generator=g, dtype=p.body_pose.dtype).to(p.body_pose.device)
    pose = p.body_pose.clone()
    pose[:, model.free_pose_joints] += 0.2 * noise[:, model.free_pose_joints]
    p.body_pose = pose
    yaw = (torch.rand(B, generator=g) * 2 - 1) * math.radians(30)
    turn = torch.stack([torch.zeros(B), yaw, torch.zeros(B)], 1).to(p.transl)
    p.global_orient = roma.rotmat_to_rotvec(roma.rotvec_to_rotmat(turn) @ roma.rotvec_to_rotmat(p.global_orient))
    p.shape = model.default_params(B).shape
    depth = 1 + (torch.rand(B, generator=g) * 2 - 1).to(p.transl) * 0.2
    p.transl = p.transl * depth[:, None]
    return p


def load(name: str, device: str, tmp: Path):
    if name == "anny":
        return body_model("anny", device=device)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic_smpl import write_synthetic_smpl

    path = tmp / "SMPL_NEUTRAL.npz"
    if not path.exists():
        write_synthetic_smpl(path, "npz")
    return body_model("smpl", model_path=str(path), device=device)


def run(model, fitter, batch: int, n: int, start: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    fit_s, cpu_s, done, pa, valid, err = 0.0, 0.0, 0, [], 0, []
    for i in range(-1, math.ceil(n / batch)):  # batch -1: warm-up, not counted
        sb = synthetic_batch(model, batch, "mediapipe33", generator=g)
        obs = Observations.from_pictures(sb.keypoints, K=sb.K, boxes=sb.boxes)
        init = perturbed_start(model, sb.params, g) if start == "perturbed" else None
        cpu0 = time.process_time()
        r = fitter(obs, init=init, vertices=False)
        cpu1 = time.process_time()
        if i < 0:
            continue
        fit_s += r.runtime_s["fit"]
        cpu_s += cpu1 - cpu0
        done += batch
        pa.append(pa_mpjpe(r.joints[:, :17], sb.joints[:, :17]).cpu())
        valid += int(r.valid.sum())
        err.append(r.error_over_box.cpu())
    pa = torch.cat(pa)
    mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return dict(mem_gb=mem, fits_s=done / fit_s, cpu_fits_s=done / cpu_s, pa_mean=float(pa.mean()), pa_median=float(pa.median()),
                valid=valid / done, err=float(torch.cat(err).nanmean()), n=done)


def profile(model, fitter, batch: int, start: str, seed: int, rows: int) -> str:
    """The ``rows`` operations with the most self CPU time over one fit of ``batch`` problems."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    g = torch.Generator().manual_seed(seed + 1)
    sb = synthetic_batch(model, batch, "mediapipe33", generator=g)
    obs = Observations.from_pictures(sb.keypoints, K=sb.K, boxes=sb.boxes)
    init = perturbed_start(model, sb.params, g) if start == "perturbed" else None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        fitter(obs, init=init, vertices=False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["anny", "smpl"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=64, help="problems per batch size (at least one batch)")
    ap.add_argument("--start", choices=["perturbed", "mean"], default="perturbed")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="after each row, the K operations with the most self CPU time over one more batch")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"device {a.device}, {torch.get_num_threads()} threads, start {a.start}, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if a.device.startswith("cuda") else ""))
    print(f"{'model':6s} {'batch':>6s} {'n':>6s} {'fits/s':>9s} {'cpu fits/s':>10s} {'PA-MPJPE mean':>14s} {'median':>7s} "
          f"{'valid':>6s} {'err/box':>8s} {'GPU GiB':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            model = load(name, a.device, Path(tmp))
            fitter = Fitter(model, overrides=a.overrides)
            for batch in a.batches:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                s = run(model, fitter, batch, max(a.n, batch), a.start, a.seed)
                print(f"{name:6s} {batch:6d} {s['n']:6d} {s['fits_s']:9.1f} {s['cpu_fits_s']:10.1f} {s['pa_mean']:14.1f} "
                      f"{s['pa_median']:7.1f} {s['valid']:6.0%} {s['err']:8.2%} {s['mem_gb']:8.2f}", flush=True)
                if a.profile:
                    print(profile(model, fitter, batch, a.start, a.seed, a.profile), flush=True)


if __name__ == "__main__":
    main()
