"""Reproduce ``bodyfit/priors/anny_pose_gmm.npz``: the learned pose prior for Anny (issue 14).

    pip install -e ".[detect,priors]"
    python scripts/train_anny_pose_prior.py [--out bodyfit/priors/anny_pose_gmm.npz]
        [--components 1] [--reg-covar 0.01] [--broad-weight 0.05] [--seed 0]

What it is fitted to (no mocap or pose-prior data can be had offline; see ../shared/DESIGN.md):

1. **Real poses**: Anny fitted to every frame of Pose2Sim's calibrated 4-view demos (BSD-3-Clause,
   :data:`bodyfit.data.pose2sim.ATTRIBUTION`): ``Demo_MultiPerson`` (100 frames, two people
   walking; every person the multi-person detector finds, grouped across views by
   :func:`bodyfit.association.associate`, left/right swaps of people seen from behind undone)
   and ``Demo_SinglePerson`` frames 0-49 only: frames 50-99 are the held-out frames of
   ``benchmarks/bench_pose2sim_depth.py`` and never enter the prior. Each person of each frame
   seen in 3 views or more is fitted with ``bodyfit.fit_views`` (keypoints only); fits whose mean
   keypoint error is over 3% of the box are left out.
2. **Anatomical breadth**: one more, broad component (weight ``--broad-weight``): the mean and
   covariance of 20,000 bodies drawn inside the joint limits
   (:func:`bodyfit.data.synthetic.sample_params`). Poses the videos lack (sitting, arms raised)
   then meet that component's gentle pull, not the far tail of a walking-only mixture.

The mixture: scikit-learn's ``GaussianMixture`` (``--components`` full covariances, k-means
start, ``--reg-covar`` on the diagonal: a few hundred correlated frames cannot fill 51x51
covariances) on the axis-angle vectors of Anny's 17 free joints (51 numbers), as SMPLify's
``gmm_08.pkl`` is on SMPL's 23 body joints (Bogo et al. 2016, "Keep it SMPL", ECCV).
Detections and fitted poses are cached next to the Pose2Sim wheel.

The fits start from the shipped keypoint regressor, so they depend on it: the packaged prior was
made with the regressor shipped before it (157 poses kept); refitted from today's regressor,
which was fine-tuned on that prior's samples, 156 are kept and the means move by at most
0.043 rad.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

DEMOS = {"Demo_MultiPerson": range(100), "Demo_SinglePerson": range(50)}  # frames used
CAMERAS = ("cam01", "cam02", "cam03", "cam04")


def demo_detections(demo: str, frames, setting: str = "fast") -> list[list[np.ndarray]]:
    """``[frame][view]`` ``(N, 33, 3)`` MediaPipe-33 keypoints of every person found, on the
    calibration's pixel grid (undistorted), cached as npz next to the Pose2Sim wheel."""
    from bodyfit.data.calibration import undistort_keypoints
    from bodyfit.data.images import read_video_frames
    from bodyfit.data.pose2sim import demo_calibration, pose2sim_member, video_to_calibration
    from bodyfit.detectors.multi_person import MultiPersonPose
    from bodyfit.files import atomic_save_npz

    frames = list(frames)
    calib = demo_calibration()
    cache = pose2sim_member(f"Pose2Sim/{demo}/videos/cam01.mp4").parent / f"prior_{demo}_{setting}.npz"
    if not cache.is_file():
        rows = []
        with MultiPersonPose(setting, enable_segmentation=False) as det:
            for v, cam in enumerate(CAMERAS):
                path = pose2sim_member(f"Pose2Sim/{demo}/videos/{cam}.mp4")
                for f, (_, img) in zip(sorted(frames), read_video_frames(path, frames=frames)):
                    # SinglePerson's cam01/cam02 decode letterboxed; MultiPerson's on the grid.
                    A = video_to_calibration(cam) if img.shape[1] != 1088 else np.eye(3)
                    for d in det.detect_all(img):
                        kp = d.keypoints.astype(np.float64)
                        kp[:, :2] = kp[:, :2] @ A[:2, :2].T + A[:2, 2]
                        rows.append((f, v, undistort_keypoints(kp, calib[cam]["K"], calib[cam]["dist"])))
                print(f"  {demo} {cam}: detected", flush=True)
        atomic_save_npz(cache, frame=np.array([r[0] for r in rows]), view=np.array([r[1] for r in rows]),
                        keypoints=np.stack([r[2] for r in rows]).astype(np.float32))
    with np.load(cache) as z:
        found = [[[] for _ in CAMERAS] for _ in frames]
        for f, v, kp in zip(z["frame"], z["view"], z["keypoints"]):
            if int(f) in frames:
                found[frames.index(int(f))][int(v)].append(kp)
    return [[np.stack(k) if k else np.zeros((0, 33, 3), np.float32) for k in per_view] for per_view in found]


