"""Run by tests/test_spin.py in a child process: the SPIN loop on synthetic samples, as
``bodyfit train data=synthetic`` runs it, with the loop's log on stderr.

    python spin_run.py OUT [--pause-marker PATH] [train.yaml overrides ...]

With ``--pause-marker``, once the run has a checkpoint and at least 8 stored fits, the next fit
the store writes stops half way (part of it in the store's temporary file), ``PATH`` is created
and the process waits: the parent kills it at that known point, mid-step and mid-write, with no
timing guesswork.
"""
import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from bodyfit.body_models import body_model
from bodyfit.data.samples import synthetic_samples
from bodyfit.files import atomic_write
from bodyfit.regressors import fit_store
from bodyfit.regressors.spin import CHECKPOINT, train
from bodyfit.regressors.train_config import load_train_config

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--pause-marker", default=None)
a, overrides = ap.parse_known_args()
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
torch.set_num_threads(1)

if a.pause_marker:
    out = Path(a.out)

    def paused_save(path, **arrays):
        if (out / CHECKPOINT).exists() and len(list((out / "store" / "fits").glob("*.npz"))) >= 8:
            def write_half_then_wait(fh):
                fh.write(b"PK\x03\x04 half a record")
                fh.flush()
                Path(a.pause_marker).touch()
                while True:
                    time.sleep(60)

            return atomic_write(path, write_half_then_wait)
        return real_save(path, **arrays)

    real_save = fit_store.atomic_save_npz
    fit_store.atomic_save_npz = paused_save

cfg = load_train_config(overrides)
model = body_model("anny")
samples, _ = synthetic_samples(model, cfg.synthetic_samples, seed=cfg.seed + 1)
metrics = train(samples, a.out, cfg, model, progress=False)
print(f"trained to step {metrics.get('step')}")
