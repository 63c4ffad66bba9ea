"""bodyfit: fit 3D human body models to pictures.

    import bodyfit
    model = bodyfit.body_model("anny")               # default, no licensed file needed
    result = bodyfit.fit(keypoints, model, "mediapipe33", image_size=(H, W))
    result.params, result.vertices, result.reprojection_error_px

See README.md; conventions (units, frames) in each module's docstring.
"""
from bodyfit.body_models import BodyOutput, BodyParams, body_model
from bodyfit.cameras import Camera
from bodyfit.fitting import FitResult, fit

__version__ = "0.1.0"
__all__ = ["fit", "FitResult", "body_model", "BodyParams", "BodyOutput", "Camera"]
