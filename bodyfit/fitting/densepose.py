"""DensePose correspondence energy (Guler et al. 2018; as a fitting term: Guler & Kokkinos,
HoloPose 2019): each foreground pixel's (I, U, V) names a point of the body's surface; that
point, projected, is pulled to the pixel with the same robust GMoF as the keypoints.

The (I, U, V) -> (triangle, barycentrics) lookup runs once per observation (``targets``); every
optimizer step then only blends three vertices per point and projects them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bodyfit.cameras import Camera
from bodyfit.fitting.energy import Energy, Evaluation, Problem, render_model
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


def chart_for(model):
    """The DensePose chart on ``model``'s mesh: Anny's own 24-part chart (any topology), or
    DensePose's chart for SMPL / SMPL-H (6890 vertices, from the bodyfit[densepose-smpl] extra).

    Raises:
        ValueError: a model without a chart (SMPL-X).
    """
    from bodyfit.densepose import anny_chart, smpl_chart

    if model.name == "anny":
        return anny_chart(model)
    if model.name in ("smpl", "smplh"):
        return smpl_chart()
    raise ValueError(f"DensePose fitting needs a chart on {model.name!r}'s mesh: Anny's is built in "
                     f"and SMPL's comes from bodyfit[densepose-smpl].")


def sample_targets(chart, iuv: torch.Tensor, points: int = 400, confidence: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> DensePoseTargets:
    """Subsample at most ``points`` foreground pixels per sample of ``iuv`` and look them up
    on ``chart`` (``DensePoseChart.lookup``).

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
    tri, bary, found = chart.lookup(I.long(), U, V)
    if confidence is not None:
        w = confidence[b, xy[:, 1].long(), xy[:, 0].long()].to(bary)
    else:
        w = torch.ones_like(bary[:, 0])
    keep = found & (w > 0)
    b, xy, tri, bary, w = b[keep], xy[keep], tri[keep], bary[keep], w[keep]
    counts = torch.bincount(b, minlength=B)
    return DensePoseTargets(b, xy.to(bary), tri, bary, w, counts)


def densepose_energy(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera,
                     targets: DensePoseTargets, scale: torch.Tensor, sigma: float) -> torch.Tensor:
    """One view's DensePose energy: mean over each sample's points of
    weight * GMoF((project(surface point) - pixel) / scale, sigma), summed over x and y.

    Args:
        vertices: (B,N,3) metres, world frame; faces: (F,3) the chart's mesh.
        camera: Camera (B). targets: from :func:`sample_targets`. scale: (B,) box heights, px.
    Returns:
        (B,) energy; 0 for samples without points.
    """
    B = vertices.shape[0]
    out = vertices.new_zeros(B)
    if targets.batch.numel() == 0:
        return out
    corners = vertices[targets.batch[:, None], faces[targets.triangle]]  # (N,3,3)
    points = (targets.barycentrics.to(vertices)[..., None] * corners).sum(1)
    b = targets.batch
    projected = Camera(camera.K[b], camera.R[b], camera.t[b], camera.image_size).project(points[:, None])[:, 0]
    r = (projected - targets.pixels.to(vertices)) / scale[b, None]
    e = targets.weight.to(vertices) * gmof(r, sigma).sum(-1)
    out = out.index_add(0, b, e)
    return out / targets.counts.to(vertices).clamp(min=1.0)


class DensePoseEnergy(Energy):
    """DensePose correspondence energy (``densepose``), summed over the views with IUV.

    ``prepare`` samples ``densepose_points`` foreground pixels per view and sample (a fixed
    seed) and looks them up on the chart of the render mesh (:func:`chart_for`, built at the
    first fit with IUV and kept); samples without foreground are reported.
    """

    name = "densepose"
    needs = "vertices"

    def __init__(self, model, config):
        super().__init__(model, config)
        self.mesh_model = render_model(model, config.render_topology)
        self.sigma = float(config.sigma)
        self.points = int(config.densepose_points)
        self._chart = None

    @property
    def chart(self):
        if self._chart is None:
            self._chart = chart_for(self.mesh_model)
        return self._chart

    def prepare(self, problem: Problem):
        iuvs = problem.observations.iuv
        if iuvs is None or all(i is None for i in iuvs):
            return None
        gen = torch.Generator().manual_seed(0)
        targets = {}
        for v, iuv in enumerate(iuvs):
            if iuv is None:
                continue
            t = sample_targets(self.chart, iuv, self.points, generator=gen)
            targets[v] = DensePoseTargets(*(x.to(problem.keypoints.device) for x in (
                t.batch, t.pixels, t.triangle, t.barycentrics, t.weight, t.counts)))
            missing = (t.counts == 0).cpu() & problem.active.cpu()
            for b in torch.nonzero(missing).flatten().tolist():
                problem.messages[b].append(f"{problem.observations.names[v]}: no DensePose foreground, "
                                           f"DensePose left out")
        return targets

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        pb = ev.problem
        vertices = ev.output.vertices
        faces = self.chart.faces
        return sum(densepose_energy(vertices, faces, pb.cameras[v], t, pb.scale[:, v], self.sigma)
                   for v, t in data.items())
