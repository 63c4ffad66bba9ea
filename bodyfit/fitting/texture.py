"""Texture consistency (TexturePose, Pavlakos et al. 2019): a point of the body's surface has one
colour, so every picture that sees it must show the same colour there.

For each ordered pair of views (a, b): the body is rasterized in view a; each body pixel p of a
gives the surface point X(p) under it (interpolated from the vertices, so it moves with the
body); X(p) is projected into view b and picture b is sampled there bilinearly (differentiable
through the projection). Where b sees X(p) too, picture a's colour at p and picture b's at the
projection must agree: the energy is their mean robust (Charbonnier) difference. Pixels count
only well inside the body's rendering in both views (a window of 2 margin + 1 pixels all
covered, at depths within a tolerance of the point's), so that colours mixed at outlines and
occlusion edges stay out.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from bodyfit.body_models.base import BodyOutput
from bodyfit.cameras import Camera
from bodyfit.renderers import ops
from bodyfit.renderers.views import rasterize_view, to_camera


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """sqrt(x^2 + eps^2) - eps, elementwise: L1 away from 0, smooth at 0."""
    return torch.sqrt(x * x + eps * eps) - eps


@functools.lru_cache(maxsize=8)
def _pixel_order(n: int, device: torch.device) -> torch.Tensor:
    """A fixed random order of n pixels, the same at every call, so the subset of body pixels a
    view samples stays put while the body moves."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(device)


