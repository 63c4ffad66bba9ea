"""Pictures of fits people can look at: the shaded mesh over the picture, plus a side view.

A painter's-algorithm renderer (triangles sorted far to near, filled with OpenCV, Lambert
shading from the camera direction). It is for looking, not for gradients: the differentiable
rasterizer lives beside it in ``bodyfit.renderers`` (issue: renderers).
"""
from __future__ import annotations

import cv2
import numpy as np

_COLOR = np.array([150, 190, 235], dtype=np.float32)  # light blue (RGB)


def draw_mesh(image: np.ndarray, vertices: np.ndarray, faces: np.ndarray, K: np.ndarray,
              alpha: float = 0.7, color: np.ndarray = _COLOR) -> np.ndarray:
    """Draw a mesh over a picture.

    Args:
        image: (H,W,3) uint8 RGB.
        vertices: (V,3) metres in the OpenCV camera frame (z forward).
        faces: (F,3) vertex indices.
        K: (3,3) intrinsics, pixels.
        alpha: opacity of the mesh.
    Returns:
        (H,W,3) uint8 RGB. Triangles with a vertex behind the camera are skipped.
    """
    H, W = image.shape[:2]
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    z = v[:, 2]
    tri_ok = (z[f] > 1e-3).all(1)
    f = f[tri_ok]
    uv = (v @ K.T)[:, :2] / np.maximum(z, 1e-3)[:, None]
    tri = v[f]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    view = -tri.mean(1)
    view /= np.linalg.norm(view, axis=1, keepdims=True) + 1e-12
    shade = np.abs((normals * view).sum(1))  # two-sided
    order = np.argsort(-tri[:, :, 2].mean(1))  # far to near
    layer = np.zeros_like(image)
    cover = np.zeros((H, W), dtype=np.uint8)
    pts = np.round(uv[f] * 16).astype(np.int32)  # 4 fractional bits
    for i in order:
        c = (color * (0.25 + 0.75 * shade[i])).astype(np.uint8).tolist()
        cv2.fillConvexPoly(layer, pts[i], c, lineType=cv2.LINE_AA, shift=4)
        cv2.fillConvexPoly(cover, pts[i], 255, shift=4)
    m = (cover[..., None].astype(np.float32) / 255.0) * alpha
    out = image.astype(np.float32) * (1 - m) + layer.astype(np.float32) * m
    return out.clip(0, 255).astype(np.uint8)


def side_view(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int],
              angle_deg: float = 90.0) -> np.ndarray:
    """The mesh turned ``angle_deg`` about the camera's vertical axis through its centre, drawn
    on a grey background of ``size`` (H, W) with the same intrinsics: shows depth errors the
    front view hides."""
    v = np.asarray(vertices, dtype=np.float64)
    c = v.mean(0)
    a = np.radians(angle_deg)
    Ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    turned = (v - c) @ Ry.T + c
    bg = np.full((*size, 3), 235, dtype=np.uint8)
    return draw_mesh(bg, turned, faces, K, alpha=1.0)


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, projected: np.ndarray | None = None,
                   radius: int = 4) -> np.ndarray:
    """Observed keypoints (green, (K,3) px + conf) and, if given, the fit's (red, (K,2) px),
    joined by a line."""
    out = image.copy()
    for k, (x, y, conf) in enumerate(np.asarray(keypoints)):
        if conf <= 0:
            continue
        if projected is not None:
            px, py = projected[k]
            cv2.line(out, (int(x), int(y)), (int(px), int(py)), (255, 255, 0), 1, cv2.LINE_AA)
            cv2.circle(out, (int(px), int(py)), radius, (230, 40, 40), -1, cv2.LINE_AA)
        cv2.circle(out, (int(x), int(y)), radius, (40, 200, 40), -1, cv2.LINE_AA)
    return out


def overlay_picture(image: np.ndarray, vertices: np.ndarray, faces: np.ndarray, K: np.ndarray,
                    keypoints: np.ndarray | None = None, projected: np.ndarray | None = None) -> np.ndarray:
    """The picture with the fit drawn over it (and keypoints if given), side by side with the
    side view: (H, 2W, 3) uint8 RGB."""
    front = draw_mesh(image, vertices, faces, K)
    if keypoints is not None:
        front = draw_keypoints(front, keypoints, projected)
    side = side_view(vertices, faces, K, image.shape[:2])
    return np.concatenate([front, side], axis=1)
