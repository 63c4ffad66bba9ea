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
# # 3. Dense energies: silhouette, DensePose, texture consistency
#
# Keypoints are a dozen points; a picture has thousands of pixels on the person. Three energies
# use them, each through a differentiable rasterizer (`bodyfit.renderers`, nvdiffrast's four
# ops on a CPU):
#
# - **silhouette**: the body's antialiased outline against the person mask;
# - **DensePose** (Guler et al. 2018): each person pixel names a point of the body's surface
#   (part I, coordinates U, V); that point, projected, is pulled to its pixel;
# - **texture consistency** (TexturePose, Pavlakos et al. 2019): a point of the skin has one
#   colour, so every view that sees it must show the same colour there.
#
# First on synthetic bodies, where the truth is known and the vertex error (PVE) says what each
# energy buys; then on two real views of the Pose2Sim demo. Runs on a CPU in about a minute.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

import bodyfit
from bodyfit.data.synthetic import synthetic_views
from bodyfit.densepose import PART_NAMES, anny_chart
from bodyfit.metrics import pve

# The 1229-vertex mesh: the same bones and landmarks as the full Anny, fast to render.
model = bodyfit.body_model("anny", topology="notoes_collapse10pc")
scene = synthetic_views(model, batch_size=4, n_views=2, image_size=(256, 256), distance=3.0,
                        iuv=True, generator=torch.Generator().manual_seed(3))
obs = scene.observations  # keypoints, masks, pictures and IUV of 4 bodies in 2 calibrated views
print(obs.keypoints.shape, "keypoints;", len(obs.cameras), "views:", obs.names)

# %% [markdown]
# ## What the dense energies compare with
#
# `synthetic_views` renders random bodies (inside the joint limits) in two cameras 90 degrees
# apart: the keypoints (with detector-like noise), the person masks, pictures (a smooth colour
# pattern fixed to the skin, the same in both views) and the DensePose IUV maps of Anny's
# 24-part chart (`anny_chart`). On real pictures the mask comes from the detector and IUV from a
# DensePose network.

# %%
def around(mask, pad=12):
    """Row and column slices of the box around a (H,W) mask, `pad` pixels wider."""
    rows, cols = np.nonzero(np.asarray(mask) > 0.5)
    return (slice(max(0, rows.min() - pad), rows.max() + pad),
            slice(max(0, cols.min() - pad), cols.max() + pad))


fig, axes = plt.subplots(2, 5, figsize=(13, 7))
for v in range(2):
    iuv = obs.iuv[v][0]  # first body: (3,H,W) = part 0..24, U, V in [0,1]
    box = around(obs.masks[v][0])
    body = iuv[0].numpy() == 0
    panels = [(obs.images[v][0].numpy(), "picture", None), (obs.masks[v][0].numpy(), "mask", "gray"),
              (np.ma.masked_where(body, iuv[0].numpy()), "I: part", "tab20"),
              (np.ma.masked_where(body, iuv[1].numpy()), "U", "viridis"),
              (np.ma.masked_where(body, iuv[2].numpy()), "V", "viridis")]
    for ax, (image, title, cmap) in zip(axes[v], panels):
        ax.imshow(image[box], cmap=cmap)
        ax.set_title(f"{obs.names[v]}: {title}")
        ax.axis("off")
plt.tight_layout()
plt.show()
print("parts:", ", ".join(PART_NAMES[:6]), "...")

# %% [markdown]
# ## Each energy around the truth
#
# `Fitter.energies_at(observations, params)` evaluates every energy of a config at given
# parameters. Sliding the true bodies sideways shows what each one measures: all are zero (up
# to the keypoints' noise) at the truth and grow as the body leaves it.

# %%
fitter = bodyfit.Fitter(model, bodyfit.load_config(name="fit_views"))
names = ["reprojection", "silhouette", "densepose", "texture"]
shifts = np.linspace(-0.2, 0.2, 11)
curves = {n: [] for n in names}
for d in shifts:
    moved = scene.params.clone()
    moved.transl = moved.transl + torch.tensor([float(d), 0.0, 0.0])
    with torch.no_grad():
        values = fitter.energies_at(obs, moved, names=names)
    for n in names:
        curves[n].append(float(values[n].mean()))
fig, ax = plt.subplots(figsize=(7, 4))
for n in names:
    c = np.array(curves[n])
    ax.plot(100 * shifts, c / c.max(), marker="o", ms=3, label=n)
