"""What a fit asks of a GPU's host, counted on the CPU: kernel launches and host reads per batch.

    python benchmarks/bench_launches.py [--models anny smpl] [--batches 64 1024] [overrides...]

At the batch sizes of a fit, a GPU step costs what launching its kernels costs (a few
microseconds each, more through Python and autograd), not what they compute, up to thousands of
samples: the launches per batch are then the GPU's time per batch, whatever the batch size. This
counts, on bench_speed.py's problems (perturbed start, default schedule), every operation that
launches a kernel (tests/device_probe.py's list of those that do not) and every host read
(``bodyfit.fitting.graphs.HostReads``):

* ``eager``: every step's operations (``cuda_graphs=false``);
* ``graphs``: with each Adam stage's steps captured as CUDA graphs (``cuda_graphs``, the
  default on CUDA): the operations outside the steps, the warm-up step and the capture of each
  stage (and of each compacted round), and one launch per replayed step. The capture is emulated:
  the steps run here eagerly, uncounted.

Steps per stage are the fit's (the most any sample ran).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import load, perturbed_start  # noqa: E402
from device_probe import _NO_KERNEL  # noqa: E402

import bodyfit.fitting.optimizer as optimizer  # noqa: E402
from bodyfit import Fitter, Observations  # noqa: E402
from bodyfit.data.synthetic import synthetic_batch  # noqa: E402
from bodyfit.fitting.graphs import HostReads  # noqa: E402


class Launches(HostReads):
    """Counts kernel-launching operations (``launches``) besides host reads, unless ``paused``."""

    def __init__(self):
        super().__init__()
        self.launches = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused:
            if func.overloadpacket.__name__ not in _NO_KERNEL:
                self.launches += 1
            kind = self.kind(func, args, kwargs)
            if kind is not None:
                self.reads[kind] += 1
        return func(*args, **kwargs)


def emulated_capture(counter: Launches, stats: Counter):
    """``capture_step`` as bench counts it: the warm-up step counted, the capture counted as
    many launches again (it runs the step's Python once more, recording), each replay one."""

    def capture(step, leaves):
        before = counter.launches
        step()
        counter.launches += counter.launches - before
        stats["captures"] += 1

        def replay():
            counter.paused = True
            try:
                step()
            finally:
                counter.paused = False
            counter.launches += 1
            stats["replays"] += 1

        return replay

    return capture


def count(model, batch: int, overrides: list[str], graphs: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    sb = synthetic_batch(model, batch, "mediapipe33", generator=g)
    obs = Observations.from_pictures(sb.keypoints, K=sb.K, boxes=sb.boxes)
    init = perturbed_start(model, sb.params, g)
    fitter = Fitter(model, overrides=overrides + [f"cuda_graphs={str(graphs).lower()}"])
    fitter(obs, init=init, vertices=False)  # tables made on first use, outside the count
    counter, stats = Launches(), Counter()
    saved = optimizer.GRAPH_DEVICES, optimizer.capture_step
    optimizer.GRAPH_DEVICES, optimizer.capture_step = ("cpu",), emulated_capture(counter, stats)
    try:
        with counter:
            result = fitter(obs, init=init, vertices=False)
    finally:
        optimizer.GRAPH_DEVICES, optimizer.capture_step = saved
    return dict(launches=counter.launches, reads=sum(counter.reads.values()), steps=result.stage_steps, **stats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["anny", "smpl"])
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 1024])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    print(f"{'model':6s} {'batch':>6s} {'eager launches':>15s} {'reads':>6s} {'graphs launches':>16s} {'reads':>6s} "
          f"{'captures':>9s} {'replays':>8s}  steps")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            model = load(name, "cpu", Path(tmp))
            for batch in a.batches:
                e = count(model, batch, a.overrides, False, a.seed)
                r = count(model, batch, a.overrides, True, a.seed)
                print(f"{name:6s} {batch:6d} {e['launches']:15d} {e['reads']:6d} {r['launches']:16d} {r['reads']:6d} "
                      f"{r.get('captures', 0):9d} {r.get('replays', 0):8d}  {r['steps']}", flush=True)


if __name__ == "__main__":
    main()
