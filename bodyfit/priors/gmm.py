"""A learned pose prior: a Gaussian mixture over joint rotation vectors (SMPLify's).

Bogo et al. 2016, "Keep it SMPL: Automatic Estimation of 3D Human Pose and Shape from a Single
Image" (ECCV), fit 8 full-covariance Gaussians to the axis-angle body pose of SMPL's 23 joints
(CMU mocap, ``gmm_08.pkl``) and take as prior energy the *max-mixture* negative log-likelihood:

    E(x) = min_k [ 0.5 (x - mu_k)^T Sigma_k^-1 (x - mu_k) - log(w_k) + 0.5 log det Sigma_k ]

(the best single component, a smooth-enough stand-in for the mixture's log-sum that keeps the
gradient of one Gaussian). Here the constant is shifted so that E >= 0 with 0 at the most likely
component's mean. Units: x in radians (axis-angle per joint, ``BodyParams.body_pose`` layout);
E unitless (nats).

Files:

- ``.npz`` (bodyfit's own; :func:`save_pose_gmm`): ``means (K,D)``, ``covariances (K,D,D)``,
  ``weights (K,)``, ``joints`` (the D/3 joint names, in order), ``model`` and ``source``. The
  packaged ``anny_pose_gmm.npz`` is Anny's, reproduced by ``scripts/train_anny_pose_prior.py``.
- ``.pkl`` (SMPLify's ``gmm_08.pkl``, the user's own file): a dict of ``means``, ``covars``,
  ``weights`` over SMPL's 23 body joints (D = 69), read with a restricted unpickler (numpy only,
  never code). For SMPL-X (21 body joints, the same first 21) the mixture's marginal over the
  first 63 numbers is used: exact, since a Gaussian's marginal is its sub-block.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

#: The packaged Anny prior.
ANNY_POSE_GMM = Path(__file__).with_name("anny_pose_gmm.npz")


class PoseGMM(torch.nn.Module):
    """Max-mixture Gaussian prior on the rotation vectors of named joints (module docstring).

    Args:
        means: (K,D) component means, radians. covariances: (K,D,D) symmetric positive definite.
        weights: (K,) mixture weights (normalized here). joints: the D/3 joint names.
        source: where the mixture came from (kept for fit records).
    Raises:
        ValueError: shapes that do not agree, D != 3 * len(joints), weights not positive, a
            covariance that is not positive definite, or a non-finite value.
    """

    def __init__(self, means, covariances, weights, joints: list[str], source: str = ""):
        super().__init__()
        mu = torch.as_tensor(np.asarray(means, np.float64))
        cov = torch.as_tensor(np.asarray(covariances, np.float64))
        w = torch.as_tensor(np.asarray(weights, np.float64)).reshape(-1)
        K, D = mu.shape if mu.ndim == 2 else (0, 0)
        if mu.ndim != 2 or cov.shape != (K, D, D) or w.shape != (K,) or D != 3 * len(joints):
            raise ValueError(f"A pose GMM needs means (K,D), covariances (K,D,D), weights (K,) and D/3 "
                             f"joint names; got {tuple(mu.shape)}, {tuple(cov.shape)}, {tuple(w.shape)} "
                             f"and {len(joints)} joints.")
        if not (torch.isfinite(mu).all() and torch.isfinite(cov).all() and (w > 0).all()):
            raise ValueError("A pose GMM's means and covariances must be finite and its weights positive.")
        chol, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.transpose(1, 2)))
        if bool((info != 0).any()):
            raise ValueError(f"Pose GMM covariance(s) {torch.nonzero(info).flatten().tolist()} are not "
                             "positive definite.")
        w = w / w.sum()
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        cost = -torch.log(w) + 0.5 * logdet  # per component, before the quadratic
        self.joints = list(joints)
        self.source = source
        self.register_buffer("means", mu.float())
        self.register_buffer("precisions", torch.cholesky_inverse(chol).float())
        self.register_buffer("cost", (cost - cost.min()).float())
        self.register_buffer("weights", w.float())
        self.register_buffer("chol", chol.float())

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """(B,J,3) rotation vectors of :attr:`joints`, radians -> (B,) energy >= 0 (nats), with
        a hand-written backward (:class:`_MaxMixture`: the best component's ``Sigma^-1 (x - mu)``)."""
        x = pose.reshape(pose.shape[0], -1)
        return _MaxMixture.apply(x, self.means.to(x.dtype), self.precisions.to(x.dtype), self.cost.to(x.dtype))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n,J,3) rotation vectors drawn from the mixture (a component by its weight, then its
        Gaussian), radians, on the buffers' device."""
        k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        k, z = k.to(self.means.device), z.to(self.means.device)
        x = self.means[k] + torch.einsum("nij,nj->ni", self.chol[k], z)
        return x.reshape(n, -1, 3)

    def joint_index(self, model) -> list[int]:
        """Indices into ``model.pose_joint_names`` of :attr:`joints`.

        Raises:
            ValueError: the model lacks a joint of the mixture (a prior made for another model).
        """
        names = list(model.pose_joint_names)
        missing = [j for j in self.joints if j not in names]
        if missing:
            raise ValueError(f"This pose GMM is over joints the {model.name} model lacks ({missing[:4]}...): "
                             "it was made for another body model. Give one made for this model "
                             "(gmm_file=...) or set the gmm_prior weight to 0.")
        return [names.index(j) for j in self.joints]


