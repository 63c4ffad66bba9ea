"""DensePose IUV maps: read, write, check, render, sample.

An IUV map is (B,3,H,W) (or (3,H,W) for one picture) float: channel 0 is the part index I with
integer values 0..24 (0 = background; :data:`bodyfit.densepose.chart.PART_NAMES`), channels 1
and 2 are U and V in [0, 1] (0 on the background). Rows are the picture's rows, top-down.

PNG files: DensePose (Guler, Neverova, Kokkinos, CVPR 2018; its ``infer_simple.py``) saves
``*_IUV.png`` with OpenCV's ``cv2.imwrite`` from an (H,W,3) uint8 array whose channels are
(I, U * 255, V * 255). OpenCV writes channel 0 as blue, and ``cv2.imread`` gives the channels back
in the same order, so reading with OpenCV yields (I, U * 255, V * 255) again; that is what
``layout="densepose"`` (the default) does. A file written by an RGB library (PIL, imageio) from
the same array holds I in red and reads back as (V, U, I) with OpenCV: ``layout="rgb"``.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from bodyfit.cameras import Camera

__all__ = ["read_iuv_png", "write_iuv_png", "check_iuv", "render_iuv", "sample_foreground"]

_LAYOUTS = ("densepose", "rgb")


def _check_layout(layout: str) -> None:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}.")


def read_iuv_png(path, layout: str = "densepose") -> torch.Tensor:
    """Read a DensePose IUV PNG.

    Args:
        path: the file.
        layout: ``"densepose"``: OpenCV reads (I, U*255, V*255), as DensePose writes them;
            ``"rgb"``: the file's red, green, blue are I, U*255, V*255.
    Returns:
        (3,H,W) float32: I (integer values 0..24), U, V in [0, 1] (value / 255).
    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an unreadable file, not 3 channels of 8 bits, or I values above 24 (the
            message says whether the other layout would fit).
    """
    import cv2

    _check_layout(layout)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No IUV file at {path}.")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path} could not be read as a picture (is it a PNG?).")
    if img.ndim != 3 or img.shape[2] != 3:
        got = "1 channel" if img.ndim == 2 else f"{img.shape[2]} channels"
        raise ValueError(f"{path} has {got}; a DensePose IUV PNG has 3 (I, U*255, V*255).")
    if img.dtype != np.uint8:
        raise ValueError(f"{path} holds {img.dtype} values; a DensePose IUV PNG holds uint8.")
    if layout == "rgb":
        img = img[..., ::-1]
    iuv = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    if iuv[0].max() > 24:
        other = "rgb" if layout == "densepose" else "densepose"
        hint = (f" With layout={other!r} I would be in 0..{int(iuv[2].max())}: pass it."
                if iuv[2].max() <= 24 else "")
        raise ValueError(f"{path}: channel I has values up to {int(iuv[0].max())}, but DensePose "
                         f"parts are 0..24.{hint}")
    iuv[1:] /= 255.0
    return iuv


def write_iuv_png(path, iuv, layout: str = "densepose") -> None:
    """Write an IUV map as DensePose's PNG: (I, round(U*255), round(V*255)) in uint8.

    Args:
        path: the file to write (its folder must exist).
        iuv: (3,H,W) (or (1,3,H,W)) tensor or array, as :func:`check_iuv` accepts.
        layout: see :func:`read_iuv_png`.
    Raises:
        ValueError: a malformed IUV (see :func:`check_iuv`) or a batch of more than one.
        OSError: OpenCV could not write the file (missing folder, unwritable path).
    """
    import cv2

    _check_layout(layout)
    iuv = check_iuv(iuv)
    if iuv.shape[0] != 1:
        raise ValueError(f"write_iuv_png writes one map; got a batch of {iuv.shape[0]}.")
    x = iuv[0].detach().cpu().double()
    out = torch.stack([x[0].round(), (x[1] * 255).round(), (x[2] * 255).round()], -1)
    img = out.clamp(0, 255).to(torch.uint8).numpy()
    if layout == "rgb":
        img = img[..., ::-1]
    path = os.fspath(path)
    if not cv2.imwrite(path, np.ascontiguousarray(img)):
        raise OSError(f"Could not write {path} (does its folder exist, does it end in .png?).")


def check_iuv(iuv, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Validate an IUV map and return it as a (B,3,H,W) float tensor.

    Args:
        iuv: (B,3,H,W) or (3,H,W) tensor or numpy array: I integral in 0..24, U, V in [0, 1].
        image_size: optional (H, W) of the picture the map belongs to.
    Returns:
        (B,3,H,W) floating tensor (float32 unless it already was floating), same device.
    Raises:
        ValueError: saying what is wrong and what to do: wrong shape (e.g. channels last), I not
            integral or outside 0..24, U or V outside [0, 1] (e.g. still 0..255), non-finite
            values, or a size different from ``image_size``.
    """
    if isinstance(iuv, np.ndarray):
        iuv = torch.from_numpy(iuv)
    if not isinstance(iuv, torch.Tensor):
        raise ValueError(f"IUV must be a tensor or array of shape (B,3,H,W), got {type(iuv)}.")
    shape = tuple(iuv.shape)
    if iuv.dim() == 3:
        iuv = iuv[None]
    if iuv.dim() != 4 or iuv.shape[1] != 3:
        hint = ""
        if len(shape) in (3, 4) and shape[-1] == 3:
            hint = " It looks channels-last (H,W,3): use iuv.permute(2, 0, 1) (or (0, 3, 1, 2))."
        raise ValueError(f"IUV must have shape (B,3,H,W) or (3,H,W), got {shape}.{hint}")
    if not iuv.is_floating_point():
        iuv = iuv.float()
    if not torch.isfinite(iuv).all():
        raise ValueError("IUV has NaN or infinite values: mark unknown pixels as background "
                         "(I = 0) instead.")
    H, W = iuv.shape[-2:]
    if image_size is not None and (int(image_size[0]), int(image_size[1])) != (H, W):
        h, w = (int(s) for s in image_size)
        raise ValueError(f"IUV is {H}x{W} but the picture is {h}x{w}: resize the IUV with "
                         "nearest-neighbour interpolation (I must stay integral) or pass the "
                         "matching picture.")
    I, UV = iuv[:, 0], iuv[:, 1:]
    if iuv.numel():
        if (I - I.round()).abs().max() > 1e-3:
            raise ValueError("IUV channel I must hold integer part indices 0..24; got fractional "
                             "values (was it resized with bilinear interpolation? use nearest).")
        if I.min() < -1e-3 or I.max() > 24 + 1e-3:
            raise ValueError(f"IUV channel I must be in 0..24, got {float(I.min()):g}.."
                             f"{float(I.max()):g}.")
        lo, hi = float(UV.min()), float(UV.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            hint = (" They look like 0..255 PNG values: divide U and V by 255 (or use "
                    "read_iuv_png)." if hi <= 255 + 1e-3 and lo >= 0 else "")
            raise ValueError(f"IUV channels U, V must be in [0, 1], got [{lo:g}, {hi:g}].{hint}")
    return iuv


def render_iuv(vertices: torch.Tensor, camera: Camera, chart, context=None) -> torch.Tensor:
    """Render the IUV map of posed bodies.

    Args:
        vertices: (B,V,3) metres, world frame, on the chart's mesh (``chart.faces``).
        camera: ``bodyfit.cameras.Camera`` (OpenCV K, R, t; image_size (H, W)).
        chart: a :class:`bodyfit.densepose.DensePoseChart`.
        context: rasterizer context (``bodyfit.renderers.RasterizeGLContext`` etc.); None:
            ``bodyfit.renderers.default_context`` of the vertices' device.
    Returns:
        (B,3,H,W) in the dtype of vertices: I (face part of the visible face, 0 on the
        background), U, V (the visible face's corner UVs blended with the pixel's perspective-
        correct barycentrics, 0 on the background). U and V are differentiable with respect to
        the vertices (through the barycentrics); I is not.
    """
    from bodyfit.renderers.views import rasterize_view

    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B,V,3), got {tuple(vertices.shape)}.")
    faces = chart.faces.to(vertices.device)
    _, rast = rasterize_view(vertices, faces, camera, context)
    B, H, W, _ = rast.shape
    tri = rast[..., 3].long() - 1  # (B,H,W)
    out = vertices.new_zeros(B, H, W, 3)
    pix = torch.nonzero(tri.reshape(-1) >= 0).squeeze(1)
    if pix.numel():
        f = tri.reshape(-1)[pix]
        r = rast.reshape(-1, 4)[pix]
        uv = chart.face_uv.to(vertices)[f]  # (N,3,2)
        u, v = r[:, 0:1], r[:, 1:2]
        val = u * uv[:, 0] + v * uv[:, 1] + (1 - u - v) * uv[:, 2]
        I = chart.face_part.to(vertices.device)[f].to(vertices.dtype)
        vals = torch.cat([I[:, None], val.clamp(0, 1)], -1)
        out = out.reshape(-1, 3).index_put((pix,), vals).reshape(B, H, W, 3)
    return out.permute(0, 3, 1, 2)