def demo_people(demos: dict, min_views: int = 3) -> tuple[np.ndarray, dict]:
    """(N,4,33,3) MediaPipe-33 keypoints in the 4 views (zeros where unseen) of every person-frame
    of ``demos`` (name -> frames) seen in ``min_views`` views or more, grouped across views by
    :func:`bodyfit.association.associate` (left/right swaps undone), and counts per demo."""
    from bodyfit.association import associate, mirror_index
    from bodyfit.data.pose2sim import demo_cameras

    cams = demo_cameras(CAMERAS)
    views = [cams.index(slice(v, v + 1)) for v in range(len(CAMERAS))]
    mirror = mirror_index("mediapipe33")
    rows, stats = [], {}
    for demo, frames in demos.items():
        people = 0
        for kps in demo_detections(demo, frames):
            for p in associate(kps, views, mirror=mirror).people:
                if len(p.detections) < min_views:
                    continue
                kp = np.zeros((len(CAMERAS), 33, 3), np.float32)
                for v, i in p.detections.items():
                    kp[v] = kps[v][i][mirror] if v in p.mirrored else kps[v][i]
                rows.append(kp)
                people += 1
        stats[demo] = {"frames": len(frames), "person_frames": people}
    return np.stack(rows), stats


def real_poses(model, demos: dict, min_views: int = 3, max_error: float = 0.03) -> tuple[torch.Tensor, dict]:
    """(N,F,3) free-joint axis-angle of every person-frame of ``demos`` (name -> frames) fitted
    in ``min_views`` views or more (:func:`demo_people`), and counts for the record."""
    from bodyfit import Observations, fit_views
    from bodyfit.data.pose2sim import demo_cameras

    cams = demo_cameras(CAMERAS)
    views = [cams.index(slice(v, v + 1)) for v in range(len(CAMERAS))]
    rows, stats = demo_people(demos, min_views)
    obs = Observations(torch.as_tensor(rows), views)
    model_pose = fit_views(obs, model, overrides=["stages.body.steps=150"], vertices=False)
    good = model_pose.valid & (model_pose.error_over_box < max_error)
    stats["fitted"], stats["kept"] = len(rows), int(good.sum())
    return model_pose.params.body_pose[good][:, model.free_pose_joints], stats


def cached_real_poses(model, demos: dict) -> tuple[torch.Tensor, dict]:
    """:func:`real_poses`, kept next to the detections (keyed by the demos and frames and by the
    model's landmark offsets, which the fits depend on)."""
    import hashlib

    from bodyfit.data.pose2sim import pose2sim_wheel
    from bodyfit.files import atomic_save_npz

    landmarks = hashlib.sha1(json.dumps(sorted(model.landmark_offsets.items())).encode()).hexdigest()[:8]
    key = "_".join(f"{d}{len(f)}" for d, f in demos.items()) + f"_lm{landmarks}"
    path = pose2sim_wheel().parent / "pose2sim_demo" / f"prior_poses_{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return torch.as_tensor(z["poses"]), json.loads(str(z["stats"]))
    poses, stats = real_poses(model, demos)
    atomic_save_npz(path, poses=poses.numpy(), stats=np.array(json.dumps(stats)))
    return poses, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bodyfit/priors/anny_pose_gmm.npz")
    ap.add_argument("--components", type=int, default=1)
    ap.add_argument("--reg-covar", type=float, default=0.01, help="added to each real component's variances (rad^2)")
    ap.add_argument("--broad-weight", type=float, default=0.05, help="mixture weight of the joint-limit component")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--single-person-frames", type=int, default=50,
                    help="Demo_SinglePerson frames 0..N-1 join the data (0: none, for tuning the weight on its frames 5-45)")
    a = ap.parse_args()
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError as e:
        raise SystemExit("scikit-learn is needed to train the prior: pip install -e '.[priors]'") from e
    from bodyfit.body_models import body_model
    from bodyfit.data.synthetic import sample_params
    from bodyfit.priors.gmm import save_pose_gmm

    torch.manual_seed(a.seed)
    t0 = time.time()
    model = body_model("anny")
    demos = dict(DEMOS, Demo_SinglePerson=range(min(a.single_person_frames, 50)))
    real, stats = cached_real_poses(model, {k: v for k, v in demos.items() if len(v)})
    X = real.flatten(1).double().numpy()
    gmm = GaussianMixture(a.components, covariance_type="full", reg_covar=a.reg_covar, n_init=4,
                          random_state=a.seed).fit(X)
    # The broad component: bodies drawn inside the joint limits (mean and full covariance).
    drawn = sample_params(model, 20000, torch.Generator().manual_seed(a.seed)).body_pose
    B = drawn[:, model.free_pose_joints].flatten(1).double().numpy()
    means = np.concatenate([gmm.means_, B.mean(0, keepdims=True)])
    covs = np.concatenate([gmm.covariances_, np.cov(B, rowvar=False)[None]])
    weights = np.concatenate([(1 - a.broad_weight) * gmm.weights_, [a.broad_weight]])
    names = [model.pose_joint_names[j] for j in model.free_pose_joints]
    stats.update(components=a.components, reg_covar=a.reg_covar, broad_weight=a.broad_weight, seed=a.seed,
                 mean_log_likelihood=float(gmm.score(X)))
    save_pose_gmm(a.out, means, covs, weights, names, model="anny",
                  source="scripts/train_anny_pose_prior.py " + json.dumps(stats))
    print(json.dumps(stats, indent=1), f"\nwrote {a.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
