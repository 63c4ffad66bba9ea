"""Real, calibrated multi-view demo data from the Pose2Sim wheel on PyPI.

Pose2Sim 0.10.49 (BSD-3-Clause) ships ``Demo_SinglePerson``: one person walking on a treadmill,
filmed by 4 synchronized, calibrated cameras (``cam01`` .. ``cam04``, portrait 1920 px high,
60 fps, 100 frames each) with a Qualisys-format calibration ``Calib.qca.txt``. Cite:

    D. Pagnon, M. Domalain, L. Reveret (2022). Pose2Sim: An open-source Python package for
    multiview markerless kinematics. Journal of Open Source Software 7(77), 4362.

The wheel's dependencies are heavy (OpenSim, RTMLib, ...), so it is never installed: we
``pip download --no-deps`` the wheel (51 MB) into a cache folder and read files straight
from the zip. The cache folder is ``$BODYFIT_CACHE_DIR`` or ``~/.cache/bodyfit``.

Calibration conventions (what :func:`bodyfit.data.calibration.read_qca_calibration` returns),
bodyfit's camera convention: OpenCV camera frame (x right, y down, z forward), world -> camera
``X_cam = R @ X_world + t``, metres, pixels. The world is the lab frame of the calibration,
**Z up**, z = 0 about the floor, origin on the treadmill (camera centres sit 1.7-2.1 m high,
2.4-4.0 m from it horizontally; in frame 0 the person's eyes triangulate at z ~ 1.55 m and heels
at z ~ 0.12 m, on the belt). The Qualisys format and how its numbers map onto that are in
:mod:`bodyfit.data.calibration`; decoding in :func:`bodyfit.data.images.read_video_frames`.

Pixels: the calibration describes 1088 x 1920 pictures. cam03/cam04 decode at that size;
cam01/cam02 decode 1080 x 1920 because they were scaled down by 1080/1088 and letterboxed with 7
black rows above and below (:func:`video_to_calibration` has the map and the evidence).
:func:`demo_views` puts every view back on the calibration's grid (optionally undistorted), so
one :class:`~bodyfit.cameras.Camera` of batch 4 (:func:`demo_cameras`) describes all views;
:func:`demo_keypoints` gives MediaPipe-33 keypoints in the same pixels, detected once and cached.
Multi-view triangulation is in :mod:`bodyfit.triangulation`.

Everything here is deterministic: the same frames decode to the same pixels, and the cached
detections are reused (MediaPipe runs once per frame and view).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bodyfit.data.calibration import read_qca_calibration, undistort_keypoints
from bodyfit.data.images import read_video_frames
from bodyfit.files import atomic_save_npz, atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "ATTRIBUTION",
    "POSE2SIM_VERSION",
    "DEMO_CAMERAS",
    "default_cache_dir",
    "pose2sim_wheel",
    "pose2sim_member",
    "demo_video",
    "demo_frames",
    "demo_calibration",
    "DEMO_NUM_FRAMES",
    "DEMO_VIDEO_SIZES",
    "DEMO_CALIBRATION_SIZE",
    "video_to_calibration",
    "demo_cameras",
    "MultiViewFrames",
    "demo_views",
    "demo_keypoints",
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
    # pip writes into a private folder; the wheel then replaces the cached name atomically, so
    # an interrupted download or a concurrent process never sees half a wheel under that name.
    part = Path(tempfile.mkdtemp(dir=cache, prefix=".pose2sim-download."))
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", f"pose2sim=={POSE2SIM_VERSION}",
        "-d", str(part), "--retries", "2", "--timeout", "30", "--disable-pip-version-check",
    ]
    manual = f'{sys.executable} -m pip download --no-deps pose2sim=={POSE2SIM_VERSION} -d "{cache}"'
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            out, ok = (proc.stdout or "") + (proc.stderr or ""), proc.returncode == 0
        except (OSError, subprocess.TimeoutExpired) as e:
            out, ok = f"{type(e).__name__}: {e}", False
        if ok and _is_good_wheel(part / WHEEL_NAME):
            with open(part / WHEEL_NAME, "rb") as src:
                atomic_write(wheel, lambda f: shutil.copyfileobj(src, f, 1 << 20))
            return wheel
    finally:
        shutil.rmtree(part, ignore_errors=True)
    tail = "\n".join(out.strip().splitlines()[-15:])
    raise RuntimeError(
        f"Could not obtain the Pose2Sim {POSE2SIM_VERSION} wheel (demo data) into {str(cache)!r}.\n"
        f"pip output (tail):\n{tail}\n"
        f"Download it by hand with:\n    {manual}\n"
        f"or copy {WHEEL_NAME} into that folder (or set BODYFIT_CACHE_DIR)."
    )


def pose2sim_member(member: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Extract one file of the Pose2Sim wheel (``member``: its path inside the wheel, e.g.
    ``"Pose2Sim/Demo_MultiPerson/videos/cam01.mp4"``) to ``<cache>/pose2sim_demo/`` once, under
    its file name prefixed by its demo folder; return that path.

    Raises:
        RuntimeError: the wheel cannot be obtained (see :func:`pose2sim_wheel`).
        KeyError: no such member in the wheel.
    """
    wheel = pose2sim_wheel(cache_dir)
    out_dir = wheel.parent / "pose2sim_demo"
    parts = Path(member).parts
    # Demo_SinglePerson's videos keep their bare names (existing caches); other demos' are prefixed.
    prefix = "" if member.startswith(DEMO_ROOT) or len(parts) < 3 else parts[1] + "_"
    dest = out_dir / (prefix + parts[-1])
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(member)
        if dest.is_file() and dest.stat().st_size == info.file_size:
            return dest
        out_dir.mkdir(parents=True, exist_ok=True)
        # Atomic, so a concurrent or interrupted extraction never leaves a half-written file
        # under the final name.
        with zf.open(info) as src:
            atomic_write(dest, lambda f: shutil.copyfileobj(src, f, 1 << 20))
    return dest


