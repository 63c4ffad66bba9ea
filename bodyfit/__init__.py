"""bodyfit: fit 3D human body models to pictures.

    import bodyfit
    model = bodyfit.body_model("anny")               # default, no licensed file needed
    result = bodyfit.fit(keypoints, model, "mediapipe33", image_size=(H, W))
    result.params, result.vertices, result.reprojection_error_px

    obs = bodyfit.Observations(keypoints, cameras, masks=..., images=...)   # views, frames
    result = bodyfit.Fitter(model)(obs, bodyfit.initialize(obs, model))

From a photo to its overlay with this module alone::

    picture = bodyfit.read_image("photo.jpg")
    with bodyfit.MediaPipePose() as detector:
        keypoints = detector.detect(picture).keypoints
    result = bodyfit.fit(keypoints, model, image_size=picture.shape[:2])
    bodyfit.save_result(result, 0, "results/photo", pictures=[picture])   # fit.npz, overlay.png...

See README.md; conventions (units, frames) in each module's docstring.
"""
from bodyfit.api import fit, fit_views, initialize
from bodyfit.body_models import BodyOutput, BodyParams, body_model
from bodyfit.cameras import Camera
from bodyfit.config import ConfigError
from bodyfit.data.images import read_image
from bodyfit.detectors import MediaPipePose
from bodyfit.fitting import FitConfig, Fitter, FitResult, load_config
from bodyfit.observations import Observations
from bodyfit.results import save_result

__version__ = "0.1.0"
__all__ = ["fit", "fit_views", "initialize", "Fitter", "FitResult", "FitConfig", "load_config",
           "Observations", "body_model", "BodyParams", "BodyOutput", "Camera", "ConfigError",
           "read_image", "MediaPipePose", "save_result"]
