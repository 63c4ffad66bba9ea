"""Reproduce ``ANNY_LANDMARK_OFFSETS`` (``bodyfit/body_models/keypoint_tables.py``): where
MediaPipe puts the landmarks of Anny's COCO keypoint regressor (issue 14).

    pip install -e ".[detect]"
    python scripts/calibrate_anny_landmarks.py [--rounds 4] [--step 0.5] [--single-person-frames 50]

Anny's landmarks come from ``anny.KeypointsRegressor.coco``; MediaPipe's keypoints of the same
names sit elsewhere on the body (its ears about 45 mm inside and in front of the regressor's). A
fit matches the detector's points with the model's, so each mismatch bends the body to make up
for it, most of all in depth, where a single view does not see it.

Data: the person-frames of ``scripts/train_anny_pose_prior.py`` (Pose2Sim ``Demo_MultiPerson``
frames 0-99 and ``Demo_SinglePerson`` frames 0-49, BSD-3-Clause; each person seen in 3 calibrated
views or more; frames 50-99 of SinglePerson are the held-out frames of
``benchmarks/bench_pose2sim_depth.py`` and are never used). Each person-frame's keypoints are
triangulated (:func:`bodyfit.triangulation.triangulate`).

Each round:

1. Anny, with the offsets so far, is fitted to every person-frame's views (``bodyfit.fit_views``,
   keypoints only); fits with a mean keypoint error over 3% of the box are left out.
2. For each landmark a MediaPipe keypoint maps to with full weight, the rest-frame offset ``d``
   that best explains the triangulated points is solved by least squares: a landmark moved by
   ``d`` moves by ``X G d`` in a posed body, with X the posed vertices near it and G the
   least-norm basis of :func:`bodyfit.body_models.keypoint_tables.landmark_shift_basis`.
3. Left and right are averaged mirrored (x negated), the nose's x is 0, and the offsets move by
   ``--step`` times the solution (the fits move with them, hence the rounds).

Prints the multi-view fits' PA-MPJPE against the triangulation each round and the table to put
in ``keypoint_tables.py``. Detections and fits are cached next to the Pose2Sim wheel.
"""
from __future__ import annotations

import argparse
import time

import torch

from train_anny_pose_prior import CAMERAS, DEMOS, demo_people

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--step", type=float, default=0.5, help="share of each round's least-squares offset taken")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--single-person-frames", type=int, default=50,
                    help="Demo_SinglePerson frames 0..N-1 join the data (0: other people only, to check that "
                         "the offsets carry over to the held-out person)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from bodyfit import Observations, fit_views
    from bodyfit.body_models.anny_model import AnnyModel
    from bodyfit.body_models.conventions import keypoint_names
    from bodyfit.body_models.keypoint_tables import landmark_shift_basis
    from bodyfit.data.pose2sim import demo_cameras
    from bodyfit.metrics import pa_mpjpe
    from bodyfit.triangulation import triangulate

    t0 = time.time()
    cams = demo_cameras(CAMERAS)
    views = [cams.index(slice(v, v + 1)) for v in range(len(CAMERAS))]
    demos = dict(DEMOS, Demo_SinglePerson=range(min(a.single_person_frames, 50)))
    kp, stats = demo_people({k: v for k, v in demos.items() if len(v)})
    ref = torch.as_tensor(triangulate(torch.as_tensor(kp), cams)).float()  # (N,33,4) world frame
    obs = Observations(torch.as_tensor(kp), views)
    print(f"{len(kp)} person-frames: {stats}")

    plain = AnnyModel(landmark_offsets={})
    kp_index, kp_weight = plain.keypoint_map("mediapipe33")
    names, R = keypoint_names("mediapipe33"), len(plain.regressed_names)
    coco = [names.index(n) for n in keypoint_names("coco17")]  # the 17 body points among MediaPipe's 33
    # (MediaPipe keypoint, landmark) pairs to calibrate: full weight, regressed landmarks, left side
    # and middle (the right side is the mirror).
    pairs = [(k, int(kp_index[k])) for k in range(len(names))
             if float(kp_weight[k]) == 1.0 and int(kp_index[k]) < R and not names[k].startswith("right_")]
    # Each calibrated keypoint with its right twin, whose offset is the left one's mirrored (x negated):
    # name -> [(keypoint, landmark, factor on the offset's axes)].
    groups = {}
    for k, r in pairs:
        groups[names[k]] = [(k, r, torch.ones(3))]
        if names[k].startswith("left_"):
            kt = names.index("right_" + names[k][5:])
            groups[names[k]].append((kt, int(kp_index[kt]), torch.tensor([-1.0, 1.0, 1.0])))
    rest = plain.anny.template_vertices.to(plain.dtype)
    basis = {r: landmark_shift_basis(plain.vertex_regressor[r], rest) for g in groups.values() for _, r, _ in g}
    offsets: dict[str, tuple[float, float, float]] = {}
    for it in range(a.rounds + 1):
        model = AnnyModel(full=plain.anny, landmark_offsets=offsets)
        fit = fit_views(obs, model, overrides=["stages.body.steps=150"], vertices=True)
        good = fit.valid & (fit.error_over_box < 0.03)
        lm = fit.joints[:, kp_index]
        ok = (ref[:, coco, 3] > 0).all(1) & good
        pa = pa_mpjpe(lm[ok][:, coco].double(), ref[ok][:, coco, :3].double())
        print(f"round {it}: {int(good.sum())} fits kept, PA-MPJPE (COCO-17) against the triangulation: "
              f"mean {float(pa.mean()):.1f} mm, median {float(pa.median()):.1f} mm", flush=True)
        if it == a.rounds:
            break
        step = {}
        for name, group in groups.items():
            A, b = [], []
            for k, r, axes in group:
                near, G = basis[r]
                use = good & (ref[:, k, 3] > 0)
                J = fit.vertices[use][:, near].transpose(1, 2) @ G * axes.to(G.dtype)  # (n,3,3)
                A.append(J.reshape(-1, 3))
                b.append((ref[use, k, :3] - lm[use, k]).reshape(-1))
            A, b = torch.cat(A).double(), torch.cat(b).double()
            d = torch.linalg.solve(A.T @ A + 1e-9 * torch.eye(3, dtype=A.dtype), A.T @ b)
            if len(group) == 1:  # a middle landmark stays on the midline
                d[0] = 0.0
            step[name] = d
        offsets = {n: tuple(float(x) for x in torch.tensor(offsets.get(n, (0.0, 0.0, 0.0))) + a.step * d)
                   for n, d in step.items()}
    print("ANNY_LANDMARK_OFFSETS = {")
    for n, d in offsets.items():
        print(f'    "{n}": ({d[0]:.3f}, {d[1]:.3f}, {d[2]:.3f}),')
    print(f"}}\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
