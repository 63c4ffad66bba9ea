"""The SPIN loop on real frames: does it make the keypoint regressor better?

    python benchmarks/bench_spin.py [--epochs 4] [--out /tmp/bodyfit_spin] [--start weights.pt]

Trains on Pose2Sim Demo_SinglePerson frames 0-79 (4 views: 320 samples, MediaPipe keypoints)
and evaluates the regressor alone, before and after each epoch, on frames 80-99 (80 samples,
never trained on) and on the training frames:
- 2D: mean distance between the regressor's projected keypoints and MediaPipe's, over keypoints
  with confidence > 0.5, as a fraction of the box height;
- 3D: PA-MPJPE (mm) of its 16 limb landmarks against the 4-view triangulation.
Then: stored fits improved per epoch; fitting from the regressor vs from the mean body (error
after a given number of body-stage steps); training throughput.
Data: Pose2Sim (BSD-3-Clause), see bodyfit.data.pose2sim.ATTRIBUTION.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import torch

from bodyfit import fit
from bodyfit.body_models import body_model
from bodyfit.cameras import project
from bodyfit.data.pose2sim import demo_cameras, demo_keypoints
from bodyfit.data.samples import pose2sim_samples
from bodyfit.metrics import pa_mpjpe
from bodyfit.regressors.keypoint_regressor import load_regressor
from bodyfit.regressors.spin import train
from bodyfit.regressors.train_config import load_train_config
from bodyfit.triangulation import triangulate

LIMBS = list(range(11, 17)) + list(range(23, 33))


def reference(frames):
    kp = torch.as_tensor(demo_keypoints(frames))
    return torch.as_tensor(triangulate(kp, demo_cameras())).float()  # (T,33,4)


@torch.no_grad()
def evaluate(reg, model, samples, ref):
    kp_index, _ = model.keypoint_map("mediapipe33")
    p = reg.predict(samples.keypoints, samples.K, model)
    j = model(p, vertices=False).joints[:, kp_index]
    uv = project(j, samples.K)
    kp = samples.keypoints
    good = kp[..., 2] > 0.5
    box = kp[..., 1].where(good, torch.nan)
    h = box.nan_to_num(-1e9).amax(1) - box.nan_to_num(1e9).amin(1)
    err2d = ((uv - kp[..., :2]).norm(dim=-1) * good).sum(1) / good.sum(1).clamp(min=1) / h.clamp(min=1)
    V = 4
    pa = []
    for i in range(len(samples)):
        r = ref[i // V]
        ok = [k for k in LIMBS if r[k, 3] > 0]
        pa.append(float(pa_mpjpe(j[i, ok][None], r[ok, :3][None])[0]))
    return 100 * float(err2d.mean()), sum(pa) / len(pa)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default="/tmp/bodyfit_spin")
    ap.add_argument("--start", default=None, help="regressor weights to start from (default: shipped)")
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    model = body_model("anny")
    train_frames, eval_frames = list(range(0, 80)), list(range(80, 100))
    tr, ev = pose2sim_samples(train_frames), pose2sim_samples(eval_frames)
    ref_tr, ref_ev = reference(train_frames), reference(eval_frames)
    reg = load_regressor(model, "mediapipe33", a.start).float()
    print(f"{'':12s} {'eval 2D %box':>13s} {'eval PA mm':>11s} {'train 2D %box':>14s} {'train PA mm':>12s}")
    e2, ep = evaluate(reg, model, ev, ref_ev)
    t2, tp = evaluate(reg, model, tr, ref_tr)
    print(f"{'start':12s} {e2:13.2f} {ep:11.1f} {t2:14.2f} {tp:12.1f}", flush=True)
    t0 = time.perf_counter()
    for epoch in range(1, a.epochs + 1):
        cfg = load_train_config([f"epochs={epoch}"])
        train(tr, a.out, cfg, model, regressor=reg, progress=False)
        e2, ep = evaluate(reg, model, ev, ref_ev)
        t2, tp = evaluate(reg, model, tr, ref_tr)
        print(f"{'epoch ' + str(epoch):12s} {e2:13.2f} {ep:11.1f} {t2:14.2f} {tp:12.1f}", flush=True)
    elapsed = time.perf_counter() - t0
    rows = list(csv.DictReader(open(Path(a.out) / "metrics.csv")))
    for epoch in range(a.epochs):
        r = [x for x in rows if int(x["epoch"]) == epoch]
        print(f"epoch {epoch + 1}: stored fits improved {sum(int(x['stored_improved']) for x in r)}, "
              f"plausible fits {sum(int(x['fits_plausible']) for x in r)} of {sum(int(x['samples']) for x in r)}, "
              f"mean fit error {100 * sum(float(x['fit_error_over_box']) for x in r) / len(r):.2f}% of box")
    n = sum(int(x["samples"]) for x in rows)
    print(f"throughput: {n / elapsed:.1f} real samples/s (+ {load_train_config().synthetic_batch} "
          f"synthetic per step), {len(rows) / elapsed:.2f} steps/s, CPU")

    print("\nFitting the eval samples from the regressor vs from the mean body (PA-MPJPE mm vs the "
          "triangulation, 2D error % of box), by body-stage steps")
    ev_kp_index, _ = model.keypoint_map("mediapipe33")
    for init in ("regressor", "mean"):
        row = []
        for steps in (0, 10, 20, 40, 80):
            ov = [f"init={init}", f"stages.body.steps={max(steps, 1)}"]
            ov += ["stages.camera.steps=1"] if steps == 0 else []
            r = fit(ev.keypoints, model, K=ev.K, image_size=ev.image_size, overrides=ov, vertices=False,
                    regressor=reg if init == "regressor" else None)
            pa = []
            for i in range(len(ev)):
                rr = ref_ev[i // 4]
                ok = [k for k in LIMBS if rr[k, 3] > 0]
                pa.append(float(pa_mpjpe(r.joints[i, ev_kp_index[ok]][None], rr[ok, :3][None])[0]))
            err = 100 * float(r.error_over_box.nanmean())
            row.append(f"{steps:3d}: {sum(pa) / len(pa):5.1f} mm {err:4.2f}%")
        print(f"{init:10s} " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
