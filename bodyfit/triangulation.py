"""Multi-view triangulation of 2D keypoints into 3D points (metres, world frame).

Linear triangulation (the DLT of Hartley & Zisserman, "Multiple View Geometry", 2nd ed., section
12.2): each view ``v`` with camera ``P_v = K_v [R_v | t_v]`` that sees keypoint ``(x, y)`` adds two
rows ``x P_v^3 - P_v^1`` and ``y P_v^3 - P_v^2`` to a homogeneous system ``A X = 0``; the point is
the right singular vector of ``A`` with the smallest singular value (computed here as the
eigenvector of the 4 x 4 ``A^T A``, assembled per view without building ``A``). Here:

- rows are built in normalized image coordinates (``K_v^-1 [x, y, 1]``), which conditions the
  system without Hartley's extra normalizing transforms, and weighted by the keypoint's confidence;
- the system is re-weighted once by the inverse depth of the first solution (the iterative linear
  method of Hartley & Sturm 1997), so the minimized algebraic error approximates the reprojection
  error in the normalized image plane;
- an optional robust pass (as Pose2Sim's triangulation does): while a keypoint's worst view has a
  reprojection error above ``outlier_threshold`` pixels and more than ``min_views`` views are
  left, the view whose removal leaves the lowest mean reprojection error is dropped.

Everything is batched in torch (float64 inside; no Python loop over frames or keypoints; 3300
keypoints from 4 views take ~15 ms, ~0.15 s with the robust pass, on a CPU). Not differentiable:
inputs are detached. Cameras are pinhole: undistort keypoints first (e.g.
:func:`bodyfit.data.calibration.undistort_keypoints`).

Conventions as in :mod:`bodyfit.cameras`: OpenCV camera frame, ``X_cam = R @ X_world + t``,
pixels with the centre of pixel ``(col, row)`` at ``(col, row)``; keypoints ``(..., 3)`` = x, y in
pixels and a confidence in [0, 1], 0 meaning missing.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .cameras import Camera

__all__ = ["triangulate", "reprojection_errors", "stack_cameras"]

#: Default scale (pixels) of the reprojection error in the quality score, see :func:`triangulate`.
DEFAULT_ERROR_SCALE_PX = 10.0
#: Default reprojection error (pixels) above which the robust pass drops a view. Tuned on the
#: Pose2Sim demo (1920-pixel-high pictures, MediaPipe keypoints, whose view-dependent biases give
#: 15-30 px between views even when right); Pose2Sim itself uses 15 px on the *mean* error over
#: views. Scale it with the picture size.
DEFAULT_OUTLIER_THRESHOLD_PX = 20.0

_MIN_W = 1e-12
_MIN_DEPTH = 1e-3  # metres, as bodyfit.cameras.project


def stack_cameras(cameras) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(K (V,3,3), R (V,3,3), t (V,3))`` float64 tensors from a :class:`Camera` of batch V or a
    sequence of cameras (each of batch 1, or of any batch: their batches are concatenated; this is
    how views of different image sizes are passed).

    Raises:
        ValueError: not a Camera / sequence of Cameras, or an empty sequence.
    """
    if isinstance(cameras, Camera):
        cams = [cameras]
    elif isinstance(cameras, Sequence) and not isinstance(cameras, (str, bytes)):
        cams = list(cameras)
        if not cams or not all(isinstance(c, Camera) for c in cams):
            raise ValueError(
                "cameras must be a bodyfit Camera of batch V (one per view) or a non-empty "
                f"sequence of Cameras; got {[type(c).__name__ for c in cams]}."
            )
    else:
        raise ValueError(
            "cameras must be a bodyfit Camera of batch V (one per view) or a sequence of "
            f"Cameras, got {type(cameras).__name__}."
        )
    K = torch.cat([torch.as_tensor(c.K).reshape(-1, 3, 3) for c in cams]).to(torch.float64)
    R = torch.cat([torch.as_tensor(c.R).reshape(-1, 3, 3) for c in cams]).to(torch.float64)
    t = torch.cat([torch.as_tensor(c.t).reshape(-1, 3) for c in cams]).to(torch.float64)
    if not (K.shape[0] == R.shape[0] == t.shape[0]):
        raise ValueError(f"Camera batches disagree: K {K.shape[0]}, R {R.shape[0]}, t {t.shape[0]}.")
    return K.cpu(), R.cpu(), t.cpu()


def _as_tensor(x, name: str) -> tuple[torch.Tensor, bool, torch.dtype | np.dtype]:
    """(float64 CPU tensor, was_numpy, dtype to return)."""
    if isinstance(x, torch.Tensor):
        dt = x.dtype if x.is_floating_point() else torch.float32
        return x.detach().to("cpu", torch.float64), False, dt
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{name} must be an array or tensor: {e}") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}.")
    dt = a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float32)
    return torch.from_numpy(a.astype(np.float64)), True, dt


