"""Calibrated cameras from calibration files, as bodyfit ``Camera`` objects; lens undistortion.

Supported files (:func:`load_calibration` picks the reader by extension):

- Qualisys ``.qca.txt`` (what Pose2Sim's demos ship; :func:`read_qca_calibration`);
- Pose2Sim's ``Calib.toml`` / any ``.toml`` in its layout (:func:`read_toml_calibration`).

Both readers return, per camera, OpenCV-convention numbers: ``K`` (3,3) pixels, ``R`` (3,3) and
``t`` (3,) metres with ``X_cam = R @ X_world + t`` (x right, y down, z forward), distortion
coefficients, the picture size ``(W, H)`` and the camera centre. Lens distortion is removed from
pictures (:func:`undistort_image`) and keypoints (:func:`undistort_keypoints`) before fitting, so
the fit sees exact pinhole cameras.

Security: calibration files come from users. XML with a DOCTYPE or entity declaration is refused
before it is parsed (entity expansion and external entities: "billion laughs", XXE); TOML is
plain data.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from xml.parsers import expat

import numpy as np
import torch

from bodyfit.cameras import Camera

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

__all__ = [
    "CalibratedCamera",
    "load_calibration",
    "read_qca_calibration",
    "read_toml_calibration",
    "undistort_image",
    "undistort_keypoints",
]

# Qualisys stores pixel quantities in sub-pixel sensor units, 64 per pixel.
_QCA_SUBPIXELS = 64.0
# Qualisys camera frame (x right, y up, looking down -z) -> OpenCV (x right, y down, z forward).
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])


@dataclass
class CalibratedCamera:
    """One calibrated camera.

    Attributes:
        name: the camera's name in the file.
        camera: bodyfit Camera (batch 1): K px, R, t world -> camera (metres, OpenCV axes),
            image_size (H, W).
        dist: OpenCV distortion coefficients: (5,) ``(k1, k2, p1, p2, k3)`` for the standard
            model; (4,) ``(k1, k2, k3, k4)`` when ``fisheye``.
        fisheye: the coefficients are OpenCV's fisheye model (``cv2.fisheye``).
    """

    name: str
    camera: Camera
    dist: np.ndarray
    fisheye: bool = False


def load_calibration(path: str | os.PathLike) -> list[CalibratedCamera]:
    """Read a calibration file into cameras, in file order.

    ``.qca.txt``: Qualisys (:func:`read_qca_calibration`); ``.toml``: Pose2Sim's
    ``Calib.toml`` layout (:func:`read_toml_calibration`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unsupported or malformed file (the message names the file, the camera
            and the field).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Calibration file not found: {str(p)!r}")
    name = p.name.lower()
    if name.endswith(".qca.txt"):
        try:
            calib = read_qca_calibration(p)
        except ValueError as e:  # name the file as the TOML reader does
            raise ValueError(str(e) if str(p) in str(e) else f"{p}: {e}") from None
    elif name.endswith(".toml"):
        calib = read_toml_calibration(p)
    else:
        raise ValueError(f"Unsupported calibration {p.name!r}: bodyfit reads Qualisys/Pose2Sim "
                         f"'.qca.txt' and Pose2Sim '.toml' (Calib.toml) files.")
    out = []
    for cam_name, c in calib.items():
        W, H = (int(x) for x in c["size"])
        cam = Camera(torch.tensor(c["K"], dtype=torch.float32)[None],
                     torch.tensor(c["R"], dtype=torch.float32)[None],
                     torch.tensor(c["t"], dtype=torch.float32)[None], (H, W))
        out.append(CalibratedCamera(cam_name, cam, np.asarray(c["dist"], dtype=np.float64),
                                    bool(c.get("fisheye", False))))
    return out


# -- Qualisys .qca.txt -------------------------------------------------------------------------

def read_qca_calibration(path_or_text) -> dict[str, dict]:
    """Parse a Qualisys ``.qca.txt`` calibration into OpenCV world -> camera cameras.

    Args:
        path_or_text: a path to the file, or its XML text (str or bytes).

    Returns:
        ``{camera_serial: {"K", "R", "t", "dist", "size", "center", "fisheye"}}`` in file order,
        with ``K`` (3,3) pixels; ``R`` (3,3) and ``t`` (3,) metres mapping world points into the
        OpenCV camera frame, ``X_cam = R @ X_world + t`` (x right, y down, z forward);
        ``dist`` (5,) OpenCV coefficients ``(k1, k2, p1, p2, k3)``; ``size`` ``(W, H)`` pixels;
        ``center`` (3,) camera centre in the world, metres (``= -R.T @ t``); ``fisheye`` False.
        Arrays are float64.

    How the file maps onto that (the reading Pose2Sim itself uses in
    ``Pose2Sim.calibration.read_qca`` / ``calib_qca_fun``, and the exact inverse of its writer
    ``Pose2Sim.Utilities.calib_toml_to_qca``, which produced the demo's file):

    - ``<transform x y z>`` is the camera *centre* in the world, in millimetres.
    - ``M = [[r11, r12, r13], [r21, r22, r23], [r31, r32, r33]]`` (rows as written) is the
      world -> camera rotation of a camera frame with y up and the camera looking down its -z
      (so ``M.T``, the camera's axes as world columns, is its orientation in the lab).
      Turning that frame by 180 degrees about x gives OpenCV's: ``R = diag(1, -1, -1) @ M``,
      ``t = -R @ centre / 1000``.
    - ``<intrinsic>`` focal lengths and principal point are in sub-pixel units, 64 per pixel;
      the principal point is relative to the sensor, so ``fov_video``'s left/top is subtracted.
    - Distortion coefficients are divided by 64 too (Pose2Sim's reader does, and its writer
      multiplies OpenCV's coefficients by 64). For the demo they end up below 3e-3: negligible.
    - ``size`` is ``fov_video``'s ``(right - left + 1, bottom - top + 1)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed XML, a DOCTYPE or entity declaration (refused), no camera, a
            missing element or attribute, a non-rotation.
    """
    root = _parse_xml(path_or_text)
    cams = root.findall("cameras/camera")
    if not cams:
        raise ValueError("No <cameras>/<camera> element in the Qualisys calibration.")
    out: dict[str, dict] = {}
    for i, cam in enumerate(cams):
        name = cam.get("serial") or f"cam{i + 1:02d}"
        fov = cam.find("fov_video")
        tr = cam.find("transform")
        intr = cam.find("intrinsic")
        if fov is None or tr is None or intr is None:
            raise ValueError(f"Camera {name!r}: missing fov_video, transform or intrinsic.")

        def num(el, key, default=None):
            v = el.get(key)
            if v is None:
                if default is None:
                    raise ValueError(f"Camera {name!r}: <{el.tag}> has no {key!r} attribute.")
                return default
            try:
                return float(v)
            except ValueError:
                raise ValueError(f"Camera {name!r}: <{el.tag} {key}={v!r}> is not a number.") from None

        left, top, right, bottom = (num(fov, k) for k in ("left", "top", "right", "bottom"))
        if not all(np.isfinite([left, top, right, bottom])) or right < left or bottom < top:
            raise ValueError(f"Camera {name!r}: <fov_video left={left:g} top={top:g} right={right:g} "
                             f"bottom={bottom:g}> is not a picture area (finite, right >= left, "
                             f"bottom >= top).")
        size = (int(round(right - left + 1)), int(round(bottom - top + 1)))
        s = _QCA_SUBPIXELS
        fx, fy = num(intr, "focalLengthU") / s, num(intr, "focalLengthV") / s
        if not (np.isfinite(fx) and np.isfinite(fy) and fx > 0 and fy > 0):
            raise ValueError(f"Camera {name!r}: the focal lengths must be finite and positive, got "
                             f"focalLengthU={fx * s:g}, focalLengthV={fy * s:g} (fx={fx:g}, fy={fy:g} px): "
                             f"check the calibration of this camera.")
        cx, cy = num(intr, "centerPointU") / s - left, num(intr, "centerPointV") / s - top
        K = np.array([[fx, num(intr, "skew", 0.0) / s, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        dist = np.array(
            [
                num(intr, "radialDistortion1", 0.0),
                num(intr, "radialDistortion2", 0.0),
                num(intr, "tangentalDistortion1", 0.0),
                num(intr, "tangentalDistortion2", 0.0),
                num(intr, "radialDistortion3", 0.0),
            ]
        ) / s
        M = np.array([[num(tr, f"r{r}{c}") for c in (1, 2, 3)] for r in (1, 2, 3)])
        center = np.array([num(tr, "x"), num(tr, "y"), num(tr, "z")]) / 1000.0
        for label, values in (("<intrinsic> principal point and skew", K), ("distortion", dist),
                              ("<transform> rotation r11..r33", M), ("<transform> position x, y, z", center)):
            if not np.isfinite(values).all():
                raise ValueError(f"Camera {name!r}: the {label} holds NaN or inf: check the "
                                 f"calibration of this camera.")
        if np.abs(M @ M.T - np.eye(3)).max() > 1e-3:
            raise ValueError(f"Camera {name!r}: the transform r11..r33 is not a rotation matrix.")
        R = _FLIP_YZ @ M
        # Re-orthonormalize (this only removes rounding in the written digits).
        u, _, vt = np.linalg.svd(R)
        R = u @ vt
        if np.linalg.det(R) < 0:
            raise ValueError(f"Camera {name!r}: the transform is not a rotation (det < 0).")
        t = -R @ center
        out[name] = {"K": K, "R": R, "t": t, "dist": dist, "size": size, "center": center,
                     "fisheye": False}
    return out


def _parse_xml(path_or_text) -> ET.Element:
    """The root element of an XML file (a path) or text (str starting with ``<``, or bytes).

    A document with a DOCTYPE or an entity declaration is refused before ElementTree sees it:
    entity expansion ("billion laughs") and external entities have no place in a calibration.
    """
    if isinstance(path_or_text, bytes):
        data, source = path_or_text, "calibration XML"
    elif isinstance(path_or_text, str) and path_or_text.lstrip().startswith("<"):
        data, source = path_or_text.encode(), "calibration XML"  # the declaration may name ASCII
    else:
        p = Path(path_or_text)
        if not p.is_file():
            raise FileNotFoundError(f"Calibration file not found: {str(p)!r}")
        data, source = p.read_bytes(), str(p)
    _check_xml(data, source)
    return ET.fromstring(data)


def _check_xml(data: bytes, source: str) -> None:
    """Parse once with bare expat: well-formed, and no DOCTYPE or entity declaration."""
    def refuse(*_):
        raise ValueError(f"{source}: the XML declares a DOCTYPE or entities; calibration files "
                         f"have none, so it is refused (entity expansion / external entities).")

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise ValueError(f"{source}: not well-formed XML ({e}).") from None


# -- Pose2Sim Calib.toml -----------------------------------------------------------------------

def read_toml_calibration(path_or_text) -> dict[str, dict]:
    """Parse a Pose2Sim ``Calib.toml`` calibration.

    The file has one table per camera (``[cam_01]`` ...) with ``name`` (optional; the table's
    key otherwise), ``size`` ``[W, H]`` pixels, ``matrix`` the 3x3 intrinsics ``K`` in pixels,
    ``distortions`` ``[k1, k2, p1, p2]`` (OpenCV's model; a fifth ``k3`` is accepted) or, with
    ``fisheye = true``, ``[k1, k2, k3, k4]`` (OpenCV's fisheye model), ``rotation`` the
    world -> camera rotation as a Rodrigues vector (radians), ``translation`` metres, and
    ``fisheye`` (optional, false). These are OpenCV's own ``rvec``/``tvec``: ``X_cam =
    R @ X_world + t``. A ``[metadata]`` table is skipped.

    Args:
        path_or_text: a path to the file, or its text (bytes, or a str holding a newline).

    Returns:
        ``{name: {"K", "R", "t", "dist", "size", "center", "fisheye"}}`` in file order, as
        :func:`read_qca_calibration` (``dist`` (5,) for the standard model, zeros padded; (4,)
        for fisheye).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not TOML, no camera table, or a camera with a missing or malformed field
            (the message names the file, the camera and the field).
    """
    import cv2

    if isinstance(path_or_text, bytes):
        text, source = path_or_text.decode("utf-8"), "calibration TOML"
    elif isinstance(path_or_text, str) and "\n" in path_or_text:
        text, source = path_or_text, "calibration TOML"
    else:
        p = Path(path_or_text)
        if not p.is_file():
            raise FileNotFoundError(f"Calibration file not found: {str(p)!r}")
        text, source = p.read_text(encoding="utf-8"), str(p)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source}: not valid TOML ({e}).") from None
    out: dict[str, dict] = {}
    for key, table in doc.items():
        if key == "metadata":
            continue
        if not isinstance(table, dict):
            raise ValueError(f"{source}: top-level {key!r} is not a camera table ([{key}] with "
                             f"size, matrix, distortions, rotation, translation).")
        name = table.get("name", key)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: [{key}] name must be a non-empty string, got {name!r}.")
        where = f"{source}: camera {name!r} ([{key}])"
        if name in out:
            raise ValueError(f"{where}: the name appears twice.")

        def field(k, shape):
            if k not in table:
                raise ValueError(f"{where}: missing {k!r}.")
            try:
                a = np.asarray(table[k], dtype=np.float64)
            except (TypeError, ValueError):
                a = None
            if a is None or a.shape != shape or not np.isfinite(a).all():
                want = "x".join(str(n) for n in shape)
                raise ValueError(f"{where}: {k!r} must be {want} finite numbers, got {table[k]!r}.")
            return a

        fisheye = table.get("fisheye", False)
        if not isinstance(fisheye, bool):
            raise ValueError(f"{where}: 'fisheye' must be true or false, got {fisheye!r}.")
        size = field("size", (2,))
        if not (np.all(size >= 1) and np.all(size == np.round(size))):
            raise ValueError(f"{where}: 'size' must be [width, height] in whole pixels, got "
                             f"{table['size']!r}.")
        K = field("matrix", (3, 3))
        if K[0, 0] <= 0 or K[1, 1] <= 0 or np.abs(K[2] - [0.0, 0.0, 1.0]).max() > 1e-9 or K[1, 0] != 0:
            raise ValueError(f"{where}: 'matrix' must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] "
                             f"with fx, fy > 0 pixels, got {table['matrix']!r}.")
        given = table.get("distortions")
        dist = field("distortions", (5,) if not fisheye and isinstance(given, list) and len(given) == 5
                     else (4,))
        if not fisheye:
            dist = np.concatenate([dist, np.zeros(5 - dist.size)])
        rvec = field("rotation", (3,))
        t = field("translation", (3,))
        R = cv2.Rodrigues(rvec)[0]
        out[name] = {"K": K, "R": R, "t": t, "dist": dist,
                     "size": (int(size[0]), int(size[1])), "center": -R.T @ t, "fisheye": fisheye}
    if not out:
        raise ValueError(f"{source}: no camera table ([cam_01] with size, matrix, distortions, "
                         f"rotation, translation).")
    return out


# -- undistortion ------------------------------------------------------------------------------

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
    if cam.fisheye:
        return cv2.fisheye.undistortImage(image, K, cam.dist, Knew=K, new_size=(W, H))
    return cv2.undistort(image, K, cam.dist, newCameraMatrix=K)


def undistort_keypoints(keypoints, K, dist, new_K=None, fisheye: bool = False) -> np.ndarray:
    """Remove lens distortion from pixel keypoints (OpenCV's model, ``cv2.undistortPointsIter``;
    with ``fisheye``, ``cv2.fisheye.undistortPoints``).

    Args:
        keypoints: ``(..., K, 3)``: x, y in pixels of the distorted picture and a confidence;
            or ``(..., K, 2)``.
        K: ``(3, 3)`` intrinsics of the distorted picture, pixels.
        dist: OpenCV distortion coefficients ``(k1, k2, p1, p2[, k3[, ...]])``; with
            ``fisheye`` ``(k1, k2, k3, k4)``.
        new_K: ``(3, 3)`` intrinsics of the output pixels (default ``K``, so the undistorted
            picture keeps the same K, as ``cv2.undistort(img, K, dist)`` does).
        fisheye: ``dist`` is OpenCV's fisheye model.

    Returns:
        Same shape, float64 (float32 input stays float32): undistorted x, y in ``new_K``'s
        pixels; the confidence is kept. Keypoints with confidence 0 (missing) or non-finite
        coordinates are returned untouched.

    Raises:
        ValueError: ``keypoints`` is not ``(..., K, 2 or 3)``; ``K``/``new_K`` not ``(3, 3)``;
            fisheye ``dist`` not 4 numbers.
    """
    import cv2

    kp = np.asarray(keypoints)
    if kp.ndim < 2 or kp.shape[-1] not in (2, 3):
        raise ValueError(f"keypoints must have shape (..., K, 3) or (..., K, 2), got {kp.shape}.")
    K = np.asarray(K, dtype=np.float64)
    new_K = K if new_K is None else np.asarray(new_K, dtype=np.float64)
    if K.shape != (3, 3) or new_K.shape != (3, 3):
        raise ValueError(f"K and new_K must be (3, 3), got {K.shape} and {new_K.shape}.")
    dist = np.asarray(dist, dtype=np.float64).ravel()
    if fisheye and dist.size != 4:
        raise ValueError(f"fisheye distortion must be 4 numbers (k1, k2, k3, k4), got {dist.size}.")
    out_dtype = kp.dtype if kp.dtype in (np.float32, np.float64) else np.float64
    out = kp.astype(out_dtype, copy=True)
    flat = out.reshape(-1, kp.shape[-1])
    use = np.isfinite(flat[:, :2]).all(1)
    if kp.shape[-1] == 3:
        use &= flat[:, 2] > 0
    if use.any():
        src = flat[use, :2].astype(np.float64).reshape(-1, 1, 2)
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
        if fisheye:
            dst = cv2.fisheye.undistortPoints(src, K, dist, R=np.eye(3), P=new_K, criteria=crit)
        else:
            dst = cv2.undistortPointsIter(src, K, dist, None, new_K, crit)
        flat[use, :2] = dst.reshape(-1, 2)
    return out
