"""The batched, staged optimizer.

One stage = which parameters are free, which energies with which weights, which optimizer
(Adam or L-BFGS), how many steps. Energies are per sample (B,); the batch objective is their
sum, so samples do not interact. Every ``check_every`` steps each sample's relative energy change
per step is compared with ``ftol``: a sample below it has converged and stops moving, and the
stage ends once every sample has. With ``compact`` set, the stage pauses once the samples still
moving are few enough (``StageResult.state``): the caller goes on with those alone (a smaller
batch, the same Adam moments and step count), so converged samples stop costing time. A sample
whose energy turns non-finite is put back to its last finite parameters and frozen for the rest
of the stage: one bad sample never sinks the batch, and no NaN is ever returned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from bodyfit.body_models.base import BodyParams
from bodyfit.fitting.graphs import capture_step
from bodyfit.replayable import replayable

PARAM_NAMES = ("global_orient", "body_pose", "shape", "transl")
GRAPH_DEVICES = ("cuda",)  # where ``run_stage(graphs=True)`` captures steps


@dataclass
class StageState:
    """Where a paused stage stands (batch B, rows as in its StageResult).

    Attributes:
        step: steps run so far. prev: (B,) total energy at the last check (None before one).
        moments: Adam's (exp_avg, exp_avg_sq) per free leaf, batch rows first.
    """

    step: int
    prev: torch.Tensor | None
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def index(self, idx: torch.Tensor) -> "StageState":
        return StageState(self.step, None if self.prev is None else self.prev[idx],
                          {k: (m[idx], v[idx]) for k, (m, v) in self.moments.items()})


@dataclass
class StageResult:
    """What a stage ends (or pauses) with, per sample.

    Attributes:
        params: BodyParams (B). energy: (B,) total energy; terms: name -> (B,) weighted terms.
        converged: (B,) met ``ftol``. failed: (B,) the energy became non-finite.
        steps: steps run (the most any sample ran). sample_steps: (B,) long, steps each sample
            moved (until it converged or failed, or the stage ended).
        moving: (B,) bool, samples still moving when the stage ended or paused.
        state: None when the stage ended; when it paused (``compact``), where it stands, for
            continuing the samples still ``moving``.
    """

    params: BodyParams
    energy: torch.Tensor
    terms: dict[str, torch.Tensor]
    converged: torch.Tensor
    failed: torch.Tensor
    steps: int
    sample_steps: torch.Tensor
    moving: torch.Tensor
    state: StageState | None = None

    def index(self, idx: torch.Tensor) -> "StageResult":
        """Select samples (``idx`` indexes the batch)."""
        return StageResult(self.params.index(idx), self.energy[idx],
                           {k: v[idx] for k, v in self.terms.items()}, self.converged[idx],
                           self.failed[idx], self.steps, self.sample_steps[idx], self.moving[idx],
                           None if self.state is None else self.state.index(idx))

    def put(self, rows: torch.Tensor, other: "StageResult", src: torch.Tensor | None = None) -> "StageResult":
        """A copy with the samples ``rows`` replaced by ``other``'s samples ``src`` (all of
        ``other``'s, in order, when None). The copy has no ``state``."""
        src = torch.arange(len(rows), device=rows.device) if src is None else src
        params = self.params.clone()
        for name, value in params.as_dict().items():
            value[rows] = getattr(other.params, name)[src]

        def put(a, b):
            return a.clone().index_put_((rows,), b[src])

        return StageResult(params, put(self.energy, other.energy),
                           {k: put(v, other.terms[k]) for k, v in self.terms.items()},
                           put(self.converged, other.converged), put(self.failed, other.failed),
                           max(self.steps, other.steps), put(self.sample_steps, other.sample_steps),
                           put(self.moving, other.moving))


