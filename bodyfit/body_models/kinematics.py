"""Forward kinematics of a kinematic tree, batched by tree level, and linear blend skinning of a
few chosen vertices: what a keypoint energy needs of a skinned body model, without skinning the
whole mesh.

The computation is SMPL's (Loper et al. 2015, "SMPL: A Skinned Multi-Person Linear Model",
eqs. 1-4; the same as ``smplx.lbs.lbs``): rest joints ``J = J_regressor (T + S(betas))``, world
transforms ``G_k = G_parent(k) [R_k | J_k - J_parent(k)]`` down the tree, and a vertex at
``sum_k w_k (G_k [R.. | -J_k]) (t + S(betas) + P(R))``. Only the order of the work differs:
joints of one tree level are composed in one batched product (SMPL's 24 joints are 9 levels
deep), where ``smplx.lbs.batch_rigid_transform`` runs one product per joint; and the rotations
(Rodrigues) and the chain have hand-written backward passes (``torch.autograd.Function``): a fit
step at a small batch costs the number of operations it runs more than their arithmetic, and
autograd records several per product.
"""
from __future__ import annotations

import math

import torch

from bodyfit.replayable import host_reads_allowed

__all__ = ["KinematicTree", "axis_angle_to_matrix", "special_procrustes"]


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula as smplx's ``batch_rodrigues`` computes it (the angle is taken of
    ``rotvec + 1e-8``, so the gradient at the zero rotation is finite), with a hand-written
    backward (:class:`_Rodrigues`): a few batched operations instead of autograd's many.

    Args:
        rotvec: (..., 3) axis-angle, radians.
    Returns:
        (..., 3, 3) rotation matrices.
    """
    return _Rodrigues.apply(rotvec)


def _rodrigues(rotvec: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """``R = I + sin(t) K(a) + (1 - cos(t)) (a a^T - |a|^2 I)`` with ``t = |v + 1e-8|``,
    ``a = v / t`` (``K(a) @ K(a) = a a^T - |a|^2 I``, as smplx writes it), computed on the
    vectors' and matrices' entries side by side ((3, N), (9, N)): elementwise operations on
    N-vectors.

    Returns:
        (R (..., 3, 3), what :func:`_rodrigues_backward` needs).
    """
    ix = _entry_index(rotvec.device)
    v = rotvec.reshape(-1, 3).T.contiguous()  # (3, N)
    shifted = v + 1e-8
    angle = (shifted * shifted).sum(0).sqrt()  # (vector_norm over dim 0 is slow on CPU)
    axis = v / angle
    sin, cos = torch.sin(angle), torch.cos(angle)
    one_minus_cos = 1 - cos
    K = axis.index_select(0, ix["k"]) * ix["k sign"].to(axis.dtype)  # (9, N) entries of K(a)
    aa = (axis * axis).sum(0)
    R = torch.addcmul(sin * K, one_minus_cos, axis.index_select(0, ix["i"]) * axis.index_select(0, ix["j"]))
    R[::4] += 1 - one_minus_cos * aa
    return R.T.contiguous().view(*rotvec.shape, 3), (rotvec, v, shifted, angle, axis, K, aa, sin, cos)


def _rodrigues_backward(saved: tuple, G: torch.Tensor) -> torch.Tensor:
    """dL/dv of :func:`_rodrigues` from ``G = dL/dR``: through ``sin``, ``1 - cos`` and ``a``,
    then ``a = v / t``."""
    rotvec, v, shifted, angle, axis, K, aa, sin, cos = saved
    ix = _entry_index(G.device)
    N = angle.shape[0]
    G = G.reshape(N, 9).T.contiguous()  # (9, N)
    one_minus_cos = 1 - cos
    trace = G[::4].sum(0)
    sym_axis = ((G + G.index_select(0, ix["t"])).view(3, 3, N) * axis).sum(1)  # (G + G^T) a
    g_sin = (G * K).sum(0)
    g_one_minus_cos = 0.5 * (sym_axis * axis).sum(0) - aa * trace
    vee = G.index_select(0, ix["vee+"]) - G.index_select(0, ix["vee-"])  # d<G, K(a)>/da
    g_axis = sin * vee + one_minus_cos * (sym_axis - 2 * trace * axis)
    g_angle = g_sin * cos + g_one_minus_cos * sin - (g_axis * v).sum(0) / angle ** 2
    return (g_axis / angle + g_angle * shifted / angle).T.contiguous().view(rotvec.shape)


def _entry_index(device: torch.device) -> dict[str, torch.Tensor]:
    """Index tensors (on ``device``, made once) for 3x3 matrices' entries side by side (9, N),
    row-major: ``i``, ``j`` each entry's row and column; ``t`` the transpose's entries; ``k`` and
    ``k sign`` K(a)'s entries from a (3, N); ``vee+`` minus ``vee-`` the vector of ``A - A^T``;
    ``r1``, ``c1``, ``r2``, ``c2`` the rows' cross products with a vector."""
    ix = _ENTRY_INDEX.get(device)
    if ix is None:
        ix = _ENTRY_INDEX[device] = {k: torch.tensor(v, device=device) for k, v in _ENTRIES.items()}
    return ix


