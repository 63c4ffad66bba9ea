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
# # 4. The SPIN loop in miniature
#
# A regressor guesses a body from 2D keypoints in one pass; an optimizer refines a guess into a
# fit that matches the keypoints. SPIN (Kolotouros et al. 2019) makes each help the other:
#
# 1. the regressor predicts a body for each training sample;
# 2. the optimizer fits from that prediction (`bodyfit.Fitter`);
# 3. a **fit store** keeps, per sample, the best plausible fit seen so far (lower keypoint
#    energy wins, "update if better");
# 4. the regressor learns from the stored fits (3D), the 2D keypoints and synthetic pairs.
#
# Better predictions give better fits, which teach better predictions. `bodyfit train` runs this
# loop on the Pose2Sim demo's real keypoints; here it runs on synthetic people, whose true
# bodies are known, from an untrained regressor, for a few dozen steps (about a minute on a
# CPU). The shipped regressor took far longer; a miniature shows which way the numbers go.

# %%
import csv
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import bodyfit
from bodyfit.boxes import boxes_from_keypoints
from bodyfit.data.samples import synthetic_samples
from bodyfit.metrics import pa_mpjpe
from bodyfit.regressors.fit_store import FitStore
from bodyfit.regressors.keypoint_regressor import KeypointRegressor, load_regressor
from bodyfit.regressors.spin import train
from bodyfit.regressors.train_config import load_train_config

model = bodyfit.body_model("anny")
samples, truth = synthetic_samples(model, 64, seed=1)        # what the loop trains on
held_out, held_truth = synthetic_samples(model, 64, seed=2)  # what it never sees
print(len(samples), "training samples:", samples.keypoints.shape, samples.convention, samples.image_size)

# %% [markdown]
# ## The two starting points
#
# The shipped regressor (trained on synthetic pairs, then on real keypoints through this loop)
# and an untrained one of the same kind (an MLP with iterative error feedback, HMR-style), which
# predicts nearly the same body for everyone. Two measures on held-out people: the 3D joint
# error after aligning each prediction to the truth (PA-MPJPE, mm), and how far the predicted
# body's keypoints land from the observed ones (fraction of the box height).

# %%
index, weight = model.keypoint_map("mediapipe33")


def scores(regressor, data=held_out, truth=held_truth):
    """(PA-MPJPE mm, 2D keypoint error / box height) of the regressor's predictions."""
    params = regressor.predict(data.keypoints, data.K, model)
    with torch.no_grad():
        joints = model(params, vertices=False).joints
    uv = bodyfit.cameras.project(joints[:, index], data.K)
    boxes = boxes_from_keypoints(data.keypoints)
    seen = (data.keypoints[..., 2] > 0) & (weight > 0)
    error_2d = (uv - data.keypoints[..., :2]).norm(dim=-1) / (boxes[:, 3:] - boxes[:, 1:2])
    return float(pa_mpjpe(joints, truth.joints).mean()), float(error_2d[seen].mean())


torch.manual_seed(0)
fresh = KeypointRegressor(num_keypoints=33, num_free_joints=len(model.free_pose_joints),
                          shape_dim=model.shape_dim, hidden=256)
for label, regressor in [("shipped", load_regressor(model, "mediapipe33")), ("untrained", fresh)]:
    mm, box = scores(regressor)
    print(f"{label:10s} PA-MPJPE {mm:5.0f} mm, keypoints off by {100 * box:4.1f}% of the box height")

# %% [markdown]
# ## Running the loop
#
# `bodyfit.regressors.spin.train` is what `bodyfit train` runs (`bodyfit train --out DIR
# data=synthetic synthetic_samples=64 epochs=8` starts from the shipped weights instead). The
# config is `configs/train.yaml` with overrides: 16 samples per step, a short fit schedule, a
# higher learning rate for a net starting from scratch. The run folder holds `checkpoint.pt`,
# `metrics.csv` (one row per step), `store/` (one file per sample) and `regressor.pt`; a rerun
# with more epochs resumes from the checkpoint, so we run it one epoch at a time and score the
# regressor on the held-out people after each.

# %%
run = Path("notebook_outputs") / "spin_miniature"
shutil.rmtree(run, ignore_errors=True)  # start afresh each time the notebook runs
overrides = ["data=synthetic", "batch_size=16", "synthetic_batch=64", "lr=3e-3",
             'fit_overrides=["stages.camera.steps=10","stages.body.steps=20"]']