def _rows(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) mask shaped to broadcast over the rows of ``x`` (B, ...)."""
    return mask.view(-1, *([1] * (x.dim() - 1)))


class _Adam:
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam`` updates (betas 0.9 and 0.999, eps 1e-8,
    no weight decay), without its per-step bookkeeping, which at a fit's small batches costs as
    much as the update itself.

    Args:
        leaves: name -> leaf tensor. lr: step size. step: steps already taken.
        moments: name -> (exp_avg, exp_avg_sq), zeros when None.
        replayable: keep the step count in a tensor on the leaves' device and compute the bias
            corrections from it, so that a captured step (``fitting.graphs``) replays right; else
            the count is a Python int (fewer operations per step).
    """

    def __init__(self, leaves: dict[str, torch.Tensor], lr: float, step: int = 0,
                 moments: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 replayable: bool = False):
        self.leaves, self.lr, self.steps = leaves, lr, step
        self.moments = moments if moments is not None else {
            k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in leaves.items()}
        self.count = None
        if replayable and leaves:
            leaf = next(iter(leaves.values()))
            self.count = torch.full((), float(step), dtype=leaf.dtype, device=leaf.device)

    def zero_grad(self) -> None:
        for leaf in self.leaves.values():
            leaf.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.enable_grad():
            loss = closure()
        self.steps += 1
        if self.count is None:
            step_size = self.lr / (1 - 0.9 ** self.steps)
            bias_correction2_sqrt = math.sqrt(1 - 0.999 ** self.steps)
        else:
            self.count += 1
            step_size = self.lr / (1 - 0.9 ** self.count)
            bias_correction2_sqrt = (1 - 0.999 ** self.count).sqrt_()
        for name, leaf in self.leaves.items():
            exp_avg, exp_avg_sq = self.moments[name]
            exp_avg.lerp_(leaf.grad, 0.1)
            exp_avg_sq.mul_(0.999).addcmul_(leaf.grad, leaf.grad, value=0.001)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(1e-8)
            if self.count is None:
                leaf.addcdiv_(exp_avg, denom, value=-step_size)
            else:
                leaf.sub_(exp_avg / denom * step_size)
        return loss


def _leaves(base: BodyParams, free: list[str], free_pose_joints: list[int] | None, shared_shape: bool,
            active: torch.Tensor):
    """The optimizer's leaves, and how to read BodyParams off them.

    Every free per-sample value lies side by side in one (B, D) leaf, ``"samples"`` (the free
    fields in ``PARAM_NAMES`` order; of body_pose only the ``free_pose_joints``), so that each
    step updates and masks one tensor; with ``shared_shape`` the shape is a (1, S) leaf of its
    own, ``"shape"``, starting from the mean of the active samples' shapes.

    Returns:
        (leaves, assemble, shape_of): ``assemble()`` the BodyParams (B) of ``base`` with the
        free values taken from the leaves (views of them where a whole field is free);
        ``shape_of()`` the free shape (a view of its leaf), None when the shape is not free.
    """
    B = base.batch_size
    pose_joints = None
    if free_pose_joints is not None and list(free_pose_joints) != list(range(base.body_pose.shape[1])):
        pose_joints = list(free_pose_joints)
    per_sample = [n for n in PARAM_NAMES if n in free and not (n == "shape" and shared_shape)]

    def free_value(name: str) -> torch.Tensor:
        value = getattr(base, name)
        return (value[:, pose_joints] if name == "body_pose" and pose_joints is not None else value).reshape(B, -1)

    values = [free_value(n) for n in per_sample]
    widths = [v.shape[1] for v in values]
    leaves: dict[str, torch.Tensor] = {}
    if per_sample:
        leaves["samples"] = torch.cat(values, 1).requires_grad_(True)
    if "shape" in free and shared_shape:
        shape = base.shape[active].mean(0, keepdim=True) if bool(active.any()) else base.shape[:1]
        leaves["shape"] = shape.clone().requires_grad_(True)

    def views() -> dict[str, torch.Tensor]:
        return dict(zip(per_sample, leaves["samples"].split_with_sizes(widths, 1))) if per_sample else {}

    def assemble() -> BodyParams:
        fields = base.as_dict()
        for name, value in views().items():
            if name == "body_pose" and pose_joints is not None:
                pose = fields["body_pose"].clone()
                pose[:, pose_joints] = value.view(B, -1, 3)
                fields["body_pose"] = pose
            else:
                fields[name] = value.view(fields[name].shape)
        if "shape" in leaves:
            fields["shape"] = leaves["shape"].expand(B, -1)
        return BodyParams(**fields)

    def shape_of() -> torch.Tensor:
        return leaves["shape"] if "shape" in leaves else views()["shape"]

    return leaves, assemble, (shape_of if "shape" in free else None)


