"""Synthetic bodies with known parameters: accuracy of the regressor alone and after fitting,
and fitting speed, in one run.

    python benchmarks/bench_synthetic.py [--n 64] [--batch 16] [--noise 0.015] [--dropout 0.1]
        [--world-noise 0.03] [--threads 1]

Bodies are sampled inside Anny's joint limits with random phenotypes, heading and camera; their
MediaPipe-33 keypoints are projected, 1.5% of the person's height of noise is added and 10% of
keypoints are dropped. Errors are on the 17 COCO body landmarks, in mm. With ``--world-noise S``
the fits also get synthetic world landmarks (the true MediaPipe-33 landmarks relative to the hips'
midpoint, camera axes, plus N(0, S) metres per coordinate), as MediaPipe's detector gives them.
"""
from __future__ import annotations

import argparse
import time

import torch

from bodyfit.body_models import body_model
from bodyfit.data.synthetic import synthetic_batch
from bodyfit import fit
from bodyfit.metrics import mpjpe, pa_mpjpe
from bodyfit.regressors.keypoint_regressor import load_regressor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--noise", type=float, default=0.015)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--world-noise", type=float, default=None,
                    help="give synthetic world landmarks with this noise (metres); default: none")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--regressor", default=None, help="keypoint regressor weights (default: the shipped ones)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads or torch.get_num_threads())
    model = body_model("anny")
    reg = load_regressor(model, "mediapipe33", a.regressor)
    g = torch.Generator().manual_seed(a.seed)
    gw = torch.Generator().manual_seed(a.seed + 1)  # world-landmark noise: the same bodies with or without
    rows = {"regressor": ([], []), "fit": ([], []), "mean-init fit": ([], [])}
    fit_time, init_time, n_done, reproj = 0.0, 0.0, 0, []
    for start in range(0, a.n, a.batch):
        sb = synthetic_batch(model, min(a.batch, a.n - start), "mediapipe33", noise=a.noise,
                             dropout=a.dropout, generator=g)
        gt = sb.joints[:, :17]
        world = None
        if a.world_noise is not None:
            kpi, _ = model.keypoint_map("mediapipe33")
            lm = sb.joints[:, kpi]
            world = lm - lm[:, [23, 24]].mean(1, keepdim=True)
            world = world + a.world_noise * torch.randn(world.shape, generator=gw)
        r = fit(sb.keypoints, model, "mediapipe33", K=sb.K, boxes=sb.boxes, regressor=reg,
                overrides=a.overrides, vertices=False, world_keypoints=world)
        init_joints = model(r.init_params, vertices=False).joints[:, :17]
        for name, joints in [("regressor", init_joints), ("fit", r.joints[:, :17])]:
            rows[name][0].append(mpjpe(joints, gt))
            rows[name][1].append(pa_mpjpe(joints, gt))
        fit_time += r.runtime_s["fit"]
        reproj.append(r.error_over_box)
        init_time += r.runtime_s["init"]
        n_done += sb.K.shape[0]
        rm = fit(sb.keypoints, model, "mediapipe33", K=sb.K, boxes=sb.boxes,
                 overrides=["init=mean", *a.overrides], vertices=False, world_keypoints=world)
        rows["mean-init fit"][0].append(mpjpe(rm.joints[:, :17], gt))
        rows["mean-init fit"][1].append(pa_mpjpe(rm.joints[:, :17], gt))
    print(f"{n_done} synthetic bodies, noise {a.noise:.1%} of height, dropout {a.dropout:.0%}, "
          f"batch {a.batch}, {torch.get_num_threads()} threads")
    print(f"{'':16s} {'MPJPE mm':>10s} {'PA-MPJPE mm':>12s}")
    for name, (m, p) in rows.items():
        print(f"{name:16s} {torch.cat(m).mean():10.1f} {torch.cat(p).mean():12.1f}")
    print(f"fit reprojection error {100 * torch.cat(reproj).mean():.2f}% of the box height")
    print(f"init {1000 * init_time / n_done:.1f} ms/body, fit {1000 * fit_time / n_done:.1f} ms/body "
          f"({n_done / fit_time:.1f} fits/s at batch {a.batch})")


if __name__ == "__main__":
    main()
