"""Reading and writing pictures as RGB arrays.

Every picture inside bodyfit is an ``(H, W, 3)`` ``uint8`` array in RGB channel order (OpenCV
reads and writes BGR; the conversion happens here and nowhere else). Grayscale pictures are
expanded to three channels; an alpha channel is dropped.

Memory per picture is bounded. The size a file declares is read from its header before anything
is decoded (:func:`picture_size`; PNG, JPEG, BMP, WebP, TIFF, PNM). A picture above a pixel
budget (``max_pixels``, :data:`DEFAULT_MAX_PIXELS` = 4096 x 4096 for ``bodyfit fit``) comes back
downscaled (:func:`read_picture`): a JPEG is decoded reduced by libjpeg (1/2, 1/4 or 1/8, chosen
from the header) so the full-size picture never exists in memory; then it is resized (area
averaging) to the working size. A file whose decoding would need more than
:data:`MAX_DECODE_PIXELS` pixels at once (a PNG declaring 100000 x 100000 in a few bytes: a
decompression bomb) is refused with a ``ValueError`` before decoding.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from pathlib import Path

import cv2
import numpy as np

from bodyfit.files import atomic_write_bytes

__all__ = ["read_image", "read_picture", "exif_focal_px", "picture_size", "check_picture_path", "working_size", "write_image",
           "read_video_frames", "is_video", "VIDEO_SUFFIXES", "DEFAULT_MAX_PIXELS", "MAX_DECODE_PIXELS"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video(path: str | os.PathLike) -> bool:
    """True when the file name ends with a video suffix (``VIDEO_SUFFIXES``, any case)."""
    return str(path).lower().endswith(VIDEO_SUFFIXES)


DEFAULT_MAX_PIXELS = 4096 * 4096
"""Pixel budget of ``bodyfit fit``: larger pictures are detected and fitted downscaled (16.8 Mpx,
about 50 MB as RGB)."""
MAX_DECODE_PIXELS = 1 << 27
"""The most pixels decoded at once (134 Mpx, about 400 MB as RGB): larger decodes are refused."""

_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def _jpeg_size(d) -> tuple[int, int, bool] | None:
    """(H, W, progressive) from the first SOF marker of JPEG bytes, or None."""
    i, n = 2, len(d)
    while i + 4 <= n:
        if d[i] != 0xFF:
            return None
        while i < n and d[i] == 0xFF:  # fill bytes
            i += 1
        if i + 3 > n:
            return None
        m = d[i]
        if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:  # no length
            i += 1
            continue
        if m in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        length = struct.unpack(">H", d[i + 1:i + 3])[0]
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            if i + 8 > n:
                return None
            h, w = struct.unpack(">HH", d[i + 4:i + 8])
            return h, w, m in (0xC2, 0xC6, 0xCA, 0xCE)
        i += 1 + length
    return None


def _tiff_size(d) -> tuple[int, int] | None:
    order = "<" if d[:2] == b"II" else ">"
    if len(d) < 8 or struct.unpack(order + "H", d[2:4])[0] != 42:
        return None  # BigTIFF (43) and others: unknown
    off = struct.unpack(order + "I", d[4:8])[0]
    if off + 2 > len(d):
        return None
    found = {}
    for k in range(struct.unpack(order + "H", d[off:off + 2])[0]):
        e = off + 2 + 12 * k
        if e + 12 > len(d):
            break
        tag, typ = struct.unpack(order + "HH", d[e:e + 4])
        if tag in (256, 257) and typ in (3, 4):
            fmt, end = ("H", e + 10) if typ == 3 else ("I", e + 12)
            found[tag] = struct.unpack(order + fmt, d[e + 8:end])[0]
    return (found[257], found[256]) if len(found) == 2 else None


def _pnm_size(d) -> tuple[int, int] | None:
    d = bytes(d[:4096])
    tokens, i, n = [], 2, len(d)
    while len(tokens) < 2 and i < n:
        c = d[i:i + 1]
        if c == b"#":
            while i < n and d[i:i + 1] not in (b"\n", b"\r"):
                i += 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < n and d[j:j + 1].isdigit():
                j += 1
            if j == i:
                return None
            tokens.append(int(d[i:j]))
            i = j
    return (tokens[1], tokens[0]) if len(tokens) == 2 else None


def _declared_size(d) -> tuple[int, int, str] | None:
    """(H, W, kind) a picture file's header declares, without decoding it; kind is ``"jpeg"``,
    ``"jpeg-progressive"`` or the format's name. None for a format or header not understood."""
    try:
        if d[:8] == b"\x89PNG\r\n\x1a\n" and d[12:16] == b"IHDR":
            w, h = struct.unpack(">II", d[16:24])
            return h, w, "png"
        if d[:2] == b"\xff\xd8":
            found = _jpeg_size(d)
            return None if found is None else (found[0], found[1], "jpeg-progressive" if found[2] else "jpeg")
        if d[:2] == b"BM" and len(d) >= 26:
            if struct.unpack("<I", d[14:18])[0] == 12:  # OS/2 header
                w, h = struct.unpack("<HH", d[18:22])
            else:
                w, h = struct.unpack("<ii", d[18:26])
            return abs(h), abs(w), "bmp"
        if d[:4] == b"RIFF" and d[8:12] == b"WEBP" and len(d) >= 30:
            chunk = d[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", d[26:30])
                return h & 0x3FFF, w & 0x3FFF, "webp"
            if chunk == b"VP8L":
                bits = struct.unpack("<I", d[21:25])[0]
                return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1, "webp"
            if chunk == b"VP8X":
                w = int.from_bytes(d[24:27], "little") + 1
                h = int.from_bytes(d[27:30], "little") + 1
                return h, w, "webp"
            return None
        if d[:4] in (b"II*\x00", b"MM\x00*"):
            found = _tiff_size(d)
            return None if found is None else (*found, "tiff")
        if d[:1] == b"P" and d[1:2] in b"123456" and len(d) > 2:
            found = _pnm_size(d)
            return None if found is None else (*found, "pnm")
    except struct.error:  # a header cut short: let the decoder say it is corrupt
        return None
    return None


def picture_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """The ``(H, W)`` in pixels a picture file declares in its header, read without decoding
    the picture (for PNG, JPEG, BMP, WebP, TIFF and PNM; None for other formats or a header not
    understood). A JPEG's EXIF orientation is not applied (a picture turned by 90 degrees
    comes back from :func:`read_image` as ``(W, H)``).

    Raises:
        FileNotFoundError: no such file. IsADirectoryError: ``path`` is a folder.
    """
    p = check_picture_path(path)
    if p.stat().st_size == 0:
        return None
    with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as d:
        found = _declared_size(d)
    return None if found is None else found[:2]


def working_size(size: tuple[int, int], max_pixels: int | None) -> tuple[tuple[int, int], float]:
    """The size a picture of ``size`` (H, W) is worked at under a pixel budget, and the scale
    ``s`` (working pixels per picture pixel, <= 1): the longer side becomes ``L = floor(s_0 *
    max(H, W))`` with ``s_0 = sqrt(max_pixels / (H W))``, ``s = L / max(H, W)``, and the size
    ``(round(H s), round(W s))``, as ``Camera.at_most(L)`` gives for the picture's camera.
    ``(size, 1.0)`` when the picture is within the budget (or ``max_pixels`` is None).

    Raises:
        ValueError: ``max_pixels`` < 1.
    """
    H, W = (int(x) for x in size)
    if max_pixels is None or H * W <= max_pixels:
        return (H, W), 1.0
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive number of pixels, got {max_pixels}.")
    L = max(H, W)
    longest = max(1, int(L * math.sqrt(max_pixels / (H * W))))
    while longest > 1 and max(1, round(H * longest / L)) * max(1, round(W * longest / L)) > max_pixels:
        longest -= 1
    s = longest / L
    return (max(1, round(H * s)), max(1, round(W * s))), s


def check_picture_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path once it is known to be a file (not read).

    Raises:
        IsADirectoryError: a folder (the message says so). FileNotFoundError: nothing there.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{str(p)!r} is a folder, not a picture file: name the pictures "
                                f"in it (e.g. {str(p / '*.jpg')!r}).")
    if not p.is_file():
        raise FileNotFoundError(f"Image file not found: {str(p)!r}")
    return p