def sample_foreground(iuv: torch.Tensor, n: int, generator: torch.Generator | None = None):
    """A random subset of at most ``n`` foreground (I > 0) pixels per picture.

    Args:
        iuv: (B,3,H,W) (or (3,H,W)) IUV map (:func:`check_iuv`).
        n: most pixels kept per picture (all of them where there are fewer).
        generator: optional torch.Generator for reproducible draws.
    Returns:
        batch_index (N,) int64, pixel_xy (N,2) float (x = column, y = row, in pixels; a pixel's
        centre is at integer coordinates, as in ``bodyfit.cameras``), I (N,) int64, U (N,),
        V (N,) in the map's dtype; sorted by picture, then row-major pixel order. All on the
        map's device.
    Raises:
        ValueError: a malformed IUV or a negative n.
    """
    iuv = check_iuv(iuv)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    B, _, H, W = iuv.shape
    dev = iuv.device
    fg = torch.nonzero(iuv[:, 0].reshape(-1) > 0.5).squeeze(1)  # flat (b, y, x) indices
    b = fg // (H * W)
    gdev = generator.device if generator is not None else dev
    r = torch.rand(fg.shape[0], generator=generator, device=gdev, dtype=torch.float64).to(dev)
    order = torch.argsort(b.double() + r * 0.5)  # random order within each picture
    counts = torch.bincount(b, minlength=B)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=dev)
    rank = rank - start[b]
    keep = torch.sort(fg[rank < n]).values
    b = keep // (H * W)
    y = (keep // W) % H
    x = keep % W
    vals = iuv.permute(0, 2, 3, 1)[b, y, x]  # (N,3)
    xy = torch.stack([x, y], -1).to(iuv.dtype)
    return b, xy, vals[:, 0].round().long(), vals[:, 1], vals[:, 2]
