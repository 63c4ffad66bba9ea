# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Several people, and pseudo-ground-truth for a dataset
#
# Datasets of real photos come with 2D keypoints, rarely with 3D bodies. Fitting a body to every
# annotated person gives *pseudo-ground-truth* 3D labels, the way SPIN, EFT and CameraHMR made
# theirs. `bodyfit pseudo-gt` does it at scale: every person of a COCO keypoint file (or every
# person the detector finds in a folder of pictures) is fitted in batches through the one
# `Fitter`, each fit committed to a store as soon as it is done (a killed run resumes; `torchrun`
# shards it over processes), and the result is exported as `npz` shards plus an `index.jsonl`
# that says, for every person, how good the fit is and why it was flagged.
#
# Here: a small COCO-format file made from the Pose2Sim demo (two people per picture: two
# camera views side by side), the command, what comes out, and the same pictures without
# annotations, where the detector finds the people. About a minute on a CPU.

# %%
import json
import subprocess
import sys
from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import numpy as np
import torch

import bodyfit
from bodyfit.body_models import keypoint_names
from bodyfit.data.images import write_image
from bodyfit.data.pose2sim import demo_keypoints, demo_views
from bodyfit.files import atomic_write_text
from bodyfit.renderers.views import overlay_picture

root = Path("notebook_outputs") / "pseudo_gt"
pictures_dir = root / "pictures"

# %% [markdown]
# ## A small dataset in COCO format
#
# COCO's person-keypoint files list `images` (id, file name, size) and `annotations` (one per
# person: 17 keypoints as x, y, v with v > 0 where labelled, and a box x, y, w, h). We make one
# from the demo: each picture puts two views of the same moment side by side (so two people),
# at half resolution; the keypoints are MediaPipe's detections (`demo_keypoints`, cached),
# renamed from `mediapipe33` to COCO's 17 by name. Two annotations are broken on purpose: one
# with only three labelled keypoints, one whose box lies outside its picture.

# %%
coco_names = keypoint_names("coco17")
mp_names = keypoint_names("mediapipe33")
to_coco = [mp_names.index(n) for n in coco_names]
pairs = [("cam01", "cam03"), ("cam02", "cam04")]
frames = [0, 40, 80]
cams = sorted({c for pair in pairs for c in pair})
views = demo_views(frames, cams)
detections = demo_keypoints(frames, cams)  # (frames, views, 33, 3), the pictures' pixels
H, W = views.image_size
s = 0.5  # half resolution

