"""Real, calibrated multi-view demo data from the Pose2Sim wheel on PyPI.

Pose2Sim 0.10.49 (BSD-3-Clause) ships ``Demo_SinglePerson``: one person walking on a treadmill,
filmed by 4 synchronized, calibrated cameras (``cam01`` .. ``cam04``, portrait 1920 px high,
60 fps, 100 frames each) with a Qualisys-format calibration ``Calib.qca.txt``. Cite:

    D. Pagnon, M. Domalain, L. Reveret (2022). Pose2Sim: An open-source Python package for
    multiview markerless kinematics. Journal of Open Source Software 7(77), 4362.

The wheel's dependencies are heavy (OpenSim, RTMLib, ...), so it is never installed: we
``pip download --no-deps`` the wheel (51 MB) into a cache folder and read files straight
from the zip. The cache folder is ``$BODYFIT_CACHE_DIR`` or ``~/.cache/bodyfit``.

Calibration conventions (what :func:`read_qca_calibration` returns), bodyfit's camera convention:
OpenCV camera frame (x right, y down, z forward), world -> camera ``X_cam = R @ X_world + t``,
metres, pixels. The world is the lab frame of the calibration, **Z up**, z = 0 about the floor,
origin on the treadmill (camera centres sit 1.7-2.1 m high, 2.4-4.0 m from it horizontally; in
frame 0 the person's eyes triangulate at z ~ 1.55 m and heels at z ~ 0.12 m, on the belt).
See :func:`read_qca_calibration` for how the file's numbers map onto that.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "ATTRIBUTION",
    "POSE2SIM_VERSION",
    "DEMO_CAMERAS",
    "default_cache_dir",
    "pose2sim_wheel",
    "demo_video",
    "demo_frames",
    "read_qca_calibration",
    "demo_calibration",
]

POSE2SIM_VERSION = "0.10.49"
WHEEL_NAME = f"pose2sim-{POSE2SIM_VERSION}-py3-none-any.whl"
DEMO_ROOT = "Pose2Sim/Demo_SinglePerson"
DEMO_CAMERAS = ("cam01", "cam02", "cam03", "cam04")

ATTRIBUTION = (
    "Demo videos and calibration: Pose2Sim 0.10.49 Demo_SinglePerson (BSD-3-Clause), "
    "https://pypi.org/project/pose2sim/ ; D. Pagnon, M. Domalain, L. Reveret (2022), "
    '"Pose2Sim: An open-source Python package for multiview markerless kinematics", '
    "Journal of Open Source Software 7(77), 4362."
)

# Qualisys stores pixel quantities in sub-pixel sensor units, 64 per pixel.
_QCA_SUBPIXELS = 64.0
# Qualisys camera frame (x right, y up, looking down -z) -> OpenCV (x right, y down, z forward).
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])


def default_cache_dir() -> Path:
    """``$BODYFIT_CACHE_DIR`` if set, else ``~/.cache/bodyfit``."""
    env = os.environ.get("BODYFIT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bodyfit"


def _is_good_wheel(path: Path) -> bool:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return f"{DEMO_ROOT}/calibration/Calib.qca.txt" in zf.namelist()
    except zipfile.BadZipFile:
        return False


def pose2sim_wheel(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the Pose2Sim 0.10.49 wheel, downloading it (no dependencies) if not cached.

    Looks for ``pose2sim-0.10.49-py3-none-any.whl`` in ``cache_dir`` (default
    :func:`default_cache_dir`); otherwise runs
    ``python -m pip download --no-deps pose2sim==0.10.49 -d cache_dir`` (pip's own index
    configuration applies, e.g. ``PIP_INDEX_URL``). A cached file that is not a readable wheel is
    replaced.

    Raises:
        RuntimeError: the download failed; the message holds the tail of pip's output and the
            command to run by hand.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    wheel = cache / WHEEL_NAME
    if _is_good_wheel(wheel):
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    if wheel.exists():  # truncated or corrupt: fetch again
        wheel.unlink()
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", f"pose2sim=={POSE2SIM_VERSION}",
        "-d", str(cache), "--retries", "2", "--timeout", "30", "--disable-pip-version-check",
    ]
    manual = f'{sys.executable} -m pip download --no-deps pose2sim=={POSE2SIM_VERSION} -d "{cache}"'
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        out, ok = (proc.stdout or "") + (proc.stderr or ""), proc.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as e:
        out, ok = f"{type(e).__name__}: {e}", False
    if ok and _is_good_wheel(wheel):
        return wheel
    tail = "\n".join(out.strip().splitlines()[-15:])
    raise RuntimeError(
        f"Could not obtain the Pose2Sim {POSE2SIM_VERSION} wheel (demo data) into {str(cache)!r}.\n"
        f"pip output (tail):\n{tail}\n"
        f"Download it by hand with:\n    {manual}\n"
        f"or copy {WHEEL_NAME} into that folder (or set BODYFIT_CACHE_DIR)."
    )


def _extract_member(member: str, cache_dir: str | os.PathLike | None) -> Path:
    """Extract one file of the wheel to ``cache_dir/pose2sim_demo/`` once; return its path."""
    wheel = pose2sim_wheel(cache_dir)
    out_dir = wheel.parent / "pose2sim_demo"
    dest = out_dir / Path(member).name
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(member)
        if dest.is_file() and dest.stat().st_size == info.file_size:
            return dest
        out_dir.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file and rename, so that a concurrent or interrupted extraction
        # never leaves a half-written file under the final name.
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=dest.name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f, zf.open(info) as src:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return dest


def demo_video(camera: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the demo video of ``camera`` (``"cam01"`` .. ``"cam04"``), extracted once."""
    if camera not in DEMO_CAMERAS:
        raise ValueError(f"Unknown Pose2Sim demo camera {camera!r}; known: {list(DEMO_CAMERAS)}.")
    return _extract_member(f"{DEMO_ROOT}/videos/{camera}.mp4", cache_dir)


