"""Fit one body to several calibrated views of the same moment.

    python examples/fit_calibrated_views.py --calib Calib.qca.txt c1.png c2.png c3.png c4.png --out results/
    python examples/fit_calibrated_views.py --out results/      # frame 0 of the Pose2Sim demo, 4 views

The pictures come in the calibration's camera order; they are undistorted, each view's person is
detected, and one body is fitted in the calibration's world frame to every view's keypoints
(``bodyfit.fit_views``). Writes fit.npz, fit.json, mesh.ply and overlay_<view>.png into --out.
``bodyfit fit-views ... --calib ...`` does the same and adds the masks and pictures (silhouette,
texture consistency).
"""
import argparse

import torch

import bodyfit
from bodyfit.data.calibration import load_calibration, undistort_image

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("pictures", nargs="*", help="one picture per camera, in the calibration's order")
parser.add_argument("--calib", help="Qualisys .qca.txt or Pose2Sim Calib.toml (default: the Pose2Sim demo)")
parser.add_argument("--out", default="example_outputs/fit_calibrated_views")
args = parser.parse_args()

if args.calib:
    cameras = load_calibration(args.calib)
    if len(args.pictures) != len(cameras):
        parser.error(f"{len(cameras)} cameras in {args.calib}: give one picture for each, in order")
    names = [c.name for c in cameras]
    pictures = [undistort_image(bodyfit.read_image(p), c) for p, c in zip(args.pictures, cameras)]
    cameras = [c.camera for c in cameras]
else:
    from bodyfit.data.pose2sim import demo_views

    demo = demo_views([0])  # undistorted, on the calibration's pixel grid
    names, pictures = list(demo.names), demo.images[0]
    cameras = [demo.cameras.index(slice(v, v + 1)) for v in range(len(names))]

with bodyfit.MediaPipePose() as detector:
    keypoints = torch.stack([torch.as_tensor(detector.detect(p).keypoints) for p in pictures])  # (V,33,3)
observations = bodyfit.Observations(keypoints[None], cameras, "mediapipe33", names=names)
result = bodyfit.fit_views(observations, bodyfit.body_model("anny"))
bodyfit.save_result(result, 0, args.out, pictures=pictures)
errors = [round(float(e), 1) for e in result.view_error_px[0]]
print("per view keypoint error (px):", dict(zip(names, errors)))
print("written to", args.out)
