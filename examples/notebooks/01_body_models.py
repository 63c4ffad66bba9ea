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
# # 1. Body models: Anny and SMPL
#
# A body model turns a few numbers (shape, pose, where the body stands) into a mesh and a set of
# landmarks. Everything bodyfit fits goes through one interface:
#
# ```
# BodyParams (global_orient, body_pose, shape, transl) -> model(params) -> BodyOutput (vertices, joints)
# ```
#
# This notebook builds **Anny**, bodyfit's default model (Apache-2.0 code, CC0 data, no licensed
# file), and looks at its shape parameters (phenotypes), its pose, its landmarks in each keypoint
# convention and its low-poly meshes; then **SMPL**, if you have the model files.
#
# Units are metres, pixels and radians; cameras follow OpenCV (x right, y down, z forward).
# Runs offline on a CPU in well under a minute (the first Anny build of a new machine adds about
# a minute to cache its assets).

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import bodyfit
from bodyfit.cameras import default_intrinsics
from bodyfit.renderers.views import shade

model = bodyfit.body_model("anny")  # the default mesh: 13718 vertices
print(model.name, "|", model.shape_dim, model.shape_name, model.phenotype_labels)
print(len(model.pose_joint_names), "posable bones,", len(model.free_pose_joints), "of them fitted by default")
print(len(model.joint_names), "landmarks:", ", ".join(model.joint_names[:8]), "...")


# %% [markdown]
# ## Looking at a body
#
# `model.default_params(B, depth)` puts the mean body upright, facing a camera at the origin,
# `depth` metres away. A `Camera` at the origin with intrinsics from a field of view
# (`default_intrinsics`, 55 degrees on the longer side unless you say otherwise) sees it; the
# renderer (`bodyfit.renderers.views.shade`) shades the mesh as the camera sees it.

# %%
H, W = 384, 256
K = default_intrinsics((H, W), 1)
camera = bodyfit.Camera.identity(K, (H, W))


def render(params, model=model):
    """Shaded pictures (B,H,W,3) of the bodies seen by `camera`, white background."""
    with torch.no_grad():
        out = model(params)
        rgb, alpha = shade(out.vertices, out.faces, camera.expand(params.batch_size))
    return (rgb + (1 - alpha[..., None])).clamp(0, 1).numpy()


params = model.default_params(1, depth=2.2)
plt.figure(figsize=(3, 4.5))
plt.imshow(render(params)[0])
plt.title("Anny, mean phenotypes, rest pose")
plt.axis("off")
plt.show()

# %% [markdown]
# ## Shape: six phenotypes in [0, 1]
#
# Anny's shape is six phenotypes (gender, age, muscle, weight, height, proportions), each in
# [0, 1] with 0.5 the average. Here each row moves one of them from 0 to 1, the others at 0.5.
# (SMPL's shape is `betas` instead: PCA coefficients, mean 0.)

# %%
values = [0.0, 0.5, 1.0]
labels = model.phenotype_labels
p = model.default_params(len(labels) * len(values), depth=2.8)
for i in range(len(labels)):
    p.shape[i * len(values):(i + 1) * len(values), i] = torch.tensor(values)
pics = render(p)
fig, axes = plt.subplots(len(values), len(labels), figsize=(12, 7.5))
for k, pic in enumerate(pics):
    i, j = divmod(k, len(values))
    ax = axes[j, i]
    ax.imshow(pic[:, 30:-30])
    ax.set_xticks([])
    ax.set_yticks([])
    if j == 0:
        ax.set_title(labels[i])
    if i == 0:
        ax.set_ylabel(f"{values[j]:g}")
fig.suptitle("each phenotype from 0 (top) to 1 (bottom), the others at 0.5")
plt.tight_layout()
plt.show()

# %% [markdown]
# Some changes are subtle at this size. Overlaying the outlines at 0 and at 1 shows them: blue
# where only the body at 0 is, red where only the body at 1 is.

# %%
with torch.no_grad():
    out = model(p)
    _, coverage = shade(out.vertices, out.faces, camera.expand(p.batch_size))