class TextureConsistencyEnergy(torch.nn.Module):
    """Colour agreement of the body's surface across views or frames.

    Args:
        faces: (F,3) triangles of the body mesh.
        depth_tolerance: metres between a point's depth and the rendered surface's within which
            it counts as seen (0.02).
        max_pixels: body pixels used per view and sample (a random subset, the same at every
            call; 4000).
        margin: half-size in pixels of the window that must be all body at a consistent depth
            around a used pixel (1: 3x3); at least the blur's reach (about 2 sigma) so that no
            blurred colour mixes in the background or an occluded surface.
        min_points: a pair's energy is its sum over the common points divided by at least this
            many (200), so that a small overlap weighs little.
        backend: rasterizer backend.

    ``forward(output, cameras, images) -> (B,)``:
        output: BodyOutput with vertices (B,V,3), metres, world frame.
        cameras: list of N Cameras (each batch B, or 1 shared), one per view.
        images: list of N (B,H,W,C) float pictures in [0,1], (H, W) = that camera's image_size;
            blur them a little first (a pixel or two) so the colour gradients reach further.
    Returns the mean over ordered view pairs of the pair's energy (0 where a pair sees no common
    point). ``pair_energy(view_a, view_b)`` on two :meth:`view` results gives one pair, e.g. the
    same camera in consecutive frames.

    Raises:
        ValueError: output without vertices, fewer than two views, or an image whose size does
            not match its camera.
    """

    def __init__(self, faces: torch.Tensor, depth_tolerance: float = 0.02, max_pixels: int = 4000,
                 margin: int = 1, min_points: int = 200, backend: str = "auto"):
        super().__init__()
        self.register_buffer("faces", faces.long(), persistent=False)
        self.depth_tolerance = depth_tolerance
        self.max_pixels = max_pixels
        self.margin = margin
        self.min_points = min_points
        self.backend = backend

    def view(self, vertices: torch.Tensor, camera: Camera, image: torch.Tensor, raster=None) -> dict:
        """Render one view: its surface points under the body pixels and what is needed to test
        visibility there. Returns a dict (internal layout) for :meth:`pair_energy`. ``raster``:
        optional (pos_clip, rast) of these vertices in ``camera`` (``views.rasterize_view``)
        to share one rasterization between energies."""
        B = vertices.shape[0]
        H, W = camera.image_size
        if image.dim() != 4 or tuple(image.shape[1:3]) != (H, W) or image.shape[0] not in (1, B):
            raise ValueError(f"image must have shape (B,H,W,C) = ({B},{H},{W},C) like its camera, "
                             f"got {tuple(image.shape)}.")
        if camera.batch_size != B:
            camera = camera.expand(B)
        _, rast = raster if raster is not None else rasterize_view(vertices, self.faces, camera, self.backend)
        with torch.no_grad():
            depth, _ = ops.interpolate(to_camera(vertices.detach(), camera)[..., 2:], rast, self.faces)
            cover = (rast[..., 3] > 0).to(vertices.dtype)[:, None]
            d = depth.permute(0, 3, 1, 2)
            k, r = 2 * self.margin + 1, self.margin
            inner = -F.max_pool2d(-cover, k, stride=1, padding=r)
            near = -F.max_pool2d(-torch.where(cover > 0, d, torch.full_like(d, 1e9)), k, stride=1, padding=r)
            far = F.max_pool2d(d, k, stride=1, padding=r)
            ok = (inner > 0.5) & (far - near <= 2 * self.depth_tolerance * self.margin)
            ok = ok[:, 0].reshape(B, -1)
            order = _pixel_order(H * W, ok.device)
            pick = []
            for b in range(B):
                idx = order[ok[b, order]]
                pick.append(idx[: self.max_pixels])
        return {"camera": camera, "image": image.to(vertices).expand(B, -1, -1, -1), "rast": rast,
                "depth": depth[..., 0], "ok": ok, "pick": pick}

    def pair_energy(self, vertices: torch.Tensor, a: dict, b: dict, shift: int = 0) -> torch.Tensor:
        """(B,) mean Charbonnier colour difference between view a's body pixels in sample s and
        view b's picture in sample s + shift at the same surface points (the triangle and
        barycentrics under the pixel, on sample s + shift's body: ``shift=1`` compares
        consecutive frames), over the points b sees; the energy goes to sample s + shift."""
        B = vertices.shape[0]
        Hb, Wb = b["camera"].image_size
        out = vertices.new_zeros(B)
        for s in range(B - shift):
            t = s + shift
            idx = a["pick"][s]
            if idx.numel() == 0:
                continue
            rast = a["rast"][s].reshape(-1, 4)[idx][None, None]  # (1,1,N,4)
            if shift:  # the surface point named by a's pixel, on the other frame's body
                rast = rast.detach()
            X, _ = ops.interpolate(vertices[t:t + 1], rast, self.faces)
            X = X[0, 0]  # (N,3) surface points under the pixels, world frame
            cb = to_camera(X[None], b["camera"].index(slice(t, t + 1)))[0]
            z = cb[:, 2]
            uv = (cb @ b["camera"].K[t].to(cb).T)[:, :2] / z.clamp(min=1e-3)[:, None]
            with torch.no_grad():
                col = uv[:, 0].round().long()
                row = uv[:, 1].round().long()
                inside = (z > 1e-3) & (col >= 0) & (col < Wb) & (row >= 0) & (row < Hb)
                flat = row.clamp(0, Hb - 1) * Wb + col.clamp(0, Wb - 1)
                seen = inside & b["ok"][t][flat] & \
                    ((z - b["depth"][t].reshape(-1)[flat]).abs() <= self.depth_tolerance)
            if not bool(seen.any()):
                continue
            grid = torch.stack([(uv[:, 0] + 0.5) / Wb * 2 - 1, (uv[:, 1] + 0.5) / Hb * 2 - 1], -1)
            img_b = b["image"][t:t + 1].permute(0, 3, 1, 2)
            colour_b = F.grid_sample(img_b, grid[seen][None, :, None], mode="bilinear",
                                     padding_mode="border", align_corners=False)[0, :, :, 0].T
            colour_a = a["image"][s].reshape(-1, a["image"].shape[-1])[idx[seen]]
            # a mean over the common points, damped where they are few (< min_points): a handful
            # of points seen at grazing angles in both views gives a noisy, misleading energy
            out[t] = charbonnier(colour_a - colour_b).sum(-1).sum() / max(int(seen.sum()), self.min_points)
        return out

    def forward(self, output: BodyOutput, cameras: list[Camera], images: list[torch.Tensor]):
        if output.vertices is None:
            raise ValueError("TextureConsistencyEnergy needs vertices: evaluate the model with "
                             "vertices=True.")
        if len(cameras) != len(images) or len(cameras) < 2:
            raise ValueError(f"need one image per camera and at least two views, got "
                             f"{len(cameras)} cameras and {len(images)} images.")
        verts = output.vertices
        views = [self.view(verts, c, im) for c, im in zip(cameras, images)]
        total = verts.new_zeros(verts.shape[0])
        n = 0
        for i in range(len(views)):
            for j in range(len(views)):
                if i != j:
                    total = total + self.pair_energy(verts, views[i], views[j])
                    n += 1
        return total / n
