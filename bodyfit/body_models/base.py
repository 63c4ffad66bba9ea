"""The body-model interface every model in bodyfit implements.

Data flows one way: ``BodyParams`` -> ``BodyModel.forward`` -> ``BodyOutput`` (metres, world
frame of the model). Cameras, energies and the optimizer only ever see these two dataclasses and
the keypoint map a model gives for a named convention (``bodyfit.body_models.conventions``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class BodyParams:
    """Parameters of a batch of bodies.

    Attributes:
        global_orient: (B, 3) axis-angle (radians) of the root, in the world/camera frame.
        body_pose: (B, P, 3) axis-angle (radians) of each posable joint relative to its parent,
            in the model's own parameterization (``BodyModel.pose_joint_names`` names the P joints).
        shape: (B, S) shape coefficients: SMPL-family ``betas`` (S=10 by default, unitless, mean 0)
            or Anny ``phenotypes`` (S=6, each in [0, 1]). ``BodyModel.shape_name`` says which.
        transl: (B, 3) metres, translation of the model's origin in the world/camera frame.
    """

    global_orient: torch.Tensor
    body_pose: torch.Tensor
    shape: torch.Tensor
    transl: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.global_orient.shape[0]

    def detach(self) -> "BodyParams":
        return BodyParams(**{k: v.detach() for k, v in self.as_dict().items()})

    def clone(self) -> "BodyParams":
        return BodyParams(**{k: v.clone() for k, v in self.as_dict().items()})

    def to(self, *args, **kwargs) -> "BodyParams":
        return BodyParams(**{k: v.to(*args, **kwargs) for k, v in self.as_dict().items()})

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def index(self, idx) -> "BodyParams":
        """Select samples: ``idx`` is anything that indexes the batch dimension."""
        return BodyParams(**{k: v[idx] for k, v in self.as_dict().items()})

    def where(self, mask: torch.Tensor, other: "BodyParams") -> "BodyParams":
        """Per sample: these parameters where ``mask`` (B,) is True, ``other``'s elsewhere."""
        return BodyParams(**{k: torch.where(mask.view(-1, *[1] * (v.dim() - 1)), v, getattr(other, k))
                             for k, v in self.as_dict().items()})

    def is_finite(self) -> torch.Tensor:
        """(B,) bool: True where every parameter of the sample is finite."""
        return torch.stack(
            [torch.isfinite(v.reshape(v.shape[0], -1)).all(dim=1) for v in self.as_dict().values()]
        ).all(dim=0)

    @staticmethod
    def cat(items: list["BodyParams"]) -> "BodyParams":
        return BodyParams(
            **{f.name: torch.cat([getattr(p, f.name) for p in items]) for f in dataclasses.fields(BodyParams)}
        )


@dataclass
class BodyOutput:
    """What a body model returns.

    Attributes:
        joints: (B, J, 3) metres, world frame: the model's landmarks (skeleton joints and surface
            keypoints) named by ``BodyModel.joint_names``.
        vertices: (B, V, 3) metres, world frame, or None when the caller asked for joints only.
        faces: (F, 3) int64 triangle vertex indices.
    """

    joints: torch.Tensor
    vertices: torch.Tensor | None
    faces: torch.Tensor


class BodyModel(torch.nn.Module):
    """Interface of a parametric body model (Anny, SMPL, SMPL-H, SMPL-X).

    Subclasses set the attributes below in ``__init__``, register an empty float buffer
    ``_probe`` (it carries dtype and device) and implement ``forward``.

    Attributes:
        name: model name as given to ``bodyfit.body_model``.
        joint_names: names of the J landmarks in ``BodyOutput.joints``.
        pose_joint_names: names of the P joints of ``BodyParams.body_pose``.
        free_pose_joints: indices into ``pose_joint_names`` that fitting optimizes by default.
        shape_name: ``"betas"`` or ``"phenotypes"``.
        shape_dim: S.
        up_to_camera: (3, 3) rotation taking the model's rest frame to the OpenCV camera frame
            for an upright person facing the camera (used for the default global_orient).
    """

    name: str
    joint_names: list[str]
    pose_joint_names: list[str]
    free_pose_joints: list[int]
    shape_name: str
    shape_dim: int
    faces: torch.Tensor

    def forward(self, params: BodyParams, vertices: bool = True) -> BodyOutput:  # pragma: no cover
        raise NotImplementedError

    @property
    def num_pose_joints(self) -> int:
        return len(self.pose_joint_names)

    @property
    def dtype(self) -> torch.dtype:
        return self._probe.dtype

    @property
    def device(self) -> torch.device:
        return self._probe.device

    def mean_shape(self, batch_size: int) -> torch.Tensor:
        """(B, S) the shape coefficients of the average body (betas 0, phenotypes 0.5)."""
        value = 0.5 if self.shape_name == "phenotypes" else 0.0
        return torch.full((batch_size, self.shape_dim), value, dtype=self.dtype, device=self.device)

    def clamp_shape(self, shape: torch.Tensor) -> torch.Tensor:
        """Project shape coefficients onto the model's valid range (phenotypes to [0, 1])."""
        return shape.clamp(0.0, 1.0) if self.shape_name == "phenotypes" else shape

    def default_params(self, batch_size: int, depth: float = 5.0) -> BodyParams:
        """A mean-shaped body in its rest pose, upright, facing an OpenCV camera at the origin,
        ``depth`` metres in front of it. Returns a BodyParams of batch ``batch_size``."""
        import roma

        orient = roma.rotmat_to_rotvec(self.up_to_camera.to(self.dtype))
        kw = dict(dtype=self.dtype, device=self.device)
        return BodyParams(
            global_orient=orient.to(self.device).expand(batch_size, 3).clone(),
            body_pose=torch.zeros(batch_size, self.num_pose_joints, 3, **kw),
            shape=self.mean_shape(batch_size),
            transl=torch.tensor([0.0, 0.0, depth], **kw).expand(batch_size, 3).clone(),
        )

    def check_params(self, params: BodyParams) -> None:
        """Raise ValueError naming the field when a parameter has the wrong shape."""
        B = params.global_orient.shape[0] if params.global_orient.dim() == 2 else -1
        expected = {
            "global_orient": (B, 3),
            "body_pose": (B, self.num_pose_joints, 3),
            "shape": (B, self.shape_dim),
            "transl": (B, 3),
        }
        for key, shape in expected.items():
            value = getattr(params, key)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"{self.name}: BodyParams.{key} must have shape {shape} "
                    f"(B={B}; {self.shape_name} for shape), got {got}."
                )
