"""The SPIN loop's configuration schema (``configs/train.yaml``), composed with Hydra and checked
before any work starts (``bodyfit.config``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from bodyfit.config import ModelConfig, check, check_model, check_number, compose


@dataclass
class LossWeights:
    """Weights of the regressor's loss terms (see ``configs/train.yaml``)."""

    fit_rotations: float = 0.1
    fit_shape: float = 0.1
    fit_joints: float = 1.0
    keypoints_2d: float = 1.0
    synthetic: float = 1.0


@dataclass
class PlausibilityConfig:
    """When a stored fit may supervise the regressor (``regressors.fit_store.Plausibility``)."""

    max_error_over_box: float = 0.08
    max_joint_limits: float = 1.0


@dataclass
class TrainConfig:
    """Everything ``bodyfit train`` reads. See ``configs/train.yaml`` for each value's meaning."""

    regressor: str = "keypoint"
    image_weights: Optional[str] = None
    data: str = "pose2sim"
    frames: list[int] = field(default_factory=lambda: [0, 80])
    synthetic_samples: int = 256
    epochs: int = 3
    batch_size: int = 16
    synthetic_batch: int = 64
    lr: float = 1.0e-4
    seed: int = 0
    checkpoint_every: int = 10
    min_keypoints: int = 6
    loss: LossWeights = field(default_factory=LossWeights)
    fit_overrides: list[str] = field(default_factory=list)
    plausibility: PlausibilityConfig = field(default_factory=PlausibilityConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def as_dict(self) -> dict:
        """Plain nested dict (for checkpoints: no pickled objects)."""
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        """Check ranges and choices; returns self. Raises ConfigError naming the key."""
        check(self.regressor in ("keypoint", "image"), "regressor",
              f"must be keypoint or image, got {self.regressor!r}")
        check(self.data in ("pose2sim", "synthetic"), "data", f"must be pose2sim or synthetic, got {self.data!r}")
        check(not (self.data == "synthetic" and self.regressor == "image"), "data",
              "synthetic keypoint samples train the keypoint regressor only")
        check(len(self.frames) == 2 and 0 <= self.frames[0] < self.frames[1] <= 100, "frames",
              f"must be [start, stop) with 0 <= start < stop <= 100, got {list(self.frames)}")
        for key in ("synthetic_samples", "epochs", "batch_size", "checkpoint_every", "min_keypoints"):
            value = getattr(self, key)
            check(isinstance(value, int) and value >= 1, key, f"must be an integer >= 1, got {value!r}")
        check(isinstance(self.synthetic_batch, int) and self.synthetic_batch >= 0, "synthetic_batch",
              f"must be an integer >= 0, got {self.synthetic_batch!r}")
        check_number(self.lr, "lr", 0.0, 1.0, lo_open=True)
        for name, w in dataclasses.asdict(self.loss).items():
            check_number(w, f"loss.{name}", 0.0, None)
        check_number(self.plausibility.max_error_over_box, "plausibility.max_error_over_box", 0.0, None, lo_open=True)
        check_number(self.plausibility.max_joint_limits, "plausibility.max_joint_limits", 0.0, None)
        check_model(self.model)
        from bodyfit.fitting import load_config

        load_config(list(self.fit_overrides))  # the fit each step runs: refuse a bad override now
        return self


def load_train_config(overrides: list[str] | None = None) -> TrainConfig:
    """``configs/train.yaml`` with Hydra overrides, validated.

    Raises:
        ConfigError: a wrong type, an unknown key or a value out of range (named)."""
    return compose("train", TrainConfig, overrides)