def run_stage(params: BodyParams, energy_fn: Callable[[BodyParams], dict[str, torch.Tensor]],
              free: list[str], weights: dict[str, float], steps: int, lr: float,
              optimizer: str = "adam", ftol: float = 1e-5, check_every: int = 10,
              free_pose_joints: list[int] | None = None,
              clamp_shape: Callable[[torch.Tensor], torch.Tensor] | None = None,
              active: torch.Tensor | None = None, shared_shape: bool = False,
              compact: float | None = None, state: StageState | None = None,
              graphs: bool = False) -> StageResult:
    """Minimize ``sum_b sum_name weights[name] * energy_fn(params)[name][b]``.

    Args:
        params: starting BodyParams (B); not modified.
        energy_fn: BodyParams -> {name: (B,) energy}; names must include every key of weights.
        free: names of the free fields of BodyParams.
        steps: the stage's steps in all (a resumed stage runs those ``state.step`` has not).
        ftol: a sample converges when its relative energy change per step, over the last
            ``check_every`` steps, falls below ``ftol``; it then stops moving.
        free_pose_joints: when body_pose is free, only these joints move.
        clamp_shape: applied to the shape after each step (e.g. phenotypes to [0,1]).
        active: (B,) bool, samples to optimize; the others keep their parameters.
        shared_shape: one shape for the whole batch (the frames of one person): a free shape
            starts from the mean of the active samples' shapes and moves as one.
        compact: pause (``StageResult.state`` set) at a check where at most this share of the
            batch is still moving and steps remain; Adam only, not with ``shared_shape``.
        state: a paused stage's state (indexed like ``params``) to go on from.
        graphs: on CUDA, an Adam stage's step is captured as a CUDA graph at its second step
            and replayed (:func:`fitting.graphs.capture_step`; the same steps, one launch each),
            unless the step reads from the host.
    Returns:
        StageResult with the final parameters and per-sample energies.
    Raises:
        ValueError: unknown free parameter or optimizer; ``state`` for L-BFGS.
    """
    unknown = set(free) - set(PARAM_NAMES)
    if unknown:
        raise ValueError(f"Unknown free parameters {sorted(unknown)}; choose from {PARAM_NAMES}.")
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"Unknown optimizer {optimizer!r}; choose 'adam' or 'lbfgs'.")
    if optimizer != "adam" or shared_shape:
        if state is not None:
            raise ValueError("only an Adam stage without a shared shape can be resumed.")
        compact = None
    B = params.batch_size
    device = params.transl.device
    active = torch.ones(B, dtype=torch.bool, device=device) if active is None else active
    base = params.detach().clone()
    leaves, assemble, shape_of = _leaves(base, free, free_pose_joints, shared_shape, active)
    weight = torch.tensor(list(weights.values()), dtype=base.transl.dtype, device=device)

    def objective():
        terms = energy_fn(assemble())
        total = torch.stack([terms[k] for k in weights], 1) @ weight
        return total, terms

    graphs = graphs and optimizer == "adam" and device.type in GRAPH_DEVICES
    with replayable(graphs):  # the steps' code takes no decision on the host from a value
        if optimizer == "adam":
            opt = _Adam(leaves, lr, 0 if state is None else state.step,
                        None if state is None else {k: (m.clone(), v.clone()) for k, (m, v) in state.moments.items()},
                        replayable=graphs)
        else:
            opt = torch.optim.LBFGS(list(leaves.values()), lr=lr, max_iter=1, history_size=10,
                                    line_search_fn="strong_wolfe")

        first = 0 if state is None else state.step
        prev = None if state is None else state.prev
        last_good = {k: v.detach().clone() for k, v in leaves.items()}
        converged = torch.zeros(B, dtype=torch.bool, device=device)
        failed = torch.zeros_like(converged)
        frozen = ~active  # not moving: inactive, failed or converged; updated in place (a captured step reads it)
        sample_steps = torch.full((B,), first, dtype=torch.long, device=device)
        step, paused = first, False

        def closure():
            opt.zero_grad()
            total, _ = objective()
            # Frozen and non-finite samples are left out of the loss, so their rows of the gradient
            # are zero (samples do not interact), once a NaN reaching them as 0 * NaN is zeroed.
            loss = torch.where(~frozen & torch.isfinite(total), total, 0.0).sum()
            loss.backward()
            for leaf in leaves.values():
                leaf.grad.nan_to_num_(0.0, 0.0, 0.0)
            return loss

        def one_step():
            """One step; everything it reads from outside is updated in place (replayable)."""
            opt.step(closure)
            with torch.no_grad():
                # masks by torch.where, not boolean indexing: no host sync per step on CUDA
                for name, leaf in leaves.items():
                    if leaf.shape[0] == B:
                        leaf.copy_(torch.where(_rows(frozen, leaf), last_good[name], leaf))
                if clamp_shape is not None and shape_of is not None:
                    shape = shape_of()
                    clamped = clamp_shape(shape)
                    if clamped is not shape:  # betas are not clamped
                        shape.copy_(clamped)

        replay = None
        for step in range(first + 1, steps + 1):
            if replay is not None:
                replay()
            elif graphs and step == first + 2:  # after one step (caches filled), this one runs for real and is captured
                replay = capture_step(one_step, list(leaves.values()))
            else:
                one_step()
            if step % check_every == 0 or step == steps:
                sample_steps.masked_fill_(~frozen, step)
                with torch.no_grad():
                    total, _ = objective()
                    bad = ~torch.isfinite(total) & ~frozen
                    if bad.any():
                        for name, leaf in leaves.items():
                            rows = bad if leaf.shape[0] == B else slice(None)
                            leaf[rows] = last_good[name][rows]
                        failed |= bad
                        frozen |= bad
                    for name, leaf in leaves.items():
                        if leaf.shape[0] == B:
                            last_good[name][~frozen] = leaf[~frozen]
                        elif bool(torch.isfinite(leaf).all()):
                            last_good[name].copy_(leaf)
                    if prev is not None:
                        rel = (prev - total).abs() / prev.abs().clamp(min=1e-12) / check_every
                        done = (rel < ftol) & ~frozen
                        if shared_shape:  # the frames share a shape: they stop together
                            if bool((done | frozen).all()):
                                converged |= active & ~failed
                                break
                        else:
                            converged |= done
                            frozen |= done
                    prev = total
                    moving = int((~frozen).sum())
                    if moving == 0:
                        break
                    if compact is not None and step < steps and moving <= compact * B:
                        paused = True
                        break
        with torch.no_grad():
            total, terms = objective()
            final = assemble().detach().clone()  # contiguous, not views of the leaves
        weighted = {k: (weights[k] * terms[k]).detach() for k in weights}
        paused_state = None
        if paused:
            moments = dict(opt.moments)
            paused_state = StageState(step, prev, moments)
        return StageResult(final, total.detach(), weighted, converged, failed, step, sample_steps,
                           ~frozen, paused_state)