_ENTRIES = {
    "i": [0, 0, 0, 1, 1, 1, 2, 2, 2], "j": [0, 1, 2, 0, 1, 2, 0, 1, 2], "t": [0, 3, 6, 1, 4, 7, 2, 5, 8],
    "k": [0, 2, 1, 2, 0, 0, 1, 0, 0], "k sign": [[0.0], [-1.0], [1.0], [1.0], [0.0], [-1.0], [-1.0], [1.0], [0.0]],
    "vee+": [7, 2, 3], "vee-": [5, 6, 1],
    # (r_i x c)_j = r_i,(j+1) c_(j+2) - r_i,(j+2) c_(j+1): R's entries, then c's
    "r1": [3 * i + (j + 1) % 3 for i in range(3) for j in range(3)], "c1": [(j + 2) % 3 for i in range(3) for j in range(3)],
    "r2": [3 * i + (j + 2) % 3 for i in range(3) for j in range(3)], "c2": [(j + 1) % 3 for i in range(3) for j in range(3)],
}
_ENTRY_INDEX: dict = {}


class _Rodrigues(torch.autograd.Function):
    """:func:`axis_angle_to_matrix`: :func:`_rodrigues` and :func:`_rodrigues_backward`."""

    @staticmethod
    def forward(ctx, rotvec):
        R, saved = _rodrigues(rotvec)
        ctx.save_for_backward(*saved)
        return R

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G):
        return _rodrigues_backward(ctx.saved_tensors, G)


def special_procrustes(M: torch.Tensor) -> torch.Tensor:
    """``roma.special_procrustes`` of 3x3 matrices (the rotation nearest to each), computed
    where det(M) > 0 as the orthogonal factor R of the polar decomposition ``M = R S`` (then the
    same rotation) by Newton's iteration ``X <- (g X + (g X)^-T) / 2`` (Higham 1986), with
    determinant scaling ``g`` and each inverse by cofactors, until it settles: a few batched
    elementwise operations per iteration where roma solves an eigenproblem in float64; with a
    hand-written backward (:class:`_SpecialProcrustes`). Where det(M) <= 0 (Anny's neck03 of
    young phenotypes), from an SVD.

    Args:
        M: (..., 3, 3) matrices.
    Returns:
        (..., 3, 3) rotation matrices.
    """
    return _SpecialProcrustes.apply(M)


