"""People across calibrated views: association accuracy and PVE per person on synthetic scenes.

    python benchmarks/bench_association.py [--people 2 3 5] [--scenes 4] [--noise 0.015]
        [--topology notoes_collapse3pc]

Each scene: ``P`` random Anny bodies on a 2 m floor disc (at least 0.8 m apart) seen by 4
cameras around it (7 m away, 960 x 720 pictures, 60 deg field of view); MediaPipe-33 keypoints
projected with ``--noise`` (share of the person's size) and 10% dropped keypoints
(:func:`bodyfit.data.synthetic.synthetic_people_views`); each view's detections shuffled
(:func:`~bodyfit.data.synthetic.shuffled_detections`), person 0 hidden from two views, and one
spurious person-shaped detection in one view.

Printed per number of people:

- ``people ok``: people whose detections form exactly one group (all the views where they are
  seen, nobody else's), over people present; ``spurious out``: spurious detections left
  unmatched; ``time``: :func:`bodyfit.association.associate` (with left/right mirroring, as
  ``bodyfit fit-views``), ms per scene (median, wall time here);
- ``PVE``: per person mean vertex error (mm, world frame, no alignment) of the fit of each
  associated person in the views where seen (``bodyfit.fit_views``, keypoints only, the
  fit-views schedule, one batch per scene, start ``init=regressor`` moved onto the torso the
  association triangulated, as ``bodyfit fit-views`` does; ``--no-anchor``: without the move),
  mean and per person.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bodyfit import Observations, fit_views, load_config
from bodyfit.api import initialize
from bodyfit.association import associate, mirror_index
from bodyfit.body_models import body_model
from bodyfit.data.synthetic import shuffled_detections, synthetic_people_views, true_groups
from bodyfit.pipeline import place_on_points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, nargs="+", default=[2, 3, 5])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--noise", type=float, default=0.015)
    ap.add_argument("--topology", default="notoes_collapse3pc")
    ap.add_argument("--no-anchor", action="store_true",
                    help="start from the regressor's placement only, not on the triangulated torso")
    args = ap.parse_args()
    model = body_model("anny", topology=args.topology)
    print(f"{'people':>6} {'people ok':>10} {'spurious out':>12} {'time ms':>8} {'PVE mm':>7}  per person")
    for P in args.people:
        ok = total = spur_out = spur = 0
        times, pves = [], []
        for seed in range(args.scenes):
            g = torch.Generator().manual_seed(1000 * P + seed)
            scene = synthetic_people_views(model, P, noise=args.noise, generator=g)
            dets, ids = shuffled_detections(scene, hidden={(seed + 1) % 4: [0], (seed + 2) % 4: [0]},
                                            spurious=[seed % 4], generator=g)
            t0 = time.perf_counter()
            assoc = associate([d.numpy() for d in dets], scene.cameras, mirror=mirror_index())  # as fit-views
            times.append(1000 * (time.perf_counter() - t0))
            truth = true_groups(ids)
            groups = [set(m.detections.items()) for m in assoc.people]
            ok += sum(1 for d in truth.values() if d in groups)
            total += len(truth)
            spur += sum(p == -1 for per_view in ids for p in per_view)
            spur_out += sum(ids[u.view][u.detection] == -1 for u in assoc.unmatched)
            if not assoc.people:
                continue
            kp = torch.zeros(len(assoc.people), 4, 33, 3)
            for b, m in enumerate(assoc.people):
                for v, i in m.detections.items():
                    kp[b, v] = dets[v][i]
            obs = Observations(kp, scene.cameras)
            cfg = load_config(name="fit_views")
            start = initialize(obs, model, cfg.init)
            if not args.no_anchor:  # as fit-views: start on the association's triangulated torso
                start = place_on_points(model, start, np.stack([m.points for m in assoc.people]))
            result = fit_views(obs, model, cfg, init=start)
            for b, m in enumerate(assoc.people):
                who = [ids[v][i] for v, i in m.detections.items()]
                p = max(set(who), key=who.count)
                if p >= 0 and bool(result.valid[b]):
                    pves.append(float((result.vertices[b] - scene.vertices[p]).norm(dim=-1).mean()) * 1000)
        print(f"{P:>6} {f'{ok}/{total}':>10} {f'{spur_out}/{spur}':>12} {np.median(times):>8.0f} "
              f"{np.mean(pves):>7.1f}  {' '.join(f'{x:.0f}' for x in pves)}")


if __name__ == "__main__":
    main()