def demo_frames(
    frame_indices=(0,),
    cameras=DEMO_CAMERAS,
    cache_dir: str | os.PathLike | None = None,
) -> list[tuple[str, np.ndarray]]:
    """Frames of the Pose2Sim demo videos as ``(name, image)`` pairs.

    Args:
        frame_indices: 0-based frame numbers (the videos have 100 frames at 60 fps; the four
            cameras are synchronized, so the same index is the same instant in every view).
        cameras: which of ``"cam01"`` .. ``"cam04"``.
        cache_dir: see :func:`pose2sim_wheel`.

    Returns:
        One ``(name, image)`` per camera and frame, cameras outermost, frames in the order given;
        ``name`` is like ``"cam01_frame000"``; ``image`` is ``(1920, W, 3)`` uint8 RGB. ``W`` is
        1080 for cam01/cam02 and 1088 for cam03/cam04 as the videos decode; the calibration
        declares 1088 for all four (pixel coordinates start at the left edge either way).

    Raises:
        RuntimeError: the wheel cannot be obtained (see :func:`pose2sim_wheel`).
        IndexError: a frame index is past the end of a video.
    """
    import cv2

    if isinstance(cameras, str):
        cameras = (cameras,)
    if isinstance(frame_indices, (int, np.integer)):
        frame_indices = (int(frame_indices),)
    frame_indices = [int(i) for i in frame_indices]
    if any(i < 0 for i in frame_indices):
        raise IndexError(f"Frame indices must be >= 0, got {frame_indices}.")
    out: list[tuple[str, np.ndarray]] = []
    for cam in cameras:
        path = demo_video(cam, cache_dir)
        frames: dict[int, np.ndarray] = {}
        wanted = sorted(set(frame_indices))
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise RuntimeError(f"OpenCV cannot open the video {str(path)!r}.")
        try:
            # Decode sequentially (grab skips the colour conversion): frame-accurate, unlike
            # CAP_PROP_POS_FRAMES seeking, and cheap for 100-frame clips.
            pos = 0
            for idx in wanted:
                while pos < idx:
                    if not cap.grab():
                        break
                    pos += 1
                ok, bgr = cap.read() if pos == idx else (False, None)
                if not ok:
                    raise IndexError(
                        f"Frame {idx} is past the end of {str(path)!r} ({pos} frames read)."
                    )
                pos += 1
                frames[idx] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
        out.extend((f"{cam}_frame{idx:03d}", frames[idx].copy()) for idx in frame_indices)
    return out


def read_qca_calibration(path_or_text) -> dict[str, dict]:
    """Parse a Qualisys ``.qca.txt`` calibration into OpenCV world -> camera cameras.

    Args:
        path_or_text: a path to the file, or its XML text (str or bytes).

    Returns:
        ``{camera_serial: {"K", "R", "t", "dist", "size", "center"}}`` in file order, with
        ``K`` (3,3) pixels; ``R`` (3,3) and ``t`` (3,) metres mapping world points into the
        OpenCV camera frame, ``X_cam = R @ X_world + t`` (x right, y down, z forward);
        ``dist`` (5,) OpenCV coefficients ``(k1, k2, p1, p2, k3)``; ``size`` ``(W, H)`` pixels;
        ``center`` (3,) camera centre in the world, metres (``= -R.T @ t``). Arrays are float64.

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
            return float(v)

        left, top = num(fov, "left"), num(fov, "top")
        size = (int(round(num(fov, "right") - left + 1)), int(round(num(fov, "bottom") - top + 1)))
        s = _QCA_SUBPIXELS
        fx, fy = num(intr, "focalLengthU") / s, num(intr, "focalLengthV") / s
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
        if np.abs(M @ M.T - np.eye(3)).max() > 1e-3:
            raise ValueError(f"Camera {name!r}: the transform r11..r33 is not a rotation matrix.")
        R = _FLIP_YZ @ M
        # Re-orthonormalize (this only removes rounding in the written digits).
        u, _, vt = np.linalg.svd(R)
        R = u @ vt
        if np.linalg.det(R) < 0:
            raise ValueError(f"Camera {name!r}: the transform is not a rotation (det < 0).")
        t = -R @ center
        out[name] = {"K": K, "R": R, "t": t, "dist": dist, "size": size, "center": center}
    return out


def _parse_xml(path_or_text) -> ET.Element:
    if isinstance(path_or_text, bytes):
        return ET.fromstring(path_or_text)
    if isinstance(path_or_text, str) and path_or_text.lstrip().startswith("<"):
        return ET.fromstring(path_or_text.encode())  # bytes: the XML declaration names ASCII
    p = Path(path_or_text)
    if not p.is_file():
        raise FileNotFoundError(f"Calibration file not found: {str(p)!r}")
    return ET.parse(p).getroot()


def demo_calibration(cache_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """Calibration of the 4 demo cameras (see :func:`read_qca_calibration`), from the wheel."""
    wheel = pose2sim_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(f"{DEMO_ROOT}/calibration/Calib.qca.txt")
    return read_qca_calibration(text)
