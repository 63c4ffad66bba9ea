"""Real frames: Pose2Sim Demo_SinglePerson (4 calibrated views), the whole `bodyfit fit` job
(every person of each picture, ``fit_scenes(people=True)``).

    python benchmarks/bench_pose2sim.py [--frames 0 50] [--repeats 3] [--out /tmp/bench_p2s] [overrides]

Per picture: people fitted, the largest error over box height among them; time split into
detection, initialization and fit (median over repeats); peak resident memory of the process.
"""
from __future__ import annotations

import argparse
import resource
import statistics

from bodyfit.body_models import body_model
from bodyfit.data.pose2sim import demo_frames
from bodyfit.fitting import load_config
from bodyfit.pipeline import Scene, fit_scenes


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
    pictures = list(pictures)
    cfg = load_config(a.overrides)
    people: dict[str, int] = {}
    for _ in range(a.repeats):
        scenes = [Scene([[image]], [name]) for name, image in pictures]
        for r in fit_scenes(scenes, a.out, model, cfg, people=True, progress=False):
            if not r.ok:
                print(f"{r.name}: FAILED {r.error}")
                continue
            fitted = [p for p in r.summary["people"] if p.get("fitted", True)]
            people[r.name] = len(fitted)
            ratio[r.name] = max(p["reprojection_error_over_box"] for p in fitted)
            for k, v in r.summary["runtime_s"].items():
                times.setdefault(r.name, {}).setdefault(k, []).append(v)
    print(f"{'picture':18s} {'people':>6s} {'err/box':>8s} {'detect s':>9s} {'init s':>7s} {'fit s':>7s} {'total s':>8s}")
    for name in ratio:
        t = {k: statistics.median(v) for k, v in times[name].items()}
        print(f"{name:18s} {people[name]:6d} {100 * ratio[name]:7.2f}% {t['detection']:9.3f} {t['init']:7.3f} "
              f"{t['fit']:7.3f} {t['total']:8.3f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
