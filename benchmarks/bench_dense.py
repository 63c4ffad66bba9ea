"""What each dense energy buys, on synthetic bodies with known parameters, and what it costs.

    python benchmarks/bench_dense.py [--n 8] [--topology default] [--size 256] [key=value ...]

(``key=value``: overrides of configs/fit_views.yaml, e.g. render_topology=default.)

Each body, 3 m away, is seen by one view (keypoints, DensePose IUV and person mask rendered) or
by two views --spread degrees apart (45) (plus pictures of the body wearing a smooth texture, for texture
consistency). Keypoints get 1.5% of the person's height of noise and 10% dropout; IUV and masks
are exact renders. Errors on the 17 COCO body landmarks (PA-MPJPE) and on the vertices after root
alignment (PVE), in mm. Then the CPU time per optimizer step of each energy alone.
"""
from __future__ import annotations

import argparse
import time

import torch

from bodyfit.body_models import body_model
from bodyfit.data.synthetic import synthetic_views
from bodyfit import Fitter, Observations, fit_views, load_config
from bodyfit.metrics import pa_mpjpe, pve

ALL_DENSE = ("silhouette", "texture", "densepose")


def run(model, sv, energies, views=None, overrides=()):
    off = [f"stages.dense.weights.{e}=0" for e in ALL_DENSE if e not in energies] + list(overrides)
    t0 = time.perf_counter()
    r = fit_views(views or sv.observations, model, overrides=off)
    dt = time.perf_counter() - t0
    coco = list(range(17))
    return (pve(r.vertices, sv.vertices, r.joints, sv.joints),
            pa_mpjpe(r.joints[:, coco], sv.joints[:, coco]), dt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--topology", default="default")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--spread", type=float, default=45.0, help="degrees between the two views")
    ap.add_argument("overrides", nargs="*", help="configs/fit_views.yaml overrides")
    a = ap.parse_args()
    model = body_model("anny", topology=a.topology)
    g = torch.Generator().manual_seed(a.seed)
    rows = {}
    for start in range(0, a.n, a.batch):
        b = min(a.batch, a.n - start)
        sv = synthetic_views(model, b, n_views=2, image_size=(a.size, a.size), generator=g, iuv=True,
                             spread_deg=a.spread, distance=3.0)
        v = sv.observations
        one = Observations(v.keypoints[:, :1], [v.cameras[0]], masks=[v.masks[0]], images=[v.images[0]],
                           iuv=[v.iuv[0]], names=v.names[:1])
        two_views = Observations(v.keypoints, v.cameras, masks=v.masks, images=v.images, names=v.names)
        cases = [("1 view: keypoints", (), one), ("1 view: + densepose", ("densepose",), one),
                 ("1 view: + silhouette", ("silhouette",), one),
                 ("1 view: + densepose + silhouette", ("densepose", "silhouette"), one),
                 ("2 views: keypoints", (), two_views), ("2 views: + texture", ("texture",), two_views),
                 ("2 views: + silhouette", ("silhouette",), two_views),
                 ("2 views: + silhouette + texture", ("silhouette", "texture"), two_views)]
        for name, energies, views in cases:
            e_pve, e_pa, dt = run(model, sv, energies, views, a.overrides)
            r = rows.setdefault(name, ([], [], 0.0))
            rows[name] = (r[0] + e_pve.tolist(), r[1] + e_pa.tolist(), r[2] + dt)
    print(f"\n{a.n} bodies, Anny {a.topology}, {a.size}x{a.size} pictures, views {a.spread:.0f} deg apart, "
          f"overrides {a.overrides}")
    print(f"{'':36s} {'PVE mm':>8s} {'PA-MPJPE mm':>12s} {'s/body':>8s}")
    for name, (p, q, dt) in rows.items():
        print(f"{name:36s} {sum(p) / len(p):8.1f} {sum(q) / len(q):12.1f} {dt / a.n:8.2f}")

    # CPU cost per step of each energy (forward + backward, batch 1): the engine's own energies
    sv = synthetic_views(model, 1, n_views=2, image_size=(a.size, a.size), generator=g, iuv=True)
    fitter = Fitter(model, load_config(["render_topology=default", *a.overrides], name="fit_views"))
    print(f"\nCPU ms per step (forward + backward, batch 1, {a.size}x{a.size}, 2 views), median of 10")
    for names in (["reprojection"], ["silhouette"], ["texture"], ["densepose"]):
        times = []
        for _ in range(10):
            p = sv.params.clone()
            p.body_pose.requires_grad_(True)
            t0 = time.perf_counter()
            sum(e.sum() for e in fitter.energies_at(sv.observations, p, names).values()).backward()
            times.append(time.perf_counter() - t0)
        times.sort()
        print(f"{names[0]:40s} {1000 * times[5]:8.1f}")

if __name__ == "__main__":
    main()
