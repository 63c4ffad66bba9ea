"""Silhouette energy: the body's antialiased coverage against a person mask.

E_b = sum_pixels (coverage - mask)^2 / sum_pixels mask, so 1.0 means "as much wrong area as the
person's own area" at any resolution. Coverage comes from ``renderers.ops.antialias``, whose
gradients move the silhouette's outline (Laine et al. 2020); the masks are the detector's
(MediaPipe's segmentation on real pictures) or rendered ones.
"""
from __future__ import annotations

import torch

from bodyfit.body_models.base import BodyOutput
from bodyfit.cameras import Camera
from bodyfit.renderers import ops
from bodyfit.renderers.views import silhouette


class SilhouetteEnergy(torch.nn.Module):
    """Person-mask energy.

    Args:
        faces: (F,3) triangles of the body mesh.
        backend: rasterizer backend ('auto', 'moderngl', 'torch', 'nvdiffrast').

    ``forward(output, camera, mask, raster=None) -> (B,)``:
        output: BodyOutput with vertices (B,V,3), metres, world frame.
        camera: Camera (B) whose image_size is the mask's (H, W).
        mask: (B,H,W) person mask in [0,1] (soft masks allowed).
    Samples whose mask is empty get energy 0 (nothing to compare with).

    Raises:
        ValueError: output without vertices, or a mask whose size is not the camera's.
    """

    def __init__(self, faces: torch.Tensor, backend: str = "auto"):
        super().__init__()
        self.register_buffer("faces", faces.long(), persistent=False)
        self.register_buffer("topology", ops.antialias_construct_topology_hash(faces), persistent=False)
        self.backend = backend

    def coverage(self, vertices: torch.Tensor, camera: Camera, raster=None) -> torch.Tensor:
        """(B,H,W) antialiased coverage of the mesh in [0,1], differentiable in the vertices.
        ``raster``: optional ``renderers.views.rasterize_view`` of these vertices in this camera,
        to share one rasterization between energies."""
        return silhouette(vertices, self.faces, camera, self.backend, raster, self.topology)

    def forward(self, output: BodyOutput, camera: Camera, mask: torch.Tensor, raster=None) -> torch.Tensor:
        if output.vertices is None:
            raise ValueError("SilhouetteEnergy needs vertices: evaluate the model with vertices=True.")
        if mask.dim() != 3 or tuple(mask.shape[1:]) != tuple(camera.image_size):
            raise ValueError(f"mask must have shape (B,H,W) = (B,{camera.image_size[0]},"
                             f"{camera.image_size[1]}) like the camera, got {tuple(mask.shape)}.")
        cover = self.coverage(output.vertices, camera, raster)
        area = mask.sum(dim=(1, 2))
        err = ((cover - mask.to(cover)) ** 2).sum(dim=(1, 2))
        return torch.where(area > 0, err / area.clamp(min=1.0), torch.zeros_like(err))