ax.set_xlabel("body moved sideways (cm)")
ax.set_ylabel("energy / its largest value")
ax.legend()
plt.show()

# %% [markdown]
# Keypoints, silhouette and DensePose rise steadily on both sides. Texture consistency has a
# narrow basin: once the body is off by about ten centimetres, the colours it compares belong to
# unrelated bits of skin and background, and it stops pointing back to the truth. That is why it
# runs last, from an already good fit.
#
# ## What each energy buys
#
# `bodyfit.fit_views` turns on an energy when the observations hold what it needs: masks for the
# silhouette, IUV for DensePose, pictures for texture consistency (with two views or more). Fit
# the same four bodies with keypoints only, then with each dense energy, then all of them
# (`configs/fit_views.yaml`: stages `camera`, `body`, then `dense`; fewer steps here to keep
# the notebook fast), and measure the mean vertex error against the truth (PVE, mm, after
# aligning the joints' centres).

# %%
def seen(masks=False, images=False, iuv=False):
    return bodyfit.Observations(obs.keypoints, obs.cameras, obs.convention, names=obs.names,
                                masks=obs.masks if masks else None, images=obs.images if images else None,
                                iuv=obs.iuv if iuv else None)


fast = ["stages.camera.steps=20", "stages.body.steps=60", "stages.dense.steps=40"]
variants = {"keypoints only": seen(), "+ silhouette": seen(masks=True), "+ DensePose": seen(iuv=True),
            "+ texture": seen(images=True), "all three": seen(True, True, True)}
errors, results = {}, {}
for label, observations in variants.items():
    results[label] = r = bodyfit.fit_views(observations, model, overrides=fast)
    errors[label] = pve(r.vertices, scene.vertices, r.joints, scene.joints).numpy()
    print(f"{label:15s} PVE {errors[label].mean():5.1f} mm  "
          f"(energies left out: {', '.join(r.skipped_energies)})")

fig, ax = plt.subplots(figsize=(8, 3.5))
labels = list(errors)
ax.barh(labels, [errors[k].mean() for k in labels], color="lightsteelblue")
for i, k in enumerate(labels):
    ax.scatter(errors[k], [i] * len(errors[k]), color="k", s=10, zorder=3)
ax.invert_yaxis()
ax.set_xlabel("vertex error PVE (mm): bars = mean, dots = each body")
plt.tight_layout()
plt.show()

# %% [markdown]
# With two views, the keypoints already fix most of the body; the silhouette and DensePose
# correct the limbs' thickness and twist that keypoints do not see. Texture consistency alone
# helps least here: the synthetic skin pattern is smooth, so a small slide of the body changes
# its colours little. The outlines of one body, keypoints only against all three energies:

# %%
from bodyfit.renderers.views import silhouette

b = int(np.argmax(errors["keypoints only"] - errors["all three"]))
cam = obs.cameras[0]
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, label in zip(axes, ["keypoints only", "all three"]):
    with torch.no_grad():
        cover = silhouette(results[label].vertices[b:b + 1], model.faces, cam)[0].numpy()
    box = around(obs.masks[0][b], pad=20)
    ax.imshow(obs.images[0][b].numpy()[box])
    ax.contour(obs.masks[0][b].numpy()[box], levels=[0.5], colors="lime", linewidths=1)
    ax.contour(cover[box], levels=[0.5], colors="red", linewidths=1)
    ax.set_title(f"{label}: PVE {errors[label][b]:.0f} mm\ngreen: true outline, red: the fit's")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Texture consistency on two real views
#
# Two calibrated views of the Pose2Sim demo (frame 0 of `cam01` and `cam02`; BSD-3-Clause,
# Pagnon et al. 2022): the pictures, MediaPipe's keypoints and person masks (detected once and
# cached by `demo_keypoints`), the calibration's cameras. `bodyfit fit-views` does the same
# from picture files and a calibration file. As the pipeline does, the pictures are handed to
# the dense energies at 640 pixels at most (`Camera.at_most`).

# %%
import cv2

from bodyfit.data.pose2sim import demo_keypoints, demo_views

