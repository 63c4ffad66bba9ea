"""Calibrated cameras from calibration files, as bodyfit ``Camera`` objects.

Supported: Qualisys ``.qca.txt`` (what Pose2Sim writes and its demo ships; see
``bodyfit.data.pose2sim.read_qca_calibration`` for how it maps onto OpenCV's convention).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bodyfit.cameras import Camera


@dataclass
class CalibratedCamera:
    """One calibrated camera.

    Attributes:
        name: the camera's name in the file.
        camera: bodyfit Camera (batch 1): K px, R, t world -> camera (metres, OpenCV axes),
            image_size (H, W).
        dist: (5,) OpenCV distortion coefficients (k1, k2, p1, p2, k3).
    """

    name: str
    camera: Camera
    dist: np.ndarray


def load_calibration(path: str | os.PathLike) -> list[CalibratedCamera]:
    """Read a calibration file into cameras, in file order.

    Raises:
        FileNotFoundError: no such file. ValueError: an unsupported or malformed file.
    """
    from bodyfit.data.pose2sim import read_qca_calibration

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Calibration file not found: {str(p)!r}")
    if not p.name.endswith(".qca.txt"):
        raise ValueError(f"Unsupported calibration {p.name!r}: bodyfit reads Qualisys/Pose2Sim "
                         f"'.qca.txt' files.")
    out = []
    for name, c in read_qca_calibration(p).items():
        W, H = (int(x) for x in c["size"])
        cam = Camera(torch.tensor(c["K"], dtype=torch.float32)[None],
                     torch.tensor(c["R"], dtype=torch.float32)[None],
                     torch.tensor(c["t"], dtype=torch.float32)[None], (H, W))
        out.append(CalibratedCamera(name, cam, np.asarray(c["dist"], dtype=np.float64)))
    return out


def undistort_image(image: np.ndarray, cam: CalibratedCamera) -> np.ndarray:
    """The picture as the pinhole camera ``cam.camera`` (same K) would have taken it.

    Raises:
        ValueError: the picture's size is not the calibration's.
    """
    import cv2

    H, W = cam.camera.image_size
    if tuple(image.shape[:2]) != (H, W):
        raise ValueError(f"picture is {image.shape[1]}x{image.shape[0]} but camera {cam.name!r} "
                         f"is calibrated for {W}x{H}: use the calibration of this camera and "
                         f"resolution.")
    if not np.any(cam.dist):
        return image
    K = cam.camera.K[0].double().numpy()
    return cv2.undistort(image, K, cam.dist, newCameraMatrix=K)