def demo_video(camera: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the demo video of ``camera`` (``"cam01"`` .. ``"cam04"``), extracted once."""
    if camera not in DEMO_CAMERAS:
        raise ValueError(f"Unknown Pose2Sim demo camera {camera!r}; known: {list(DEMO_CAMERAS)}.")
    return pose2sim_member(f"{DEMO_ROOT}/videos/{camera}.mp4", cache_dir)


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
        ``name`` is like ``"cam01_frame000"``; ``image`` is ``(1920, W, 3)`` uint8 RGB, exactly
        as the video decodes: ``W`` is 1088 for cam03/cam04, whose pixels are the calibration's;
        cam01/cam02 decode 1080 wide and are the calibrated 1088 x 1920 picture scaled down by
        1080/1088 and letterboxed with 7 black rows at the top and bottom, so the calibration's
        ``K`` does not apply to them as they are: use ``demo_calibration()[cam]["K_video"]`` for
        these pixels (see :func:`video_to_calibration`), or :func:`demo_views`, which puts every
        view on its calibration's pixel grid.

    Raises:
        RuntimeError: the wheel cannot be obtained (see :func:`pose2sim_wheel`).
        IndexError: a frame index is past the end of a video.
    """
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
        frames = dict(_iter_video(path, frame_indices))
        out.extend((f"{cam}_frame{idx:03d}", frames[idx].copy()) for idx in frame_indices)
    return out


def _iter_video(path: Path, frame_indices):
    """Yield ``(index, RGB frame)`` for the distinct wanted indices, in increasing order
    (:func:`bodyfit.data.images.read_video_frames`). Raises IndexError for an index past the end."""
    wanted = sorted({int(i) for i in frame_indices})
    return zip(wanted, (img for _, img in read_video_frames(path, frames=wanted)))


def demo_calibration(cache_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """Calibration of the 4 demo cameras (see :func:`read_qca_calibration`), from the wheel.

    Besides :func:`read_qca_calibration`'s keys, each camera has ``"video_size"`` ``(W, H)``, the
    size its video decodes to, and ``"K_video"``, the intrinsics for those decoded pixels
    (``inv(video_to_calibration(cam)) @ K``: ``K`` itself for cam03/cam04; for cam01/cam02,
    whose videos are downscaled by 1080/1088 and letterboxed, ``fx, fy, cx`` scaled by
    1080/1088 and ``cy`` too, plus the 7-row bar). ``K`` and ``size`` are the calibration's
    1088 x 1920 grid, which :func:`demo_views` and :func:`demo_keypoints` use.
    """
    wheel = pose2sim_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(f"{DEMO_ROOT}/calibration/Calib.qca.txt")
    return _with_video_intrinsics(read_qca_calibration(text))


# ---------------------------------------------------------------------------------------------
# Decoded video pixels vs the calibration's pixel grid; multi-view frames; cached keypoints
# ---------------------------------------------------------------------------------------------

DEMO_NUM_FRAMES = 100
#: ``(width, height)`` of each demo video as it decodes.
DEMO_VIDEO_SIZES = {
    "cam01": (1080, 1920),
    "cam02": (1080, 1920),
    "cam03": (1088, 1920),
    "cam04": (1088, 1920),
}
#: Where the calibrated 1088 x 1920 picture lies inside each decoded frame that is not already
#: on the calibration's grid: ``(x0, y0, width, height)`` in decoded pixels, measured from the
#: frame's top-left *corner*. cam01/cam02 were scaled down uniformly by 1080/1088 (to
#: 1080 x 1906) and letterboxed with 7 black rows above and 7 below. Evidence (from the demo's
#: own files): rows 0-6 and 1913-1919 of every cam01/cam02 frame are black (mean < 4 / 255),
#: the other rows are picture; and SIFT registration of the frames onto the demo's 1088 x 1920
#: calibration pictures (``calibration/extrinsics/camXX_ext.png``, the same static room; frames
#: 0, 50, 99) fits a uniform scale 1.0073-1.0076 (1088/1080 = 1.00741, 1920/1906 = 1.00735) and
#: offsets x ~ 0, y ~ -7.2 px for cam01/cam02, and the identity for cam03/cam04 (scale 1.0000,
#: offsets < 0.06 px). The matches' median residual under this model is below 0.07 px in x and y
#: for every camera (550-1200 inliers per frame, RMS 0.4-0.75 px).
_CONTENT_BOX = {"cam01": (0.0, 7.0, 1080.0, 1906.0), "cam02": (0.0, 7.0, 1080.0, 1906.0)}
#: The calibration's image size ``(width, height)`` for all four demo cameras.
DEMO_CALIBRATION_SIZE = (1088, 1920)

_DETECTION_FORMAT = 2  # bump when the cached keypoints change (2: MediaPipePose runs the multi-person graphs)
_MASK_DOWNSAMPLE = 4


def video_to_calibration(camera: str) -> np.ndarray:
    """``(3, 3)`` affine map from a demo video's decoded pixels to its calibration's pixels.

    ``[x_cal, y_cal, 1] = A @ [x_video, y_video, 1]`` with bodyfit's pixel convention (the centre
    of pixel ``(col, row)`` at ``(col, row)``). The identity for cam03/cam04; for cam01/cam02 it
    undoes the 1080/1088 downscale and the 7-row letterbox (see ``_CONTENT_BOX`` in the source
    for the evidence). The intrinsics for decoded pixels are ``inv(A) @ K`` (``"K_video"`` in
    :func:`demo_calibration`); distortion coefficients are unchanged (they act on normalized
    coordinates).

    Raises:
        ValueError: unknown camera.
    """
    if camera not in DEMO_CAMERAS:
        raise ValueError(f"Unknown Pose2Sim demo camera {camera!r}; known: {list(DEMO_CAMERAS)}.")
    A = np.eye(3)
    if camera in _CONTENT_BOX:
        x0, y0, w, h = _CONTENT_BOX[camera]
        W, H = DEMO_CALIBRATION_SIZE
        sx, sy = W / w, H / h
        A[0] = [sx, 0.0, (0.5 - x0) * sx - 0.5]
        A[1] = [0.0, sy, (0.5 - y0) * sy - 0.5]
    return A


def _with_video_intrinsics(calib: dict[str, dict]) -> dict[str, dict]:
    for name, c in calib.items():
        if name in DEMO_VIDEO_SIZES:
            c["K_video"] = np.linalg.inv(video_to_calibration(name)) @ c["K"]
            c["video_size"] = DEMO_VIDEO_SIZES[name]
    return calib


def demo_cameras(cameras=DEMO_CAMERAS, cache_dir: str | os.PathLike | None = None):
    """The demo cameras as one bodyfit :class:`~bodyfit.cameras.Camera` of batch ``V``.

    float32; ``K`` from the calibration (pixels of the calibration's 1088 x 1920 grid, which is
    what :func:`demo_views` and :func:`demo_keypoints` return); ``R``, ``t`` world -> camera in
    metres (world: the lab, Z up); ``image_size`` ``(1920, 1088)``. Pinhole: the (tiny) lens
    distortion is removed from the pictures and keypoints instead.
    """
    import torch

    from bodyfit.cameras import Camera

    cameras = _camera_list(cameras)
    calib = demo_calibration(cache_dir)

    def stack(key):
        return torch.tensor(np.stack([calib[c][key] for c in cameras]), dtype=torch.float32)

    W, H = DEMO_CALIBRATION_SIZE
    return Camera(K=stack("K"), R=stack("R"), t=stack("t"), image_size=(H, W))


def _camera_list(cameras) -> list[str]:
    if isinstance(cameras, str):
        cameras = (cameras,)
    cameras = list(cameras)
    if not cameras:
        raise ValueError("Give at least one camera.")
    for c in cameras:
        if c not in DEMO_CAMERAS:
            raise ValueError(f"Unknown Pose2Sim demo camera {c!r}; known: {list(DEMO_CAMERAS)}.")
    return cameras


def _frame_list(frames) -> list[int]:
    if isinstance(frames, (int, np.integer)):
        frames = [frames]
    frames = [int(f) for f in frames]
    if not frames:
        raise ValueError("Give at least one frame index.")
    bad = [f for f in frames if not 0 <= f < DEMO_NUM_FRAMES]
    if bad:
        raise IndexError(
            f"Frame indices must be in [0, {DEMO_NUM_FRAMES}) (the demo videos have "
            f"{DEMO_NUM_FRAMES} frames), got {bad}."
        )
    return frames


def _view_maps(camera: str, K: np.ndarray, dist: np.ndarray, undistort: bool):
    """``(map_x, map_y)`` float32 ``(1920, 1088)`` maps for ``cv2.remap``: for each pixel of the
    calibration grid (undistorted when asked), where to read the decoded video frame; None when
    the frame is already that picture."""
    import cv2

    W, H = DEMO_CALIBRATION_SIZE
    A = video_to_calibration(camera)
    if undistort and np.any(dist):
        mx, my = cv2.initUndistortRectifyMap(K, dist, None, K, (W, H), cv2.CV_32FC1)
    elif camera in _CONTENT_BOX:
        mx, my = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    else:
        return None
    if camera in _CONTENT_BOX:  # calibration pixels -> decoded pixels
        Ai = np.linalg.inv(A)
        mx, my = (
            (Ai[0, 0] * mx + Ai[0, 2]).astype(np.float32),
            (Ai[1, 1] * my + Ai[1, 2]).astype(np.float32),
        )
    return mx, my


@dataclass
class MultiViewFrames:
    """Synchronized, calibrated views of the Pose2Sim demo (see :func:`demo_views`).

    Attributes:
        images: ``images[i][v]`` is frame ``frames[i]`` seen by view ``names[v]``: ``(H, W, 3)``
            uint8 RGB on the calibration's pixel grid (H, W = 1920, 1088 for every view).
        cameras: :class:`~bodyfit.cameras.Camera` of batch ``V`` (float32; K in pixels of
            ``images``; R, t world -> camera, metres; ``image_size`` ``(H, W)``).
        names: camera names, one per view.
        frames: frame indices (60 fps), one per entry of ``images``.
        undistorted: whether lens distortion was removed (then ``cameras`` is exact as a
            pinhole camera); otherwise ``dist`` applies.
        dist: ``(V, 5)`` OpenCV distortion coefficients of the views (of the original pictures).
        masks: None, or ``masks[i][v]`` ``(H, W)`` float32 MediaPipe person probability in
            [0, 1] on the same grid as ``images`` (all zero where no person was found).
        source: where the pictures come from and their license (:data:`ATTRIBUTION`): cite it
            wherever they are shown or redistributed.
    """

    images: list[list[np.ndarray]]
    cameras: object
    names: tuple[str, ...]
    frames: list[int]
    undistorted: bool
    dist: np.ndarray
    masks: list[list[np.ndarray]] | None = None
    source: str = ATTRIBUTION

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels, shared by every view."""
        return tuple(self.cameras.image_size)

    def stacked(self) -> np.ndarray:
        """The images as one ``(T, V, H, W, 3)`` uint8 array."""
        return np.stack([np.stack(views) for views in self.images])


def demo_views(
    frames,
    cameras=DEMO_CAMERAS,
    undistort: bool = True,
    masks: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> MultiViewFrames:
    """Synchronized frames of several demo views, on the calibration's pixel grid.

    Every view is returned as the calibrated camera took it: 1088 x 1920 pixels, with the
    calibration's own ``K``. cam03/cam04 decode that way; cam01/cam02 decode as a 1080/1088
    downscale letterboxed by 7 black rows (see :func:`video_to_calibration`), and are resampled
    back (bilinear; the bars fall outside). With ``undistort`` the lens distortion is removed in
    the same resampling, keeping ``K`` (as ``cv2.undistort(img, K, dist, newCameraMatrix=K)``):
    then ``cameras`` is an exact pinhole camera for the pictures. One interpolation at most per
    picture; cam03/cam04 without ``undistort`` are the decoded pixels themselves. Because every
    view shares one size, ``cameras`` is a single :class:`Camera` of batch V (not a list).

    Data: Pose2Sim's ``Demo_SinglePerson`` (BSD-3-Clause; cite :data:`ATTRIBUTION`).

    Args:
        frames: frame indices in [0, 100) (an int for one), in the order wanted.
        cameras: names of the views, any of ``"cam01"`` .. ``"cam04"``, in the order wanted.
        undistort: remove lens distortion (the demo's is tiny: it moves pixels by at most
            0.15 px).
        masks: also return MediaPipe person masks, from the cache of :func:`demo_keypoints`
            (computing the detections once if needed; stored at 1/4 resolution, upsampled).
        cache_dir: see :func:`pose2sim_wheel`.

    Returns:
        A :class:`MultiViewFrames`.

    Raises:
        RuntimeError: the wheel cannot be obtained, or a video decodes to an unexpected size.
        IndexError: a frame index outside [0, 100). ValueError: an unknown camera.
    """
    import cv2

    frame_list = _frame_list(frames)
    names = _camera_list(cameras)
    calib = demo_calibration(cache_dir)
    W, H = DEMO_CALIBRATION_SIZE
    per_view: list[dict[int, np.ndarray]] = []
    for cam in names:
        c = calib[cam]
        maps = _view_maps(cam, c["K"], c["dist"], undistort)
        got: dict[int, np.ndarray] = {}
        for idx, img in _iter_video(demo_video(cam, cache_dir), frame_list):
            if (img.shape[1], img.shape[0]) != DEMO_VIDEO_SIZES[cam]:
                raise RuntimeError(
                    f"{cam} frame {idx} decodes to {img.shape[1]}x{img.shape[0]}, expected "
                    f"{DEMO_VIDEO_SIZES[cam]}: this is not the Pose2Sim {POSE2SIM_VERSION} demo."
                )
            if maps is not None:
                img = cv2.remap(img, maps[0], maps[1], cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            got[idx] = img
        per_view.append(got)
    images = [[per_view[v][f].copy() for v in range(len(names))] for f in frame_list]
    mask_list = None
    if masks:
        small = _detections(frame_list, names, cache_dir)["masks"]  # (T, V, h, w) uint8
        mask_list = []
        for i in range(len(frame_list)):
            row = []
            for v, cam in enumerate(names):
                m = cv2.resize(small[i, v].astype(np.float32) / 255.0, (W, H),
                               interpolation=cv2.INTER_LINEAR)
                if undistort and np.any(calib[cam]["dist"]):
                    K = calib[cam]["K"]
                    mx, my = cv2.initUndistortRectifyMap(K, calib[cam]["dist"], None, K, (W, H),
                                                         cv2.CV_32FC1)
                    m = cv2.remap(m, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                row.append(np.clip(m, 0.0, 1.0))
            mask_list.append(row)
    return MultiViewFrames(
        images=images,
        cameras=demo_cameras(names, cache_dir),
        names=tuple(names),
        frames=frame_list,
        undistorted=bool(undistort),
        dist=np.stack([calib[c]["dist"] for c in names]),
        masks=mask_list,
    )


# -- MediaPipe keypoints, detected once and cached ---------------------------------------------

def _detector_tag() -> str:
    try:
        import mediapipe

        version = getattr(mediapipe, "__version__", "unknown")
    except ImportError:
        version = "none"
    return f"mediapipe{version}-full-v{_DETECTION_FORMAT}"


def _detection_cache_path(cache_dir: str | os.PathLike | None) -> Path:
    """Where the demo's detections are cached: next to the extracted videos, one file per
    detector version (MediaPipe's version, model, and this module's storage format)."""
    return pose2sim_wheel(cache_dir).parent / "pose2sim_demo" / f"keypoints_{_detector_tag()}.npz"


def _empty_store() -> dict[str, np.ndarray]:
    W, H = DEMO_CALIBRATION_SIZE
    n, v = DEMO_NUM_FRAMES, len(DEMO_CAMERAS)
    return {
        "keypoints": np.zeros((n, v, 33, 3), np.float32),
        "found": np.zeros((n, v), bool),
        "done": np.zeros((n, v), bool),
        "masks": np.zeros((n, v, H // _MASK_DOWNSAMPLE, W // _MASK_DOWNSAMPLE), np.uint8),
    }


def _load_store(path: Path) -> dict[str, np.ndarray]:
    store = _empty_store()
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                ok = str(z["tag"]) == _detector_tag() and list(z["cameras"]) == list(DEMO_CAMERAS)
                if ok and all(z[k].shape == store[k].shape for k in store):
                    store = {k: z[k].copy() for k in store}
        except Exception:  # unreadable (interrupted write elsewhere, old format): recompute
            pass
    return store


def _save_store(path: Path, store: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(path, compress=True, tag=np.array(_detector_tag()),
                    cameras=np.array(DEMO_CAMERAS), **store)


def _detect_missing(store, frames: list[int], cameras: list[str], cache_dir, path: Path) -> None:
    """Run MediaPipe on the (frame, camera) pairs not in ``store`` yet; save after each camera."""
    import cv2

    W, H = DEMO_CALIBRATION_SIZE
    detector = None
    try:
        for cam in cameras:
            v = DEMO_CAMERAS.index(cam)
            need = sorted({f for f in frames if not store["done"][f, v]})
            if not need:
                continue
            if detector is None:
                from bodyfit.detectors.mediapipe_pose import MediaPipePose

                detector = MediaPipePose(enable_segmentation=True)
            from bodyfit.detectors.mediapipe_pose import NoPersonError

            A = video_to_calibration(cam)[:2]
            for idx, img in _iter_video(demo_video(cam, cache_dir), need):
                try:
                    d = detector.detect(img)
                except NoPersonError:
                    store["keypoints"][idx, v] = 0.0
                    store["masks"][idx, v] = 0
                    store["found"][idx, v] = False
                else:
                    kp = np.nan_to_num(d.keypoints, nan=0.0, posinf=0.0, neginf=0.0)
                    store["keypoints"][idx, v] = kp
                    store["found"][idx, v] = True
                    m = d.mask if d.mask is not None else np.zeros(img.shape[:2], np.float32)
                    m = cv2.warpAffine(m, A, (W, H), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                    m = cv2.resize(m, (W // _MASK_DOWNSAMPLE, H // _MASK_DOWNSAMPLE),
                                   interpolation=cv2.INTER_AREA)
                    store["masks"][idx, v] = np.round(np.clip(m, 0, 1) * 255).astype(np.uint8)
                store["done"][idx, v] = True
            _save_store(path, store)
    finally:
        if detector is not None:
            detector.close()


def _detections(frames: list[int], cameras: list[str], cache_dir) -> dict[str, np.ndarray]:
    """Cached raw detections for ``frames`` x ``cameras``: keypoints ``(T, V, 33, 3)`` in
    *decoded* video pixels (as the detector returned them), found ``(T, V)``, masks
    ``(T, V, 480, 272)`` uint8 on the calibration grid (distorted), 1/4 resolution."""
    path = _detection_cache_path(cache_dir)
    store = _load_store(path)
    vi = [DEMO_CAMERAS.index(c) for c in cameras]
    if not store["done"][np.ix_(frames, vi)].all():
        _detect_missing(store, frames, cameras, cache_dir, path)
    sel = np.ix_(frames, vi)
    return {k: store[k][sel] for k in ("keypoints", "found", "masks")}


def demo_keypoints(
    frames,
    cameras=DEMO_CAMERAS,
    cache_dir: str | os.PathLike | None = None,
    undistort: bool = True,
    return_misses: bool = False,
):
    """MediaPipe-33 keypoints of the demo person in every frame and view, detected once, cached.

    MediaPipe Pose (:class:`bodyfit.detectors.MediaPipePose`, full model, one picture at a time)
    runs on each decoded frame; the keypoints are then mapped onto the calibration's pixel grid
    (:func:`video_to_calibration`) and, with ``undistort``, undistorted with the calibration's
    ``K`` and ``dist`` (:func:`undistort_keypoints`, same K), so they match :func:`demo_views`
    with the same ``undistort`` and :func:`demo_cameras` as a pinhole camera. Data: Pose2Sim's
    ``Demo_SinglePerson`` (BSD-3-Clause; cite :data:`ATTRIBUTION`); MediaPipe is Apache-2.0.

    The detections (keypoints as detected, and person masks at 1/4 resolution) are stored in
    ``<cache>/pose2sim_demo/keypoints_mediapipe<version>-full-v<format>.npz``, filled in
    per (frame, camera) as they are first asked for, so a later call with other frames only
    detects those; the file is keyed by the MediaPipe version and the storage format (about
    2 MB for all 400 pictures). Filling it costs about 0.09 s per picture on a CPU (decode,
    detection and mask; ~35 s for all 100 frames x 4 views on 2 cores); reading it ~0.5 s.
    Two processes filling it at once may each redo the other's pictures, never corrupt it
    (writes are atomic).

    Args:
        frames: frame indices in [0, 100) (an int for one).
        cameras: view names, any of ``"cam01"`` .. ``"cam04"``.
        cache_dir: see :func:`pose2sim_wheel`.
        undistort: remove the lens distortion (see :func:`demo_views`).
        return_misses: also return the ``(frame, camera)`` pairs where no person was found.

    Returns:
        ``(T, V, 33, 3)`` float32: x, y in pixels, confidence in [0, 1] (MediaPipe's landmark
        visibility; 0 for landmarks outside the picture, which keep their predicted x, y).
        Where no person was found, all zeros (never NaN); those pairs are logged as a warning
        on this module's logger (``bodyfit.data.pose2sim``). With ``return_misses``:
        ``(keypoints, misses)``.

    Raises:
        RuntimeError: the wheel cannot be obtained. ImportError: MediaPipe is missing and the
        detections are not cached yet. IndexError / ValueError: bad frames / cameras.
    """
    frame_list = _frame_list(frames)
    names = _camera_list(cameras)
    det = _detections(frame_list, names, cache_dir)
    calib = demo_calibration(cache_dir)
    out = np.zeros((len(frame_list), len(names), 33, 3), np.float32)
    for v, cam in enumerate(names):
        found = det["found"][:, v]
        kp = det["keypoints"][found, v].astype(np.float64)  # (n, 33, 3) decoded pixels
        A = video_to_calibration(cam)
        kp[..., :2] = kp[..., :2] @ A[:2, :2].T + A[:2, 2]
        if undistort:
            kp = undistort_keypoints(kp, calib[cam]["K"], calib[cam]["dist"])
        out[found, v] = kp
    misses = [(f, cam) for i, f in enumerate(frame_list) for v, cam in enumerate(names)
              if not det["found"][i, v]]
    if misses:
        logger.warning(
            "Pose2Sim demo: MediaPipe found no person in %d of %d pictures (frame, view): %s; "
            "their keypoints are all zero (confidence 0).",
            len(misses), out.shape[0] * out.shape[1], misses,
        )
    return (out, misses) if return_misses else out
