"""Export a fitted body to glTF (.glb) for Blender, three.js or any 3D viewer.

    python examples/export_gltf.py results/photo/fit.npz --out photo.glb
    python examples/export_gltf.py --out body.glb        # fits a Pose2Sim demo frame first

A fit.npz (``bodyfit fit``, ``fit-views``...) holds the fitted ``vertices`` and ``faces`` in metres,
in the OpenCV camera frame (y down, z forward) or a calibration's world frame. The results'
own ``mesh.glb`` keeps that frame; glTF viewers expect y up, so here the mesh is turned 180
degrees about x (a body seen by a camera then stands upright; Blender's importer makes it z up).
"""
import argparse
from pathlib import Path

import numpy as np
import trimesh

from bodyfit.files import atomic_write_bytes

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("fit", nargs="?", help="a fit.npz written by bodyfit (default: fit a demo frame)")
parser.add_argument("--out", default="example_outputs/body.glb")
args = parser.parse_args()

if args.fit:
    fit = np.load(args.fit)
    vertices, faces = fit["vertices"], fit["faces"]
else:
    import bodyfit
    from bodyfit.data.pose2sim import demo_cameras, demo_keypoints

    keypoints = demo_keypoints([0], ["cam01"])[0, 0]  # MediaPipe-33, cached after the first run
    result = bodyfit.fit(keypoints, bodyfit.body_model("anny"), "mediapipe33", K=demo_cameras(["cam01"]).K)
    vertices, faces = result.vertices[0].numpy(), result.faces.numpy()

vertices = vertices * np.array([1.0, -1.0, -1.0])  # OpenCV (y down, z forward) -> glTF (y up)
mesh = trimesh.Trimesh(vertices, faces, process=False)
mesh.visual.face_colors = [150, 190, 235, 255]
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
atomic_write_bytes(args.out, mesh.export(file_type="glb"))  # written whole or not at all
print(f"{len(vertices)} vertices, {len(faces)} triangles -> {args.out}")
