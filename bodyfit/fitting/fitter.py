"""The one fitting engine: ``Fitter(model, config)(observations, init) -> FitResult``.

Single pictures, calibrated views, sequences and batches of people all go through it: the
observations say what was seen (``bodyfit.observations.Observations``), the config's stages say
which energies to minimize with which free parameters (``configs/fit.yaml``), the batched
optimizer (``fitting.optimizer.run_stage``) minimizes them, and the result has the same fields
for every kind of input. SMPLify (Bogo et al. 2016) for the staged keypoint fit, SPIN
(Kolotouros et al. 2019) for starting from a regressor, TexturePose (Pavlakos et al. 2019) and
DensePose (Guler et al. 2018) for the dense terms.

Bodies live in the observations' world frame (a single picture: the camera's frame, R = I,
t = 0). The Fitter precomputes what depends only on the model and the config (energies' tables,
the render mesh, the keypoint maps); each call prepares the observations once and then only
evaluates what the stage's energies need at each step.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from bodyfit.body_models.base import BodyModel, BodyParams
from bodyfit.body_models.conventions import TORSO, keypoint_names, mirror_index
from bodyfit.cameras import Camera
from bodyfit.fitting.config import FitConfig, StageConfig, load_config
from bodyfit.fitting.depth_flip import LIMBS, limb_flip_trial
from bodyfit.fitting.energies import ENERGIES
from bodyfit.fitting.energy import Evaluation, Problem, render_model
from bodyfit.fitting.optimizer import StageResult, run_stage
from bodyfit.fitting.start import flip_about_vertical, mean_start, start_in_world, torso_is_ambiguous
from bodyfit.observations import Observations

log = logging.getLogger(__name__)

#: The label-swap trial (``try_mirror``) keeps a sample's swapped labels only where their fit's
#: energy is this much lower than the labels' as given: a wrong swap costs a whole-body depth error.
MIRROR_MARGIN = 0.5


@dataclass
class FitResult:
    """The outcome of a fit of B samples seen by V views.

    Attributes:
        params: fitted BodyParams (B), world frame; samples not fitted hold the model's default.
        joints: (B,J,3) metres, world frame. vertices: (B,N,3) metres or None. faces: (F,3).
        cameras: the V Cameras of the observations (batch B or 1; for a single picture the
            camera at the origin, R = I, t = 0, so the world frame is the camera's).
        view_names: the V view names.
        keypoints: (B,V,K,3) the observed keypoints (pixels + confidence; zeros in a view a
            sample could not use).
        projected: (B,V,K,2) the fitted body's keypoints projected into each view, pixels.
        keypoint_error_px: (B,V,K) 2D error per keypoint, NaN where not seen.
        view_error_px: (B,V) mean keypoint error per view, NaN where the view does not see the
            sample.
        reprojection_error_px: (B,) mean error over every seen keypoint of every view.
        box_height_px: (B,V) person box heights, the energies' scale.
        error_over_box: (B,) mean over the seeing views of view error / box height.
        energies: name -> (B,) weighted energy terms of the last stage, plus "total".
        converged: (B,) bool, the last stage met its tolerance.
        valid: (B,) bool, the sample was fitted and every value is finite.
        flagged: per sample, None or why a valid fit is far off (a view's mean keypoint error
            above ``max_error_over_box`` of its box height: a wrong camera, a wrong view order,
            a diverged optimizer). Flagged fits are returned, never reported as good.
        messages: per sample, None or what went wrong or was left out.
        skipped_energies: configured energies left out for lack of observations.
        init_params: BodyParams (B) the optimizer started from.
        stage_steps: stage name -> steps run.
        runtime_s: seconds spent on the start ("init") and the optimization ("fit").
    """

    params: BodyParams
    joints: torch.Tensor
    vertices: torch.Tensor | None
    faces: torch.Tensor
    cameras: list[Camera]
    view_names: list[str]
    keypoints: torch.Tensor
    projected: torch.Tensor
    keypoint_error_px: torch.Tensor
    view_error_px: torch.Tensor
    reprojection_error_px: torch.Tensor
    box_height_px: torch.Tensor
    error_over_box: torch.Tensor
    energies: dict[str, torch.Tensor]
    converged: torch.Tensor
    valid: torch.Tensor
    messages: list[str | None]
    init_params: BodyParams
    flagged: list[str | None] = field(default_factory=list)
    skipped_energies: list[str] = field(default_factory=list)
    convention: str = "mediapipe33"
    model_name: str = "anny"
    stage_steps: dict[str, int] = field(default_factory=dict)
    runtime_s: dict[str, float] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.joints.shape[0]

    def camera(self, v: int = 0) -> Camera:
        """View ``v``'s Camera of batch B."""
        cam = self.cameras[v]
        B = self.batch_size
        return cam if cam.batch_size == B else cam.expand(B)


class Fitter:
    """Fits a body model to observations.

    Args:
        model: a BodyModel (``bodyfit.body_model``); Anny (default topology) when None.
        config: a FitConfig (``fitting.config.load_config``); ``configs/fit.yaml`` with
            ``overrides`` when None.
        overrides: Hydra overrides of the packaged config (only when ``config`` is None).
        context: the rasterizer context the dense energies render with
            (``bodyfit.renderers``); the best available when None.

    ``fitter(observations, init=None, vertices=True, start=None) -> FitResult``:
        observations: Observations (B samples, V views).
        init: BodyParams (B) in the observations' world frame to start from; else
            ``start(observations)``; else the mean body placed on the torso in each sample's
            best view.
        vertices: also return the fitted vertices.
        start: ``Observations -> BodyParams``, how a start is made (the regressor's:
            ``lambda o: bodyfit.initialize(o, model)``).
    With ``try_mirror`` (one view, not a sequence, and no ``init`` given without a ``start``)
    every sample is also fitted with its keypoints' left and right labels swapped, from a start
    of its own; the swapped labels are kept where their final energy is below
    ``1 - MIRROR_MARGIN`` of the given labels' (the sample's message says so, and its
    ``keypoints`` are the swapped ones). Detectors swap them for people seen from behind.
    Under the same conditions, with ``limb_flip`` (or ``world_flip`` > 0), the limbs that point
    out of the picture are also refitted flipped in depth after the last stage, and the lower
    energy is kept (:func:`fitting.depth_flip.limb_flip_trial`).
    Samples no view sees with ``min_keypoints`` keypoints, with NaN keypoints or degenerate
    cameras in every view, are not fitted (``valid`` False, ``messages`` says why); a view a
    sample cannot use is left out for that sample; the rest of the batch is fitted. No NaN is
    ever returned as a fit.

    Raises:
        ConfigError: a wrong config value (at construction).
        ValueError: ``init`` of the wrong shapes; a keypoint convention the model has no map for.
    """

    def __init__(self, model: BodyModel | None = None, config: FitConfig | None = None,
                 overrides: list[str] | None = None, context=None):
        if config is not None and overrides:
            raise ValueError("give a config or overrides of the packaged one, not both.")
        self.config = (config if config is not None else load_config(overrides)).validate()
        if model is None:
            from bodyfit.body_models import body_model

            model = body_model("anny")
        self.model = model
        self.context = context
        used = dict.fromkeys(n for s in self.config.stages.values() for n, w in s.weights.items() if w > 0)
        self.energies = {name: ENERGIES[name](model, self.config) for name in used}
        self._compile = self.config.compile and model.name != "anny"
        if self.config.compile and not self._compile:
            log.warning("compile=true is ignored for Anny: its rest skeleton (roma's Procrustes) "
                        "breaks the compiled graph, and compiled fits ran slower than eager ones")

    @functools.cached_property
    def mesh_model(self) -> BodyModel:
        """The model whose mesh the stages that need vertices evaluate (:func:`render_model`);
        built on first use, so keypoint-only fits never build a low-poly mesh."""
        return render_model(self.model, self.config.render_topology)

    # ------------------------------------------------------------------ the fit
    def __call__(self, observations: Observations, init: BodyParams | None = None,
                 vertices: bool = True, start=None) -> FitResult:
        cfg = self.config
        t0 = time.perf_counter()
        B = observations.batch_size
        # the trials of other starts (label swap, limb flips): one view, not a sequence, and not
        # where the caller gave an init without a start (a start to refine, not to question)
        explore = observations.num_views == 1 and not observations.sequence and (init is None or start is not None)
        mirror = cfg.try_mirror and explore
        init = self._start(observations, init, start)
        if mirror:  # the batch also holds every sample with its left and right labels swapped
            observations = _with_mirrored_labels(observations)
            init = BodyParams.cat([init, self._start(observations.index(torch.arange(B, 2 * B)), None, start)])
        problem = self.problem(observations)
        t1 = time.perf_counter()

        prepared = {name: e.prepare(problem) for name, e in self.energies.items()}
        skipped = sorted(n for n, d in prepared.items() if d is None)
        names = keypoint_names(observations.convention)
        params, result, stage_steps = init, None, {}
        for i, (stage_name, stage) in enumerate(cfg.stages.items()):
            flip = (i == 0 and cfg.try_flip and "global_orient" in stage.free and problem.num_views == 1
                    and not problem.sequence)
            result = self._stage(problem, prepared, params, init, stage, flip, names)
            params = result.params
            stage_steps[stage_name] = result.steps
        if mirror:
            swapped = problem.active[B:] & (result.energy[B:] < (1.0 - MIRROR_MARGIN) * result.energy[:B])
            rows = torch.arange(B, device=swapped.device) + B * swapped
            result, init, problem = result.index(rows), init.index(rows), problem.index(rows)
            observations, params = problem.observations, result.params
            for b in torch.nonzero(swapped).flatten().tolist():
                problem.messages[b].append("left and right keypoints swapped: the detector's labels fit "
                                           "worse (a person seen from behind taken for one facing the camera, "
                                           "or the reverse)")
        if explore and (cfg.limb_flip or cfg.world_flip > 0) and "body_pose" in stage.free:
            result, flipped = limb_flip_trial(self, problem, result, init, stage)
            params = result.params
            for b, li in torch.nonzero(flipped).tolist():
                problem.messages[b].append(f"{LIMBS[li][0].replace('_', ' ')} refitted flipped in depth: "
                                           "the other depth fits with lower energy")
        return self._result(observations, problem, params, init, result, skipped, stage_steps,
                            vertices, {"init": t1 - t0, "fit": time.perf_counter() - t1})

    def _start(self, observations: Observations, init: BodyParams | None, start) -> BodyParams:
        """``init`` checked, or ``start(observations)``, or the mean body placed on the torso."""
        model, B = self.model, observations.batch_size
        if init is None and start is not None:
            init = start(observations)
        if init is None:
            return start_in_world(model, observations,
                                  lambda kp, K: mean_start(model, kp, K, observations.convention)).detach()
        model.check_params(init)
        if init.batch_size != B:
            raise ValueError(f"init has batch {init.batch_size}, the observations {B}.")
        init = init.to(model.device, model.dtype)
        return init.where(init.is_finite(), model.default_params(B)).detach()

    def problem(self, observations: Observations) -> Problem:
        """The observations made ready for a fit (cleaned, on the model's device): see
        :class:`fitting.energy.Problem`."""
        cfg, model = self.config, self.model
        dev, dt = model.device, model.dtype
        obs = observations
        kp_index, kp_weight = model.keypoint_map(obs.convention)
        kp_index, kp_weight = kp_index.to(dev), kp_weight.to(dev, dt)
        usable = obs.usable_views().to(dev)
        kp = obs.clean_keypoints().to(dev, dt) * usable[..., None, None]
        n_seen = ((kp[..., 2] > 0) & (kp_weight > 0)).sum(-1)
        seen = usable & (n_seen >= cfg.min_keypoints)
        active = seen.any(1)
        messages = [list(p) for p in obs.problems()]
        for b in torch.nonzero(~active).flatten().tolist():
            if obs.num_views == 1 and messages[b]:
                messages[b].insert(0, "sample not fitted")
            elif obs.num_views == 1:
                messages[b].insert(0, f"only {int(n_seen[b, 0])} keypoints with confidence > 0 (need "
                                      f"{cfg.min_keypoints}): sample not fitted")
            else:
                messages[b].insert(0, f"no view sees {cfg.min_keypoints} or more keypoints: sample "
                                      f"not fitted")
        cameras = [Camera(c.K.to(dev, dt), c.R.to(dev, dt), c.t.to(dev, dt), c.image_size)
                   for c in (obs.camera(v) for v in range(obs.num_views))]
        return Problem(observations=obs, keypoints=kp * seen[..., None, None], seen=seen,
                       scale=obs.box_heights().to(dev, dt), active=active, cameras=cameras,
                       render_cameras=[c.at_most(cfg.render_size)[0] for c in cameras],
                       kp_index=kp_index, kp_weight=kp_weight, messages=messages)

    def energies_at(self, observations: Observations, params: BodyParams,
                    names: list[str] | None = None, init: BodyParams | None = None) -> dict[str, torch.Tensor]:
        """Unweighted per-sample energies (name -> (B,)) at ``params``, for every energy the
        config uses (or ``names``); ``init`` is the start ``init_prior`` measures from (``params``
        when None). Energies whose observations are missing are left out."""
        problem = self.problem(observations)
        names = list(self.energies) if names is None else names
        energies = {n: self.energies[n] if n in self.energies else ENERGIES[n](self.model, self.config)
                    for n in names}
        data = {n: e.prepare(problem) for n, e in energies.items()}
        ev = self._evaluation(params, params if init is None else init, problem,
                              [n for n in names if data[n] is not None], None)
        return {n: e(ev, data[n]) for n, e in energies.items() if data[n] is not None}

    # ------------------------------------------------------------------ internals
    def _evaluation(self, params, init, problem, names, stage: StageConfig | None) -> Evaluation:
        need_vertices = any(ENERGIES[n].needs in ("vertices", "raster") for n in names)
        mask = None
        if stage is not None and stage.keypoints == "torso":
            kp_names = keypoint_names(problem.observations.convention)
            mask = torch.tensor([n in TORSO for n in kp_names], device=self.model.device, dtype=self.model.dtype)
        return Evaluation(params, init, problem, self.mesh_model if need_vertices else self.model,
                          need_vertices, mask, self.context)

    def _stage(self, problem: Problem, prepared: dict, params: BodyParams, init: BodyParams,
               stage: StageConfig, flip: bool, names: list[str]) -> StageResult:
        """One stage for the batch. With ``flip``, SMPLify's 180-degree trial: where the torso
        is side-on in the one view, the batch also holds a copy of the sample turned about the
        vertical, and the copy with the lower energy wins."""
        B = problem.batch_size
        idx = torch.zeros(0, dtype=torch.long, device=self.model.device)
        if flip:
            idx = torch.nonzero(torso_is_ambiguous(problem.keypoints[:, 0], names) & problem.active).flatten()
        if len(idx) == 0:
            return self._run_stage(problem, prepared, params, init, stage)
        rows = torch.cat([torch.arange(B, device=idx.device), idx])
        turned = params.index(idx)
        turned.global_orient = flip_about_vertical(turned.global_orient)
        both = self._run_stage(*self._subset(problem, rows), BodyParams.cat([params, turned]),
                               init.index(rows), stage)
        first, other = both.index(torch.arange(B, device=idx.device)), both.index(torch.arange(B, len(rows)))
        take = other.energy < first.energy[idx]
        return first.put(idx[take], other, torch.nonzero(take).flatten())

    def stage_energy(self, problem: Problem, prepared: dict, init: BodyParams, stage: StageConfig,
                     names: list[str] | None = None) -> Callable[[BodyParams], dict[str, torch.Tensor]]:
        """What one optimizer step of ``stage`` evaluates: BodyParams (B) -> {name: (B,)
        unweighted energy} for ``names`` (default: the energies the stage weighs,
        :func:`stage_weights`), with the energies' data ``prepared`` for ``problem`` and ``init``
        the fit's start (B)."""
        names = list(stage_weights(stage, prepared)) if names is None else names

        def energy_fn(p: BodyParams) -> dict[str, torch.Tensor]:
            ev = self._evaluation(p, init, problem, names, stage)
            return {n: self.energies[n](ev, prepared[n]) for n in names}

        return energy_fn

    def _subset(self, problem: Problem, rows: torch.Tensor) -> tuple[Problem, dict]:
        """The samples ``rows`` of ``problem``, and the energies' data prepared for them."""
        sub = problem.index(rows)
        return sub, {name: e.prepare(sub) for name, e in self.energies.items()}

    def _run_stage(self, problem: Problem, prepared: dict, params: BodyParams, init: BodyParams,
                   stage: StageConfig) -> StageResult:
        """``run_stage`` on the batch; a stage of keypoint and prior energies goes on with
        fewer samples as they converge (``compact``), so those stop costing time."""
        weights = stage_weights(stage, prepared)
        compact = (self.config.compact or None) if all(ENERGIES[n].needs in ("params", "joints") for n in weights) else None

        def run(problem, prepared, params, init, state=None):
            energies = self.stage_energy(problem, prepared, init, stage, list(weights))
            if self._compile:
                energies = _compiled_steps(energies)

            return run_stage(params, energies, free=list(stage.free), weights=weights, steps=stage.steps,
                             lr=stage.lr, optimizer=stage.optimizer, ftol=self.config.ftol,
                             check_every=self.config.check_every, free_pose_joints=self.model.free_pose_joints,
                             clamp_shape=self.model.clamp_shape, active=problem.active,
                             shared_shape=problem.sequence, compact=compact, state=state,
                             graphs=self.config.cuda_graphs and not self._compile)

        result = everything = run(problem, prepared, params, init)
        rows = torch.arange(problem.batch_size, device=self.model.device)
        while result.state is not None:  # paused: go on with the samples still moving
            keep = torch.nonzero(result.moving).flatten()
            rows = rows[keep]
            result = run(*self._subset(problem, rows), result.params.index(keep), init.index(rows),
                         result.state.index(keep))
            everything = everything.put(rows, result)
        return everything

    @torch.no_grad()
    def _result(self, observations, problem, params, init, result, skipped, stage_steps, vertices,
                runtime) -> FitResult:
        model = self.model
        B, V = problem.batch_size, problem.num_views
        out = model(params, vertices=vertices)
        usable = observations.usable_views().to(model.device)
        kp = observations.clean_keypoints().to(model.device, model.dtype) * usable[..., None, None]
        projected = torch.stack([problem.cameras[v].project(out.joints[:, problem.kp_index])
                                 for v in range(V)], 1)
        err = (projected - kp[..., :2]).norm(dim=-1)
        seen = (kp[..., 2] > 0) & (problem.kp_weight > 0) & problem.seen[..., None]
        nan = torch.full_like(err, math.nan)
        err = torch.where(seen, err, nan)
        view_err = torch.where(seen.any(-1), torch.nanmean(err, dim=-1), nan[..., 0])
        mean_err = torch.nanmean(err.reshape(B, -1), dim=1)
        error_over_box = torch.nanmean(view_err / problem.scale, dim=1)
        valid = problem.active & params.is_finite() & torch.isfinite(mean_err) & ~result.failed
        messages = problem.messages
        for b in torch.nonzero(problem.active & ~valid).flatten().tolist():
            messages[b].insert(0, "the fit diverged (non-finite energy): sample not fitted")
        flagged: list[str | None] = [None] * B
        limit = self.config.max_error_over_box
        ratio = (view_err / problem.scale).cpu()
        far = (ratio > limit) & valid.cpu()[:, None]  # (B,V); NaN (view not seen) is never far
        for b in torch.nonzero(far.any(1)).flatten().tolist():  # only the flagged samples: no loop over B
            views = ", ".join(f"{observations.names[v]} {100 * float(ratio[b, v]):.1f}%"
                              for v in torch.nonzero(far[b]).flatten().tolist())
            flagged[b] = (f"keypoint error above {100 * limit:.0f}% of the box height ({views}): "
                          f"check the camera (K, view order) and the detections")
        params = params.where(valid, model.default_params(B))
        if not bool(valid.all()):
            out = model(params, vertices=vertices)
        energies = dict(result.terms)
        energies["total"] = result.energy
        return FitResult(
            params=params, joints=out.joints, vertices=out.vertices, faces=out.faces,
            cameras=list(observations.cameras), view_names=list(observations.names), keypoints=kp,
            projected=projected, keypoint_error_px=err, view_error_px=view_err,
            reprojection_error_px=mean_err, box_height_px=problem.scale, error_over_box=error_over_box,
            energies=energies, converged=result.converged, valid=valid, flagged=flagged,
            messages=["; ".join(m) if m else None for m in messages], init_params=init,
            skipped_energies=skipped, convention=observations.convention, model_name=model.name,
            stage_steps=stage_steps, runtime_s=runtime)


def _compiled_steps(energy_fn):
    """``energy_fn`` compiled (``torch.compile``) for the steps; the few checks, without
    gradients, run it eagerly."""
    compiled = torch.compile(energy_fn, dynamic=True)

    def energies(p: BodyParams) -> dict[str, torch.Tensor]:
        return compiled(p) if torch.is_grad_enabled() else energy_fn(p)

    return energies


def stage_weights(stage: StageConfig, prepared: dict) -> dict[str, float]:
    """The energies ``stage`` weighs (weight > 0) whose data could be prepared: name -> weight."""
    return {n: float(w) for n, w in stage.weights.items() if w > 0 and prepared.get(n) is not None}


def _with_mirrored_labels(obs: Observations) -> Observations:
    """The 2B samples: ``obs``, then ``obs`` with every keypoint's left and right labels swapped
    (:func:`bodyfit.body_models.conventions.mirror_index`). The world landmarks are swapped and
    turned front to back (depth negated about the hips: the body the detector believed, seen
    from the other side, projects to the same picture with the other labels)."""
    B = obs.batch_size
    both = obs.index(torch.cat([torch.arange(B), torch.arange(B)]))
    mirror = torch.tensor(mirror_index(obs.convention))

    def swap(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:B], x[B:][:, :, mirror]])

    world = None
    if both.world_keypoints is not None:
        world = swap(both.world_keypoints)
        world[B:, ..., 2] = -world[B:, ..., 2]
    return replace(both, keypoints=swap(both.keypoints), world_keypoints=world)