def _cofactor(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cofactor matrix (9, N), determinant (N,)) of N matrices X (9, N), entries first (row-major):
    ``X^-T = cof(X) / det(X)``."""
    index = _COFACTOR_INDEX.get(X.device)
    if index is None:
        index = _COFACTOR_INDEX[X.device] = torch.tensor(_COFACTOR_ENTRIES, device=X.device).flatten()
    a, b, c, d = X.index_select(0, index).unflatten(0, (4, 9))
    C = a * b - c * d
    return C, (X[:3] * C[:3]).sum(0)


# cof(X)_ij = X_(i+1)(j+1) X_(i+2)(j+2) - X_(i+1)(j+2) X_(i+2)(j+1), indices mod 3, row-major.
_COFACTOR_ENTRIES = [[3 * ((i + a) % 3) + (j + b) % 3 for i in range(3) for j in range(3)]
                     for a, b in [(1, 1), (2, 2), (1, 2), (2, 1)]]
_COFACTOR_INDEX: dict = {}


# Newton steps of the polar iteration where no host read may end it early (bodyfit.replayable):
# from the determinant-scaled start the error falls about 0.6 -> 0.03 -> 1e-4 -> 1e-7 on Anny's
# rest frames (every phenotype corner and 512 random phenotypes settle by the fifth step), and
# squares at each step after; nine leave room for matrices with a condition number up to 1e6.
FIXED_POLAR_ITERATIONS = 9


def _polar_entries(X: torch.Tensor, tol: float | None = None,
                   max_iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """The orthogonal factor U of the polar decomposition ``M = U S`` (det U = sign det M), of
    N matrices given by their entries side by side, X (9, N) (row-major, contiguous): Newton's
    iteration ``X <- (g X + (g X)^-T) / 2`` with the determinant scaling ``g = |det X|^(-1/3)``
    (Byers & Xu 2008), until no entry moves by more than ``tol`` (default: the square root of
    the dtype's machine epsilon): the convergence is quadratic (an iterate off by e is followed
    by one off by about e^2 / 2), so the last iterate is then exact to round-off. Where host
    reads are not allowed (:func:`bodyfit.replayable.host_reads_allowed`), exactly
    ``FIXED_POLAR_ITERATIONS`` steps, unchecked.

    Returns:
        (U (9, N), det(M) (N,)).
    """
    tol = math.sqrt(torch.finfo(X.dtype).eps) if tol is None else tol
    checked = host_reads_allowed()
    det_M = None
    for iteration in range(max_iterations if checked else FIXED_POLAR_ITERATIONS):
        C, det = _cofactor(X)
        det_M = det if det_M is None else det_M
        half_g = det.abs().pow_(-1 / 3).mul_(0.5)
        new = torch.addcmul(half_g * X, C, (half_g * det).reciprocal_().mul_(0.25))  # (g X + C / (g det)) / 2
        # checked from the fourth step (never settled before); a singular M (NaN) is not waited for
        settled = checked and iteration >= 3 and not bool((new - X).abs_().amax() > tol)
        X = new
        if settled:
            break
    return X, det_M


def _reflected_polar_entries(M: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """The special Procrustes rotation of N matrices M with det(M) < 0 from their orthogonal
    polar factor U (det U = -1), entries side by side (9, N): ``U (I - 2 v v^T)`` with v the
    unit eigenvector of the smallest eigenvalue of ``H = U^T M`` (symmetric positive definite;
    the SVD's ``U_svd diag(1, 1, -1) V^T``). The eigenvalue from the trigonometric closed form
    of a symmetric 3x3 matrix's eigenvalues (Smith 1961), the eigenvector as the longest cross
    product of two rows of ``H - lambda I``: elementwise operations, no host read. Ill-defined,
    as the SVD's answer is, where the two smallest singular values of M are equal."""
    N = M.shape[1]
    Um, Mm = U.T.reshape(N, 3, 3), M.T.reshape(N, 3, 3)
    H = Um.transpose(1, 2) @ Mm
    H = (H + H.transpose(1, 2)) / 2
    H = H / H.flatten(1).norm(dim=1).clamp_min(torch.finfo(H.dtype).tiny)[:, None, None]
    q = H.diagonal(dim1=1, dim2=2).sum(-1) / 3
    eye = torch.eye(3, dtype=H.dtype, device=H.device)
    D = H - q[:, None, None] * eye
    p = ((D * D).sum((1, 2)) / 6).sqrt().clamp_min(torch.finfo(H.dtype).eps)
    r = (_cofactor((D / p[:, None, None]).reshape(N, 9).T.contiguous())[1] / 2).clamp(-1.0, 1.0)
    smallest = q + 2 * p * torch.cos(torch.acos(r) / 3 + 2 * math.pi / 3)
    rows = H - smallest[:, None, None] * eye
    crosses = torch.stack([torch.linalg.cross(rows[:, 0], rows[:, 1]), torch.linalg.cross(rows[:, 0], rows[:, 2]),
                           torch.linalg.cross(rows[:, 1], rows[:, 2])], 1)  # (N, 3, 3)
    lengths = crosses.norm(dim=2)
    longest = lengths.argmax(1)
    v = crosses.gather(1, longest[:, None, None].expand(N, 1, 3))[:, 0] / lengths.gather(1, longest[:, None])
    Uv = (Um @ v[:, :, None])[:, :, 0]
    R = Um - 2 * Uv[:, :, None] * v[:, None, :]
    return R.reshape(N, 9).T


def _polar_rotation_backward(M: torch.Tensor, R: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """dL/dM of the polar rotation (:func:`_polar_entries`) from ``G = dL/dR``. With ``M = R S``, a change dM moves
    R by ``dR = R [w]_x`` where ``(tr(S) I - S) w = vee(R^T dM - dM^T R)``; so
    ``dL = c . vee(R^T dM - dM^T R) / 2 = <R [c]_x, dM>`` with ``(tr(S) I - S) c = vee(R^T G - G^T R)``
    (H = tr(S) I - S is symmetric, positive definite when the rotation is unique). Computed on
    the matrices' entries side by side (9, N), as the forward: elementwise products of N-vectors
    instead of N products of 3x3 matrices."""
    N = M.numel() // 9
    entries = [x.reshape(N, 9).T.contiguous() for x in (M, R, G)]
    return _polar_backward_entries(*entries).T.reshape(M.shape)


def _polar_backward_entries(M: torch.Tensor, R9: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """:func:`_polar_rotation_backward` of N matrices given by their entries side by side, M,
    R, G (9, N) (row-major, contiguous). Returns dL/dM (9, N)."""
    ix = _entry_index(M.device)
    N = M.shape[1]
    MG = torch.cat([M, G])  # (18, N)
    # R^T M and R^T G: (R^T X)_ij = sum_k R_ki X_kj (k first)
    SA = (R9.view(3, 3, 1, N) * MG.view(2, 3, 1, 3, N)).sum(1).view(2, 9, N)
    S, A = SA[0], SA[1]
    H = (S + S.index_select(0, ix["t"])).mul_(-0.5)  # -(S + S^T) / 2, then + tr(S) on the diagonal
    H[::4] += S[::4].sum(0)
    C, det = _cofactor(H)  # H symmetric: H^-1 = cof(H) / det(H)
    v = A.index_select(0, ix["vee+"]) - A.index_select(0, ix["vee-"])  # vee(A - A^T) (3, N)
    c = (C.view(3, 3, N) * v).sum(1) / det
    # R [c]_x, row by row r_i x c
    grad = R9.index_select(0, ix["r1"]) * c.index_select(0, ix["c1"])
    return torch.addcmul(grad, R9.index_select(0, ix["r2"]), c.index_select(0, ix["c2"]), value=-1.0)


def _special_procrustes(M: torch.Tensor) -> torch.Tensor:
    """Forward of :func:`special_procrustes` (no autograd): :func:`_polar_entries`, and where
    det(M) <= 0 ``U diag(1, 1, -1) V^T`` from the SVD ``M = U S V^T``."""
    return _special_procrustes_entries(M.reshape(-1, 9).T.contiguous()).T.reshape(M.shape)


def _special_procrustes_entries(M: torch.Tensor) -> torch.Tensor:
    """:func:`_special_procrustes` of N matrices given by their entries side by side, M (9, N)
    (row-major, contiguous). Returns R (9, N)."""
    R, det = _polar_entries(M)
    if not host_reads_allowed():  # every matrix's reflection computed, the negative ones' kept
        return torch.where(det > 0, R, _reflected_polar_entries(M, R))
    flipped = det <= 0
    if bool(flipped.any()):
        U, _, Vh = torch.linalg.svd(M[:, flipped].T.reshape(-1, 3, 3).double())
        U = torch.cat([U[..., :2], U[..., 2:] * torch.linalg.det(U @ Vh)[..., None, None]], -1)
        R = R.clone()
        R[:, flipped] = (U @ Vh).to(R.dtype).reshape(-1, 9).T
    return R


class _SpecialProcrustes(torch.autograd.Function):
    """:func:`special_procrustes`: :func:`_special_procrustes` and :func:`_polar_rotation_backward`.
    Where det(M) <= 0, the forward is ``U diag(1, 1, -1) V^T`` from the SVD ``M = U S V^T``;
    the backward is the same, ``R^T M`` being symmetric there too (``V diag(s1, s2, -s3) V^T``)."""

    @staticmethod
    def forward(ctx, M):
        R = _special_procrustes(M)
        ctx.save_for_backward(M, R)
        return R

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G):
        M, R = ctx.saved_tensors
        return _polar_rotation_backward(M, R, G)


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
        self._indices: dict[torch.device, tuple] = {}

    def _on(self, device: torch.device) -> tuple:
        """The index tensors on ``device`` (moved once per device, not at every step)."""
        if device not in self._indices:
            self._indices[device] = (self._order.to(device), self._unorder.to(device),
                                     [p.to(device) for p in self._parent_in_level])
        return self._indices[device]

    def __len__(self) -> int:
        return len(self.parents)

    def compose(self, rotations: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World transforms ``G_k = G_parent(k) [R_k | o_k]`` of local transforms, the joints of
        one level in one batched product, with a hand-written backward (:class:`_Compose`).

        Args:
            rotations: (B, J, 3, 3) each joint's local rotation R_k (the root's in the model's
                world frame).
            offsets: (B, J, 3) each joint's local translation o_k, model units: for a skeleton
                ``J_k - J_parent(k)``, the root's its world position.
        Returns:
            (world_rotations (B, J, 3, 3), world_positions (B, J, 3)).
        """
        return _Compose.apply(rotations, offsets, self)

    def skinned_body(self, rotvecs: torch.Tensor, shape: torch.Tensor, shape_const: torch.Tensor,
                     shape_blend: torch.Tensor, pose_blend: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """SMPL's body (eqs. 1-4) from its parameters in one pass with a hand-written backward
        (:class:`_SkinnedBody`): the joints' rotations by :func:`axis_angle_to_matrix`, the rest
        joints, their offsets from their parents and N vertices' rest positions by the shape
        blend ``shape_const + shape @ shape_blend``, the vertices' pose blend
        ``R.flatten() @ pose_blend``, then linear blend skinning of the vertices, ``v = sum_k w_k [G_k | p_k - G_k J_k] [x; 1]``.

        Args:
            rotvecs: (B, J, 3) each joint's axis-angle relative to its parent, radians.
            shape: (B, S) shape coefficients (betas).
            shape_const, shape_blend: (6J + 3N,), (S, 6J + 3N): rest joints, offsets and
                vertices (each flattened (.., 3)) at zero shape, and their shape directions.
            pose_blend: (9J, 3N) the vertices' pose directions over the flattened rotations
                (the constant of ``R - I`` folded into ``shape_const``).
            weights: (N, J) skinning weights.
        Returns:
            (B, J + N, 3): the joints' world positions, then the posed vertices, model units.
        """
        return _SkinnedBody.apply(rotvecs, shape, shape_const, shape_blend, pose_blend, weights, self)


def _chain(tree: KinematicTree, rotations: torch.Tensor, offsets: torch.Tensor):
    """Forward pass of the chain, joints first, (J, B, ...), joints in level order, so that each
    level is one contiguous block and one ``bmm``: ``W_d = W_parent @ L_d`` with
    ``L = [[R, o], [0, 1]]`` (4x4) and ``W = [G | p]`` (3x4).

    Returns:
        (local (J, B, 4, 4), parents (J - roots, B, 3, 4) each non-root joint's parent's W,
        world (J, B, 3, 4)), level order.
    """
    order = tree._on(rotations.device)[0]
    B, J = rotations.shape[:2]
    local = rotations.new_zeros(J, B, 4, 4)
    local[:, :, :3, :3] = rotations.transpose(0, 1)[order]
    local[:, :, :3, 3] = offsets.transpose(0, 1)[order]
    local[:, :, 3, 3] = 1.0
    return local, *_chain_levels(tree, local)


def _chain_levels(tree: KinematicTree, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_chain` from the local transforms ``local`` (J, B, 4, 4), level order.

    Returns:
        (parents (J - roots, B, 3, 4), world (J, B, 3, 4)), level order.
    """
    parent_in_levels = tree._on(local.device)[2]
    J, B = local.shape[:2]
    local_levels = local.split_with_sizes(tree._sizes, 0)
    world = local.new_empty(J, B, 3, 4)
    world_levels = world.split_with_sizes(tree._sizes, 0)
    world_levels[0].copy_(local_levels[0][:, :, :3])
    parents = local.new_empty(J - tree._sizes[0], B, 3, 4)
    parent_levels = parents.split_with_sizes(tree._sizes[1:], 0)
    for d, parent_in_level in enumerate(parent_in_levels, 1):
        torch.index_select(world_levels[d - 1], 0, parent_in_level, out=parent_levels[d - 1])
        torch.bmm(parent_levels[d - 1].view(-1, 3, 4), local_levels[d].view(-1, 4, 4),
                  out=world_levels[d].view(-1, 3, 4))
    return parents, world


def _chain_backward(tree: KinematicTree, local: torch.Tensor, parents: torch.Tensor,
                    grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward pass of :func:`_chain`: from ``grad`` = dL/dW (J, B, 3, 4), level order (added
    to in place), deepest level first ``dW_parent += dW_d @ L_d^T`` (summed over each parent's
    children), then for every joint at once ``dL = G_parent^T dW`` (the roots': ``dW``).

    Returns:
        (dL/drotations (B, J, 3, 3), dL/doffsets (B, J, 3)), joint order.
    """
    grad_local = _chain_backward_levels(tree, local, parents, grad)
    grad_local = grad_local[tree._on(local.device)[1]].transpose(0, 1)
    return grad_local[..., :3], grad_local[..., 3]


def _chain_backward_levels(tree: KinematicTree, local: torch.Tensor, parents: torch.Tensor,
                           grad: torch.Tensor) -> torch.Tensor:
    """:func:`_chain_backward` in level order: dL/dlocal (J, B, 3, 4) (the rotations', then the
    offsets' column)."""
    parent_in_levels = tree._on(local.device)[2]
    B = local.shape[1]
    grad_levels = grad.split_with_sizes(tree._sizes, 0)
    local_levels = local.split_with_sizes(tree._sizes, 0)
    for d in range(len(grad_levels) - 1, 0, -1):
        to_parent = torch.bmm(grad_levels[d].view(-1, 3, 4), local_levels[d].view(-1, 4, 4).transpose(1, 2))
        grad_levels[d - 1].index_add_(0, parent_in_levels[d - 1], to_parent.view(-1, B, 3, 4))
    n_roots = tree._sizes[0]
    grad_local = torch.empty_like(grad)
    grad_local[:n_roots] = grad[:n_roots]
    torch.bmm(parents[..., :3].reshape(-1, 3, 3).transpose(1, 2), grad[n_roots:].view(-1, 3, 4),
              out=grad_local[n_roots:].view(-1, 3, 4))
    return grad_local


class _Compose(torch.autograd.Function):
    """:meth:`KinematicTree.compose`: :func:`_chain` and :func:`_chain_backward`."""

    @staticmethod
    def forward(ctx, rotations, offsets, tree):
        local, parents, world = _chain(tree, rotations, offsets)
        ctx.tree = tree
        ctx.save_for_backward(local, parents)
        world = world[tree._on(world.device)[1]].transpose(0, 1)  # (B, J, 3, 4), joint order
        return world[..., :3], world[..., 3]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_rotations, grad_positions):
        tree = ctx.tree
        local, parents = ctx.saved_tensors
        order = tree._on(local.device)[0]
        grad = local.new_zeros(local.shape[0], local.shape[1], 3, 4)
        if grad_rotations is not None:
            grad[..., :3] = grad_rotations.transpose(0, 1)[order]
        if grad_positions is not None:
            grad[..., 3] = grad_positions.transpose(0, 1)[order]
        return *_chain_backward(tree, local, parents, grad), None


def _skin(tree: KinematicTree, rotations: torch.Tensor, offsets: torch.Tensor, rest_joints: torch.Tensor,
          weights: torch.Tensor, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """The joints' world positions and linear blend skinning of N vertices (rotations, offsets
    as for :meth:`KinematicTree.compose`, rest_joints (B, J, 3), weights (N, J), vertices
    (B, N, 3) in the rest frame), joints first as :func:`_chain`: the skinning transforms
    ``A_k = [G_k | p_k - G_k J_k]`` (J, B*12) blend in one product ``T = w A`` (N, B*12), and
    ``v = T [x; 1]``.

    Returns:
        (world positions (B, J, 3), posed vertices (B, N, 3), what :func:`_skin_backward` needs).
    """
    order, unorder, _ = tree._on(rotations.device)
    local, parents, world = _chain(tree, rotations, offsets)
    J, B = world.shape[:2]
    rest = rest_joints.transpose(0, 1)[order]  # (J, B, 3)
    A = world.clone()
    A[..., 3] -= (world[..., :3] @ rest[..., None])[..., 0]
    weights = weights[:, order]
    T = (weights @ A.view(J, -1)).view(-1, B, 3, 4)  # (N, B, 3, 4)
    homogeneous = torch.cat([vertices.transpose(0, 1), vertices.new_ones(vertices.shape[1], B, 1)], -1)
    posed = (T * homogeneous[:, :, None]).sum(-1)  # (N, B, 3)
    return (world[unorder, ..., 3].transpose(0, 1), posed.transpose(0, 1),
            (local, parents, world, rest, weights, T, homogeneous))


def _skin_backward(tree: KinematicTree, saved: tuple, grad_positions: torch.Tensor | None,
                   grad_posed: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Backward of :func:`_skin`: ``dT = dv [x; 1]^T``, ``dx = T_R^T dv``, ``dA = w^T dT``,
    then ``dG = dA_G - dA_t J^T``, ``dp = dA_t (+ dL/dp)``, ``dJ = -G^T dA_t`` and the chain's.

    Returns:
        dL/d (rotations, offsets, rest_joints, vertices), (B, ...) as :func:`_skin` took them.
    """
    local, parents, world, rest, weights, T, homogeneous = saved
    order, unorder, _ = tree._on(local.device)
    J, B = world.shape[:2]
    if grad_posed is None:
        grad_posed = T.new_zeros(B, T.shape[0], 3)
    grad_posed = grad_posed.transpose(0, 1)  # (N, B, 3)
    grad_T = grad_posed[..., None] * homogeneous[:, :, None]  # (N, B, 3, 4)
    grad_vertices = (T[..., :3] * grad_posed[..., None]).sum(-2).transpose(0, 1)
    grad = (weights.T @ grad_T.reshape(grad_T.shape[0], -1)).view(J, B, 3, 4)  # dA, then dW
    grad_t = grad[..., 3].clone()
    grad[..., :3] -= grad_t[..., None] * rest[..., None, :]
    if grad_positions is not None:
        grad[..., 3] += grad_positions.transpose(0, 1)[order]
    grad_rest = -(grad_t[..., None, :] @ world[..., :3])[..., 0, :]  # -G^T dA_t, (J, B, 3)
    grad_rotations, grad_offsets = _chain_backward(tree, local, parents, grad)
    return grad_rotations, grad_offsets, grad_rest[unorder].transpose(0, 1), grad_vertices


class _SkinnedBody(torch.autograd.Function):
    """:meth:`KinematicTree.skinned_body`: the rotations (:func:`_rodrigues`), the shape and pose
    blends (two products) and :func:`_skin` in one function, and their backward passes in
    reverse, so that the step records one autograd node for the whole body."""

    @staticmethod
    def forward(ctx, rotvecs, shape, shape_const, shape_blend, pose_blend, weights, tree):
        B, J = rotvecs.shape[:2]
        R, rodrigues_saved = _rodrigues(rotvecs)
        shaped = torch.addmm(shape_const, shape, shape_blend)
        rest, offsets, vertices = shaped.split_with_sizes([3 * J, 3 * J, pose_blend.shape[1]], 1)
        vertices = torch.addmm(vertices, R.view(B, -1), pose_blend).view(B, -1, 3)
        positions, posed, skin_saved = _skin(tree, R, offsets.view(B, J, 3), rest.view(B, J, 3), weights, vertices)
        ctx.tree, ctx.n_rodrigues = tree, len(rodrigues_saved)
        ctx.save_for_backward(shape_blend, pose_blend, *rodrigues_saved, *skin_saved)
        return torch.cat([positions, posed], 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        shape_blend, pose_blend, *saved = ctx.saved_tensors
        rodrigues_saved, skin_saved = saved[:ctx.n_rodrigues], saved[ctx.n_rodrigues:]
        B, J = grad.shape[0], len(ctx.tree)
        g_R, g_offsets, g_rest, g_vertices = _skin_backward(ctx.tree, skin_saved, grad[:, :J], grad[:, J:])
        g_vertices = g_vertices.reshape(B, -1)
        g_R = g_R + (g_vertices @ pose_blend.T).view(B, J, 3, 3)
        g_shaped = torch.cat([g_rest.reshape(B, -1), g_offsets.reshape(B, -1), g_vertices], 1)
        return (_rodrigues_backward(rodrigues_saved, g_R), g_shaped @ shape_blend.T,
                None, None, None, None, None)
