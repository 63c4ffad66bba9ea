"""Pictures and maps built on the four ops: silhouettes, attribute maps, shaded overlays.

Everything takes vertices in metres in the world frame and an OpenCV ``Camera`` (K, R, t,
image size); the clip-space conversion is ``ops.clip_matrix``. Maps have the picture's rows
top-down, like the picture itself. Functions that rasterize take ``context``: a rasterizer
context (``RasterizeGLContext``, ``RasterizeTorchContext``, ``RasterizeCudaContext``, see
:mod:`bodyfit.renderers.backends`), or None for ``default_context`` of the vertices' device.
"""
from __future__ import annotations

import numpy as np
import torch

from bodyfit.cameras import Camera
from bodyfit.renderers import ops
from bodyfit.renderers.backends import RasterizeContext, default_context

_MESH_RGB = torch.tensor([0.60, 0.75, 0.92])


def to_clip(vertices: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(B,V,3) world metres -> (B,V,4) clip-space positions for ``camera``."""
    M = ops.clip_matrix(camera.K, camera.R, camera.t, camera.image_size).to(vertices)
    return torch.cat([vertices, torch.ones_like(vertices[..., :1])], -1) @ M.transpose(1, 2)


def to_camera(vertices: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(B,V,3) world metres -> (B,V,3) OpenCV camera frame metres."""
    return (torch.einsum("bij,bvj->bvi", camera.R.to(vertices), vertices)
            + camera.t.to(vertices)[:, None])


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B,V,3) unit area-weighted vertex normals (right-handed winding) of (B,V,3) vertices."""
    tri = vertices[:, faces]  # (B,F,3,3)
    n = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])
    out = torch.zeros_like(vertices).index_add(1, faces.reshape(-1), n.repeat_interleave(3, dim=1))
    return out / out.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def rasterize_view(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera,
                   context: RasterizeContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos_clip (B,V,4), rast (B,H,W,4)) of (B,V,3) world-frame vertices (metres) seen by
    ``camera``, rasterized at its image size on ``context`` (None: ``default_context`` of the
    vertices' device); pass it on to share one rasterization between the maps or energies of a
    step.

    Raises:
        TypeError: context is not a rasterizer context (e.g. a backend name: use
            ``default_context(device, backend=name)``).
    """
    pos = to_clip(vertices, camera)
    if context is None:
        context = default_context(vertices.device)
    rast, _ = ops.rasterize(context, pos, faces, camera.image_size)
    return pos, rast


def silhouette(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera,
               context: RasterizeContext | None = None, raster=None,
               topology_hash=None) -> torch.Tensor:
    """Antialiased coverage of the mesh, (B,H,W) in [0,1], differentiable with respect to the
    vertices at the silhouette edges (``antialias``). ``context``: as in
    :func:`rasterize_view`; ``raster``: optional :func:`rasterize_view` of these vertices in
    this camera (then nothing is rasterized); ``topology_hash``: optional
    ``antialias_construct_topology_hash(faces)``."""
    pos, rast = raster if raster is not None else rasterize_view(vertices, faces, camera, context)
    cover = (rast[..., 3:] > 0).to(vertices.dtype)
    return ops.antialias(cover, rast, pos, faces, topology_hash)[..., 0]


def render_maps(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera,
                vertex_attributes: dict[str, torch.Tensor] | None = None,
                face_attributes: dict[str, torch.Tensor] | None = None,
                context: RasterizeContext | None = None) -> dict[str, torch.Tensor]:
    """Per-pixel maps of a mesh seen by ``camera``.

    Args:
        vertices: (B,V,3) metres, world frame. faces: (F,3).
        vertex_attributes: name -> (B,V,C) or (V,C), interpolated over the triangles.
        face_attributes: name -> (F,) or (F,C) values (e.g. part ids), constant per triangle.
        context: rasterizer context, as in :func:`rasterize_view`.
    Returns:
        dict with ``mask`` (B,H,W) bool, ``depth`` (B,H,W) camera-frame z in metres (0 where
        empty), ``normals`` (B,H,W,3) unit camera-frame normals, ``surface`` (B,H,W,3) world
        points, ``triangle`` (B,H,W) int64 (-1 where empty), and one map per attribute (0 where
        empty). Interpolated maps are differentiable with respect to vertices and attributes.
    """
    _, rast = rasterize_view(vertices, faces, camera, context)
    mask = rast[..., 3] > 0
    cam_verts = to_camera(vertices, camera)
    normals = vertex_normals(cam_verts, faces)
    attrs = {"surface": vertices, "normals": normals, "depth": cam_verts[..., 2:]}
    attrs.update(vertex_attributes or {})
    names = list(attrs)
    sizes = [attrs[n].shape[-1] for n in names]
    B = vertices.shape[0]
    stacked = torch.cat([attrs[n].expand(B, *attrs[n].shape[-2:]) if attrs[n].dim() == 2 else attrs[n]
                         for n in names], -1)
    interp, _ = ops.interpolate(stacked, rast, faces)
    out = dict(zip(names, interp.split(sizes, -1)))
    out["depth"] = out["depth"][..., 0]
    out["normals"] = out["normals"] / out["normals"].norm(dim=-1, keepdim=True).clamp(min=1e-12)
    out["normals"] = out["normals"] * mask[..., None]
    triangle = rast[..., 3].long() - 1
    out["triangle"] = triangle
    out["mask"] = mask
    for name, values in (face_attributes or {}).items():
        picked = values.to(vertices.device)[triangle.clamp(min=0)]
        keep = mask if picked.dim() == 3 else mask[..., None]
        out[name] = torch.where(keep, picked, torch.zeros_like(picked))
    return out


