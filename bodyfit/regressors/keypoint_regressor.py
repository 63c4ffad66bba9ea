"""Keypoint regressor: 2D keypoints (normalized to the person's box) -> body parameters and a
weak-perspective camera, with HMR's iterative error feedback (IEF, Kanazawa et al. 2018) and
the 6D rotation representation (Zhou et al. 2019). Trained on synthetic pairs (Pose2Mesh, Choi
et al. 2020) by ``python -m bodyfit.regressors.train_keypoint``; the weights ship in
``bodyfit/regressors/weights/``. The shipped Anny / MediaPipe-33 weights: trained on bodies drawn
inside the joint limits, then fine-tuned (``--init`` the previous weights, ``--prior-share 0.5
--lr 3e-4 --minutes 8 --seed 1``, 1,444 steps) with half the bodies posed by Anny's learned pose
prior (``bodyfit.priors.gmm``): on Pose2Sim's held-out frames the fits went from 60.2 to 53.1 mm
median PA-MPJPE (benchmarks/bench_pose2sim_depth.py), on random synthetic bodies from 47.8 to
49.0 mm (benchmarks/bench_synthetic.py).
"""
from __future__ import annotations

from pathlib import Path

import roma
import torch

from bodyfit.body_models.base import BodyModel, BodyParams
from bodyfit.body_models.conventions import keypoint_names
from bodyfit.boxes import boxes_from_keypoints

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


# The identity rotation in the 6D layout ``decode`` reads: the first two columns of the
# rotation matrix as a 3x2 matrix, row by row (Zhou et al. 2019).
IDENTITY_6D = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])


def normalize_keypoints(keypoints: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B,K,3) px + conf, (B,4) xyxy -> (B,K*3): coordinates relative to the box centre in units
    of the box height; missing keypoints are zeros."""
    c = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    xy = (keypoints[..., :2] - c[:, None]) / h[:, None, None]
    conf = keypoints[..., 2:]
    xy = torch.where(conf > 0, xy, torch.zeros_like(xy))
    return torch.cat([xy, conf], -1).flatten(1)


class KeypointRegressor(torch.nn.Module):
    """MLP with IEF.

    Args:
        num_keypoints: K of the input convention.
        num_free_joints: F joints predicted (the model's ``free_pose_joints``), 6D each.
        shape_dim: S; phenotypes pass through a sigmoid (Anny), betas are linear.
        hidden: width; iterations: IEF steps.

    ``forward(x (B,K*3)) -> (B, 6 + 6F + S + 3)``: global_orient 6D, free joints 6D, shape, and
    the weak-perspective camera (s, tx, ty) in box-height units.
    """

    def __init__(self, num_keypoints: int, num_free_joints: int, shape_dim: int,
                 hidden: int = 1024, iterations: int = 3):
        super().__init__()
        self.config = dict(num_keypoints=num_keypoints, num_free_joints=num_free_joints,
                           shape_dim=shape_dim, hidden=hidden, iterations=iterations)
        self.out_dim = 6 + 6 * num_free_joints + shape_dim + 3
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(num_keypoints * 3, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU())
        self.ief = torch.nn.Sequential(
            torch.nn.Linear(hidden + self.out_dim, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, self.out_dim))
        init = torch.zeros(self.out_dim)
        init[6:6 + 6 * num_free_joints] = IDENTITY_6D.repeat(num_free_joints)
        init[:6] = IDENTITY_6D
        init[-3] = 0.9  # scale: a body about one box high
        self.register_buffer("init_output", init)
        self.iterations = iterations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.encoder(x)
        y = self.init_output.expand(x.shape[0], -1)
        for _ in range(self.iterations):
            y = y + self.ief(torch.cat([feat, y], 1))
        return y

    def decode(self, y: torch.Tensor, model: BodyModel) -> tuple[BodyParams, torch.Tensor]:
        """Output -> (BodyParams with transl 0, camera (B,3) = s, tx, ty)."""
        F = self.config["num_free_joints"]
        B = y.shape[0]

        def rot(six):  # the 6 numbers are the 3x2 matrix of the first two columns, row by row
            return roma.special_gramschmidt(six.reshape(*six.shape[:-1], 3, 2))

        R_global = rot(y[:, :6])
        R_joints = rot(y[:, 6:6 + 6 * F].reshape(B, F, 6))
        shape = y[:, 6 + 6 * F:6 + 6 * F + model.shape_dim]
        if model.shape_name == "phenotypes":
            shape = torch.sigmoid(shape)
        # The network predicts the orientation relative to the upright, camera-facing body.
        orient = roma.rotmat_to_rotvec(R_global @ model.up_to_camera.to(y))
        pose = torch.zeros(B, model.num_pose_joints, 3, dtype=y.dtype, device=y.device)
        pose[:, model.free_pose_joints] = roma.rotmat_to_rotvec(R_joints)
        params = BodyParams(orient, pose, shape, torch.zeros(B, 3, dtype=y.dtype, device=y.device))
        return params, y[:, -3:]

    @staticmethod
    def camera_to_transl(cam: torch.Tensor, boxes: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """Weak-perspective (s, tx, ty) in box units -> perspective translation (B,3) metres.

        With u_norm = (u - c_box) / h = s (X + tx): depth Z = f / (h s), and the offset of the
        box centre from the principal point is folded into x, y."""
        h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
        c = 0.5 * (boxes[:, :2] + boxes[:, 2:])
        s = cam[:, 0].abs().clamp(min=1e-2)
        f = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
        Z = f / (h * s)
        pp = K[:, :2, 2]
        xy = cam[:, 1:] + (c - pp) / (h * s)[:, None]
        return torch.cat([xy, Z[:, None]], 1)

    @torch.no_grad()
    def predict(self, keypoints: torch.Tensor, K: torch.Tensor, model: BodyModel) -> BodyParams:
        """(B,K,3) keypoints px + conf, (B,3,3) K -> BodyParams (B), camera frame.

        The box is always made from the visible keypoints (``bodyfit.boxes.boxes_from_keypoints``), as in
        training, whatever box a detector gave."""
        boxes = boxes_from_keypoints(keypoints)
        y = self(normalize_keypoints(keypoints, boxes).to(self.init_output))
        params, cam = self.decode(y, model)
        params.transl = self.camera_to_transl(cam, boxes, K.to(y))
        return params.to(model.dtype)


def weights_path(model_name: str, convention: str) -> Path:
    return WEIGHTS_DIR / f"keypoint_regressor_{model_name}_{convention}.pt"


def load_regressor(model: BodyModel, convention: str, path: str | Path | None = None):
    """The shipped regressor for (model, convention), or None when there is none (``fit`` then
    starts from the mean body). Raises ValueError if a given file does not match the model."""
    path = Path(path) if path is not None else weights_path(model.name, convention)
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = state["config"]
    if cfg["num_keypoints"] != len(keypoint_names(convention)) or cfg["shape_dim"] != model.shape_dim:
        raise ValueError(f"Regressor weights {path} do not match model {model.name!r} and "
                         f"convention {convention!r}.")
    reg = KeypointRegressor(**cfg)
    reg.load_state_dict(state["state_dict"])
    return reg.to(model.device).eval()
