"""Pseudo-ground-truth: fit every person of a COCO keypoint file, export npz shards and an index.

    python examples/make_pseudo_gt.py person_keypoints.json --images pictures/ --out pgt/
    python examples/make_pseudo_gt.py --out pgt/      # a tiny COCO file made from the Pose2Sim demo

The same as ``bodyfit pseudo-gt person_keypoints.json --out pgt/`` (which also shards over
``torchrun`` processes), from Python: people -> one Fitter -> a store of per-person records ->
``export/pseudo_gt_*.npz`` and ``index.jsonl``. Rerunning skips people already fitted.
"""
import argparse
import json
from pathlib import Path

import bodyfit
from bodyfit.files import atomic_write_text
from bodyfit.pseudo_gt import coco_people, run_pseudo_gt

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("coco", nargs="?", help="a COCO-format person keypoint .json (default: demo)")
parser.add_argument("--images", help="the pictures' folder (for sizes the file does not give)")
parser.add_argument("--out", default="example_outputs/pseudo_gt")
args = parser.parse_args()

if args.coco is None:  # four demo frames, MediaPipe keypoints renamed to COCO-17 by name
    from bodyfit.body_models import keypoint_names
    from bodyfit.data.pose2sim import DEMO_CALIBRATION_SIZE, demo_keypoints

    coco, mp = keypoint_names("coco17"), keypoint_names("mediapipe33")
    W, H = DEMO_CALIBRATION_SIZE
    detections = demo_keypoints([0, 30], ["cam01", "cam02"]).reshape(4, 33, 3)
    images, annotations = [], []
    for i, kp in enumerate(detections):
        kp = kp[[mp.index(n) for n in coco]]
        seen = kp[:, 2] > 0.5
        xy = kp[:, :2] + 0.5  # COCO puts pixel centres at +0.5
        (x0, y0), (x1, y1) = xy[seen].min(0), xy[seen].max(0)
        images.append({"id": i, "file_name": f"demo_{i}.jpg", "width": W, "height": H})
        labelled = [float(v) for x, y, s in zip(*xy.T, seen) for v in (x * s, y * s, 2 * s)]  # x, y, v
        box = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        annotations.append({"id": i, "image_id": i, "bbox": box, "keypoints": labelled})
    args.coco = Path(args.out) / "person_keypoints.json"
    args.coco.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.coco, json.dumps({"images": images, "annotations": annotations}))

people = coco_people(args.coco, args.images)
fitter = bodyfit.Fitter(bodyfit.body_model("anny"))  # configs/fit.yaml; overrides=[...] to change it
summary = run_pseudo_gt(people, Path(args.out) / "run", fitter, "coco17", batch_size=64, progress=False)
print({k: summary[k] for k in ("people", "fitted", "done_before", "valid", "plausible", "flagged")})
print("shards:", summary["shards"], "index:", summary["index"])
