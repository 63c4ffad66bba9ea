"""Texture consistency (TexturePose, Pavlakos et al. 2019): a point of the body's surface has one
colour, so every picture that sees it must show the same colour there.

The body's vertices are the surface samples. In each view (or frame) they are projected, the
picture is sampled there bilinearly (differentiable through the projection, so the energy moves
the body), and a vertex counts as seen where it faces the camera and is not hidden (its depth
matches the rendered depth map). For each pair of views the energy is the mean robust
(Charbonnier) colour difference over the vertices both see.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bodyfit.body_models.base import BodyOutput
from bodyfit.cameras import Camera
from bodyfit.renderers import ops
from bodyfit.renderers.views import to_camera, to_clip, vertex_normals


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """sqrt(x^2 + eps^2) - eps, elementwise: L1 away from 0, smooth at 0."""
    return torch.sqrt(x * x + eps * eps) - eps


class TextureConsistencyEnergy(torch.nn.Module):
    """Colour agreement of the body's surface across views or frames.

    Args:
        faces: (F,3) triangles of the body mesh.
        depth_tolerance: metres a vertex may lie behind the rendered surface and still count
            as seen (0.03).
        min_facing: cosine between the vertex normal and the direction to the camera below which
            a vertex is ignored (grazing views smear colours), 0.3.
        backend: rasterizer backend.

    ``forward(output, cameras, images) -> (B,)``:
        output: BodyOutput with vertices (B,V,3), metres, world frame.
        cameras: list of N Cameras (each batch B, or 1 shared), one per view.
        images: list of N (B,H,W,C) float pictures in [0,1], (H, W) = that camera's image_size;
            blur them a little first (a pixel or two) so the colour gradients reach further.
    Returns the mean over view pairs of the per-pair energy; 0 where a pair sees no common
    vertex.

    Raises:
        ValueError: output without vertices, fewer than two views, or an image whose size does
            not match its camera.
    """

    def __init__(self, faces: torch.Tensor, depth_tolerance: float = 0.03, min_facing: float = 0.3,
                 backend: str = "auto"):
        super().__init__()
        self.register_buffer("faces", faces.long(), persistent=False)
        self.depth_tolerance = depth_tolerance
        self.min_facing = min_facing
        self.backend = backend

    def sample(self, vertices: torch.Tensor, camera: Camera, image: torch.Tensor):
        """Colours of the vertices in one view and which of them the view sees.

        Args:
            vertices: (B,V,3) metres, world frame. camera: Camera (B or 1).
            image: (B,H,W,C) in [0,1].
        Returns:
            colors (B,V,C) (differentiable in the vertices), seen (B,V) bool.
        """
        B = vertices.shape[0]
        H, W = camera.image_size
        if image.dim() != 4 or tuple(image.shape[1:3]) != (H, W) or image.shape[0] not in (1, B):
            raise ValueError(f"image must have shape (B,H,W,C) = ({B},{H},{W},C) like its camera, "
                             f"got {tuple(image.shape)}.")
        if camera.batch_size != B:
            camera = Camera(camera.K.expand(B, 3, 3), camera.R.expand(B, 3, 3),
                            camera.t.expand(B, 3), camera.image_size)
        cam = to_camera(vertices, camera)
        z = cam[..., 2]
        uv = torch.einsum("bij,bvj->bvi", camera.K.to(cam), cam / z.clamp(min=1e-3)[..., None])[..., :2]
        with torch.no_grad():
            pos = to_clip(vertices.detach(), camera)
            rast, _ = ops.rasterize(pos, self.faces, (H, W), backend=self.backend)
            depth, _ = ops.interpolate(cam.detach()[..., 2:], rast, self.faces)
            col = uv[..., 0].detach().round().long()
            row = uv[..., 1].detach().round().long()
            inside = (z.detach() > 1e-3) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
            flat = (torch.arange(B, device=col.device)[:, None] * H + row.clamp(0, H - 1)) * W \
                + col.clamp(0, W - 1)
            # Seen only well inside the body's rendering: the 3x3 pixels around the vertex are
            # all covered and no nearer than the vertex (allowing the tolerance), so that colours
            # at outlines and occlusion edges (mixed with what lies behind) are left out.
            cover = (rast[..., 3] > 0).to(cam.dtype)[:, None]
            inner = -F.max_pool2d(-cover, 3, stride=1, padding=1)[:, 0] > 0.5
            near = -F.max_pool2d(-torch.where(rast[..., 3:] > 0, depth, torch.full_like(depth, 1e9))
                                 .permute(0, 3, 1, 2), 3, stride=1, padding=1)[:, 0]
            covered = inner.reshape(-1)[flat]
            d = near.reshape(-1)[flat]
            normals = vertex_normals(cam.detach(), self.faces)
            to_cam = -cam.detach() / cam.detach().norm(dim=-1, keepdim=True).clamp(min=1e-9)
            facing = (normals * to_cam).sum(-1)
            seen = inside & covered & (z.detach() <= d + self.depth_tolerance) & \
                (facing.abs() >= self.min_facing)
        grid = torch.stack([(uv[..., 0] + 0.5) / W * 2 - 1, (uv[..., 1] + 0.5) / H * 2 - 1], -1)
        img = image.to(cam).expand(B, -1, -1, -1).permute(0, 3, 1, 2)
        colors = F.grid_sample(img, grid[:, :, None], mode="bilinear", padding_mode="border",
                               align_corners=False)[..., 0].transpose(1, 2)
        return colors, seen

    @staticmethod
    def pair_energy(colors_a, seen_a, colors_b, seen_b) -> torch.Tensor:
        """(B,) mean Charbonnier colour difference over the vertices both views see."""
        both = (seen_a & seen_b).to(colors_a.dtype)
        diff = charbonnier(colors_a - colors_b).sum(-1)
        return (diff * both).sum(1) / both.sum(1).clamp(min=1.0)

    def forward(self, output: BodyOutput, cameras: list[Camera], images: list[torch.Tensor]):
        if output.vertices is None:
            raise ValueError("TextureConsistencyEnergy needs vertices: evaluate the model with "
                             "vertices=True.")
        if len(cameras) != len(images) or len(cameras) < 2:
            raise ValueError(f"need one image per camera and at least two views, got "
                             f"{len(cameras)} cameras and {len(images)} images.")
        samples = [self.sample(output.vertices, c, im) for c, im in zip(cameras, images)]
        total = output.vertices.new_zeros(output.vertices.shape[0])
        n = 0
        for i in range(len(samples)):
            for j in range(i + 1, len(samples)):
                total = total + self.pair_energy(*samples[i], *samples[j])
                n += 1
        return total / n