coverage = coverage.numpy() > 0.5
fig, axes = plt.subplots(1, len(labels), figsize=(13, 4))
for i, ax in enumerate(axes):
    at0, at1 = coverage[i * len(values)], coverage[i * len(values) + len(values) - 1]
    picture = np.ones(at0.shape + (3,))
    picture[at0 & at1] = 0.7
    picture[at0 & ~at1] = (0.2, 0.4, 1.0)
    picture[at1 & ~at0] = (1.0, 0.3, 0.2)
    ax.imshow(picture[20:-20, 30:-30])
    ax.set_title(labels[i])
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Pose: axis-angle per bone
#
# `body_pose` is (B, 103, 3): one axis-angle rotation (radians) per bone, relative to its parent,
# in the order of `model.pose_joint_names`. Fitting moves only the 17 major bones
# (`model.free_pose_joints`); fingers, toes and twist bones stay at rest. The axes are Anny's
# world axes at rest: x bends hips, knees and spine forward or back, y swings a limb towards or
# away from the body, z turns about the vertical.
#
# `bodyfit.data.synthetic.sample_params` draws random poses inside the anatomical joint limits
# (the same priors the fits use) with random phenotypes and headings: this is how synthetic
# training pairs are made.

# %%
names = model.pose_joint_names
print("free bones:", [names[i] for i in model.free_pose_joints])

posed = model.default_params(1, depth=2.2)
posed.body_pose[0, names.index("upperarm01.L")] = torch.tensor([0.0, -1.0, 0.0])  # left arm raised sideways
posed.body_pose[0, names.index("upperleg01.R")] = torch.tensor([-0.9, 0.0, 0.0])  # right hip flexed
posed.body_pose[0, names.index("lowerleg01.R")] = torch.tensor([1.2, 0.0, 0.0])   # right knee bent

from bodyfit.data.synthetic import sample_params

random = sample_params(model, 3, torch.Generator().manual_seed(0))
random.transl[:] = torch.tensor([0.0, 0.0, 2.6])  # 2.6 m in front of the camera
pics = np.concatenate([render(posed), render(random)])
fig, axes = plt.subplots(1, 4, figsize=(10, 4))
for ax, pic, title in zip(axes, pics, ["set by hand", "random 1", "random 2", "random 3"]):
    ax.imshow(pic)
    ax.set_title(title)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Landmarks and keypoint conventions
#
# `model(params).joints` holds the model's landmarks (COCO-17, six foot points, neck, mid-hip and
# hand knuckles for Anny). A detector speaks one *keypoint convention* (`coco17`, `coco17_feet`,
# `mediapipe33`, `openpose25`); `model.keypoint_map(convention)` says which landmark each of its
# keypoints is, and how much it is trusted (weight 0: the model has no such point, e.g.
# MediaPipe's mouth corners on Anny). Projecting them with the camera gives the 2D keypoints a
# fit compares with the detections.

# %%
from bodyfit.body_models import CONVENTIONS, keypoint_names

pic = render(posed)[0]
with torch.no_grad():
    joints = model(posed, vertices=False).joints
fig, axes = plt.subplots(1, len(CONVENTIONS), figsize=(13, 4.5))
for ax, conv in zip(axes, CONVENTIONS):
    index, weight = model.keypoint_map(conv)
    uv = camera.project(joints[:, index])[0].numpy()
    used = weight.numpy() > 0
    ax.imshow(pic)
    ax.scatter(*uv[used].T, s=12, c="crimson")
    ax.scatter(*uv[~used].T, s=12, c="none", edgecolors="grey")
    ax.set_title(f"{conv}: {used.sum()} of {len(keypoint_names(conv))} used")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Low-poly meshes
#
# Anny comes in low-poly topologies that share the same 104 bones, so the same parameters give
# the same skeleton and landmarks on a coarser surface. Fitting renders the coarse mesh for the
# dense energies (silhouette, texture, DensePose), and tests use the smallest one.
# `model.with_mesh(topology)` gives the same body on another mesh without building a second
# skeleton; `bodyfit.body_model("anny", topology=...)` builds one from scratch.

