"""DensePose correspondence energy (Guler et al. 2018; as a fitting term: Guler & Kokkinos,
HoloPose 2019): each foreground pixel's (I, U, V) names a point of the body's surface; that
point, projected, is pulled to the pixel with the same robust GMoF as the keypoints.

The (I, U, V) -> (triangle, barycentrics) lookup runs once per observation (``targets``); every
optimizer step then only blends three vertices per point and projects them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bodyfit.body_models.base import BodyOutput
from bodyfit.cameras import Camera
from bodyfit.fitting.reprojection import gmof


@dataclass
class DensePoseTargets:
    """Subsampled DensePose pixels of a batch, looked up on the body's chart.

    Attributes:
        batch: (N,) int64 sample of each point.
        pixels: (N,2) x, y pixel coordinates (pixel centres at integers).
        triangle: (N,) int64 face of the chart's mesh. barycentrics: (N,3).
        weight: (N,) confidence (1 where none was given).
        counts: (B,) points per sample.
    """

    batch: torch.Tensor
    pixels: torch.Tensor
    triangle: torch.Tensor
    barycentrics: torch.Tensor
    weight: torch.Tensor
    counts: torch.Tensor


class DensePoseEnergy(torch.nn.Module):
    """DensePose correspondence energy.

    Args:
        chart: a ``bodyfit.densepose.DensePoseChart`` on the fitted model's mesh.
        sigma: GMoF scale as a fraction of the box height (as ``ReprojectionEnergy``).

    ``forward(output, camera, targets, scale) -> (B,)``: mean over each sample's points of
    weight * GMoF((project(surface point) - pixel) / scale, sigma), summed over x and y.
        output: BodyOutput with vertices (B,V,3) in metres, world frame; camera: Camera (B);
        targets: from :meth:`targets`; scale: (B,) box height in pixels.
    Samples without points get 0.
    """

    def __init__(self, chart, sigma: float = 0.3):
        super().__init__()
        self.chart = chart
        self.sigma = sigma

    def targets(self, iuv: torch.Tensor, points: int = 400, confidence: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> DensePoseTargets:
        """Subsample at most ``points`` foreground pixels per sample and look them up.

        Args:
            iuv: (B,3,H,W) I in 0..24, U, V in [0,1] (``bodyfit.densepose.check_iuv``).
            confidence: optional (B,H,W) per-pixel confidence in [0,1].
        Raises:
            ValueError: a malformed IUV (see ``check_iuv``).
        """
        from bodyfit.densepose import check_iuv, sample_foreground

        iuv = check_iuv(iuv)
        B = iuv.shape[0]
        b, xy, I, U, V = sample_foreground(iuv, points, generator=generator)
        tri, bary, found = self.chart.lookup(I.long(), U, V)
        if confidence is not None:
            w = confidence[b, xy[:, 1].long(), xy[:, 0].long()].to(bary)
        else:
            w = torch.ones_like(bary[:, 0])
        keep = found & (w > 0)
        b, xy, tri, bary, w = b[keep], xy[keep], tri[keep], bary[keep], w[keep]
        counts = torch.bincount(b, minlength=B)
        return DensePoseTargets(b, xy.to(bary), tri, bary, w, counts)

    def forward(self, output: BodyOutput, camera: Camera, targets: DensePoseTargets,
                scale: torch.Tensor) -> torch.Tensor:
        if output.vertices is None:
            raise ValueError("DensePoseEnergy needs vertices: evaluate the model with vertices=True.")
        verts = output.vertices
        B = verts.shape[0]
        out = verts.new_zeros(B)
        if targets.batch.numel() == 0:
            return out
        corners = verts[targets.batch[:, None], self.chart.faces[targets.triangle]]  # (N,3,3)
        points = (targets.barycentrics.to(verts)[..., None] * corners).sum(1)
        b = targets.batch
        projected = Camera(camera.K[b], camera.R[b], camera.t[b], camera.image_size).project(points[:, None])[:, 0]
        r = (projected - targets.pixels.to(verts)) / scale[b, None]
        e = targets.weight.to(verts) * gmof(r, self.sigma).sum(-1)
        out = out.index_add(0, b, e)
        return out / targets.counts.to(verts).clamp(min=1.0)
