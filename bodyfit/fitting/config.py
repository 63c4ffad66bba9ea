"""The fitting configuration's schema (``configs/fit.yaml``, ``configs/fit_views.yaml``).

Stages are data, keyed by name (mmhuman3d / SMPLify style): each names its free parameters, its
energies with their weights, its optimizer, learning rate and steps. Any value can be overridden
(``stages.body.steps=300``, ``stages.body.weights.pose_prior=0``); a typed schema and
:meth:`FitConfig.validate` refuse wrong types and ranges before any work starts, naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bodyfit.config import (ConfigError, DetectorConfig, ModelConfig, check, check_detector,
                            check_model, check_number, compose)
from bodyfit.fitting.optimizer import PARAM_NAMES


@dataclass
class StageConfig:
    """One optimization stage.

    Attributes:
        free: which BodyParams fields move (global_orient, body_pose, shape, transl).
        keypoints: "all", or "torso" (SMPLify's camera stage from a mean-pose start).
        optimizer: "adam" or "lbfgs". lr: its learning rate. steps: at most this many steps.
        weights: energy name -> weight (``bodyfit.fitting.energies.ENERGIES`` names them);
            a weight of 0 leaves the energy out.
    """

    free: list[str] = field(default_factory=lambda: ["transl", "global_orient"])
    keypoints: str = "all"
    optimizer: str = "adam"
    lr: float = 0.03
    steps: int = 20
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class FitConfig:
    """Everything a fit reads. See ``configs/fit.yaml`` for the meaning of each value."""

    init: str = "regressor"
    fov_deg: float = 55.0
    sigma: float = 0.3
    min_keypoints: int = 6
    try_flip: bool = True
    try_mirror: bool = True
    ftol: float = 1.0e-3
    check_every: int = 10
    compact: float = 0.5
    compile: bool = False
    cuda_graphs: bool = True
    render_size: int = 256
    render_topology: str = "default"
    texture_blur: float = 0.0
    depth_tolerance: float = 0.02
    densepose_points: int = 400
    max_error_over_box: float = 0.05
    world_sigma: float = 0.3
    world_frame: str = "ray"
    limb_flip: bool = True
    limb_flip_depth: float = 0.35
    limb_flip_reprojection: float = 1.2
    world_flip: float = 0.0
    flip_min_depth: float = 0.3
    gmm_file: str | None = None
    stages: dict[str, StageConfig] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def validate(self) -> "FitConfig":
        """Check every value's range and every energy's name; returns self.

        Raises:
            ConfigError: naming the key that is wrong and what it must be.
        """
        from bodyfit.fitting.energies import ENERGIES

        check(self.init in ("regressor", "mean"), "init", f"must be regressor or mean, got {self.init!r}")
        check_number(self.fov_deg, "fov_deg", 1.0, 179.0)
        check_number(self.sigma, "sigma", 0.0, 10.0, lo_open=True)
        check(isinstance(self.min_keypoints, int) and self.min_keypoints >= 1, "min_keypoints",
              f"must be an integer >= 1, got {self.min_keypoints!r}")
        check_number(self.ftol, "ftol", 0.0, 1.0)
        check_number(self.compact, "compact", 0.0, 1.0, hi_open=True)
        check(isinstance(self.try_mirror, bool), "try_mirror", f"must be true or false, got {self.try_mirror!r}")
        check(isinstance(self.compile, bool), "compile", f"must be true or false, got {self.compile!r}")
        check(isinstance(self.cuda_graphs, bool), "cuda_graphs", f"must be true or false, got {self.cuda_graphs!r}")
        check(isinstance(self.check_every, int) and self.check_every >= 1, "check_every",
              f"must be an integer >= 1, got {self.check_every!r}")
        check(isinstance(self.render_size, int) and 16 <= self.render_size <= 4096, "render_size",
              f"must be an integer in [16, 4096], got {self.render_size!r}")
        check_number(self.texture_blur, "texture_blur", 0.0, 20.0)
        check_number(self.depth_tolerance, "depth_tolerance", 0.0, 1.0, lo_open=True)
        check(isinstance(self.densepose_points, int) and self.densepose_points >= 1, "densepose_points",
              f"must be an integer >= 1, got {self.densepose_points!r}")
        check_number(self.max_error_over_box, "max_error_over_box", 0.0, 10.0, lo_open=True)
        check_number(self.world_sigma, "world_sigma", 0.0, 2.0, lo_open=True)
        check(self.world_frame in ("camera", "ray", "procrustes"), "world_frame",
              f"must be camera, ray or procrustes, got {self.world_frame!r}")
        check(isinstance(self.limb_flip, bool), "limb_flip", f"must be true or false, got {self.limb_flip!r}")
        check_number(self.limb_flip_depth, "limb_flip_depth", 0.0, 1.0)
        check_number(self.limb_flip_reprojection, "limb_flip_reprojection", 1.0, None)
        check_number(self.world_flip, "world_flip", 0.0, None)
        check_number(self.flip_min_depth, "flip_min_depth", 0.0, 1.0)
        check(self.gmm_file is None or isinstance(self.gmm_file, str), "gmm_file",
              f"must be a path to a pose GMM (.npz or SMPLify's gmm_08.pkl) or null, got {self.gmm_file!r}")
        check(len(self.stages) > 0, "stages", "at least one stage is needed")
        for name, stage in self.stages.items():
            key = f"stages.{name}"
            unknown = set(stage.free) - set(PARAM_NAMES)
            check(not unknown and len(stage.free) > 0, f"{key}.free",
                  f"must name one or more of {list(PARAM_NAMES)}, got {list(stage.free)}")
            check(stage.keypoints in ("all", "torso"), f"{key}.keypoints",
                  f"must be all or torso, got {stage.keypoints!r}")
            check(stage.optimizer in ("adam", "lbfgs"), f"{key}.optimizer",
                  f"must be adam or lbfgs, got {stage.optimizer!r}")
            check_number(stage.lr, f"{key}.lr", 0.0, 10.0, lo_open=True)
            check(isinstance(stage.steps, int) and 1 <= stage.steps <= 100000, f"{key}.steps",
                  f"must be an integer in [1, 100000] (to leave the stage out: ~{key}), got {stage.steps!r}")
            for energy, w in stage.weights.items():
                check(energy in ENERGIES, f"{key}.weights.{energy}",
                      f"unknown energy; known: {sorted(ENERGIES)}")
                check_number(w, f"{key}.weights.{energy}", 0.0, None)
            check(any(w > 0 for w in stage.weights.values()), f"{key}.weights",
                  "at least one energy needs a positive weight")
        check_model(self.model)
        check_detector(self.detector)
        return self


def load_config(overrides: list[str] | None = None, name: str = "fit") -> FitConfig:
    """The packaged fitting config ``configs/<name>.yaml`` ("fit" for pictures, "fit_views" for
    calibrated views and video) with Hydra overrides, validated.

    Raises:
        ConfigError: an override with an unknown key, a wrong type or a value out of range.
    """
    if name not in ("fit", "fit_views"):
        raise ConfigError(f"unknown fitting config {name!r}: fit or fit_views.")
    return compose(name, FitConfig, overrides)


__all__ = ["FitConfig", "StageConfig", "load_config", "ConfigError", "PARAM_NAMES"]
