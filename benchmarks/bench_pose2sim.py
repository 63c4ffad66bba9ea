"""Real frames: Pose2Sim Demo_SinglePerson (4 calibrated views), the whole `bodyfit fit` job.

    python benchmarks/bench_pose2sim.py [--frames 0 50] [--repeats 3] [--out /tmp/bench_p2s]

Per picture: reprojection error over the person's box height; CPU time split into detection,
initialization and fit (median over repeats); peak resident memory of the process.
"""
from __future__ import annotations

import argparse
import resource
import statistics

from bodyfit.body_models import body_model
from bodyfit.data.pose2sim import demo_frames
from bodyfit.pipeline import fit_pictures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="/tmp/bench_pose2sim")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    model = body_model("anny")
    pictures = demo_frames(frame_indices=tuple(a.frames))
    times: dict[str, dict[str, list[float]]] = {}
    ratio: dict[str, float] = {}
    for _ in range(a.repeats):
        for r in fit_pictures(pictures, a.out, model, a.overrides, progress=False):
            if not r.ok:
                print(f"{r.name}: FAILED {r.error}")
                continue
            ratio[r.name] = r.summary["reprojection_error_over_box"]
            for k, v in r.summary["runtime_s"].items():
                times.setdefault(r.name, {}).setdefault(k, []).append(v)
    print(f"{'picture':18s} {'err/box':>8s} {'detect s':>9s} {'init s':>7s} {'fit s':>7s} {'total s':>8s}")
    for name in ratio:
        t = {k: statistics.median(v) for k, v in times[name].items()}
        print(f"{name:18s} {100 * ratio[name]:7.2f}% {t['detection']:9.3f} {t['init']:7.3f} "
              f"{t['fit']:7.3f} {t['total']:8.3f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
