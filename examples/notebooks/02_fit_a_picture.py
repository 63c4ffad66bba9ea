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
# # 2. Fitting a real picture, step by step
#
# What `bodyfit fit photo.jpg` does, one piece at a time, on a real picture: a frame of the
# Pose2Sim demo (a person on a treadmill filmed by four calibrated cameras; BSD-3-Clause,
# Pagnon et al. 2022), which bodyfit reads offline from the `pose2sim` wheel (fetched once into
# `~/.cache/bodyfit` by `pip download`).
#
# 1. detect 2D keypoints;
# 2. guess the camera and place a first body on the torso;
# 3. run the stages (SMPLify, Bogo et al. 2016), watching each energy;
# 4. see what each prior does;
# 5. the flip trial;
# 6. fits that fail, and why.
#
# Runs on a CPU in about a minute.

# %%
import matplotlib.pyplot as plt
import numpy as np
import roma
import torch

import bodyfit
from bodyfit.data.pose2sim import ATTRIBUTION, demo_frames
from bodyfit.renderers.views import overlay_picture

model = bodyfit.body_model("anny")
(name, picture), = demo_frames(frame_indices=(0,), cameras=("cam01",))
H, W = picture.shape[:2]
print(name, f"{W}x{H} px;", ATTRIBUTION[:60], "...")

# %% [markdown]
# ## 1. Detection
#
# MediaPipe Pose (Apache-2.0, runs offline) finds one person: 33 keypoints (x, y in pixels and a
# confidence in [0, 1]), a box and a person mask. bodyfit calls this keypoint convention
# `mediapipe33`.

# %%
with bodyfit.MediaPipePose() as detector:
    detection = detector.detect(picture)
keypoints = torch.as_tensor(detection.keypoints)  # (33, 3)
x0, y0, x1, y1 = detection.box
pad = 0.15 * (y1 - y0)
crop = (slice(int(max(0, y0 - pad)), int(min(H, y1 + pad))),  # rows and columns around the person
        slice(int(max(0, x0 - 2 * pad)), int(min(W, x1 + 2 * pad))))

