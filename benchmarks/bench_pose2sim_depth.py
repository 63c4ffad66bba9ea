"""Single-view fits on real frames scored in 3D: Pose2Sim Demo_SinglePerson (issue 14).

    python benchmarks/bench_pose2sim_depth.py [--frames 55 65 75 85 95] [--threads 1]
        [--configs base world ...] [--landmarks mediapipe|coco] [--heavy PATH] [key=value ...]

Reference: every frame's MediaPipe keypoints of the 4 calibrated views triangulated (robust DLT,
``bodyfit.triangulation``). Each view of each frame is fitted alone (``bodyfit.fit``, the
calibration's K, the detector's world landmarks where the config uses them) and scored by
PA-MPJPE (mm) on COCO-17 (the 17 body points) and on MediaPipe-33 (every landmark the reference
has). Also scored: MediaPipe's world landmarks alone, and the regressor's start. Printed per
config: median and mean PA-MPJPE, the share of views above 100 mm, seconds per picture (fit only;
detection is cached). ``--heavy PATH`` fits the heavy landmark model's detections instead (the
reference stays the full model's).

Configs (``--configs``, each a set of overrides of configs/fit.yaml; extra ``key=value`` apply to
all): see CONFIGS. Tune on one set of frames, report on another (default: tuned on frames 5-45,
reported on 55-95).

Detections (2D keypoints on the calibration grid, undistorted, and world landmarks) are cached in
``<pose2sim cache>/pose2sim_demo/depth_bench_<tag>.npz``. Data: Pose2Sim (BSD-3-Clause), see
bodyfit.data.pose2sim.ATTRIBUTION.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bodyfit.body_models.conventions import keypoint_names

#: Ablation: name -> overrides of configs/fit.yaml.
CONFIGS = {
    "default": [],
    "no limb_flip": ["limb_flip=false"],  # the limb-flip trial off
    "before": ["try_mirror=false", "stages.body.weights.gmm_prior=0"],  # the defaults before the pose prior
    "gmm_prior only": ["try_mirror=false"],
    "try_mirror only": ["stages.body.weights.gmm_prior=0"],
    "world": ["stages.body.weights.world_landmarks=0.01"],
    "world_procrustes": ["stages.body.weights.world_landmarks=0.003", "world_frame=procrustes"],
    "flip": ["world_flip=0.01"],
    "world_start": [],  # the regressor's start posed to the world landmarks first (WORLD_START)
    "world_start+flip": ["world_flip=0.01"],
    # the pose prior's weight (tuned on frames 5-45 with gmm_file= a prior fitted without them:
    # scripts/train_anny_pose_prior.py --single-person-frames 0)
    "gmm_1e-4": ["try_mirror=false", "stages.body.weights.gmm_prior=1e-4"],
    "gmm_3e-4": ["try_mirror=false", "stages.body.weights.gmm_prior=3e-4"],
    "gmm_1e-3": ["try_mirror=false", "stages.body.weights.gmm_prior=1e-3"],
    "gmm_3e-3": ["try_mirror=false", "stages.body.weights.gmm_prior=3e-3"],
}
#: The start stage of the "world_start" configs: pose and orientation to the world landmarks' bone
#: directions, from the regressor's start, with the joint limits.
WORLD_START = ["~stages.camera", "stages.body.free=[global_orient,body_pose]", "stages.body.steps=60",
               "stages.body.weights.reprojection=0", "stages.body.weights.world_landmarks=1.0",
               "stages.body.weights.init_prior=0", "try_flip=false", "world_flip=0"]
COCO_IN_MP = [keypoint_names("mediapipe33").index(n) for n in keypoint_names("coco17")]  # COCO-17 among MP-33


def detections(frames: list[int], heavy: str | None = None):
    """(T,4,33,3) keypoints (calibration grid, undistorted) and (T,4,33,3) world landmarks, of
    the full landmark model in the wheel, or of the heavy one at ``heavy`` (a .tflite file or a
    folder holding pose_landmark_heavy.tflite)."""
    from bodyfit.data.calibration import undistort_keypoints
    from bodyfit.data.pose2sim import (DEMO_CAMERAS, _detector_tag, demo_calibration, demo_frames,
                                       pose2sim_wheel, video_to_calibration)

    tag = _detector_tag() + ("-heavy" if heavy else "")
    path = pose2sim_wheel().parent / "pose2sim_demo" / f"depth_bench_{tag}.npz"
    store = {"kp": np.zeros((100, 4, 33, 3), np.float32), "world": np.zeros((100, 4, 33, 3), np.float32),
             "done": np.zeros((100, 4), bool)}
    if path.is_file():
        with np.load(path) as z:
            store = {k: z[k].copy() for k in store}
    need = [f for f in frames if not store["done"][f].all()]
    if need:
        from bodyfit.detectors.mediapipe_pose import MediaPipePose, NoPersonError

        calib = demo_calibration()
        det = MediaPipePose(enable_segmentation=False, **(dict(model_complexity=2, landmark_model_path=heavy)
                                                           if heavy else {}))
        for v, cam in enumerate(DEMO_CAMERAS):
            A = video_to_calibration(cam)
            for name, img in demo_frames(need, cameras=(cam,)):
                f = int(name[-3:])
                try:
                    d = det.detect(img)
                except NoPersonError:
                    store["done"][f, v] = True
                    continue
                kp = np.nan_to_num(d.keypoints.astype(np.float64))
                kp[:, :2] = kp[:, :2] @ A[:2, :2].T + A[:2, 2]
                store["kp"][f, v] = undistort_keypoints(kp, calib[cam]["K"], calib[cam]["dist"])
                if d.world_keypoints is not None:
                    store["world"][f, v] = d.world_keypoints
                store["done"][f, v] = True
        det.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **store)
    return torch.as_tensor(store["kp"][frames]), torch.as_tensor(store["world"][frames])


def pa(pred: torch.Tensor, ref: torch.Tensor, idx) -> float:
    """PA-MPJPE (mm) of (33,3) ``pred`` against (33,4) ``ref`` over ``idx`` the reference has."""
    from bodyfit.metrics import pa_mpjpe

    ok = [k for k in idx if ref[k, 3] > 0]
    return float(pa_mpjpe(pred[ok][None].double(), ref[ok, :3][None].double())[0])


def summary(errs: list[float]) -> str:
    return (f"{statistics.median(errs):6.1f} {statistics.mean(errs):6.1f} "
            f"{100 * sum(e > 100 for e in errs) / len(errs):5.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[55, 65, 75, 85, 95])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--per-view", action="store_true", help="print every view's errors")
    ap.add_argument("--regressor", default=None, help="keypoint regressor weights (default: the shipped ones)")
    ap.add_argument("--landmarks", default="mediapipe", choices=["mediapipe", "coco"],
                    help="Anny's landmarks: moved to where MediaPipe puts them (default) or the COCO regressor's")
    ap.add_argument("--heavy", default=None, metavar="PATH",
                    help="fit the heavy landmark model's detections (pose_landmark_heavy.tflite, e.g. from the "
                         "npm package @mediapipe/pose); the reference stays the full model's triangulation")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from bodyfit import Observations, fit, initialize
    from bodyfit.fitting import Fitter
    from bodyfit.body_models import body_model
    from bodyfit.data.pose2sim import ATTRIBUTION, demo_cameras
    from bodyfit.triangulation import triangulate

    print(ATTRIBUTION)
    kp, world = detections(a.frames)
    cams = demo_cameras()
    ref = torch.as_tensor(triangulate(kp, cams)).float()  # (T,33,4) world frame of the lab
    if a.heavy:
        kp, world = detections(a.frames, a.heavy)
    T, V = kp.shape[:2]
    model = body_model("anny", landmarks=a.landmarks)
    from bodyfit.regressors.keypoint_regressor import load_regressor

    regressor = load_regressor(model, "mediapipe33", a.regressor)
    kp_index, _ = model.keypoint_map("mediapipe33")
    all_mp = list(range(33))
    rows = {}
    mp_errs = ([pa(world[t, v], ref[t], COCO_IN_MP) for t in range(T) for v in range(V)],
               [pa(world[t, v], ref[t], all_mp) for t in range(T) for v in range(V)])
    rows["MediaPipe world alone"] = (*mp_errs, float("nan"))
    for name in a.configs:
        coco, mp33, secs, start = [], [], [], []
        for v in range(V):
            cam = cams.index(slice(v, v + 1))
            t0 = time.perf_counter()
            init = None
            if name.startswith("world_start"):
                obs = Observations.from_pictures(kp[:, v], K=cam.K[0], image_size=cam.image_size,
                                                 world_keypoints=world[:, v])
                init = initialize(obs, model, regressor=regressor)
                init = Fitter(model, overrides=WORLD_START)(obs, init, vertices=False).params
            r = fit(kp[:, v], model, K=cam.K[0], image_size=cam.image_size, world_keypoints=world[:, v],
                    overrides=CONFIGS[name] + a.overrides, vertices=False, init=init, regressor=regressor)
            secs.append((time.perf_counter() - t0) / T)
            init = model(r.init_params, vertices=False).joints
            for t in range(T):
                pred = r.joints[t, kp_index]
                coco.append(pa(pred, ref[t], COCO_IN_MP))
                mp33.append(pa(pred, ref[t], all_mp))
                start.append(pa(init[t, kp_index], ref[t], COCO_IN_MP))
                if a.per_view:
                    print(f"  {name} view {v} frame {a.frames[t]}: coco {coco[-1]:.0f} mp {mp33[-1]:.0f} "
                          f"start {start[-1]:.0f} valid {bool(r.valid[t])}")
        rows[name] = (coco, mp33, statistics.mean(secs))
        rows[f"  {name}: start only"] = (start, start, float("nan"))
    print(f"\n{T * V} single views (frames {a.frames}), PA-MPJPE mm: median mean >100mm")
    print(f"{'config':28s} {'COCO-17':>20s} {'MP-33':>20s} {'s/picture':>9s}")
    for name, (c, m, s) in rows.items():
        print(f"{name:28s} {summary(c):>20s} {summary(m):>20s} {s:9.2f}")


if __name__ == "__main__":
    main()