def shade(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera,
          context: RasterizeContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lambert-shaded mesh lit from the camera: ((B,H,W,3) RGB in [0,1], premultiplied by the
    antialiased coverage, (B,H,W) alpha), of (B,V,3) world-frame vertices (metres);
    ``context`` as in :func:`rasterize_view`."""
    pos, rast = rasterize_view(vertices, faces, camera, context)
    cam_verts = to_camera(vertices, camera)
    normals = vertex_normals(cam_verts, faces)
    view = -cam_verts / cam_verts.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    interp, _ = ops.interpolate(torch.cat([normals, view], -1), rast, faces)
    n, v = interp[..., :3], interp[..., 3:]
    lambert = ((n * v).sum(-1).abs() / (n.norm(dim=-1) * v.norm(dim=-1)).clamp(min=1e-12))
    rgb = _MESH_RGB.to(vertices) * (0.25 + 0.75 * lambert[..., None])
    cover = (rast[..., 3:] > 0).to(vertices.dtype)
    out = ops.antialias(torch.cat([rgb * cover, cover], -1), rast, pos, faces)
    return out[..., :3], out[..., 3]


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, projected: np.ndarray | None = None,
                   radius: int = 4) -> np.ndarray:
    """Observed keypoints (green, (K,3) px + confidence) and, if given, the fit's (red, (K,2)
    px) joined by a line, drawn on a copy of ``image`` (H,W,3) uint8 RGB."""
    import cv2

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


@torch.no_grad()
def overlay_picture(image: np.ndarray, vertices: np.ndarray, faces: np.ndarray, K: np.ndarray,
                    keypoints: np.ndarray | None = None, projected: np.ndarray | None = None,
                    side_angle_deg: float = 90.0, alpha: float = 0.7,
                    context: RasterizeContext | None = None) -> np.ndarray:
    """The fitted mesh shaded over the picture (with keypoints if given), beside a side view.

    Args:
        image: (H,W,3) uint8 RGB. vertices: (V,3) metres in the OpenCV camera frame.
        faces: (F,3). K: (3,3) px. keypoints: (K,3) px + conf; projected: (K,2) px.
        side_angle_deg: the side view turns the mesh this much about the camera's vertical
            axis through its centre (depth errors the front view hides show there).
        alpha: opacity of the mesh over the picture.
        context: rasterizer context (None: ``default_context("cpu")``).
    Returns:
        (H, 2W, 3) uint8 RGB.
    """
    H, W = image.shape[:2]
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)[None]
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    K = torch.as_tensor(np.asarray(K), dtype=torch.float32)
    pic = torch.as_tensor(image, dtype=torch.float32) / 255.0
    rgb, a = _shade_in_box(v, f, K, (H, W), context)
    a = a[..., None] * alpha  # rgb is premultiplied by the antialiased coverage
    front = ((pic * (1 - a) + rgb * alpha) * 255).clamp(0, 255).byte().numpy()
    if keypoints is not None:
        front = draw_keypoints(front, keypoints, projected)
    c = v.mean(1, keepdim=True)
    ang = np.radians(side_angle_deg)
    Ry = torch.tensor([[np.cos(ang), 0, np.sin(ang)], [0, 1, 0], [-np.sin(ang), 0, np.cos(ang)]],
                      dtype=torch.float32)
    rgb_s, a_s = _shade_in_box((v - c) @ Ry.T + c, f, K, (H, W), context)
    side = (0.92 * (1 - a_s[..., None]) + rgb_s) * 255
    return np.concatenate([front, side.clamp(0, 255).byte().numpy()], axis=1)


def _shade_in_box(v: torch.Tensor, f: torch.Tensor, K: torch.Tensor, size: tuple[int, int],
                  context: RasterizeContext | None = None):
    """``shade`` for one view of a (H,W) picture, rendering only the mesh's bounding box (the
    principal point moves with the crop): ((H,W,3) premultiplied RGB, (H,W) alpha)."""
    H, W = size
    rgb = torch.zeros(H, W, 3)
    alpha = torch.zeros(H, W)
    z = v[0, :, 2]
    if not bool((z > 1e-3).any()):
        return rgb, alpha
    uv = (v[0] @ K.T)[:, :2] / z.clamp(min=1e-3)[:, None]
    uv = uv[z > 1e-3]
    x0, y0 = (int(max(0, np.floor(float(uv[:, i].min())) - 2)) for i in (0, 1))
    x1 = int(min(W, np.ceil(float(uv[:, 0].max())) + 3))
    y1 = int(min(H, np.ceil(float(uv[:, 1].max())) + 3))
    if x1 <= x0 or y1 <= y0:
        return rgb, alpha
    Kc = K.clone()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    box_rgb, box_a = shade(v, f, Camera.identity(Kc[None], (y1 - y0, x1 - x0)), context)
    rgb[y0:y1, x0:x1] = box_rgb[0]
    alpha[y0:y1, x0:x1] = box_a[0]
    return rgb, alpha
