"""Fit SMPL (or SMPL-H / SMPL-X) with your own model files instead of Anny.

    python examples/use_smpl_files.py --model-path ~/models/smpl/SMPL_NEUTRAL.pkl --out results/
    BODYFIT_SMPL_DIR=~/models python examples/use_smpl_files.py     # <dir>/smpl/SMPL_NEUTRAL.pkl

SMPL model files are licensed by the Max Planck Institute: register and download them from
https://smpl.is.tue.mpg.de (SMPL-X: https://smpl-x.is.tue.mpg.de); bodyfit never ships or
downloads them. Official .pkl files load without chumpy. Needs ``pip install "bodyfit[smpl]"``.
Fits a frame of the Pose2Sim demo and writes fit.npz (with ``betas``), mesh.ply and overlay.png.
"""
import argparse
import os
import sys

import bodyfit
from bodyfit.data.pose2sim import demo_cameras, demo_keypoints, demo_views

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="smpl", choices=["smpl", "smplh", "smplx"])
parser.add_argument("--model-path", default=None,
                    help="the model file, or a folder (default: $BODYFIT_SMPL_DIR)")
parser.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"])
parser.add_argument("--out", default="example_outputs/smpl_fit")
args = parser.parse_args()

if args.model_path is None and not os.environ.get("BODYFIT_SMPL_DIR"):
    sys.exit(f"No {args.model.upper()} model files: pass --model-path or set BODYFIT_SMPL_DIR "
             f"(see this script's docstring for where to get them).")
try:
    model = bodyfit.body_model(args.model, model_path=args.model_path, gender=args.gender)
except (FileNotFoundError, ImportError, ValueError) as e:
    sys.exit(f"Cannot load {args.model}: {e}")

keypoints = demo_keypoints([0], ["cam01"])[0, 0]  # MediaPipe-33 detections, cached
result = bodyfit.fit(keypoints, model, "mediapipe33", K=demo_cameras(["cam01"]).K)  # mean-body start
bodyfit.save_result(result, 0, args.out, pictures=[demo_views([0], ["cam01"]).images[0][0]])
print(f"{args.model}: betas {result.params.shape[0, :3].numpy().round(2)}..., "
      f"{float(result.reprojection_error_px[0]):.1f} px -> {args.out}")