fig, axes = plt.subplots(1, 3, figsize=(12, 6))
axes[0].imshow(picture)
axes[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow"))
axes[0].set_title("the picture and the person's box")
axes[1].imshow(picture[crop])
kx, ky, conf = keypoints.numpy().T
sc = axes[1].scatter(kx - crop[1].start, ky - crop[0].start, c=conf, cmap="viridis", vmin=0, vmax=1, s=15)
plt.colorbar(sc, ax=axes[1], fraction=0.04, label="confidence")
axes[1].set_title("33 keypoints")
axes[2].imshow(detection.mask[crop], cmap="gray")
axes[2].set_title("person mask")
for ax in axes:
    ax.axis("off")
plt.show()


# %% [markdown]
# ## 2. The camera, and where the fit starts
#
# A photo rarely says its focal length, so bodyfit assumes a 55-degree field of view across the
# longer side (`fov_deg`; give `K` when you know it). The camera sits at the origin; the body
# moves in front of it.
#
# The start: either the **mean body**, turned by the shoulders' order and placed on the torso by
# similar triangles (depth = focal length x torso size in 3D / torso size in pixels, SMPLify's
# camera initialization), or the **learned start** (`init=regressor`, the default): a small
# network that reads the 2D keypoints and proposes a posed body (SPIN/HMR-style; shipped
# weights for Anny and `mediapipe33`).

# %%
obs = bodyfit.Observations.from_pictures(keypoints, image_size=(H, W))
K = obs.cameras[0].K[0]
print(f"K: f = {float(K[0, 0]):.0f} px, principal point ({float(K[0, 2]):.0f}, {float(K[1, 2]):.0f})")

starts = {"mean body on the torso": bodyfit.initialize(obs, model, "mean"),
          "learned start (regressor)": bodyfit.initialize(obs, model)}
index, weight = model.keypoint_map(obs.convention)  # which landmark each keypoint is


def draw(ax, params, title, keypoints=keypoints):
    """The body `params` over the cropped picture, and turned 90 degrees; the title gets the
    mean distance between the detected keypoints and the body's, in pixels."""
    with torch.no_grad():
        out = model(params)
    projected = obs.cameras[0].project(out.joints[:, index])[0]
    seen = (keypoints[:, 2] > 0) & (weight > 0)
    error = float((projected - keypoints[:, :2]).norm(dim=-1)[seen].mean())
    pic = overlay_picture(picture, out.vertices[0].numpy(), out.faces.numpy(), K.numpy(),
                          keypoints.numpy(), projected.numpy())
    front, side = pic[:, :W][crop], pic[:, W:][crop]
    ax.imshow(np.concatenate([front, side], 1))
    ax.set_title(f"{title}\n{error:.1f} px", fontsize=10)
    ax.axis("off")


fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax, (label, start) in zip(axes, starts.items()):
    draw(ax, start, f"{label}: {float(start.transl[0, 2]):.1f} m away")
plt.show()

# %% [markdown]
# Green dots are the detected keypoints, red ones the body's, joined by a line; the right half of
# each picture turns the body 90 degrees about the camera's vertical axis to show what the
# picture cannot: depth. (This camera looks down on the treadmill, so an upright body leans back
# in that view.)
#
# ## 3. The stages, and each energy over the steps
#
# `configs/fit.yaml` has two stages, each a set of free parameters and weighted energies
# minimized with Adam:
#
# - `camera`: only where the body stands and how it is turned (`transl`, `global_orient`), on
#   the keypoint reprojection energy;
# - `body`: pose and shape too, with priors that keep the body plausible.
#
# Every energy is a small `torch.nn.Module` (`fitter.energies`), so a forward hook can record
# the value the optimizer sees at each step.

# %%
fitter = bodyfit.Fitter(model)  # configs/fit.yaml; precomputes the energies' tables once
for stage_name, stage in fitter.config.stages.items():
    print(f"{stage_name}: free {stage.free}, {stage.steps} steps, weights {dict(stage.weights)}")

trace = {name: [] for name in fitter.energies}


def record(energy, inputs, value):
    if torch.is_grad_enabled():  # the optimizer's steps (not its convergence checks)
        trace[energy.name].append(float(value[0].detach()))


hooks = [energy.register_forward_hook(record) for energy in fitter.energies.values()]
result = fitter(obs, starts["learned start (regressor)"])
for hook in hooks:
    hook.remove()
print(f"{result.stage_steps} steps; mean keypoint error {float(result.reprojection_error_px[0]):.1f} px "
      f"({100 * float(result.error_over_box[0]):.1f}% of the box height)")

# %%
n_camera = result.stage_steps["camera"]
weights = {"camera": fitter.config.stages["camera"].weights, "body": fitter.config.stages["body"].weights}
fig, ax = plt.subplots(figsize=(9, 4))
for name, values in trace.items():
    steps = np.arange(len(values)) + (n_camera if name != "reprojection" else 0)
    w = np.array([weights["camera" if s < n_camera else "body"].get(name, 0.0) for s in steps])
    ax.plot(steps + 1, w * np.array(values), label=name)
ax.set_yscale("symlog", linthresh=1e-6)  # logarithmic, but zero stays on the plot
ax.axvline(n_camera + 0.5, color="k", ls="--", lw=0.8)
for x, label in [(n_camera / 2, "camera stage"), ((n_camera + len(trace["reprojection"])) / 2, "body stage")]:
    ax.text(x, 0.93, label, ha="center", transform=ax.get_xaxis_transform())
ax.set_xlabel("step")
ax.set_ylabel("weighted energy")
ax.legend(fontsize=8, loc="lower left")
ax.set_title("each energy over the steps")
plt.show()

# %% [markdown]
# The learned start already stands where the person stands, so the camera stage only
# fine-tunes the placement (Adam's steps make it wobble). When the body stage frees the limbs,
# its first, largest steps overshoot (the jump at the boundary) and it then settles well below
# where it started. `joint_limits` is zero while every joint is inside its range and flares up
# when a step pushes one out; the other priors stay small, the price of bending the body to the
# keypoints. `init_prior` measures the distance from the start.
#
# The same fit, stopped after the camera stage (`~stages.body` leaves a stage out), and run to
# the end:

# %%
camera_only = bodyfit.Fitter(model, overrides=["~stages.body"])(obs, starts["learned start (regressor)"])
fig, axes = plt.subplots(1, 3, figsize=(15, 6))
draw(axes[0], starts["learned start (regressor)"], "start")
draw(axes[1], camera_only.params, "after the camera stage")
draw(axes[2], result.params, "after the body stage")
plt.show()

# %% [markdown]
# ## 4. What each prior does
#
# Many 3D bodies project onto the same 2D keypoints. The priors choose among them:
#
# - `joint_limits`: anatomical ranges per joint (no knee bending forwards);
# - `pose_prior`: a small pull of every free joint towards rest;
# - `init_prior`: a pull towards the start, the regressor's 3D guess, where 2D says nothing
#   (depth);
# - `shape_prior`: phenotypes near the average unless the keypoints insist.
#
# Fit again with one prior off at a time, and with none, and compare: the keypoint error (px) and
# how far the body moved from the full fit (mean vertex distance, mm).

# %%
priors = ["joint_limits", "pose_prior", "init_prior", "shape_prior"]
variants = {f"no {p}": [f"stages.body.weights.{p}=0"] for p in priors}
variants["no prior at all"] = [f"stages.body.weights.{p}=0" for p in priors]
fits = {}
for label, overrides in variants.items():
    fits[label] = bodyfit.Fitter(model, overrides=overrides)(obs, starts["learned start (regressor)"])


def moved_mm(a, b):
    """Mean distance between the vertices of two fits, in mm."""
    return 1000 * float((a.vertices - b.vertices).norm(dim=-1).mean())


labels = ["full"] + list(fits)
errors = [float(result.reprojection_error_px[0])] + [float(r.reprojection_error_px[0]) for r in fits.values()]
moved = [0.0] + [moved_mm(r, result) for r in fits.values()]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
axes[0].barh(labels, errors, color="tab:blue")
axes[0].set_xlabel("mean keypoint error (px)")
axes[1].barh(labels, moved, color="tab:orange")
axes[1].set_xlabel("distance from the full fit (mm)")
for ax in axes:
    ax.invert_yaxis()
plt.tight_layout()
plt.show()

fig, axes = plt.subplots(1, 2, figsize=(12, 6))
draw(axes[0], result.params, "full fit")
draw(axes[1], fits["no prior at all"].params, "no prior at all: closer to the keypoints, less plausible")
plt.show()

# %% [markdown]
# Without priors the keypoints are matched more closely, and the body pays for it where the
# picture cannot see: look at the side views. The keypoint error alone cannot tell a good fit
# from a bad one.
#
# ## 5. The flip trial
#
# From the front and from behind, a body's 2D keypoints are nearly mirror images: a fit that
# starts facing the wrong way may settle there. Where the torso is seen side-on (the shoulders
# close together in the picture), the first stage also tries the start turned by 180 degrees and
# keeps whichever ends with the lower energy (`try_flip`). Here both are run by hand, with the
# trial off, to see the two minima.

# %%
start = starts["learned start (regressor)"]
turned = start.clone()
half_turn = torch.tensor([[-1.0, 0, 0], [0, 1, 0], [0, 0, -1]])  # 180 degrees about the camera's vertical
turned.global_orient = roma.rotmat_to_rotvec(half_turn @ roma.rotvec_to_rotmat(start.global_orient))
no_flip = bodyfit.Fitter(model, overrides=["try_flip=false"])
facing, backwards = no_flip(obs, start), no_flip(obs, turned)
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax, r, label in zip(axes, [facing, backwards], ["from the start", "from the start turned 180 degrees"]):
    draw(ax, r.params, f"{label}: energy {float(r.energies['total'][0]):.4f}")
plt.show()

# %% [markdown]
# The turned start ends in a worse minimum (a higher energy): comparing the energies of both
# tries picks the right one.
#
# The same holds per limb. A bone that points towards or away from the camera projects to the
# same two keypoints at two depths (its end on the same camera ray, nearer or farther), and the
# keypoints cannot tell which. After the last stage each such bone is refitted flipped, and the
# flip is kept where the energy is lower while the keypoints fit about as well (`limb_flip`,
# `bodyfit/fitting/depth_flip.py`); the messages name the limbs that were flipped.

# %%
for flag in ("false", "true"):
    r = bodyfit.fit(keypoints, model, image_size=(H, W), overrides=[f"limb_flip={flag}"], vertices=False)
    print(f"limb_flip={flag}: energy {float(r.energies['total'][0]):.4f}, messages: {r.messages[0]}")

# %% [markdown]
# ## 6. Fits that fail, and why
#
# Three pictures' worth of keypoints in one batch: the real ones, the same with left and right
# swapped (a detector's classic mistake), and only five keypoints (a face in close-up). The
# batch is fitted together; a sample that cannot be fitted is reported, not an error.

# %%
from bodyfit.body_models import keypoint_names

names = keypoint_names("mediapipe33")
mirror = [names.index(n.replace("left", "@").replace("right", "left").replace("@", "right")) for n in names]
swapped = keypoints[mirror]
face_only = keypoints.clone()
face_only[5:, 2] = 0.0
batch = bodyfit.fit(torch.stack([keypoints, swapped, face_only]), model, image_size=(H, W))
for b, label in enumerate(["real", "left/right swapped", "five keypoints"]):
    print(f"{label:20s} valid={bool(batch.valid[b])}  error={float(batch.reprojection_error_px[b]):.1f} px  "
          f"message={batch.messages[b]}")

# %% [markdown]
# A wrong focal length is the other silent failure: with a 20-degree field of view (a
# telephoto) the same keypoints are explained by the same body, three times farther away.

# %%
from bodyfit.cameras import default_intrinsics

tele = bodyfit.fit(keypoints, model, K=default_intrinsics((H, W), 1, fov_deg=20.0))
print(f"55 deg: {float(result.params.transl[0, 2]):.1f} m away, "
      f"{float(result.reprojection_error_px[0]):.1f} px; "
      f"20 deg: {float(tele.params.transl[0, 2]):.1f} m away, {float(tele.reprojection_error_px[0]):.1f} px")

fig, axes = plt.subplots(1, 2, figsize=(12, 6))
draw(axes[0], batch.params.index([1]), "left/right swapped: turned away", keypoints=swapped)
draw(axes[1], result.params, "the right fit, for comparison")
plt.show()

# %% [markdown]
# Both wrong fits match the keypoints within a few pixels: swapped sides give a body turned
# away from the camera, a wrong focal length a body at the wrong distance. 2D keypoints from one
# view cannot rule them out; more views (`bodyfit fit-views`, notebook 3), a known camera, or
# the dense energies can.
#
# What `bodyfit fit` flags is a fit whose keypoint error stays large (above 5% of the box,
# `max_error_over_box`): a diverged optimizer, a wrong camera in a calibration, a view order
# mixed up. Those are written but marked, and the command exits with code 3.