views = ("cam01", "cam02")
frames = demo_views([0], views, masks=True)
keypoints = torch.as_tensor(demo_keypoints([0], views))  # (1 frame, 2 views, 33, 3), calibration pixels
cameras, pictures, masks = [], [], []
for v in range(len(views)):
    camera, s = frames.cameras.index(slice(v, v + 1)).at_most(640)
    h, w = camera.image_size
    cameras.append(camera)
    picture = cv2.resize(frames.images[0][v], (w, h), interpolation=cv2.INTER_AREA)
    pictures.append(torch.as_tensor(picture)[None])
    masks.append(torch.as_tensor(cv2.resize(frames.masks[0][v], (w, h), interpolation=cv2.INTER_AREA))[None])
    keypoints[:, v, :, :2] = (keypoints[:, v, :, :2] + 0.5) * s - 0.5  # to the smaller pictures' pixels
real = bodyfit.Observations(keypoints, cameras, "mediapipe33", masks=masks, images=pictures,
                            names=list(views))

full = bodyfit.body_model("anny")
plain = bodyfit.fit_views(real, full, overrides=["stages.dense.weights.silhouette=0",
                                                 "stages.dense.weights.texture=0"])
dense = bodyfit.fit_views(real, full)
check = bodyfit.Fitter(full, bodyfit.load_config(name="fit_views"))
for label, r in [("keypoints only", plain), ("+ silhouette + texture", dense)]:
    e = check.energies_at(real, r.params, names=["silhouette", "texture"])
    print(f"{label:24s} keypoint error {float(r.reprojection_error_px[0]):.1f} px, "
          f"silhouette {float(e['silhouette'][0]):.3f}, texture {float(e['texture'][0]):.3f}")

# %% [markdown]
# What each view sees of the skin: every vertex of the fitted body takes the colour of the
# picture where it projects, if the view sees it (its depth matches the rendered depth there).
# Rendering both colourings from `cam01`, and their difference where both views see the
# vertex, shows what texture consistency compares: where the body sits right, both views paint
# it alike.

# %%
from bodyfit.renderers.views import render_maps, to_camera


def vertex_colours(vertices, camera, picture):
    """(N,3) colour of the picture at each vertex, and (N,) True where the camera sees it."""
    H, W = camera.image_size
    depth = render_maps(vertices[None], full.faces, camera)["depth"][0]
    x, y = camera.project(vertices[None])[0].round().long().unbind(-1)
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    x, y = x.clamp(0, W - 1), y.clamp(0, H - 1)
    z = to_camera(vertices[None], camera)[0, :, 2]
    visible = inside & ((z - depth[y, x]).abs() < 0.03)
    return picture[y, x].float() / 255, visible


with torch.no_grad():
    vertices = dense.vertices[0]
    (ca, va), (cb, vb) = (vertex_colours(vertices, cameras[v], pictures[v][0]) for v in range(2))
    both = (va & vb).float()[:, None]
    maps = render_maps(vertices[None], full.faces, cameras[0],
                       vertex_attributes={"a": ca * va[:, None], "b": cb * vb[:, None], "both": both,
                                          "diff": (ca - cb).abs().mean(-1, keepdim=True) * both})
box = around(maps["mask"][0].numpy(), pad=20)
fig, axes = plt.subplots(1, 4, figsize=(13, 6))
axes[0].imshow(pictures[0][0].numpy()[box])
axes[0].set_title("cam01")
axes[1].imshow(maps["a"][0].clamp(0, 1).numpy()[box])
axes[1].set_title("skin as cam01 sees it")
axes[2].imshow(maps["b"][0].clamp(0, 1).numpy()[box])
axes[2].set_title("skin as cam02 sees it")
diff = np.ma.masked_where(maps["both"][0, ..., 0].numpy()[box] < 0.5, maps["diff"][0, ..., 0].numpy()[box])
im = axes[3].imshow(diff, cmap="magma", vmin=0, vmax=0.5)
axes[3].set_title("difference where both see it")
plt.colorbar(im, ax=axes[3], fraction=0.05)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# The two colourings agree over the torso and legs; they differ at the outline, where a small
# error in the body's placement makes one view paint background onto the skin, and over the
# arms where the views see different sides. Those differences are what the texture energy pulls
# down (the energy counts only pixels well inside the outline in both views).
#
# Keypoints-only fits are faster (`bodyfit fit-views --keypoints-only`); the dense energies cost
# a rasterization per view and step, which is why they render the 1229-vertex mesh of the same
# body (`render_topology`) and run last, from an already good fit (the `dense` stage).
