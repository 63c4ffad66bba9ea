"""Silhouette energy: the body's antialiased coverage against a person mask.

E_b = sum_views sum_pixels (coverage - mask)^2 / sum_pixels mask, so 1.0 means "as much wrong
area as the person's own area" at any resolution. Coverage comes from ``renderers.antialias``,
whose gradients move the silhouette's outline (Laine et al. 2020); the masks are the detector's
(MediaPipe's segmentation on real pictures) or rendered ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bodyfit.fitting.energy import Energy, Evaluation, Problem, render_model
from bodyfit.renderers import antialias_construct_topology_hash
from bodyfit.renderers.views import silhouette


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,H,W) or (B,H,W,C) float -> the same at ``size`` (H, W) (area averaging)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    chw = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2)
    out = F.interpolate(chw, size=size, mode="area")
    return out[:, 0] if x.dim() == 3 else out.permute(0, 2, 3, 1)


def mask_energy(coverage: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,H,W) coverage and mask in [0,1] -> (B,) squared difference over the mask's area;
    0 where the mask is empty (nothing to compare with)."""
    area = mask.sum(dim=(1, 2))
    err = ((coverage - mask.to(coverage)) ** 2).sum(dim=(1, 2))
    return torch.where(area > 0, err / area.clamp(min=1.0), torch.zeros_like(err))


class SilhouetteEnergy(Energy):
    """Person-mask energy (``silhouette``), summed over the views that have a mask and see the
    sample; masks are compared at the render resolution (``render_size``)."""

    name = "silhouette"
    needs = "raster"

    def __init__(self, model, config):
        super().__init__(model, config)
        faces = render_model(model, config.render_topology).faces
        self.register_buffer("faces", faces, persistent=False)
        self.register_buffer("topology", antialias_construct_topology_hash(faces), persistent=False)

    def prepare(self, problem: Problem):
        masks = problem.observations.masks
        if masks is None or all(m is None for m in masks):
            return None
        out = {}
        for v, m in enumerate(masks):
            if m is None:
                continue
            m = m.to(problem.keypoints).clamp(0, 1)
            out[v] = resize(m, problem.render_cameras[v].image_size)
            empty = (m.sum(dim=(1, 2)) == 0) & problem.active & problem.seen[:, v]
            for b in torch.nonzero(empty).flatten().tolist():
                problem.messages[b].append(f"{problem.observations.names[v]}: empty person mask, "
                                           f"silhouette left out")
        return out

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        vertices = ev.output.vertices
        total = vertices.new_zeros(vertices.shape[0])
        for v, mask in data.items():
            cover = silhouette(vertices, self.faces, ev.problem.render_cameras[v], raster=ev.raster(v),
                               topology_hash=self.topology)
            total = total + mask_energy(cover, mask) * ev.problem.seen[:, v]
        return total
