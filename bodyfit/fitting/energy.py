"""The one protocol every energy follows, and what an energy sees.

An energy is a small ``torch.nn.Module`` with

* ``name`` — the key stages weigh it by (``stages.body.weights.<name>``);
* ``needs`` — what it reads of the body: ``"params"`` (parameters only), ``"joints"``
  (landmarks), ``"vertices"`` (the mesh) or ``"raster"`` (the mesh rasterized in the views); the
  Fitter evaluates the body model only as far as a stage's energies need;
* ``__init__(model, config)`` — precomputes what depends on the model and the config alone
  (joint-limit tables, charts, mesh topology), once per Fitter;
* ``prepare(problem)`` — runs once per fit: turns the observations into what every step reads
  (resized masks, DensePose targets, texture pixel orders); returns that data, or ``None`` when
  the observations lack what the energy needs (the energy is then left out and reported);
* ``forward(ev, data) -> (B,)`` — the per-sample energy at the current parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from bodyfit.body_models.base import BodyModel, BodyOutput, BodyParams
from bodyfit.cameras import Camera
from bodyfit.observations import Observations

NEEDS = ("params", "joints", "vertices", "raster")


@dataclass
class Problem:
    """Observations made ready for one fit (on the model's device and dtype).

    Attributes:
        observations: the Observations (moved to the model's device).
        keypoints: (B,V,K,3) cleaned keypoints: zeros in views a sample cannot use.
        seen: (B,V) bool, the view is usable for the sample and sees ``min_keypoints`` or more.
        scale: (B,V) person box heights in pixels (the energies' scale).
        active: (B,) bool, the samples that are fitted (some view sees them).
        cameras: V Cameras of batch B (views of shared tensors where the camera is shared).
        render_cameras: V Cameras of batch B at the working resolution of the dense energies
            (longer side at most ``render_size``).
        kp_index, kp_weight: (K,) the keypoint convention's map onto the model's landmarks.
        messages: per sample, notes on what was left out.
    """

    observations: Observations
    keypoints: torch.Tensor
    seen: torch.Tensor
    scale: torch.Tensor
    active: torch.Tensor
    cameras: list[Camera]
    render_cameras: list[Camera]
    kp_index: torch.Tensor
    kp_weight: torch.Tensor
    messages: list[list[str]] = field(default_factory=list)

    def index(self, rows: torch.Tensor) -> "Problem":
        """The samples ``rows`` ((N,) long, repeats allowed) as a Problem of batch N."""
        return Problem(observations=self.observations.index(rows.cpu()), keypoints=self.keypoints[rows],
                       seen=self.seen[rows], scale=self.scale[rows], active=self.active[rows],
                       cameras=[c.index(rows) for c in self.cameras],
                       render_cameras=[c.index(rows) for c in self.render_cameras],
                       kp_index=self.kp_index, kp_weight=self.kp_weight,
                       messages=[list(self.messages[r]) for r in rows.tolist()] if self.messages else [])

    def to(self, device) -> "Problem":
        """The Problem with its tensors and cameras on ``device`` (the observations, which stay
        on the CPU, and the messages are shared)."""
        return replace(self, keypoints=self.keypoints.to(device), seen=self.seen.to(device),
                       scale=self.scale.to(device), active=self.active.to(device),
                       cameras=[c.to(device) for c in self.cameras],
                       render_cameras=[c.to(device) for c in self.render_cameras],
                       kp_index=self.kp_index.to(device), kp_weight=self.kp_weight.to(device))

    batch_size = property(lambda self: self.observations.batch_size, doc="B, the observations'.")
    num_views = property(lambda self: self.observations.num_views, doc="V, the observations'.")
    sequence = property(lambda self: self.observations.sequence, doc="The observations' sequence flag.")


class Evaluation:
    """The body at one optimizer step, evaluated lazily and shared by the stage's energies.

    Attributes:
        params: BodyParams (B) being optimized. init: the BodyParams (B) the fit started from.
        problem: the Problem. keypoint_mask: optional (K,) weights of the stage's keypoints.
    ``output`` (given, or computed on first use) is ``model``'s output (joints; vertices when the stage needs them: ``model`` is
    then the render mesh's, :func:`render_model`); ``raster(v)`` the rasterization of those vertices in view ``v``'s render camera,
    computed once per step and view.
    """

    def __init__(self, params: BodyParams, init: BodyParams, problem: Problem, model: BodyModel,
                 vertices: bool, keypoint_mask: torch.Tensor | None, context=None,
                 output: BodyOutput | None = None):
        self.params = params
        self.init = init
        self.problem = problem
        self.keypoint_mask = keypoint_mask
        self._model = model
        self._vertices = vertices
        self._context = context
        self._output = output
        self._rasters: dict[int, Any] = {}

    @property
    def output(self) -> BodyOutput:
        if self._output is None:
            self._output = self._model(self.params, vertices=self._vertices)
        return self._output

    def raster(self, v: int):
        """(pos_clip (B,N,4), rast (B,H,W,4)) of the mesh in view ``v``'s render camera."""
        if v not in self._rasters:
            from bodyfit.renderers.views import rasterize_view

            self._rasters[v] = rasterize_view(self.output.vertices, self._model.faces,
                                              self.problem.render_cameras[v], context=self._context)
        return self._rasters[v]


def render_model(model: BodyModel, topology: str | None) -> BodyModel:
    """The model whose mesh the dense energies (silhouette, texture, DensePose) render: for Anny
    on its default mesh, the same body on the low-poly ``topology`` (``AnnyModel.with_mesh``:
    the same 104 bones and the same joints, so only the rendered mesh is coarser, and it is
    cached on the model); ``model`` itself for any other model or when ``topology`` is None or
    "default"."""
    if not topology or topology == "default" or model.name != "anny" or model.topology != "default":
        return model
    return model.with_mesh(topology)


class Energy(torch.nn.Module):
    """Base class of the energies (see the module docstring for the protocol)."""

    name: ClassVar[str]
    needs: ClassVar[str] = "joints"

    def __init__(self, model: BodyModel, config):
        super().__init__()

    def prepare(self, problem: Problem):
        """Per-fit data for :meth:`forward`, or None when the observations lack what this
        energy needs. The default needs nothing."""
        return ()

    def forward(self, ev: Evaluation, data) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError
