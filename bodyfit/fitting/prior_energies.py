"""The priors as energies: anatomical joint limits, pose and shape priors (the learned pose GMM
among them), the pull towards the initialization, and temporal smoothness (``bodyfit.priors``
holds the functions themselves)."""
from __future__ import annotations

import torch

from bodyfit.fitting.energy import Energy, Evaluation
from bodyfit.priors import joint_limits, pose_prior, shape_prior, temporal_smoothness
from bodyfit.priors.gmm import ANNY_POSE_GMM, load_pose_gmm


class JointLimitsEnergy(Energy):
    """Squared excess beyond anatomical ranges of motion (``joint_limits``); the table is built
    once per Fitter (``bodyfit.priors.joint_limits``)."""

    name = "joint_limits"
    needs = "params"

    def __init__(self, model, config):
        super().__init__(model, config)
        self.limits = joint_limits(model).to(model.device)

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        return self.limits(ev.params.body_pose)


def set_joint_selector(energy: Energy, name: str, model, joints: list[int]) -> None:
    """Set ``energy.<name>`` to what indexes ``body_pose[:, ...]`` for ``joints`` at every step
    without a copy from a Python list: every joint (a slice), or a long tensor on the model's
    device, held as a buffer (``energy.to(device)`` moves it)."""
    if list(joints) == list(range(model.num_pose_joints)):
        setattr(energy, name, slice(None))
    else:
        energy.register_buffer(name, torch.tensor(list(joints), dtype=torch.long, device=model.device),
                               persistent=False)


class PosePriorEnergy(Energy):
    """Squared rotation angles of the free joints, a weak pull to the rest pose (``pose_prior``)."""

    name = "pose_prior"
    needs = "params"

    def __init__(self, model, config):
        super().__init__(model, config)
        set_joint_selector(self, "free_joints", model, model.free_pose_joints)

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        return pose_prior(ev.params.body_pose, self.free_joints)


class GMMPriorEnergy(Energy):
    """The learned pose prior (``gmm_prior``): SMPLify's max-mixture Gaussian negative
    log-likelihood of the free joints' rotation vectors (``bodyfit.priors.gmm``).

    The mixture: ``gmm_file`` when the config names one (bodyfit's ``.npz``, or SMPLify's
    ``gmm_08.pkl`` for the SMPL family, the user's own file); else the packaged Anny prior for
    Anny. A SMPL-family model without a ``gmm_file`` has none: the energy is then left out and
    listed in the fit's ``skipped_energies``.

    Raises (on construction):
        FileNotFoundError / ValueError: a ``gmm_file`` that cannot be read or is over joints the
            model lacks (see :func:`bodyfit.priors.gmm.load_pose_gmm`).
    """

    name = "gmm_prior"
    needs = "params"

    def __init__(self, model, config):
        super().__init__(model, config)
        path = getattr(config, "gmm_file", None) or (ANNY_POSE_GMM if model.name == "anny" else None)
        self.gmm = load_pose_gmm(path, model).to(model.device) if path else None
        if self.gmm is not None:
            set_joint_selector(self, "joints", model, self.gmm.joint_index(model))

    def prepare(self, problem):
        return () if self.gmm is not None else None

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        pose = ev.params.body_pose
        return self.gmm(pose.index_select(1, self.joints) if isinstance(self.joints, torch.Tensor) else pose[:, self.joints])


class InitPriorEnergy(PosePriorEnergy):
    """Squared change of the free joints' rotations from the fit's start (``init_prior``): keeps
    the regressor's 3D guess where 2D keypoints are ambiguous in depth."""

    name = "init_prior"

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        return pose_prior(ev.params.body_pose - ev.init.body_pose, self.free_joints)


class ShapePriorEnergy(Energy):
    """Betas' squared norm (SMPL) or phenotypes' distance from the average (Anny)
    (``shape_prior``)."""

    name = "shape_prior"
    needs = "params"

    def __init__(self, model, config):
        super().__init__(model, config)
        self.shape_name = model.shape_name

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        return shape_prior(ev.params.shape, self.shape_name)


class TemporalEnergy(Energy):
    """Squared joint acceleration between consecutive frames (``temporal``); only for
    sequences of three or more frames; frames not fitted never pull their neighbours."""

    name = "temporal"
    needs = "joints"

    def prepare(self, problem):
        return () if problem.sequence and problem.batch_size >= 3 else None

    def forward(self, ev: Evaluation, data) -> torch.Tensor:
        return temporal_smoothness(ev.output.joints, ev.problem.active)
