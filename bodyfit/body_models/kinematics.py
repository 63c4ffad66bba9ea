"""Forward kinematics of a kinematic tree, batched by tree level, and linear blend skinning of a
few chosen vertices: what a keypoint energy needs of a skinned body model, without skinning the
whole mesh.

The computation is SMPL's (Loper et al. 2015, "SMPL: A Skinned Multi-Person Linear Model",
eqs. 1-4; the same as ``smplx.lbs.lbs``): rest joints ``J = J_regressor (T + S(betas))``, world
transforms ``G_k = G_parent(k) [R_k | J_k - J_parent(k)]`` down the tree, and a vertex at
``sum_k w_k (G_k [R.. | -J_k]) (t + S(betas) + P(R))``. Only the order of the work differs:
joints of one tree level are composed in one batched product (SMPL's 24 joints are 9 levels
deep), where ``smplx.lbs.batch_rigid_transform`` runs one product per joint.
"""
from __future__ import annotations

import torch

__all__ = ["KinematicTree", "axis_angle_to_matrix"]


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula as smplx's ``batch_rodrigues`` computes it (the angle is taken of
    ``rotvec + 1e-8``, so the gradient at the zero rotation is finite).

    Args:
        rotvec: (..., 3) axis-angle, radians.
    Returns:
        (..., 3, 3) rotation matrices.
    """
    angle = torch.norm(rotvec + 1e-8, dim=-1, keepdim=True)
    axis = rotvec / angle
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    # K @ K = a a^T - |a|^2 I, written out: tiny batched matrix products are slow on CPU.
    KK = axis[..., :, None] * axis[..., None, :] - (axis * axis).sum(-1)[..., None, None] * eye
    return eye + sin * K + (1 - cos) * KK


class KinematicTree:
    """A kinematic tree given by its parents, ready for level-batched forward kinematics.

    Args:
        parents: (J,) int, ``parents[k]`` is joint k's parent (< k), ``parents[0]`` the root's
            (ignored, conventionally -1).
    Raises:
        ValueError: a parent that does not come before its child.
    """

    def __init__(self, parents):
        parents = [int(p) for p in parents]
        for k, p in enumerate(parents[1:], 1):
            if not 0 <= p < k:
                raise ValueError(f"joint {k}'s parent {p} must come before it (0 <= parent < {k}).")
        self.parents = parents
        depth = [0] * len(parents)
        for k in range(1, len(parents)):
            depth[k] = depth[parents[k]] + 1
        self.levels = [[k for k in range(len(parents)) if depth[k] == d] for d in range(max(depth) + 1)]
        order = [k for level in self.levels for k in level]
        position = {k: i for i, k in enumerate(order)}
        # Level d's parents all lie in level d-1: their positions within it.
        self._parent_in_level = [torch.tensor([self.levels[d - 1].index(parents[k]) for k in level])
                                 for d, level in enumerate(self.levels) if d > 0]
        self._sizes = [len(level) for level in self.levels]
        self._order = torch.tensor(order)
        self._unorder = torch.tensor([position[k] for k in range(len(parents))])
        self._parents = torch.tensor([max(p, 0) for p in parents])
        self._indices: dict[torch.device, tuple] = {}

    def _on(self, device: torch.device) -> tuple:
        """The index tensors on ``device`` (moved once per device, not at every step)."""
        if device not in self._indices:
            self._indices[device] = (self._parents.to(device), self._order.to(device), self._unorder.to(device),
                                     [p.to(device) for p in self._parent_in_level])
        return self._indices[device]

    def __len__(self) -> int:
        return len(self.parents)

    def forward(self, rotations: torch.Tensor, rest_joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World rotations and positions of every joint.

        Each joint's local transform ``[R_k | J_k - J_parent(k)]`` is composed with its
        parent's world transform; the joints of one level in one batched product.

        Args:
            rotations: (B, J, 3, 3) each joint's rotation relative to its parent (the root's in
                the model's world frame).
            rest_joints: (B, J, 3) joint positions in the rest pose (shaped), model units.
        Returns:
            (world_rotations (B, J, 3, 3), world_positions (B, J, 3)): ``G_k``'s rotation and
            the posed joint positions (the root stays at its rest position).
        """
        parents = self._on(rotations.device)[0]
        rel = rest_joints - rest_joints[:, parents]
        rel[:, 0] = rest_joints[:, 0]
        return self.compose(rotations, rel)

    __call__ = forward

    def compose(self, rotations: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World transforms ``G_k = G_parent(k) [R_k | o_k]`` of general local transforms.

        Args:
            rotations: (B, J, 3, 3) each joint's local rotation R_k.
            offsets: (B, J, 3) each joint's local translation o_k (the root's: its world
                position).
        Returns:
            (world_rotations (B, J, 3, 3), world_positions (B, J, 3)).
        """
        _, order, unorder, parent_in_levels = self._on(rotations.device)
        B = rotations.shape[0]
        bottom = rotations.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(B, len(self), 1, 4)
        local = torch.cat([torch.cat([rotations, offsets[..., None]], -1), bottom], -2)  # (B, J, 4, 4)
        local = local[:, order].split(self._sizes, 1)
        world = [local[0][..., :3, :]]  # (B, n, 3, 4) per level
        for parent_in_level, level in zip(parent_in_levels, local[1:]):
            world.append(world[-1][:, parent_in_level] @ level)
        world = torch.cat(world, 1)[:, unorder]
        return world[..., :3], world[..., 3]

    @staticmethod
    def skin(world_rotations: torch.Tensor, world_positions: torch.Tensor, rest_joints: torch.Tensor,
             weights: torch.Tensor, posed_rest_vertices: torch.Tensor) -> torch.Tensor:
        """Linear blend skinning of N vertices.

        Args:
            world_rotations, world_positions: (B, J, 3, 3), (B, J, 3) from :meth:`forward`.
            rest_joints: (B, J, 3) the rest joints :meth:`forward` was given.
            weights: (N, J) skinning weights of the vertices.
            posed_rest_vertices: (B, N, 3) the vertices in the rest frame with shape and pose
                blend shapes applied.
        Returns:
            (B, N, 3) posed vertices.
        """
        offset = world_positions - (world_rotations * rest_joints[..., None, :]).sum(-1)  # (B, J, 3)
        A = torch.cat([world_rotations.flatten(-2), offset], -1)  # (B, J, 12)
        T = torch.einsum("nj,bjk->bnk", weights, A)  # (B, N, 12)
        R, o = T[..., :9].unflatten(-1, (3, 3)), T[..., 9:]
        return (R * posed_rest_vertices[..., None, :]).sum(-1) + o