epochs = 8
history = [scores(fresh)]
for epoch in range(1, epochs + 1):
    config = load_train_config(overrides + [f"epochs={epoch}"])
    train(samples, run, config, model, regressor=fresh, progress=False)
    history.append(scores(load_regressor(model, "mediapipe33", run / "regressor.pt")))
    print(f"epoch {epoch}: PA-MPJPE {history[-1][0]:.0f} mm, keypoints off by {100 * history[-1][1]:.1f}%")

with open(run / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
metrics = {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}
print("logged per step:", ", ".join(metrics))

# %%
steps = metrics["step"]
fig, axes = plt.subplots(2, 2, figsize=(12, 7))
axes[0, 0].plot(steps, metrics["loss"])
axes[0, 0].set_title("regressor loss (stored fits + 2D keypoints + synthetic pairs)")
axes[0, 1].plot(steps, 100 * metrics["fit_error_over_box"], color="tab:green")
axes[0, 1].set_title("fits made from the predictions: keypoint error (% of box)")
axes[1, 0].bar(steps, metrics["stored_improved"], color="tab:orange", label="fits that replaced a stored one")
axes[1, 0].plot(steps, metrics["fits_plausible"], "k.", label="plausible fits")
axes[1, 0].set_title(f"the fit store ({int(metrics['samples'][0])} samples per step)")
axes[1, 0].legend(fontsize=8)
ep = np.arange(epochs + 1)
axes[1, 1].plot(ep, [100 * h[1] for h in history], "o-", color="tab:red", label="keypoints off (% of box)")
twin = axes[1, 1].twinx()
twin.plot(ep, [h[0] for h in history], "s--", color="tab:purple", label="PA-MPJPE (mm)")
axes[1, 1].set_title("the regressor on held-out people")
axes[1, 1].set_xlabel("epoch")
axes[1, 1].legend(loc="upper left", fontsize=8)
twin.legend(loc="upper right", fontsize=8)
for ax in axes.flat[:3]:
    ax.set_xlabel("step")
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the four plots together:
#
# - At first the untrained regressor's guesses are so far off that the short fit cannot rescue
#   them: for several steps no fit is plausible, and the store, which keeps only plausible fits,
#   lets nothing in. The synthetic pairs meanwhile teach the regressor roughly where limbs go.
# - Then fits made from its predictions become plausible, fill the store and keep replacing
#   stored fits by better ones; their keypoint error falls to a few percent of the box: a better
#   start leaves the short fit less to do.
# - On people it never saw, the regressor's bodies land closer and closer to the keypoints. Its
#   3D error (PA-MPJPE) moves slowly and not always down: a few dozen steps on 64 people are far
#   from enough to learn 3D pose from scratch (compare the shipped weights). What the loop
#   guarantees is that its 3D teachers, the stored fits, only ever get better.
#
# ## What the store holds
#
# One record per sample, written atomically (a killed run never leaves half a file): the best fit
# so far, its keypoint energy and error, and the step it came from. The stored fits, the
# regressor's current prediction and the truth of a few training people, seen from the camera:

# %%
store = FitStore(run / "store")
print(len(store), "records; fields:", ", ".join(store.get(store.ids()[0])))
ids = samples.ids[:4]
stored, have = store.batch(ids, model.default_params(len(ids)))
current = load_regressor(model, "mediapipe33", run / "regressor.pt")
predicted = current.predict(samples.keypoints[:4], samples.K[:4], model)
true_params = truth.params.index(slice(0, 4))
fig, axes = plt.subplots(1, 4, figsize=(13, 4.5))
for b, ax in enumerate(axes):
    for params, colour, label in [(true_params, "k", "truth"), (stored, "tab:green", "stored fit"),
                                  (predicted, "tab:red", "prediction")]:
        with torch.no_grad():
            joints = model(params.index([b]), vertices=False).joints
        uv = bodyfit.cameras.project(joints[:, index], samples.K[b:b + 1])[0].numpy()
        ax.scatter(uv[:, 0], uv[:, 1], s=10, c=colour, label=label)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_title(f"{ids[b]}: stored={bool(have[b])}")
    ax.set_xticks([])
    ax.set_yticks([])
axes[0].legend(fontsize=8)
plt.show()

# %% [markdown]
# The stored fits sit on the truth's keypoints (they were fitted to them); the young regressor's
# predictions are still rough. On the real Pose2Sim keypoints, `bodyfit train --out runs/spin`
# runs the same loop from the shipped weights; `torchrun --nproc_per_node N -m bodyfit.cli train`
# spreads it over processes.