def _back(x: torch.Tensor, was_numpy: bool, dtype, device=None):
    if was_numpy:
        return x.numpy().astype(dtype)
    return x.to(dtype=dtype, device=device if device is not None else x.device)


def _camera_coords(points: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """points (M,K,3) world -> (M,V,K,3) in every camera's frame."""
    return torch.matmul(points[:, None], R.transpose(-1, -2)[None]) + t[None, :, None]


def _project_views(points: torch.Tensor, K, R, t) -> torch.Tensor:
    """points (M,K,3) -> pixels (M,V,K,2) in every view; depths below 1 mm are clamped to 1 mm,
    as :func:`bodyfit.cameras.project` does (large, finite errors behind a camera)."""
    xc = _camera_coords(points, R, t)
    xn = xc / xc[..., 2:3].clamp(min=_MIN_DEPTH)
    return torch.matmul(xn, K.transpose(-1, -2)[None])[..., :2]


def _dlt_terms(Rt: torch.Tensor) -> torch.Tensor:
    """Per-view 4x4 blocks (V,5,4,4) such that the DLT normal matrix of one view, for normalized
    coordinates (x, y), is ``(x^2 + y^2) B0 - x B1 - y B2 + B3 + B4``."""
    P1, P2, P3 = Rt[:, 0], Rt[:, 1], Rt[:, 2]

    def outer(a, b):
        return a[:, :, None] * b[:, None, :]

    return torch.stack(
        [outer(P3, P3), outer(P3, P1) + outer(P1, P3), outer(P3, P2) + outer(P2, P3),
         outer(P1, P1), outer(P2, P2)], 1)


def _solve(xn: torch.Tensor, w: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
    """Weighted DLT. xn (M,V,K,2) normalized coordinates, w (M,V,K) weights (0 = unused),
    terms from :func:`_dlt_terms`. Returns homogeneous points (M,K,4), unit norm.

    ``A^T A = sum_v w_v^2 sum_c (x_c P3 - P_c)(x_c P3 - P_c)^T`` is assembled directly (no
    (2V, 4) system is built), and its eigenvector of the smallest eigenvalue (float64, each
    matrix scaled to unit trace) is the point.
    """
    w2 = w * w
    x, y = xn[..., 0], xn[..., 1]
    coef = torch.stack([w2 * (x * x + y * y), -w2 * x, -w2 * y, w2, w2], -1)  # (M,V,K,5)
    AtA = torch.einsum("mvkc,vcij->mkij", coef, terms)
    scale = AtA.diagonal(dim1=-2, dim2=-1).sum(-1).clamp(min=1e-300)
    _, vecs = torch.linalg.eigh(AtA / scale[..., None, None])
    return vecs[..., 0]


def triangulate(
    keypoints,
    cameras,
    min_views: int = 2,
    min_confidence: float = 0.0,
    robust: bool = True,
    outlier_threshold: float = DEFAULT_OUTLIER_THRESHOLD_PX,
    error_scale: float = DEFAULT_ERROR_SCALE_PX,
    return_used: bool = False,
):
    """Triangulate keypoints seen by several calibrated views (confidence-weighted linear DLT).

    Args:
        keypoints: ``(V, K, 3)`` or ``(T, V, K, 3)`` (numpy array or torch tensor): for each
            (frame,) view and keypoint, x, y in **undistorted** pixels of that view's ``K`` and a
            confidence in [0, 1]. A keypoint is used in a view when its confidence is > 0 and
            >= ``min_confidence`` and its coordinates are finite (NaN / inf count as missing).
        cameras: a :class:`bodyfit.cameras.Camera` of batch ``V`` (view ``v`` is camera ``v``),
            or a sequence of ``V`` Cameras of batch 1 (views of different image sizes). Pinhole,
            world -> camera, metres.
        min_views: fewest views a keypoint must be used in to be triangulated (>= 2).
        min_confidence: confidence below which a 2D keypoint is ignored.
        robust: drop outlier views: while the largest reprojection error of a keypoint exceeds
            ``outlier_threshold`` pixels (or its solution is behind a camera) and more than
            ``min_views`` views are used, solve without each used view in turn and keep the
            subset with the lowest mean reprojection error (at most ``V - min_views`` rounds,
            batched; Pose2Sim's triangulation also leaves cameras out until the error is low).
        outlier_threshold: pixels, for ``robust``.
        error_scale: pixels; sets how fast the quality falls with the reprojection error.
        return_used: also return which views were used in the end.

    Returns:
        ``(..., K, 4)`` with the leading ``T`` if given: x, y, z in metres in the world frame and
        a quality in [0, 1]::

            quality = mean_conf * error_scale^2 / (error_scale^2 + e^2)

        where ``mean_conf`` is the mean confidence of the views used and ``e`` the
        confidence-weighted mean reprojection error (pixels) over them. Keypoints used in fewer
        than ``min_views`` views, or whose solution is at infinity or behind a camera that sees
        it, get quality 0 and xyz = 0 (never NaN). Same container type as ``keypoints`` (numpy
        in, numpy out; torch keeps its dtype and device), float32 for integer input.
        With ``return_used``: a tuple ``(points, used)`` with ``used`` ``(..., V, K)`` bool.

    Raises:
        ValueError: ``keypoints`` is not ``(V, K, 3)`` / ``(T, V, K, 3)``; its ``V`` differs
            from the number of cameras (pass one camera per view, in the same order); fewer than
            2 cameras (a single view cannot give depth: fit a body model instead); ``min_views``
            < 2 or above the number of views; negative thresholds.
    """
    kp, was_numpy, out_dtype = _as_tensor(keypoints, "keypoints")
    device = keypoints.device if isinstance(keypoints, torch.Tensor) else None
    if kp.dim() not in (3, 4) or kp.shape[-1] != 3:
        raise ValueError(
            f"keypoints must have shape (V, K, 3) or (T, V, K, 3) (x px, y px, confidence), "
            f"got {tuple(kp.shape)}."
        )
    Kc, R, t = stack_cameras(cameras)
    V = Kc.shape[0]
    if V < 2:
        raise ValueError(
            f"Triangulation needs at least 2 cameras, got {V}. For one view, fit a body model "
            "to the 2D keypoints instead."
        )
    single = kp.dim() == 3
    if single:
        kp = kp[None]
    if kp.shape[1] != V:
        raise ValueError(
            f"keypoints have {kp.shape[1]} views (shape {tuple(kp.shape[-3:])} = (V, K, 3)) but "
            f"{V} cameras were given: pass one camera per view, in the same order."
        )
    if not (2 <= int(min_views) <= V):
        raise ValueError(f"min_views must be in [2, {V}] (the number of cameras), got {min_views}.")
    if min_confidence < 0 or outlier_threshold <= 0 or error_scale <= 0:
        raise ValueError(
            "min_confidence must be >= 0 and outlier_threshold, error_scale > 0; got "
            f"{min_confidence}, {outlier_threshold}, {error_scale}."
        )
    min_views = int(min_views)

    xy = kp[..., :2]
    conf = kp[..., 2]
    finite = torch.isfinite(xy).all(-1) & torch.isfinite(conf)
    conf = torch.where(finite, conf, torch.zeros_like(conf)).clamp(0.0, 1.0)
    xy = torch.where(finite[..., None], xy, torch.zeros_like(xy))
    used = (conf > 0) & (conf >= min_confidence)

    # Normalized image coordinates: K^-1 [x, y, 1].
    Kinv = torch.linalg.inv(Kc)  # (V,3,3)
    xh = torch.cat([xy, torch.ones_like(xy[..., :1])], -1)
    xn = torch.einsum("vij,mvkj->mvki", Kinv, xh)
    xn = xn[..., :2] / xn[..., 2:3]
    Rt = torch.cat([R, t[:, :, None]], -1)  # (V,3,4)
    terms = _dlt_terms(Rt)

    def solve(used):
        w = conf * used
        Xh = _solve(xn, w, terms)
        # Hartley-Sturm re-weighting by 1 / depth of the first solution.
        depth = torch.einsum("vj,mkj->mvk", Rt[:, 2], Xh)
        ok_depth = depth.abs() > _MIN_W
        inv = torch.where(ok_depth, 1.0 / depth.abs().clamp(min=_MIN_W), torch.zeros_like(depth))
        inv = inv / inv.amax(1, keepdim=True).clamp(min=_MIN_W)  # keep the scale O(1)
        Xh2 = _solve(xn, w * torch.where(ok_depth, inv, torch.ones_like(inv)), terms)
        return Xh2

    def finish(Xh, used):
        h = Xh[..., 3]
        at_inf = h.abs() < 1e-9
        X = Xh[..., :3] / torch.where(at_inf, torch.ones_like(h), h)[..., None]
        X = torch.where(at_inf[..., None], torch.zeros_like(X), X)
        xc = _camera_coords(X, R, t)  # (M,V,K,3)
        depth = xc[..., 2]
        uv = torch.matmul(xc / depth[..., None].clamp(min=_MIN_DEPTH), Kc.transpose(-1, -2)[None])
        err = (uv[..., :2] - xy).norm(dim=-1)  # (M,V,K)
        behind = (depth <= 1e-3) & used
        err = torch.where(used, err, torch.zeros_like(err))
        n_used = used.sum(1)
        bad = at_inf | behind.any(1) | (n_used < min_views)
        return X, err, bad

    def mean_error(err, used):
        w = conf * used
        return (err * w).sum(1) / w.sum(1).clamp(min=_MIN_W)

    Xh = solve(used)
    X, err, bad = finish(Xh, used)
    if robust:
        views = torch.arange(V)[None, :, None]
        for _ in range(V - min_views):
            drop = (err.amax(1) > outlier_threshold) & (used.sum(1) > min_views) & ~bad
            drop |= bad & (used.sum(1) > min_views)
            if not bool(drop.any()):
                break
            # Try leaving out each used view; keep the subset with the lowest mean error (with one
            # outlier among the views, the worst view of the full solution need not be it).
            best = None
            for c in range(V):
                cand = used & (views != c)
                Xc, ec, bc = finish(solve(cand), cand)
                score = mean_error(ec, cand)
                score = torch.where(bc | ~used[:, c], torch.full_like(score, float("inf")), score)
                if best is None:
                    best = [score, Xc, ec, bc, cand]
                else:
                    better = score < best[0]
                    best = [
                        torch.where(better, score, best[0]),
                        torch.where(better[..., None], Xc, best[1]),
                        torch.where(better[:, None], ec, best[2]),
                        torch.where(better, bc, best[3]),
                        torch.where(better[:, None], cand, best[4]),
                    ]
            drop &= torch.isfinite(best[0])
            X = torch.where(drop[..., None], best[1], X)
            err = torch.where(drop[:, None], best[2], err)
            bad = torch.where(drop, best[3], bad)
            used = torch.where(drop[:, None], best[4], used)

    w = conf * used
    wsum = w.sum(1)
    n_used = used.sum(1).clamp(min=1)
    mean_err = (err * w).sum(1) / wsum.clamp(min=_MIN_W)
    mean_conf = wsum / n_used
    quality = mean_conf * error_scale**2 / (error_scale**2 + mean_err**2)
    quality = torch.where(bad, torch.zeros_like(quality), quality).clamp(0.0, 1.0)
    X = torch.where(bad[..., None], torch.zeros_like(X), X)
    out = torch.cat([X, quality[..., None]], -1)
    if single:
        out, used = out[0], used[0]
    out = _back(out, was_numpy, out_dtype, device)
    if return_used:
        used = used.numpy() if was_numpy else used.to(device if device is not None else "cpu")
        return out, used
    return out


def reprojection_errors(points, keypoints, cameras):
    """Distance in pixels between projected 3D points and 2D keypoints, in every view.

    Args:
        points: ``(..., K, 3)`` world points in metres (e.g. ``triangulate(...)[..., :3]``).
        keypoints: ``(..., V, K, 2 or 3)`` pixels (undistorted, each view's ``K``); a third
            (confidence) channel is ignored: mask the result with ``keypoints[..., 2] > 0``.
            Leading dims must equal those of ``points``.
        cameras: a :class:`Camera` of batch ``V`` or a sequence of ``V`` Cameras.

    Returns:
        ``(..., V, K)`` Euclidean errors in pixels, same container type as ``keypoints``
        (float32 for integer input). Points behind a camera (depth < 1 mm) project as if at
        1 mm depth: large, finite errors.

    Raises:
        ValueError: shapes that do not match as above, or a view count different from the
            number of cameras.
    """
    P, _, _ = _as_tensor(points, "points")
    kp, was_numpy, out_dtype = _as_tensor(keypoints, "keypoints")
    device = keypoints.device if isinstance(keypoints, torch.Tensor) else None
    if P.dim() < 2 or P.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., K, 3), got {tuple(P.shape)}.")
    if kp.dim() != P.dim() + 1 or kp.shape[-1] not in (2, 3):
        raise ValueError(
            f"keypoints must have shape (..., V, K, 2 or 3) with the leading dims of points "
            f"{tuple(P.shape)}; got {tuple(kp.shape)}."
        )
    if kp.shape[:-3] != P.shape[:-2] or kp.shape[-2] != P.shape[-2]:
        raise ValueError(
            f"points {tuple(P.shape)} and keypoints {tuple(kp.shape)} disagree: expected "
            f"keypoints of shape {tuple(P.shape[:-2])} + (V, {P.shape[-2]}, 3)."
        )
    Kc, R, t = stack_cameras(cameras)
    V = Kc.shape[0]
    if kp.shape[-3] != V:
        raise ValueError(f"keypoints have {kp.shape[-3]} views but {V} cameras were given.")
    lead = P.shape[:-2]
    J = P.shape[-2]
    uv = _project_views(P.reshape(-1, J, 3), Kc, R, t)  # (M,V,K,2)
    err = (uv - kp.reshape(-1, V, J, kp.shape[-1])[..., :2]).norm(dim=-1)
    return _back(err.reshape(*lead, V, J), was_numpy, out_dtype, device)
