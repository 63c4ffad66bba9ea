"""The short road: ``bodyfit.fit`` (pictures) and ``bodyfit.fit_views`` (calibrated views,
sequences), each composing a start (``initialize``: the shipped keypoint regressor, SPIN-style,
or the mean body) with the one engine, ``bodyfit.Fitter``.
"""
from __future__ import annotations

import torch

from bodyfit.body_models.base import BodyModel, BodyParams
from bodyfit.fitting.config import FitConfig, load_config
from bodyfit.fitting.fitter import Fitter, FitResult
from bodyfit.fitting.start import mean_start, start_in_world
from bodyfit.observations import Observations


def initialize(observations: Observations, model: BodyModel, how: str = "regressor",
               regressor=None) -> BodyParams:
    """Where a fit starts, in the observations' world frame: the keypoint regressor's prediction
    (``how="regressor"``; ``regressor`` or the one shipped for this model and keypoint
    convention, HMR/SPIN-style) or the mean body placed on the torso (``how="mean"``, or when no
    regressor is shipped), made in each sample's best view.

    Returns:
        BodyParams (B); non-finite starts are replaced by the model's default body.
    Raises:
        ValueError: an unknown ``how``.
    """
    if how not in ("regressor", "mean"):
        raise ValueError(f"how must be 'regressor' or 'mean', got {how!r}.")
    if how == "regressor" and regressor is None:
        from bodyfit.regressors.keypoint_regressor import load_regressor

        regressor = load_regressor(model, observations.convention)
    if how == "regressor" and regressor is not None:
        return start_in_world(model, observations, lambda kp, K: regressor.predict(kp, K, model))
    return start_in_world(model, observations, lambda kp, K: mean_start(model, kp, K, observations.convention))


def _model(model: BodyModel | None) -> BodyModel:
    if model is not None:
        return model
    from bodyfit.body_models import body_model

    return body_model("anny")


def fit(keypoints, model: BodyModel | None = None, convention: str = "mediapipe33",
        image_size: tuple[int, int] | None = None, K: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None, init: BodyParams | None = None,
        config: FitConfig | None = None, overrides: list[str] | None = None,
        regressor=None, vertices: bool = True, world_keypoints=None) -> FitResult:
    """Fit a body model to the 2D keypoints of B pictures (SMPLify with a learned start).

    Args:
        keypoints: (B,K,3) or (K,3): x, y in pixels and confidence in [0,1] (0 = missing), in
            the order of ``convention`` (``bodyfit.body_models.conventions``).
        model: a BodyModel; Anny (default topology) when None.
        convention: "mediapipe33" (the detector's), "coco17", "coco17_feet" or "openpose25".
        image_size: (H, W) pixels; needed when K is None (K then comes from ``fov_deg``).
        K: (B,3,3) or (3,3) intrinsics in pixels.
        boxes: (B,4) xyxy person boxes in pixels; from the keypoints when None.
        init: starting BodyParams (camera frame); else from ``config.init`` (:func:`initialize`).
        config: a FitConfig; ``configs/fit.yaml`` (with ``overrides``) when None.
        overrides: Hydra overrides of ``configs/fit.yaml`` (when ``config`` is None).
        regressor: a KeypointRegressor to start from; the shipped one when None.
        vertices: also return the fitted vertices.
        world_keypoints: (B,K,3) or (K,3) the detector's metric 3D landmarks (metres, root-relative,
            camera axes: MediaPipe's world landmarks, ``Detection.world_keypoints``) for the
            ``world_landmarks`` energy; None: 2D alone.

    Returns:
        FitResult with one view (the camera at the origin: R = I, t = 0). Samples with too few
        visible keypoints or non-finite values are not fitted (``valid`` False, ``messages``
        says why); the rest of the batch is fitted.

    Raises:
        ValueError: wrong shapes, unknown convention, neither K nor image_size.
        ConfigError: a wrong config value.
    """
    cfg = config if config is not None else load_config(overrides)
    model = _model(model)
    obs = Observations.from_pictures(keypoints, image_size=image_size, K=K, convention=convention,
                                     boxes=boxes, fov_deg=cfg.fov_deg, world_keypoints=world_keypoints)
    return _fit(obs, model, cfg, init, regressor, vertices)


def fit_views(observations: Observations, model: BodyModel | None = None,
              config: FitConfig | None = None, overrides: list[str] | None = None,
              init: BodyParams | None = None, regressor=None, vertices: bool = True) -> FitResult:
    """Fit one body per sample to what V calibrated views saw of it; with
    ``observations.sequence`` the samples are consecutive frames of one person (one shape,
    temporal smoothness, texture consistency between frames).

    Args:
        observations: the cameras and what they saw (masks, pictures and IUV turn on the
            silhouette, texture-consistency and DensePose energies).
        model: a BodyModel; Anny (default topology) when None.
        config: a FitConfig; ``configs/fit_views.yaml`` (with ``overrides``) when None.
        overrides: Hydra overrides of ``configs/fit_views.yaml`` (when ``config`` is None).
        init: starting BodyParams (world frame); else from ``config.init``.
        regressor: a KeypointRegressor to start from; the shipped one when None.
        vertices: also return the fitted vertices.
    Returns:
        FitResult in the calibration's world frame; a view a sample cannot use (degenerate
        camera, NaN keypoints, too few keypoints) is left out for it and reported.
    Raises:
        ConfigError: a wrong config value.
    """
    cfg = config if config is not None else load_config(overrides, name="fit_views")
    return _fit(observations, _model(model), cfg, init, regressor, vertices)


def _fit(obs: Observations, model: BodyModel, cfg: FitConfig, init, regressor, vertices) -> FitResult:
    return Fitter(model, cfg)(obs, init, vertices=vertices,
                              start=lambda o: initialize(o, model, cfg.init, regressor))
