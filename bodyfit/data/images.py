"""Reading and writing pictures as RGB arrays.

Every picture inside bodyfit is an ``(H, W, 3)`` ``uint8`` array in RGB channel order (OpenCV
reads and writes BGR; the conversion happens here and nowhere else). Grayscale pictures are
expanded to three channels; an alpha channel is dropped.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from bodyfit.files import atomic_write_bytes

__all__ = ["read_image", "write_image", "read_video_frames"]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a picture file as an ``(H, W, 3)`` ``uint8`` RGB array.

    Any format OpenCV decodes is accepted (PNG, JPEG, BMP, TIFF, WebP, ...). Grayscale files come
    back with the gray value repeated in the three channels, files with an alpha channel come back
    without it, 16-bit files are scaled down to 8 bits (``cv2.IMREAD_COLOR`` does all three).

    Raises:
        FileNotFoundError: ``path`` does not exist (or is not a file).
        ValueError: the file is empty or cannot be decoded as a picture.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Image file not found: {str(p)!r}")
    if p.stat().st_size == 0:
        raise ValueError(
            f"Image file {str(p)!r} cannot be decoded as an image (corrupt or not a picture): "
            "the file is empty."
        )
    # cv2.imread cannot open non-ASCII paths on some platforms: decode from bytes instead.
    data = np.fromfile(str(p), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(
            f"Image file {str(p)!r} cannot be decoded as an image (corrupt or not a picture)."
        )
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write an RGB picture; the format follows the file extension. Creates parent folders.
    The file is replaced atomically (``bodyfit.files.atomic_write``): a reader never sees half
    a picture.

    Args:
        path: destination file (``.png`` is lossless; ``.jpg`` is lossy).
        rgb: ``(H, W, 3)`` RGB or ``(H, W)`` gray array, ``uint8`` (other dtypes with values
            in [0, 1] are scaled by 255, e.g. float masks or renders).

    Returns:
        The path written, as a ``Path``.

    Raises:
        ValueError: wrong shape, or OpenCV cannot encode to that extension.
    """
    p = Path(path)
    arr = np.asarray(rgb)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(
            f"write_image expects an (H, W, 3) RGB or (H, W) gray array, got shape {arr.shape}."
        )
    if arr.dtype != np.uint8:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        else:
            arr = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    out = arr if arr.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    p.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(p.suffix or ".png", out)
    if not ok:
        raise ValueError(f"OpenCV cannot encode an image with extension {p.suffix!r} ({str(p)!r}).")
    return atomic_write_bytes(p, buf.tobytes())


def read_video_frames(path: str | os.PathLike, every: int = 1, max_frames: int | None = None,
                      frames=None):
    """Decode a video file: yield ``(name, (H,W,3) uint8 RGB)`` for every ``every``-th frame, at
    most ``max_frames`` of them, or, with ``frames``, for those frame indices only; names are
    ``frame_000000`` (the frame's index in the video).

    Decoding is sequential (frames that are not wanted are only grabbed, not converted):
    frame-accurate, unlike seeking with ``CAP_PROP_POS_FRAMES``. One frame is held at a time.

    Args:
        path: the video file (any format OpenCV's FFmpeg backend decodes).
        every, max_frames: which frames when ``frames`` is None (>= 1 each).
        frames: 0-based frame indices; the distinct ones are yielded in increasing order.
    Raises:
        FileNotFoundError: no such file. ValueError: OpenCV cannot decode it, it holds no frame,
        or bad arguments. IndexError: (while iterating) an index in ``frames`` is past the end.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Video file not found: {str(p)!r}")
    if every < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"every and max_frames must be >= 1, got {every} and {max_frames}.")
    wanted = None
    if frames is not None:
        wanted = sorted({int(i) for i in frames})
        if any(i < 0 for i in wanted):
            raise ValueError(f"Frame indices must be >= 0, got {wanted}.")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise ValueError(f"Video file {str(p)!r} cannot be decoded (corrupt or not a video).")

    def rgb(bgr):
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def every_nth():
        index = taken = 0
        while max_frames is None or taken < max_frames:
            if index % every == 0:
                ok, bgr = cap.read()
                if not ok:
                    break
                taken += 1
                yield f"frame_{index:06d}", rgb(bgr)
            elif not cap.grab():
                break
            index += 1
        if taken == 0:
            raise ValueError(f"Video file {str(p)!r} holds no decodable frame.")

    def chosen():
        pos = 0
        for idx in wanted:
            while pos < idx and cap.grab():
                pos += 1
            ok, bgr = cap.read() if pos == idx else (False, None)
            if not ok:
                raise IndexError(f"Frame {idx} is past the end of {str(p)!r} ({pos} frames read).")
            pos += 1
            yield f"frame_{idx:06d}", rgb(bgr)

    def decode():
        try:
            yield from (every_nth() if wanted is None else chosen())
        finally:
            cap.release()

    return decode()