images, annotations = [], []
for f, frame in enumerate(frames):
    for left, right in pairs:
        picture = np.concatenate([views.images[f][cams.index(left)], views.images[f][cams.index(right)]], 1)
        picture = cv2.resize(picture, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        name = f"frame{frame:03d}_{left}_{right}.jpg"
        write_image(pictures_dir / name, picture)  # bodyfit's writer: the file appears whole
        image_id = len(images)
        images.append({"id": image_id, "file_name": name,
                       "height": picture.shape[0], "width": picture.shape[1]})
        for side, cam in enumerate((left, right)):
            kp = detections[f, cams.index(cam)][to_coco].astype(np.float64)
            kp[:, 0] += side * W
            kp[:, :2] = (kp[:, :2] + 0.5) * s  # bodyfit pixels (centres at 0) -> COCO's (at 0.5), halved
            seen = kp[:, 2] > 0.5
            x0, y0 = kp[seen, :2].min(0)
            x1, y1 = kp[seen, :2].max(0)
            coco_kp = np.concatenate([kp[:, :2] * seen[:, None], 2.0 * seen[:, None]], 1)
            annotations.append({"id": len(annotations), "image_id": image_id, "category_id": 1,
                                "keypoints": coco_kp.round(2).flatten().tolist(),
                                "num_keypoints": int(seen.sum()),
                                "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]})
annotations[3]["keypoints"] = [v if i < 9 else 0.0 for i, v in enumerate(annotations[3]["keypoints"])]
annotations[6]["bbox"] = [5000.0, 5000.0, 20.0, 40.0]
coco_file = root / "person_keypoints.json"
categories = [{"id": 1, "name": "person", "keypoints": coco_names}]
coco = {"images": images, "annotations": annotations, "categories": categories}
atomic_write_text(coco_file, json.dumps(coco))
print(f"{len(images)} pictures, {len(annotations)} people -> {coco_file}")

first = bodyfit.read_image(pictures_dir / images[0]["file_name"])
plt.figure(figsize=(8, 4.5))
plt.imshow(first)
for ann in annotations[:2]:
    kp = np.array(ann["keypoints"]).reshape(17, 3)
    plt.scatter(kp[kp[:, 2] > 0, 0], kp[kp[:, 2] > 0, 1], s=8, c="lime")
    x, y, w, h = ann["bbox"]
    plt.gca().add_patch(plt.Rectangle((x, y), w, h, fill=False, color="yellow"))
plt.title(images[0]["file_name"] + ": two people, their COCO keypoints and boxes")
plt.axis("off")
plt.show()

# %% [markdown]
# ## The command
#
# `bodyfit pseudo-gt person_keypoints.json --out DIR` (here run as `python -m bodyfit.cli`, the
# same program). Overrides work as for `bodyfit fit`; there is no shipped regressor for COCO-17
# keypoints, so every fit starts from the mean body on the torso.

# %%
out = root / "run"
command = [sys.executable, "-m", "bodyfit.cli", "pseudo-gt", str(coco_file), "--out", str(out),
           "--images", str(pictures_dir), "--quiet"]
done = subprocess.run(command, capture_output=True, text=True)
print(" ".join(["bodyfit"] + command[3:]))
print(done.stdout.strip() or done.stderr[-2000:])
assert done.returncode == 0, done.stderr[-2000:]
print(sorted(p.name for p in out.iterdir()))

# %% [markdown]
# Run it again: every person is already in the store, so nothing is fitted twice (`--redo`
# forces it). A run killed half way resumes the same way.

# %%
again = subprocess.run(command, capture_output=True, text=True)
print(again.stdout.strip())

# %% [markdown]
# ## What comes out
#
# `export/pseudo_gt_0000.npz` holds one row per person in the layout SPIN and CameraHMR load
# (`imgname`, `center`, `scale`, `global_orient`, `body_pose`, `phenotypes` or `betas`,
# `transl` in the camera frame, `cam_int`, `keypoints`, `valid`, `plausible`, ...), and
# `index.jsonl` one line per person with its errors and, when flagged, the reason.

# %%
shard = np.load(out / "export" / "pseudo_gt_0000.npz")
print({k: shard[k].shape for k in ["imgname", "global_orient", "body_pose", "phenotypes", "transl"]})
index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
for row in index:
    if not row["plausible"]:
        print(f"{row['picture']} person {row['person']}: valid={row['valid']}, {row['reason']}")

errors = [100 * row["error_over_box"] if row["valid"] else 0.0 for row in index]
colours = ["tab:green" if row["plausible"] else "tab:red" for row in index]
plt.figure(figsize=(9, 3))
plt.bar(range(len(index)), errors, color=colours)
for i, row in enumerate(index):
    if not row["valid"]:
        plt.text(i, 0.05, "not fitted", rotation=90, ha="center", va="bottom", color="tab:red", fontsize=8)
plt.xticks(range(len(index)), [f"{row['picture'][5:8]}:{row['person']}" for row in index],
           rotation=90, fontsize=7)
plt.ylabel("keypoint error (% of box)")
plt.title("each person's fit (frame:person; green: plausible)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The fits, back on the pictures
#
# Each row of the shard is a body in its picture's camera frame (`cam_int` is the intrinsics the
# fit assumed: a 55-degree field of view, since COCO files say nothing about the camera). Both
# people of a picture are drawn into it together; the right half turns them 90 degrees.

# %%
model = bodyfit.body_model("anny")
fields = ["global_orient", "body_pose", "phenotypes", "transl"]  # BodyParams' order; phenotypes = shape
params = bodyfit.BodyParams(*(torch.as_tensor(shard[k]) for k in fields))
with torch.no_grad():
    bodies = model(params)
names = [str(n) for n in shard["imgname"]]
shown = [images[0]["file_name"], images[3]["file_name"]]
fig, axes = plt.subplots(len(shown), 1, figsize=(12, 6 * len(shown)))
for ax, name in zip(axes, shown):
    rows = [i for i, n in enumerate(names) if n == name and shard["valid"][i]]
    faces = np.concatenate([bodies.faces.numpy() + k * bodies.vertices.shape[1] for k in range(len(rows))])
    vertices = bodies.vertices[rows].reshape(-1, 3).numpy()
    keypoints = shard["keypoints"][rows].reshape(-1, 3)
    picture = bodyfit.read_image(pictures_dir / name)
    ax.imshow(overlay_picture(picture, vertices, faces, shard["cam_int"][rows[0]], keypoints))
    ax.set_title(f"{name}: {len(rows)} fitted people")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Without annotations: the detector finds the people
#
# Given pictures (or folders of them) instead of a COCO file, `bodyfit pseudo-gt` first runs the
# multi-person detector (MediaPipe's pose detector on the whole picture and on tiles, then one
# landmark pass per person) on each picture, stores what it found under `people/`, and fits
# those people. Here, on the same six pictures: how many people it found against the two
# annotated in each.

# %%
found_run = root / "detected"
command = [sys.executable, "-m", "bodyfit.cli", "pseudo-gt", str(pictures_dir), "--out", str(found_run),
           "--quiet"]
done = subprocess.run(command, capture_output=True, text=True)
assert done.returncode == 0, done.stderr[-2000:]
print(done.stdout.strip())
found = [json.loads(line) for line in (found_run / "index.jsonl").read_text().splitlines()]
per_picture = [sum(Path(row["picture"]).name == im["file_name"] for row in found) for im in images]
annotated = [sum(a["image_id"] == im["id"] for a in annotations) for im in images]
x = np.arange(len(images))
plt.figure(figsize=(9, 3))
plt.bar(x - 0.2, annotated, 0.4, label="annotated (COCO file)")
plt.bar(x + 0.2, per_picture, 0.4, label="found by the detector")
plt.xticks(x, [im["file_name"][:-4] for im in images], rotation=20, fontsize=7)
plt.ylabel("people")
plt.legend(fontsize=8, loc="lower left")
plt.tight_layout()
plt.show()

# %% [markdown]
# Where the bars differ, the detector missed someone an annotator would not: datasets' own
# annotations, where there are some, make better pseudo-ground-truth than detections.
#
# At scale: `torchrun --nproc_per_node N -m bodyfit.cli pseudo-gt ...` gives each process its
# share of the people; a rerun with another N still fits each person exactly once, and the
# export does not depend on N.