def read_picture(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a picture within a pixel budget: ``(rgb, full_size)``.

    Args:
        path: any picture OpenCV decodes (PNG, JPEG, BMP, TIFF, WebP, ...).
        max_pixels: pixel budget; a larger picture comes back at :func:`working_size` (area
            averaged; a JPEG decoded reduced first, so its full size is never in memory).
            None: always at full size.
    Returns:
        ``rgb``: ``(h, w, 3)`` uint8 RGB, ``h * w <= max_pixels``; ``full_size``: the picture's
        own ``(H, W)`` (after EXIF orientation). The scale from full size to ``rgb`` is
        ``max(h, w) / max(H, W)`` (``working_size``).
    Raises:
        FileNotFoundError: no such file. IsADirectoryError: ``path`` is a folder.
        ValueError: the file is empty or cannot be decoded, or decoding it would need more than
            :data:`MAX_DECODE_PIXELS` pixels (a decompression bomb or an enormous picture: the
            message gives the declared size).
    """
    p = check_picture_path(path)
    if p.stat().st_size == 0:
        raise ValueError(
            f"Image file {str(p)!r} cannot be decoded as an image (corrupt or not a picture): "
            "the file is empty."
        )
    # cv2.imread cannot open non-ASCII paths on some platforms: decode from bytes instead.
    data = np.fromfile(str(p), dtype=np.uint8)
    declared = _declared_size(memoryview(data).cast("B"))
    reduce = 1
    if declared is not None:
        H, W, kind = declared
        _, s = working_size((H, W), max_pixels)
        if kind.startswith("jpeg"):  # libjpeg scales JPEGs down while decoding
            while reduce < 8 and 2 * reduce * s <= 1.0:
                reduce *= 2
        cost = math.ceil(H / reduce) * math.ceil(W / reduce)
        if kind == "jpeg-progressive":  # holds the full picture's coefficients while decoding
            cost = H * W
        if cost > MAX_DECODE_PIXELS:
            raise ValueError(
                f"Image file {str(p)!r} declares a {W}x{H} picture ({W * H / 1e6:.0f} Mpx, "
                f"{p.stat().st_size} bytes on disk): decoding it would take about "
                f"{3 * cost / 2**30:.1f} GiB, more than bodyfit decodes at once "
                f"({MAX_DECODE_PIXELS / 1e6:.0f} Mpx). A decompression bomb, or a picture to "
                f"downscale before fitting (a baseline JPEG of this size would be decoded reduced).")
    bgr = cv2.imdecode(data, _REDUCED[reduce])
    del data
    if bgr is None:
        raise ValueError(
            f"Image file {str(p)!r} cannot be decoded as an image (corrupt or not a picture)."
        )
    h, w = bgr.shape[:2]
    full = (h, w)
    if declared is not None and reduce > 1:
        H, W = declared[:2]
        turned = (h, w) == (math.ceil(W / reduce), math.ceil(H / reduce)) and H != W  # EXIF orientation
        full = (W, H) if turned else (H, W)
    size, _ = working_size(full, max_pixels)
    if size != (h, w):
        bgr = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    if bgr.ndim == 2:  # pragma: no cover - IMREAD_COLOR always gives 3 channels
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: no second copy
    return np.ascontiguousarray(rgb), full


#: EXIF FocalPlaneResolutionUnit -> millimetres per unit (2 inch, 3 cm, 4 mm, 5 micrometre).
_EXIF_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
#: Focal lengths (pixels over the longer image side) outside this range are not believed: fields
#: of view of about 150 degrees to 5 degrees.
_FOCAL_RANGE = (0.27, 11.5)


def exif_focal_px(path: str | os.PathLike, size: tuple[int, int]) -> tuple[float | None, str, str | None]:
    """The focal length in pixels that a photo's EXIF tags give, read with Pillow.

    Tried in turn (EXIF 2.3, the Exif sub-IFD 0x8769):

    1. ``FocalLengthIn35mmFilm`` (0xA405), ``f35`` mm: the focal length that gives the same field
       of view on a 36 x 24 mm frame, compared on the diagonal (the usual crop-factor rule):
       ``f_px = f35 * hypot(W, H) / hypot(36, 24)``. Source ``"exif35"``.
    2. ``FocalLength`` (0x920A) mm with ``FocalPlaneXResolution`` (0xA20E) and
       ``FocalPlaneResolutionUnit`` (0xA210): pixels per mm on the sensor, for the picture the
       camera wrote (``PixelXDimension`` 0xA002 / ``PixelYDimension`` 0xA003 wide; rescaled to
       ``size``). Source ``"exif"``.

    Args:
        path: the picture file (JPEG, TIFF, WebP, PNG with EXIF ...).
        size: (H, W) of the picture as it is fitted at full resolution (after EXIF orientation),
            pixels.
    Returns:
        ``(focal_px, source, note)``: the focal length in pixels (square pixels assumed) and
        ``"exif35"`` or ``"exif"``; or ``(None, "default", note)`` where the file has no usable
        tags. ``note`` says why tags were present but ignored (unreadable, zero, implausible: a
        field of view outside about 5-150 degrees), else None. Never raises for bad EXIF.
    """
    H, W = (int(x) for x in size)
    try:
        from PIL import Image

        with Image.open(path) as im:
            exif = im.getexif().get_ifd(0x8769)
    except Exception as e:  # not a picture Pillow reads, corrupt EXIF: the default focal applies
        return None, "default", f"EXIF not readable ({type(e).__name__}: {e})"
    if not exif:
        return None, "default", None
    longer = max(H, W)
    notes = []

    def plausible(f, what):
        if f is not None and np.isfinite(f) and _FOCAL_RANGE[0] <= f / longer <= _FOCAL_RANGE[1]:
            return True
        notes.append(f"{what} gives {f if f is None else round(float(f), 1)} px for a {W}x{H} picture, "
                     f"ignored (implausible)")
        return False

    try:
        f35 = float(exif.get(0xA405, 0) or 0)
    except (TypeError, ValueError, ZeroDivisionError):
        f35, _ = 0.0, notes.append("FocalLengthIn35mmFilm unreadable, ignored")
    if f35 > 0:
        f = f35 * math.hypot(W, H) / math.hypot(36.0, 24.0)
        if plausible(f, f"FocalLengthIn35mmFilm {f35:g} mm"):
            return f, "exif35", None
    try:
        fmm = float(exif.get(0x920A, 0) or 0)
        xres = float(exif.get(0xA20E, 0) or 0)
        unit = _EXIF_UNIT_MM.get(int(exif.get(0xA210, 2) or 2))
        wx, wy = int(exif.get(0xA002, 0) or 0), int(exif.get(0xA003, 0) or 0)
    except (TypeError, ValueError, ZeroDivisionError):
        notes.append("FocalLength / focal-plane resolution unreadable, ignored")
        fmm = xres = 0.0
        unit, wx, wy = None, 0, 0
    if fmm > 0 and xres > 0 and unit is not None:
        f = fmm * xres / unit
        if wx > 0 and wy > 0:
            f *= longer / max(wx, wy)
        if plausible(f, f"FocalLength {fmm:g} mm at {xres:g} px per {unit:g} mm"):
            return f, "exif", None
    elif fmm > 0:
        notes.append(f"FocalLength {fmm:g} mm without the sensor's size (FocalPlaneXResolution), not used")
    return None, "default", "; ".join(notes) or None


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read a picture file as an ``(H, W, 3)`` ``uint8`` RGB array.

    Any format OpenCV decodes is accepted (PNG, JPEG, BMP, TIFF, WebP, ...). Grayscale files come
    back with the gray value repeated in the three channels, files with an alpha channel come back
    without it, 16-bit files are scaled down to 8 bits (``cv2.IMREAD_COLOR`` does all three).
    With ``max_pixels``, a larger picture comes back downscaled (:func:`read_picture`, which
    also returns the full size).

    Raises:
        FileNotFoundError: ``path`` does not exist. IsADirectoryError: ``path`` is a folder.
        ValueError: the file is empty or cannot be decoded as a picture, or it declares a size
            too large to decode (:data:`MAX_DECODE_PIXELS`; a decompression bomb).
    """
    return read_picture(path, max_pixels)[0]


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
        every: keep every ``every``-th frame (>= 1) when ``frames`` is None.
        max_frames: at most this many frames (>= 1) when ``frames`` is None.
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
