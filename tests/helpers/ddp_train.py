"""Run by tests/test_spin.py under torchrun: train a few steps and save this rank's weights."""
import sys

import torch

from bodyfit.body_models import body_model
from bodyfit.data.samples import synthetic_samples
from bodyfit.distributed import rank_and_world as _distributed
from bodyfit.regressors.spin import train
from bodyfit.regressors.train_config import load_train_config

out = sys.argv[1]
torch.set_num_threads(1)
cfg = load_train_config(["data=synthetic", "epochs=1", "batch_size=8", "synthetic_batch=8",
                         "fit_overrides=['stages.camera.steps=3','stages.body.steps=5']"])
model = body_model("anny")
samples, _ = synthetic_samples(model, 16, seed=1)
from bodyfit.regressors.keypoint_regressor import load_regressor  # noqa: E402

reg = load_regressor(model, "mediapipe33")
train(samples, out, cfg, model, regressor=reg, progress=False)
rank, world = _distributed()
torch.save(reg.state_dict(), f"{out}/rank{rank}.pt")
