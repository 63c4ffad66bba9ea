"""Multi-view fitting on real frames: Pose2Sim Demo_SinglePerson (4 calibrated views).

    python benchmarks/bench_pose2sim_views.py [--frames 0 25 50 75] [--topology T] [key=value ...]

(``key=value``: overrides of configs/fit_views.yaml for the multi-view fits, e.g. render_size=192.)

1. Held-out view: fit one body per frame on 3 views, project it into the 4th and compare with
   MediaPipe's keypoints there (mean px error over keypoints with confidence > 0.5, and as a
   fraction of the person's box height), with keypoints alone and with keypoints + silhouette +
   texture consistency. Each of the 4 views is held out in turn.
2. A 3D reference: the 4 views' MediaPipe keypoints triangulated (robust DLT); PA-MPJPE of each
   single-view fit (``bodyfit.fit``) against it, over the 16 limb landmarks (shoulders to feet).

Data: Pose2Sim (BSD-3-Clause), see bodyfit.data.pose2sim.ATTRIBUTION.
"""
from __future__ import annotations

import argparse
import time

import torch

from bodyfit.body_models import body_model
from bodyfit.boxes import boxes_from_keypoints
from bodyfit.data.pose2sim import ATTRIBUTION, demo_keypoints, demo_views
from bodyfit import Observations, fit, fit_views
from bodyfit.metrics import pa_mpjpe
from bodyfit.triangulation import triangulate

LIMBS = list(range(11, 17)) + list(range(23, 33))  # MediaPipe-33 shoulders .. foot index


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[0, 25, 50, 75])
    ap.add_argument("--topology", default="default", help="Anny mesh the vertices come from")
    ap.add_argument("overrides", nargs="*", help="configs/fit_views.yaml overrides")
    a = ap.parse_args()
    print(ATTRIBUTION)
    model = body_model("anny", topology=a.topology)
    mv = demo_views(a.frames, masks=True)
    kp = torch.as_tensor(demo_keypoints(a.frames))  # (T,V,33,3), undistorted, calibration grid
    T, V = kp.shape[:2]
    cams = [mv.cameras.index(slice(v, v + 1)) for v in range(V)]
    images = [torch.stack([torch.as_tensor(mv.images[t][v]) for t in range(T)]) for v in range(V)]
    masks = [torch.stack([torch.as_tensor(mv.masks[t][v]) for t in range(T)]) for v in range(V)]
    kp_index, _ = model.keypoint_map("mediapipe33")

    print("\nHeld-out view: mean 2D error of the 3-view fit in the 4th view (px, % of box height)")
    print(f"{'held out':10s} {'keypoints':>18s} {'+ sil + texture':>18s}")
    totals = {"kp": [], "dense": []}
    for h in range(V):
        use = [v for v in range(V) if v != h]
        row = []
        for label, dense in (("kp", False), ("dense", True)):
            views = Observations(kp[:, use], [cams[v] for v in use],
                                 masks=[masks[v] for v in use] if dense else None,
                                 images=[images[v] for v in use] if dense else None,
                                 names=[mv.names[v] for v in use])
            t0 = time.perf_counter()
            r = fit_views(views, model, overrides=a.overrides)
            dt = time.perf_counter() - t0
            camh = cams[h].expand(T)
            proj = camh.project(r.joints[:, kp_index])
            obs = kp[:, h]
            good = obs[..., 2] > 0.5
            err = ((proj - obs[..., :2]).norm(dim=-1) * good).sum(1) / good.sum(1).clamp(min=1)
            box = boxes_from_keypoints(obs)
            rel = err / (box[:, 3] - box[:, 1])
            totals[label].append((float(err.mean()), float(rel.mean()), dt / T))
            row.append(f"{float(err.mean()):7.1f} px {100 * float(rel.mean()):5.2f}%")
        print(f"{mv.names[h]:10s} {row[0]:>18s} {row[1]:>18s}")
    for label, rows in totals.items():
        e = sum(r[0] for r in rows) / len(rows)
        p = sum(r[1] for r in rows) / len(rows)
        s = sum(r[2] for r in rows) / len(rows)
        print(f"mean {label:6s}: {e:.1f} px, {100 * p:.2f}% of the box, {s:.1f} s per frame (3 views)")

    ref = torch.as_tensor(triangulate(kp, mv.cameras))  # (T,33,4)
    print("\nSingle-view fits against the 4-view triangulation: PA-MPJPE (mm), 16 limb landmarks")
    for v in range(V):
        r = fit(kp[:, v], model, K=cams[v].K[0], image_size=cams[v].image_size)
        errs = []
        for t in range(T):
            ok = [k for k in LIMBS if ref[t, k, 3] > 0]
            pred = r.joints[t, kp_index[ok]][None]
            errs.append(float(pa_mpjpe(pred, ref[t, ok, :3][None].to(pred))[0]))
        print(f"{mv.names[v]}: {sum(errs) / len(errs):6.1f}  ({', '.join(f'{e:.0f}' for e in errs)})")


if __name__ == "__main__":
    main()
