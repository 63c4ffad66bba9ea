"""bodyfit: fit 3D human body models to pictures.

    import bodyfit
    model = bodyfit.body_model("anny")               # default, no licensed file needed
    result = bodyfit.fit(keypoints, model, "mediapipe33", image_size=(H, W))
    result.params, result.vertices, result.reprojection_error_px

    obs = bodyfit.Observations(keypoints, cameras, masks=..., images=...)   # views, frames
    result = bodyfit.Fitter(model)(obs, bodyfit.initialize(obs, model))

See README.md; conventions (units, frames) in each module's docstring.
"""
from bodyfit.api import fit, fit_views, initialize
from bodyfit.body_models import BodyOutput, BodyParams, body_model
from bodyfit.cameras import Camera
from bodyfit.config import ConfigError
from bodyfit.fitting import FitConfig, Fitter, FitResult, load_config
from bodyfit.observations import Observations

__version__ = "0.1.0"
__all__ = ["fit", "fit_views", "initialize", "Fitter", "FitResult", "FitConfig", "load_config",
           "Observations", "body_model", "BodyParams", "BodyOutput", "Camera", "ConfigError"]
