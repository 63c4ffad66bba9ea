"""Fit a body to every picture of a folder.

    python examples/fit_folder.py PHOTOS_DIR --out results/
    python examples/fit_folder.py --out results/          # two frames of the Pose2Sim demo

The detector's top person of each picture gets ``results/<stem>/`` with fit.npz, fit.json,
mesh.ply and overlay.png, written whole or not at all (``bodyfit.save_result``). The command
``bodyfit fit PHOTOS_DIR/*.jpg --out results/`` fits every person instead (``results/<stem>/
person_<k>/`` and people.json), with reruns that skip finished pictures.
"""
import argparse
from pathlib import Path

import bodyfit
from bodyfit.data.images import write_image
from bodyfit.detectors import NoPersonError

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("folder", nargs="?", help="a folder of .jpg/.png pictures (default: demo frames)")
parser.add_argument("--out", default="example_outputs/fit_folder")
args = parser.parse_args()

folder = Path(args.folder) if args.folder else None
if folder is None:  # no folder given: make one from the Pose2Sim demo (fetched once, offline after)
    from bodyfit.data.pose2sim import demo_frames

    folder = Path(args.out) / "pictures"
    for name, image in demo_frames(frame_indices=(0, 50), cameras=("cam01",)):
        write_image(folder / f"{name}.jpg", image)

model = bodyfit.body_model("anny")
with bodyfit.MediaPipePose() as detector:
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}):
        image = bodyfit.read_image(path)
        try:
            keypoints = detector.detect(image).keypoints  # (33, 3) px + confidence, mediapipe33
        except NoPersonError:
            print(f"{path.name}: nobody found, skipped")
            continue
        result = bodyfit.fit(keypoints, model, "mediapipe33", image_size=image.shape[:2])
        target = Path(args.out) / path.stem
        bodyfit.save_result(result, 0, target, pictures=[image], extra={"source": str(path)})
        print(f"{path.name}: {float(result.reprojection_error_px[0]):.1f} px -> {target}")