# %%
topologies = ["default", "notoes_collapse10pc", "notoes_collapse5pc", "notoes_collapse3pc"]
fig, axes = plt.subplots(1, len(topologies), figsize=(13, 5))
for ax, topo in zip(axes, topologies):
    mesh_model = model.with_mesh(topo)
    with torch.no_grad():
        out = mesh_model(posed)
    uv = camera.project(out.vertices)[0].numpy()
    ax.imshow(render(posed, mesh_model)[0])
    ax.triplot(uv[:, 0], uv[:, 1], out.faces.numpy(), lw=0.2, color="k")
    ax.set_title(f"{topo}\n{out.vertices.shape[1]} vertices, {out.faces.shape[0]} triangles")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## A 3D view you can turn
#
# The mesh in 3D with matplotlib (run this notebook as a script, `python 01_body_models.py`, or in
# Jupyter with `%matplotlib widget` to turn it with the mouse). The mesh is the 1229-vertex one to
# keep it light. Anny's own frame is Z up and the face looks along -Y.
#
# To look at it in Blender or any glTF viewer, write a `.glb` (through `bodyfit.files`, which
# writes a file whole or not at all); `examples/export_gltf.py` does it for a fitted body.

# %%
low = model.with_mesh("notoes_collapse10pc")
world = bodyfit.BodyParams(torch.zeros(1, 3), posed.body_pose, posed.shape, torch.zeros(1, 3))  # Anny's frame
with torch.no_grad():
    out = low(world)
v, f, j = out.vertices[0].numpy(), out.faces.numpy(), out.joints[0].numpy()
fig = plt.figure(figsize=(6, 6))
ax = fig.add_subplot(projection="3d")
ax.plot_trisurf(v[:, 0], v[:, 1], v[:, 2], triangles=f, color="lightsteelblue", edgecolor="none", alpha=0.6)
ax.scatter(j[:, 0], j[:, 1], j[:, 2], c="crimson", s=10)
ax.set_box_aspect(np.ptp(v, axis=0))
ax.locator_params(nbins=4)
ax.view_init(elev=15, azim=-60)
ax.set_xlabel("x (m)")
ax.set_ylabel("y (m)")
ax.set_zlabel("z (m)")
plt.show()

# %%
from pathlib import Path

import trimesh

from bodyfit.files import atomic_write_bytes

glb = Path("notebook_outputs") / "anny_posed.glb"
glb.parent.mkdir(exist_ok=True)
y_up = v[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])  # Anny (Z up, face -Y) -> glTF (Y up, face +Z)
atomic_write_bytes(glb, trimesh.Trimesh(y_up, f, process=False).export(file_type="glb"))
print("wrote", glb, glb.stat().st_size // 1024, "KiB")

# %% [markdown]
# ## SMPL, with your own files
#
# SMPL, SMPL-H and SMPL-X go through the `smplx` package with **your own** model files (licensed by
# the Max Planck Institute; bodyfit never ships or downloads them). Put them where
# `$BODYFIT_SMPL_DIR` points (`<dir>/smpl/SMPL_NEUTRAL.pkl`, ...) or pass `model_path=`. The same
# interface holds: `betas` (10) for shape, `body_pose` (23, 3), Y up in SMPL's own frame. Without
# the files this cell says so and moves on.

# %%
try:
    smpl = bodyfit.body_model("smpl")
except (FileNotFoundError, ImportError, ValueError) as e:
    print("SMPL skipped:", str(e)[:160], "...")
else:
    p = smpl.default_params(3, depth=2.2)
    p.shape[1, 0], p.shape[2, 0] = 2.0, -2.0  # the first beta, both ways
    pics = render(p, smpl)
    fig, axes = plt.subplots(1, 3, figsize=(7, 4))
    for ax, pic, title in zip(axes, pics, ["mean", "beta0 = +2", "beta0 = -2"]):
        ax.imshow(pic)
        ax.set_title(title)
        ax.axis("off")
    plt.show()
