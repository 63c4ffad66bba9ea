"""Typed configuration: packaged YAML files composed with Hydra's compose API, checked against
structured-config schemas (dataclasses) before any work starts.

    cfg = compose("fit", FitConfig, ["stages.body.steps=300", "model=smpl"])   # -> FitConfig

Overrides use Hydra's syntax: ``key=value`` changes a key, ``+key=value`` adds one (a weight a
stage does not list yet: ``+stages.body.weights.silhouette=0.1``), ``~key`` deletes one (a whole
stage: ``~stages.camera``), ``group=option`` picks a config group (``model=smpl``,
``detector=mediapipe``). A wrong type, an unknown key or a value out of range raises
:class:`ConfigError` naming the key; never a traceback from deep inside.

The schemas live with the code that reads them (``bodyfit.fitting.config.FitConfig``,
``bodyfit.regressors.train_config.TrainConfig``), which calls :func:`compose` with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration value of the wrong type, out of range, or an unknown key."""


@dataclass
class ModelConfig:
    """Config group ``model``: which body model (``configs/model/<name>.yaml``)."""

    name: str = "anny"                 # anny | smpl | smplh | smplx
    topology: str = "default"          # Anny: default or a low-poly topology
    landmarks: str = "mediapipe"       # Anny: where keypoints sit: mediapipe (calibrated) | coco (Anny's COCO regressor)
    model_path: Optional[str] = None   # SMPL family: your own model file or folder
    gender: str = "neutral"            # SMPL family


@dataclass
class DetectorConfig:
    """Config group ``detector``: the 2D keypoint detector (``configs/detector/<name>.yaml``)."""

    name: str = "mediapipe"
    min_detection_confidence: float = 0.5
    model_complexity: int = 1
    enable_segmentation: bool = True
    max_pixels: int = 4096 * 4096  # pixel budget: larger pictures are detected and fitted downscaled
    # Every person (``bodyfit fit``, ``fit-views`` per view, ``fit-video`` per frame; demo fits one person):
    setting: str = "fast"                    # MultiPersonPose setting: full | fast | thorough | exhaustive
    max_people: Optional[int] = None         # keep the N largest people (box area); None: all
    min_box_height: float = 0.0              # drop people whose box is shorter than this share of the picture height
    landmark_model_path: Optional[str] = None  # pose_landmark_{lite,heavy}.tflite (or its folder) for model_complexity 0 or 2
    association_gate: float = 0.08           # fit-views: largest reprojection error / box height to join a person
    track_max_missed: int = 3                # fit-video: frames a track may go unmatched before it ends
    track_min_similarity: float = 0.1        # fit-video: least 0.5 box IoU + 0.5 OKS for a detection to join a track


def check(ok: bool, key: str, message: str) -> None:
    """Raise ConfigError(``key: message``) unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key {key}: {message}")


def check_number(value, key: str, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number in the given range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    check(ok, key, f"must be a finite number in {rng}, got {value!r}")


def check_model(model: ModelConfig, key: str = "model") -> None:
    check(model.name in ("anny", "smpl", "smplh", "smplx"), f"{key}.name",
          f"must be anny, smpl, smplh or smplx, got {model.name!r}")
    check(model.gender in ("neutral", "male", "female"), f"{key}.gender",
          f"must be neutral, male or female, got {model.gender!r}")


def check_detector(det: DetectorConfig, key: str = "detector") -> None:
    check(det.name == "mediapipe", f"{key}.name", f"only 'mediapipe' is available, got {det.name!r}")
    check_number(det.min_detection_confidence, f"{key}.min_detection_confidence", 0.0, 1.0)
    check(det.model_complexity in (0, 1, 2), f"{key}.model_complexity",
          f"must be 0, 1 or 2, got {det.model_complexity!r}")
    check(isinstance(det.max_pixels, int) and not isinstance(det.max_pixels, bool)
          and det.max_pixels >= 64 * 64, f"{key}.max_pixels",
          f"must be a whole number of pixels >= 4096 (64 x 64), got {det.max_pixels!r}")
    check(det.setting in ("full", "fast", "thorough", "exhaustive"), f"{key}.setting",
          f"must be full, fast, thorough or exhaustive, got {det.setting!r}")
    check(det.max_people is None or (isinstance(det.max_people, int) and not isinstance(det.max_people, bool)
                                     and det.max_people >= 1), f"{key}.max_people",
          f"must be null (every person) or a whole number >= 1, got {det.max_people!r}")
    check_number(det.min_box_height, f"{key}.min_box_height", 0.0, 1.0, hi_open=True)
    check_number(det.association_gate, f"{key}.association_gate", 0.0, 1.0, lo_open=True)
    check(isinstance(det.track_max_missed, int) and not isinstance(det.track_max_missed, bool)
          and det.track_max_missed >= 0, f"{key}.track_max_missed",
          f"must be a whole number of frames >= 0, got {det.track_max_missed!r}")
    check_number(det.track_min_similarity, f"{key}.track_min_similarity", 0.0, 1.0)


def compose(name: str, schema: type, overrides: list[str] | None = None):
    """Compose ``configs/<name>.yaml`` (whose defaults list starts with ``schema``, stored as
    ``<schema name>`` in Hydra's ConfigStore) with ``overrides`` and return the validated schema
    object: a ``schema`` instance whose ``validate()`` (when it has one) has run.

    Raises:
        ConfigError: an override that is malformed, names an unknown key or group option, has a
            value of the wrong type or out of range; the message names the key.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    store = ConfigStore.instance()
    store.store(name=schema.__name__, node=schema)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="detector", name="detector_schema", node=DetectorConfig)
    overrides = [str(o) for o in (overrides or [])]
    for item in overrides:
        if "=" not in item and not item.startswith("~"):
            raise ConfigError(f"config override {item!r} must look like key=value.")
    try:
        with initialize_config_dir(version_base=None, config_dir=str(CONFIG_DIR), job_name="bodyfit"):
            cfg = compose(config_name=name, overrides=overrides)
        obj = OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_explain(e)) from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _explain(e: Exception) -> str:
    """One readable line from a Hydra/OmegaConf error and its cause."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    cause = e.__cause__
    if cause is not None:
        lines += [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("object_type", "reference_type", "parent_type"))]
    text = "; ".join(dict.fromkeys(keep))
    if "not in struct" in text or "Could not override" in text:
        text += " (a key not in the config: check its spelling, or add it with +key=value)"
    return text


__all__ = ["ConfigError", "ModelConfig", "DetectorConfig", "compose", "check",
           "check_number", "CONFIG_DIR"]
