"""The batched, staged optimizer.

One stage = which parameters are free, which energies with which weights, which optimizer
(Adam or L-BFGS), how many steps. Energies are per sample (B,); the batch objective is their
sum, so samples do not interact. A stage stops early once every active sample's relative energy
change per step falls below ``ftol``. A sample whose energy turns non-finite is put back to its
last finite parameters and frozen for the rest of the stage: one bad sample never sinks the
batch, and no NaN is ever returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from bodyfit.body_models.base import BodyParams

PARAM_NAMES = ("global_orient", "body_pose", "shape", "transl")


@dataclass
class StageResult:
    params: BodyParams
    energy: torch.Tensor  # (B,) final total energy
    terms: dict[str, torch.Tensor]  # name -> (B,) weighted terms at the end
    converged: torch.Tensor  # (B,) bool
    failed: torch.Tensor  # (B,) bool: energy became non-finite
    steps: int

    def index(self, idx: torch.Tensor) -> "StageResult":
        """Select samples (``idx`` indexes the batch)."""
        return StageResult(self.params.index(idx), self.energy[idx],
                           {k: v[idx] for k, v in self.terms.items()}, self.converged[idx],
                           self.failed[idx], self.steps)


def run_stage(params: BodyParams, energy_fn: Callable[[BodyParams], dict[str, torch.Tensor]],
              free: list[str], weights: dict[str, float], steps: int, lr: float,
              optimizer: str = "adam", ftol: float = 1e-5, check_every: int = 10,
              free_pose_joints: list[int] | None = None,
              clamp_shape: Callable[[torch.Tensor], torch.Tensor] | None = None,
              active: torch.Tensor | None = None, shared_shape: bool = False) -> StageResult:
    """Minimize ``sum_b sum_name weights[name] * energy_fn(params)[name][b]``.

    Args:
        params: starting BodyParams (B); not modified.
        energy_fn: BodyParams -> {name: (B,) energy}; names must include every key of weights.
        free: names of the free fields of BodyParams.
        free_pose_joints: when body_pose is free, only these joints move.
        clamp_shape: applied to the shape after each step (e.g. phenotypes to [0,1]).
        active: (B,) bool, samples to optimize; the others keep their parameters.
        shared_shape: one shape for the whole batch (the frames of one person): a free shape
            starts from the mean of the active samples' shapes and moves as one.
    Returns:
        StageResult with the final parameters and per-sample energies.
    Raises:
        ValueError: unknown free parameter or optimizer.
    """
    unknown = set(free) - set(PARAM_NAMES)
    if unknown:
        raise ValueError(f"Unknown free parameters {sorted(unknown)}; choose from {PARAM_NAMES}.")
    B = params.batch_size
    active = torch.ones(B, dtype=torch.bool, device=params.transl.device) if active is None else active
    base = params.detach().clone()
    leaves: dict[str, torch.Tensor] = {}
    for name in free:
        value = getattr(base, name)
        if name == "body_pose" and free_pose_joints is not None:
            value = value[:, free_pose_joints]
        if name == "shape" and shared_shape:
            value = value[active].mean(0, keepdim=True) if bool(active.any()) else value[:1]
        leaves[name] = value.clone().requires_grad_(True)

    def assemble() -> BodyParams:
        fields = base.as_dict()
        for name, leaf in leaves.items():
            if name == "body_pose" and free_pose_joints is not None:
                pose = fields["body_pose"].clone()
                pose[:, free_pose_joints] = leaf
                fields["body_pose"] = pose
            elif name == "shape" and shared_shape:
                fields["shape"] = leaf.expand(B, -1)
            else:
                fields[name] = leaf
        return BodyParams(**fields)

    frozen = ~active

    def objective():
        terms = energy_fn(assemble())
        total = sum(weights[k] * terms[k] for k in weights)
        return total, terms

    if optimizer == "adam":
        opt = torch.optim.Adam(list(leaves.values()), lr=lr)
    elif optimizer == "lbfgs":
        opt = torch.optim.LBFGS(list(leaves.values()), lr=lr, max_iter=1, history_size=10,
                                line_search_fn="strong_wolfe")
    else:
        raise ValueError(f"Unknown optimizer {optimizer!r}; choose 'adam' or 'lbfgs'.")

    last_good = {k: v.detach().clone() for k, v in leaves.items()}
    prev = None
    converged = torch.zeros(B, dtype=torch.bool, device=active.device)
    failed = torch.zeros_like(converged)
    step = 0
    for step in range(1, steps + 1):
        def closure():
            opt.zero_grad()
            total, _ = objective()
            keep = ~frozen & torch.isfinite(total)
            loss = torch.where(keep, total, torch.zeros_like(total)).sum()
            loss.backward()
            for leaf in leaves.values():
                if leaf.grad is not None:
                    if leaf.shape[0] == B:
                        leaf.grad[~keep] = 0.0
                    leaf.grad.nan_to_num_(0.0, 0.0, 0.0)
            return loss

        opt.step(closure)
        with torch.no_grad():
            for name, leaf in leaves.items():
                if leaf.shape[0] == B:
                    leaf[frozen] = last_good[name][frozen]
            if clamp_shape is not None and "shape" in leaves:
                leaves["shape"].copy_(clamp_shape(leaves["shape"]))
        if step % check_every == 0 or step == steps:
            with torch.no_grad():
                total, _ = objective()
                bad = ~torch.isfinite(total) & ~frozen
                if bad.any():
                    for name, leaf in leaves.items():
                        rows = bad if leaf.shape[0] == B else slice(None)
                        leaf[rows] = last_good[name][rows]
                    failed |= bad
                    frozen = frozen | bad
                for name, leaf in leaves.items():
                    if leaf.shape[0] == B:
                        last_good[name][~frozen] = leaf[~frozen]
                    elif bool(torch.isfinite(leaf).all()):
                        last_good[name].copy_(leaf)
                if prev is not None:
                    rel = (prev - total).abs() / prev.abs().clamp(min=1e-12) / check_every
                    converged = rel < ftol
                    if bool((converged | frozen).all()):
                        break
                prev = total
    with torch.no_grad():
        total, terms = objective()
        final = assemble().detach()
    weighted = {k: (weights[k] * terms[k]).detach() for k in weights}
    return StageResult(final, total.detach(), weighted, converged & active, failed, step)
