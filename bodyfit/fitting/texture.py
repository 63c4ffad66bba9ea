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
import math

import torch
import torch.nn.functional as F

from bodyfit.cameras import Camera
from bodyfit.fitting.energy import Energy, Evaluation, Problem, render_model
from bodyfit.fitting.silhouette import resize
from bodyfit.renderers import interpolate
from bodyfit.renderers.views import to_camera


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """sqrt(x^2 + eps^2) - eps, elementwise: L1 away from 0, smooth at 0."""
    return torch.sqrt(x * x + eps * eps) - eps


@functools.lru_cache(maxsize=8)
def _pixel_order(n: int, device: torch.device) -> torch.Tensor:
    """A fixed random order of n pixels, the same at every call, so the subset of body pixels a
    view samples stays put while the body moves."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(device)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,H,W,C) Gaussian blur with standard deviation ``sigma`` pixels (separable, edges
    replicated); ``sigma <= 0`` returns the images unchanged."""
    if sigma <= 0:
        return images
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    C = images.shape[-1]
    chw = images.permute(0, 3, 1, 2)
    chw = F.conv2d(F.pad(chw, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    chw = F.conv2d(F.pad(chw, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    return chw.permute(0, 2, 3, 1)


def as_float_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 pictures -> float in [0,1]; float pictures unchanged (as float)."""
    image = torch.as_tensor(image)
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


class TextureConsistencyEnergy(Energy):
    """Colour agreement of the body's surface across views and frames (``texture``).

    Config: ``depth_tolerance`` (metres between a point's depth and the rendered surface's
    within which it counts as seen), ``texture_blur`` (Gaussian sigma in pixels at the render
    resolution applied to the pictures first). Other settings:
        max_pixels: body pixels used per view and sample (a random subset, the same at every
            step; 4000).
        margin: half-size in pixels of the window that must be all body at a consistent depth
            around a used pixel (at least 1, and at least the blur's reach, about 2 sigma), so
            that no blurred colour mixes in the background or an occluded surface.
        min_points: a pair's energy is its sum over the common points divided by at least this
            many (200), so that a small overlap weighs little.

    ``prepare``: the pictures at the render resolution; available with two or more views that
    have pictures, or one such view in a sequence of two or more frames.
    ``forward``: the mean over ordered view pairs (only where both views see the sample) and,
    in a sequence, over consecutive frames of each view, of :meth:`pair_energy`.
    """

    name = "texture"
    needs = "raster"

    def __init__(self, model, config, max_pixels: int = 4000, min_points: int = 200):
        super().__init__(model, config)
        self.register_buffer("faces", render_model(model, config.render_topology).faces, persistent=False)
        self.depth_tolerance = float(config.depth_tolerance)
        self.blur = float(config.texture_blur)
        self.margin = max(1, math.ceil(2 * self.blur))
        self.max_pixels = max_pixels
        self.min_points = min_points

    def prepare(self, problem: Problem):
        images = problem.observations.images
        have = [v for v in range(problem.num_views) if images is not None and images[v] is not None]
        if not (len(have) >= 2 or (have and problem.sequence and problem.batch_size >= 2)):
            return None
        return {v: blur(resize(as_float_image(images[v]).to(problem.keypoints),
                               problem.render_cameras[v].image_size), self.blur) for v in have}

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        pb = ev.problem
        vertices = ev.output.vertices
        rendered = {v: self.view(vertices, pb.render_cameras[v], im, ev.raster(v)) for v, im in data.items()}
        seen = pb.seen.to(vertices.dtype)
        total = vertices.new_zeros(vertices.shape[0])
        pairs = 0
        for i in rendered:
            for j in rendered:
                if i != j:  # only where both views see the sample
                    total = total + self.pair_energy(vertices, rendered[i], rendered[j]) * seen[:, i] * seen[:, j]
                    pairs += 1
        if pb.sequence and pb.batch_size >= 2:  # the same view in consecutive frames
            for v, r in rendered.items():
                both = F.pad(seen[1:, v] * seen[:-1, v], (1, 0))
                total = total + self.pair_energy(vertices, r, r, shift=1) * both
                pairs += 1
        return total / max(pairs, 1)

    def view(self, vertices: torch.Tensor, camera: Camera, image: torch.Tensor, raster) -> dict:
        """One view: its surface points under the body pixels and what is needed to test
        visibility there, from ``raster`` = (pos_clip, rast) of the (B,N,3) world-frame
        ``vertices`` in ``camera`` (``renderers.views.rasterize_view``) and the (B,H,W,C)
        picture. Returns a dict (internal layout) for :meth:`pair_energy`."""
        B = vertices.shape[0]
        H, W = camera.image_size
        if image.dim() != 4 or tuple(image.shape[1:3]) != (H, W) or image.shape[0] not in (1, B):
            raise ValueError(f"image must have shape (B,H,W,C) = ({B},{H},{W},C) like its camera, "
                             f"got {tuple(image.shape)}.")
        if camera.batch_size != B:
            camera = camera.expand(B)
        _, rast = raster
        with torch.no_grad():
            depth, _ = interpolate(to_camera(vertices.detach(), camera)[..., 2:], rast, self.faces)
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
            X, _ = interpolate(vertices[t:t + 1], rast, self.faces)
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