class _MaxMixture(torch.autograd.Function):
    """:meth:`PoseGMM.forward` of x (B,D) with means (K,D), precisions (K,D,D) (symmetric) and
    costs (K,): ``min_k 0.5 (x - mu_k)^T P_k (x - mu_k) + cost_k``, components first (one
    ``bmm``); its gradient is the best component's ``P_k (x - mu_k)``."""

    @staticmethod
    def forward(ctx, x, means, precisions, cost):
        diff = x[None] - means[:, None]  # (K,B,D)
        Pd = torch.bmm(diff, precisions)  # (K,B,D): (P_k d)^T, P_k symmetric
        energy, best = (0.5 * (Pd * diff).sum(-1) + cost[:, None]).min(0)
        ctx.save_for_backward(Pd, best)
        return energy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        Pd, best = ctx.saved_tensors
        K, B, D = Pd.shape
        return Pd.gather(0, best.view(1, B, 1).expand(1, B, D))[0] * grad[:, None], None, None, None


def save_pose_gmm(path: str | os.PathLike, means, covariances, weights, joints: list[str],
                  model: str, source: str = "") -> Path:
    """Write a mixture as bodyfit's ``.npz`` (atomically); checked by loading it back.

    Raises:
        ValueError: see :class:`PoseGMM`.
    """
    from bodyfit.files import atomic_save_npz

    PoseGMM(means, covariances, weights, joints)  # refuse a bad mixture before writing
    return atomic_save_npz(path, means=np.asarray(means, np.float64), covariances=np.asarray(covariances, np.float64),
                           weights=np.asarray(weights, np.float64), joints=np.array(joints),
                           model=np.array(model), source=np.array(source))


def load_pose_gmm(path: str | os.PathLike, model) -> PoseGMM:
    """The pose GMM in ``path`` (``.npz`` of :func:`save_pose_gmm`, or SMPLify's ``gmm_08.pkl``)
    for ``model`` (a BodyModel: its ``name`` and ``pose_joint_names``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a pose GMM, a mixture over joints the model lacks, or (pkl) one whose size
            fits neither SMPL (69) nor SMPL-X's marginal (63).
        bodyfit.body_models.smpl_files.UnsafePickleError: a pickle that asks for anything but
            numpy arrays (never executed).
    """
    from bodyfit.body_models.smpl_files import read_model_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No pose GMM file at {path}.")
    raw = read_model_file(path)
    if {"means", "covariances", "weights", "joints"} <= set(raw):  # bodyfit's own
        gmm = PoseGMM(raw["means"], raw["covariances"], raw["weights"], [str(j) for j in raw["joints"]],
                      source=str(raw.get("source", path)))
    elif {"means", "covars", "weights"} <= set(raw):  # SMPLify's gmm_08.pkl
        gmm = _smplify_gmm(raw, path, model)
    else:
        raise ValueError(f"{path} is not a pose GMM file: it has {sorted(raw)}, not means, covariances "
                         "(or SMPLify's covars), weights and joints.")
    gmm.joint_index(model)
    return gmm


def _smplify_gmm(raw: dict, path: Path, model) -> PoseGMM:
    """SMPLify's mixture over SMPL's 23 body joints (69 numbers), or its marginal over the
    model's first body joints (SMPL-X: 21)."""
    means, covs = np.asarray(raw["means"], np.float64), np.asarray(raw["covars"], np.float64)
    joints = list(model.pose_joint_names)
    D = 3 * len(joints)
    if means.ndim != 2 or means.shape[1] < D or means.shape[1] != 69:
        raise ValueError(f"{path}: a GMM over {means.shape[-1]} numbers cannot be the {model.name} "
                         f"model's {len(joints)} body joints (SMPLify's is over SMPL's 23: 69).")
    return PoseGMM(means[:, :D], covs[:, :D, :D], raw["weights"], joints, source=str(path))


__all__ = ["PoseGMM", "ANNY_POSE_GMM", "save_pose_gmm", "load_pose_gmm"]
