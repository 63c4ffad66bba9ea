"""Anny (NAVER Labs, Apache-2.0 code, CC0 data; PyPI ``anny``), bodyfit's default body model.

Frames and units: Anny's world frame is Z up, -Y forward (the face looks along -Y), +X the
subject's left; metres. ``BodyParams`` for Anny:

- ``global_orient`` (B,3): axis-angle of the root bone about the world origin (near the pelvis).
- ``body_pose`` (B,103,3): axis-angle of every other bone in Anny's ``local-ref`` parameterization
  (rotation about the bone's head, axes aligned with the world at rest: +X flexes the spine and
  knees forward/back, +Y adducts the left leg, +Z twists about the vertical). Order:
  ``AnnyModel.pose_joint_names`` (Anny's bone labels without ``root``).
- ``shape`` (B,6): phenotypes gender, age, muscle, weight, height, proportions, each in [0,1].
- ``transl`` (B,3): world translation of the root bone.

Landmarks (``joint_names``) are COCO-17 + 6 foot points from ``anny.KeypointsRegressor.coco``
(moved by default to where MediaPipe puts them: ``landmark_offsets``), the neck and mid-hip
(means of those), and the hand knuckles MediaPipe uses (finger bone heads).
Which landmark each keypoint of a convention maps to, with its weight:
``bodyfit.body_models.keypoint_tables`` (``ANNY_KEYPOINTS``).

Joints-only evaluation: the regressed keypoints are linear in skinned vertices, and skinned
vertices are linear in the bone transforms, so each keypoint equals
``sum_j T_j @ a_kj(phenotypes)`` with ``a_kj`` linear in Anny's blendshape coefficients. We
precompute those anchors once; ``forward(params, vertices=False)`` then costs one forward
kinematics pass and never skins the 13718 vertices, with results equal to the full mesh's
regressor up to float round-off.
"""
from __future__ import annotations

import copy
import logging

import roma
import torch

from bodyfit.body_models.base import BodyModel, BodyOutput, BodyParams
from bodyfit.body_models.kinematics import (KinematicTree, _chain_backward_levels, _chain_levels,
                                            _polar_backward_entries, _rodrigues, _rodrigues_backward,
                                            _special_procrustes_entries, axis_angle_to_matrix)
from bodyfit.body_models.keypoint_tables import (ANNY_KEYPOINT_OVERRIDES, ANNY_KEYPOINTS,
                                                 ANNY_LANDMARK_OFFSETS, keypoint_table_map,
                                                 shifted_landmark_weights)

# Bones fitted by default: the major joints. Fingers, toes, eyes, clavicles, pelvis bones and the
# twist bones (``*02``) stay at rest.
ANNY_FREE_BONES = [
    "upperleg01.L", "upperleg01.R", "lowerleg01.L", "lowerleg01.R", "foot.L", "foot.R",
    "spine05", "spine03", "spine01", "neck01", "head",
    "upperarm01.L", "upperarm01.R", "lowerarm01.L", "lowerarm01.R", "wrist.L", "wrist.R",
]

# Landmarks taken from bone heads (name -> bone label).
_BONE_LANDMARKS = {
    "left_pinky_knuckle": "finger5-1.L", "right_pinky_knuckle": "finger5-1.R",
    "left_index_knuckle": "finger2-1.L", "right_index_knuckle": "finger2-1.R",
    "left_thumb_knuckle": "finger1-2.L", "right_thumb_knuckle": "finger1-2.R",
}

TOPOLOGIES = ["default", "notoes_collapse3pc", "notoes_collapse5pc", "notoes_collapse10pc"]


def _build_anny(topology: str, cache_dir: str | None):
    try:
        import anny
        import anny.paths
    except ImportError as e:  # pragma: no cover - anny is a hard dependency
        raise ImportError("bodyfit needs the 'anny' package: pip install anny") from e
    if cache_dir is not None:
        anny.paths.set_anny_cache_path(cache_dir)
    cache = anny.paths.get_anny_cache_path()
    if not cache.is_dir() or not any(cache.iterdir()):
        logging.getLogger("bodyfit").warning(
            "Building Anny's asset cache in %s (first run only: about a minute, ~800 MB; "
            "set ANNY_CACHE_DIR to put it elsewhere).", cache)
    if topology not in TOPOLOGIES:
        raise ValueError(f"Unknown Anny topology {topology!r}; choose one of {TOPOLOGIES}.")
    kw = {} if topology == "default" else {"topology": topology}
    return anny.Anny(skinning_method="lbs", **kw)


class AnnyModel(BodyModel):
    """Anny wrapped in bodyfit's ``BodyModel`` interface (see the module docstring for frames).

    Args:
        topology: ``"default"`` (13718 vertices) or a low-poly topology sharing the same 104 bones
            (``notoes_collapse3pc``: 369 vertices; ``5pc``; ``10pc``: 1229) for fast previews.
        dtype: float32 by default.
        cache_dir: where Anny caches its parsed assets (about 800 MB, built in about a minute the
            first time); defaults to ``$ANNY_CACHE_DIR`` or ``~/.cache/anny``.
        full: an already built default-topology ``anny.Anny`` to share (see :meth:`with_mesh`);
            built here when None.
        landmark_offsets: landmark name -> (3,) rest-frame offset (metres) of where the
            keypoint detector puts it, mirrored onto right-side twins
            (:func:`~bodyfit.body_models.keypoint_tables.shifted_landmark_weights`); None: the
            packaged ``ANNY_LANDMARK_OFFSETS`` (MediaPipe's), ``{}``: Anny's COCO regressor as is.

    Attributes:
        vertex_regressor: (R, 13718) weights giving the R regressed landmarks (the first R of
            ``joint_names``) from the default topology's vertices.
        mesh: the Anny module vertices come from (the default one or a low-poly topology).

    Raises:
        ValueError: unknown topology.
    """

    name = "anny"
    shape_name = "phenotypes"

    def __init__(self, topology: str = "default", dtype: torch.dtype = torch.float32,
                 cache_dir: str | None = None, full=None,
                 landmark_offsets: dict[str, tuple[float, float, float]] | None = None):
        super().__init__()
        import anny

        full = full if full is not None else _build_anny("default", cache_dir).to(dtype)
        self.anny = full
        # The mesh the vertices come from; joints always come from the default topology.
        self.mesh = full if topology == "default" else _build_anny(topology, cache_dir).to(dtype)
        self.topology = topology
        self.register_buffer("_probe", torch.zeros(0, dtype=dtype))
        self.register_buffer("faces", self.mesh.get_triangular_faces().long(), persistent=False)
        self.bone_labels = list(self.anny.bone_labels)
        self.pose_joint_names = self.bone_labels[1:]
        self.free_pose_joints = [self.pose_joint_names.index(b) for b in ANNY_FREE_BONES]
        self.shape_dim = len(self.anny.phenotype_labels)
        self.phenotype_labels = list(self.anny.phenotype_labels)
        # Anny rest frame (Z up, -Y forward) -> OpenCV camera (y down, z forward).
        self.up_to_camera = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=dtype)

        # Regressed landmarks on the default topology: COCO + feet, then neck and mid-hip.
        coco = anny.KeypointsRegressor.coco(full)
        lab = list(coco.labels)
        self.landmark_offsets = dict(ANNY_LANDMARK_OFFSETS if landmark_offsets is None else landmark_offsets)
        W = shifted_landmark_weights(coco.regression_weights.to(dtype), full.template_vertices.to(dtype), lab,
                                     self.landmark_offsets)
        neck = 0.5 * (W[lab.index("left_shoulder")] + W[lab.index("right_shoulder")])
        mid_hip = 0.5 * (W[lab.index("left_hip")] + W[lab.index("right_hip")])
        W = torch.cat([W, neck[None], mid_hip[None]])
        self.regressed_names = lab + ["neck", "mid_hip"]
        self.bone_landmark_index = [self.bone_labels.index(b) for b in _BONE_LANDMARKS.values()]
        self.joint_names = self.regressed_names + list(_BONE_LANDMARKS)
        A0, AD = _keypoint_anchors(full, W)
        # Keep only the (keypoint, bone) pairs that carry weight: about 10% of them.
        pairs = torch.nonzero(A0[..., 3] != 0)
        self.register_buffer("_pair_k", pairs[:, 0], persistent=False)
        self.register_buffer("_pair_j", pairs[:, 1], persistent=False)
        self.register_buffer("_anchor_A0", A0[pairs[:, 0], pairs[:, 1]], persistent=False)
        self.register_buffer("_anchor_AD", AD[:, pairs[:, 0], pairs[:, 1]], persistent=False)
        self.register_buffer("vertex_regressor", W, persistent=False)
        # A copy of the model without vertices: rest bone poses and forward kinematics only.
        self._skeleton = _strip_vertices(self.anny)
        self._init_joints_path()

    def _init_joints_path(self) -> None:
        """Tables of the joints-only path (``forward(vertices=False)``): the bones the landmarks
        hang from and their ancestors (78 of Anny's 104), with their rest-orientation and head
        blend shapes, so that nothing is computed for the other bones (fingers, face)."""
        a = self._skeleton
        parents = [int(p) for p in a.bone_parents]
        needed = set(self._pair_j.tolist()) | set(self.bone_landmark_index)
        for j in list(needed):
            while j > 0:
                j = parents[j]
                needed.add(j)
        sub = sorted(needed | {0})
        at = {j: i for i, j in enumerate(sub)}
        self._tree = KinematicTree([-1] + [at[parents[j]] for j in sub[1:]])
        parent = torch.tensor([0] + [at[parents[j]] for j in sub[1:]])
        U = a.reference_bone_orientations[sub].to(self.dtype)
        dt = self.dtype
        self.register_buffer("_sub", torch.tensor(sub), persistent=False)
        position = self._tree._unorder  # level-order position of each bone
        self.register_buffer("_parent_levels", position[parent[self._tree._order]], persistent=False)
        self.register_buffer("_root_child_levels", ((parent == 0) & (torch.arange(len(sub)) > 0))[self._tree._order],
                             persistent=False)
        self.register_buffer("_U", U, persistent=False)
        order = self._tree._order  # bone positions (in ``sub``) in level order
        self.register_buffer("_Up_levels", U[parent][order].contiguous(), persistent=False)
        self.register_buffer("_Q_levels", (U[parent].transpose(-1, -2) @ U)[order], persistent=False)  # U_p^T U_c
        self.register_buffer("_heads0", a.template_bone_heads[sub].to(dt), persistent=False)
        self.register_buffer("_headsD", a.bone_heads_blendshapes[:, sub].to(dt), persistent=False)
        self.register_buffer("_orient0", a.bone_template_orientation_matrices[sub].to(dt), persistent=False)
        self.register_buffer("_orientD", a.bone_orientation_blendshapes[:, sub].to(dt), persistent=False)
        self.register_buffer("_sub_pair_j", torch.tensor([at[int(j)] for j in self._pair_j]), persistent=False)
        # Where each pair's anchor (4,) lies in the dense anchors (R, 4n) of the joints-only path,
        # bones in level order.
        n, level = len(sub), self._tree._unorder
        dense = (self._pair_k[:, None] * 4 * n + 4 * level[self._sub_pair_j][:, None] + torch.arange(4)).flatten()
        self.register_buffer("_dense_anchor_index", dense, persistent=False)
        # The rest heads (n,3), orientation blends (n,3,3), bones in level order, and the pairs'
        # anchors (P,4) side by side: one blend of the phenotype coefficients (one addmm).
        self.register_buffer("_rest0", torch.cat([self._heads0[order].flatten(), self._orient0[order].flatten(),
                                                  self._anchor_A0.flatten()]), persistent=False)
        self.register_buffer("_restD", torch.cat([self._headsD[:, order].flatten(1),
                                                  self._orientD[:, order].flatten(1),
                                                  self._anchor_AD.flatten(1)], 1), persistent=False)
        # Each landmark's homogeneous weight: the sum of its anchors' last entries (bone heads: 1).
        weight = torch.zeros(len(self.regressed_names), dtype=dt).index_add_(0, self._pair_k, self._anchor_A0[:, 3])
        self.register_buffer("_landmark_weight", torch.cat([weight, torch.ones(len(self.bone_landmark_index), dtype=dt)]),
                             persistent=False)
        self.register_buffer("_landmark_levels", self._tree._unorder[[at[j] for j in self.bone_landmark_index]],
                             persistent=False)
        if a.rest_orientation_refiner is not None or a.root_identity_orientation or \
                a.pose_parameterization != "local-ref":
            raise RuntimeError("bodyfit's joints-only Anny path expects the 'local-ref' pose "
                               "parameterization without rest-orientation refiner or identity root; "
                               "check the installed anny version against pyproject.toml.")

    def with_mesh(self, topology: str) -> "AnnyModel":
        """The same body on another mesh: an AnnyModel sharing this one's default Anny (so the
        same joints and skeleton, no second copy in memory) whose vertices and faces come from
        ``topology``. Built once per topology, dtype and device, then cached on this model.

        Raises:
            ValueError: unknown topology.
        """
        if topology == self.topology:
            return self
        cache = self.__dict__.setdefault("_mesh_siblings", {})
        key = (topology, self.dtype, str(self.device))
        if key not in cache:
            cache[key] = AnnyModel(topology, self.dtype, full=self.anny,
                                   landmark_offsets=self.landmark_offsets).to(self.device)
        return cache[key]

    # -- keypoint map ---------------------------------------------------------------------
    def keypoint_map(self, convention: str) -> tuple[torch.Tensor, torch.Tensor]:
        from bodyfit.body_models.conventions import keypoint_names

        return keypoint_table_map(self, keypoint_names(convention), ANNY_KEYPOINTS,
                                  ANNY_KEYPOINT_OVERRIDES.get(convention, {}))

    # -- forward ----------------------------------------------------------------------------
    def pose_matrices(self, params: BodyParams) -> torch.Tensor:
        """(B,104,4,4) Anny ``local-ref`` pose parameters from axis-angle BodyParams."""
        B = params.global_orient.shape[0]
        rot = roma.rotvec_to_rotmat(torch.cat([params.global_orient[:, None], params.body_pose], 1))
        P = torch.zeros(B, rot.shape[1], 4, 4, dtype=rot.dtype, device=rot.device)
        P[:, :, :3, :3] = rot
        P[:, 0, :3, 3] = params.transl
        P[:, :, 3, 3] = 1.0
        return P

    def _reused(self, key: str, phen: torch.Tensor, compute, *more: torch.Tensor):
        """``compute(phen, *more)``, kept under ``key`` and reused while the phenotypes (B,6)
        (and ``more``) stay fixed (a stage that does not fit them: no gradient, the same values).
        The rest skeleton costs about a third of a joints-only step."""
        cache = self.__dict__.setdefault("_rest_cache", {})
        last = cache.get(key)
        values = (phen, *more)
        fixed = not any(v.requires_grad for v in values)
        if fixed and last is not None:
            copies, inputs, versions, out = last
            # the very tensors of the last call, unchanged since: no values compared (torch.equal
            # reads back to the host, a device sync on CUDA, at every step of such a stage)
            if all(a is v and n == v._version for a, v, n in zip(inputs, values, versions)) or all(
                    a.shape == v.shape and a.device == v.device and a.dtype == v.dtype and torch.equal(a, v)
                    for a, v in zip(copies, values)):
                cache[key] = (copies, values, tuple(v._version for v in values), out)
                return out
        out = compute(*values)
        cache[key] = (tuple(v.detach().clone() for v in values), values, tuple(v._version for v in values),
                      out) if fixed else None
        return out

    def _coefficients(self, phen: torch.Tensor) -> torch.Tensor:
        """(B, 136) Anny's phenotype blend-shape coefficients of phenotypes (B, 6)
        (:class:`PhenotypeCoefficients`: Anny's values, a hand-written backward)."""
        return _phenotype_table(self, phen)(phen)

    def _rest(self, phen: torch.Tensor):
        """(blendshape coefficients, rest skeleton, keypoint anchors) of phenotypes (B,6)."""
        def compute(phen):
            coeffs = self._coefficients(phen)
            anchors = self._anchor_A0 + torch.einsum("bn,npd->bpd", coeffs, self._anchor_AD)
            return coeffs, self._skeleton.get_rest_model(coeffs), anchors
        return self._reused("full", phen, compute)

    def _rest_joints(self, phen: torch.Tensor):
        """What the joints-only path needs of phenotypes (B,6), bones in level order: the bones'
        offsets from their parents in their parents' rest frames (n,B,3), the inverses of their
        rest frames ``[R^T | -R^T h]`` (3,4,n,B: entries first), and the keypoint anchors (B,R,4n) (regressed
        landmark r's anchor on bone j at columns 4j..4j+3, zeros where it has none); computed as
        Anny's cached rest model computes the rest heads h and orientations R (the orientation:
        the special Procrustes of a blend of cross-covariances, roma's, by
        :func:`~bodyfit.body_models.kinematics.special_procrustes`). A bone's offset is
        ``R_p^T (h_c - h_p)`` (``U_0^T (h_c - h_0)`` below the root; the root's own, the
        translation's, is left to :func:`_anny_joints`). Phenotypes without gradient (a stage
        that keeps them) get the anchors in their bones' frames instead, and no frames. One
        autograd node with a hand-written backward (:class:`_RestJoints`)."""
        def compute(phen):
            if phen.requires_grad:
                return _RestJoints.apply(phen, self)
            offsets, frames, dense = _rest_joints(self, phen)
            # kept for a stage: the anchors in their bones' frames, once
            B, n = len(dense), len(self._sub)
            bones = dense.view(B, -1, n, 4)
            frames = frames.permute(3, 2, 0, 1)[:, None]  # (B,1,n,3,4)
            local = (frames @ bones[..., None])[..., 0]  # (B,R,n,3): R^T (a - a4 h)
            return offsets, None, torch.cat([local, bones[..., 3:]], -1).view(B, -1, 4 * n)
        return self._reused("joints", phen, compute)

    def _joints(self, params: BodyParams) -> torch.Tensor:
        """(B,J,3) landmarks by forward kinematics of the needed bones only. Anny's 'local-ref'
        chain (anny.utils.kinematics.forward_kinematic), written for them: with U the reference
        orientations, R and h the rest orientations and heads, D the pose rotations, each bone's
        local transform is ``[U_p^T D_c U_c | R_p^T (h_c - h_p)]`` (``U_0^T (h_c - h_0)`` below
        the root, whose own is ``[U_0^T D_0 U_0 | U_0^T transl]``), and its skinning transform
        ``T_c = W_c [R_c | h_c]^-1``; a landmark is ``sum_j T_j a_kj``. One autograd node with a
        hand-written backward (:class:`_AnnyJoints`) after the rest quantities
        (:meth:`_rest_joints`)."""
        if (torch.is_grad_enabled() and not (params.body_pose.requires_grad or params.shape.requires_grad)
                and (params.global_orient.requires_grad or params.transl.requires_grad)):
            return self._root_moved(params)
        offsets, frames, anchors = self._rest_joints(params.shape)
        rotvec = torch.cat([params.global_orient[:, None], params.body_pose], 1).index_select(1, self._sub)
        return _AnnyJoints.apply(rotvec, params.transl, offsets, frames, anchors, self)

    def _root_moved(self, params: BodyParams) -> torch.Tensor:
        """:meth:`_joints` where only the root moves (SMPLify's camera stage: body pose and
        phenotypes fixed, without gradient): the landmarks X with the root at rest (kept while the
        pose and phenotypes stay the same) moved by the root's transform
        ``[U_0^T D_0 U_0 | U_0^T transl]``, ``R_0 X + w t_0`` (w: each landmark's homogeneous
        weight, the sum of its anchors' last entries). Equal to :meth:`_joints` up to round-off."""
        def at_rest(pose, phen):
            g, t = params.global_orient, params.transl
            return self._joints(BodyParams(g.new_zeros(g.shape), pose, phen, t.new_zeros(t.shape)))

        rest = self._reused("root at rest", params.shape, lambda phen, pose: at_rest(pose, phen), params.body_pose)
        U = self._U[0]
        R = U.T @ axis_angle_to_matrix(params.global_orient) @ U  # (B,3,3)
        return torch.baddbmm((params.transl @ U)[:, None] * self._landmark_weight[:, None], rest, R.transpose(1, 2))

    def forward(self, params: BodyParams, vertices: bool = True) -> BodyOutput:
        """Pose and shape the body.

        Args:
            params: BodyParams with body_pose (B,103,3) and phenotypes (B,6).
            vertices: False to compute landmarks only (much faster; ``vertices`` is then None).

        Returns:
            BodyOutput with joints (B,J,3) and vertices (B,V,3) in metres, Anny world frame.

        Raises:
            ValueError: a parameter has the wrong shape.
        """
        self.check_params(params)
        if not vertices:
            return BodyOutput(joints=self._joints(params), vertices=None, faces=self.faces)
        P = self.pose_matrices(params)
        phen = params.shape
        coeffs, skel, anchors = self._rest(phen)
        transforms, bone_poses = self._skeleton.get_bone_transforms(P, skel["rest_bone_poses"])
        parts = torch.einsum("bprc,bpc->bpr", transforms[:, self._pair_j, :3, :], anchors)
        regressed = parts.new_zeros(parts.shape[0], len(self.regressed_names), 3)
        regressed = regressed.index_add(1, self._pair_k, parts)
        joints = torch.cat([regressed, bone_poses[:, self.bone_landmark_index, :3, 3]], dim=1)
        verts = None
        if vertices and self.mesh is self.anny:
            verts = self.anny.get_skinned_vertices(self.anny.get_rest_vertices(coeffs), transforms)
        elif vertices:
            verts = self.mesh(P, phen)["vertices"]
        return BodyOutput(joints=joints, vertices=verts, faces=self.faces)


def _phenotype_table(m: AnnyModel, phen: torch.Tensor) -> "PhenotypeCoefficients":
    """``m``'s :class:`PhenotypeCoefficients`, built once (on the CPU) and kept on the device
    and in the dtype of ``phen``."""
    table = m.__dict__.get("_phenotype_table")
    if table is None:
        table = m.__dict__["_phenotype_table"] = PhenotypeCoefficients(m.anny)
    if table.projection.device != phen.device or table.projection.dtype != phen.dtype:
        table.to(phen.device, phen.dtype)
    return table


def _rest_joints(m: AnnyModel, phen: torch.Tensor, saved: list | None = None):
    """Forward of :class:`_RestJoints` (see :meth:`AnnyModel._rest_joints`), bones in level
    order: phenotypes (B,6) -> (offsets (n,B,3), frames (3,4,n,B), dense anchors (B,R,4n)); with
    ``saved`` a list, what :func:`_rest_joints_backward` needs is appended to it. The bones'
    vectors and matrices are held by their entries, then bones, then samples ((3,n,B),
    (9,n,B), row-major): elementwise operations on contiguous rows."""
    table = _phenotype_table(m, phen)
    products, derivatives = table._products(phen, saved is not None)
    B, n, P = len(phen), len(m._sub), len(m._pair_k)
    rest = torch.addmm(m._rest0[None], products @ table.projection, m._restD)
    heads, M, anchors = rest.split_with_sizes([3 * n, 9 * n, 4 * P], 1)
    h = heads.reshape(B, n, 3).permute(2, 1, 0).contiguous()  # (3,n,B)
    M = M.reshape(B, n, 9).permute(2, 1, 0).contiguous()  # (9,n,B)
    R = _special_procrustes_entries(M.view(9, -1)).view(9, n, B)
    p = m._parent_levels
    rel = h - h.index_select(1, p)
    Rp = R.index_select(1, p)
    # offsets R_p^T (h - h_p) ((R^T x)_i = sum_k R_ki x_k), U_0^T (h - h_0) below the root
    offsets = torch.where(m._root_child_levels[:, None], (m._U[0].T @ rel.view(3, -1)).view(3, n, B),
                          (Rp.view(3, 3, n, B) * rel.view(3, 1, n, B)).sum(0))
    f = (R.view(3, 3, n, B) * h.view(3, 1, n, B)).sum(0).neg_()  # -R^T h
    frames = torch.cat([R.view(3, 3, n, B).transpose(0, 1), f.view(3, 1, n, B)], 1)  # (3,4,n,B): [R^T | -R^T h]
    dense = anchors.new_zeros(B, len(m.regressed_names) * 4 * n)
    dense.index_copy_(1, m._dense_anchor_index, anchors)  # in place: no copy of the zeros
    if saved is not None:
        saved += [derivatives, h, M, R, rel, Rp]
    return offsets.permute(1, 2, 0).contiguous(), frames, dense.view(B, -1, 4 * n)


def _rest_joints_backward(m: AnnyModel, saved, g_offsets, g_frames, g_dense) -> torch.Tensor:
    """dL/dphenotypes (B,6) of :func:`_rest_joints` from the gradients of its three outputs
    (None: zero), in reverse: ``frames = [R^T | -R^T h]``; ``offsets = R_p^T (h - h_p)``
    (``U_0^T (h - h_0)`` below the root); the rotations' special Procrustes; the blend; the
    phenotype coefficients. Entries first, as the forward."""
    derivatives, h, M, R, rel, Rp = saved
    table, p = m.__dict__["_phenotype_table"], m._parent_levels
    _, n, B = h.shape
    g_h, g_R = h.new_zeros(3, n, B), R.new_zeros(9, n, B)
    if g_frames is not None:
        g_f = g_frames[:, 3]  # (3,n,B)
        g_R = (g_frames[:, :3].transpose(0, 1) - h.view(3, 1, n, B) * g_f.view(1, 3, n, B)).reshape(9, n, B)
        g_h = (R.view(3, 3, n, B) * g_f.view(1, 3, n, B)).sum(1).neg_()
    if g_offsets is not None:
        g_offsets = g_offsets.permute(2, 0, 1).contiguous()  # (3,n,B)
        root_child = m._root_child_levels[:, None]
        g_rel = torch.where(root_child, (m._U[0] @ g_offsets.view(3, -1)).view(3, n, B),
                            (Rp.view(3, 3, n, B) * g_offsets.view(1, 3, n, B)).sum(1))
        g_Rp = torch.where(root_child, 0.0, (rel.view(3, 1, n, B) * g_offsets.view(1, 3, n, B)).view(9, n, B))
        g_R = g_R.index_add(1, p, g_Rp)
        g_h = (g_h + g_rel).index_add_(1, p, g_rel, alpha=-1.0)
    g_M = _polar_backward_entries(M.view(9, -1), R.view(9, -1), g_R.reshape(9, -1)).view(9, n, B)
    g_anchors = (g_dense.reshape(B, -1).index_select(1, m._dense_anchor_index) if g_dense is not None
                 else h.new_zeros(B, 4 * len(m._pair_k)))
    g_rest = torch.cat([g_h.permute(2, 1, 0).reshape(B, -1), g_M.permute(2, 1, 0).reshape(B, -1), g_anchors], 1)
    return (derivatives * ((g_rest @ m._restD.T) @ table.projection.T).T[:, None]).sum(0).T


class _RestJoints(torch.autograd.Function):
    """:meth:`AnnyModel._rest_joints` of phenotypes with gradients: :func:`_rest_joints` and
    :func:`_rest_joints_backward`."""

    @staticmethod
    def forward(ctx, phen, model):
        saved = []
        out = _rest_joints(model, phen, saved)
        ctx.model = model
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_offsets, g_frames, g_dense):
        return _rest_joints_backward(ctx.model, ctx.saved_tensors, g_offsets, g_frames, g_dense), None


class PhenotypeCoefficients:
    """Anny's phenotype blend-shape coefficients (``Anny._get_phenotype_blendshape_coefficients``
    without local changes or facial actions) and their Jacobian, in a few batched operations.

    Anny's coefficient of phenotype blend shape r is a product of interpolation weights, one per
    phenotype it varies with (gender, age, ...), then projected onto the compact basis. Each
    phenotype's weights interpolate linearly between its anchors, so a coefficient is linear in
    each phenotype's weights, and its derivative by phenotype f is the same product with f's
    weights replaced by their derivatives. The phenotypes the model does not expose (race, cup
    size, firmness) are constants: their factors are folded into the projection, and the blend
    shapes they zero are dropped. The derivatives by each phenotype are each row's product of
    the other phenotypes' factors (prefix and suffix products) times its factor's derivative.

    Args:
        model: an ``anny.Anny`` (phenotypes not extrapolated).

    Raises:
        RuntimeError: an Anny this was not written for (extrapolated or race phenotypes).
    """

    def __init__(self, model):
        from anny.models.phenotype import PHENOTYPE_VARIATIONS
        from anny.utils.interpolation import linear_interpolation_coefficients

        labels = list(model.phenotype_labels)
        if model.extrapolate_phenotypes or not set(labels) <= set(PHENOTYPE_VARIATIONS) - {"race"}:
            raise RuntimeError("bodyfit's Anny phenotype coefficients expect interpolated phenotypes "
                               "(no race labels, no extrapolation); check the installed anny version.")
        # built on the CPU from CPU copies of the model's tables, whatever its device; moved by to()
        dtype = model.stacked_phenotype_blend_shapes_mask.dtype
        mask = model.stacked_phenotype_blend_shapes_mask.cpu().bool()  # (R, 26)
        anchors = {f: model.anchors[f].cpu().to(dtype) for f in PHENOTYPE_VARIATIONS if f != "race"}
        constant = []  # every variation's weight where its phenotype is not exposed
        start, columns = {}, 0
        for feature, variations in PHENOTYPE_VARIATIONS.items():
            start[feature] = columns
            columns += len(variations)
            if feature == "race":
                constant.append(torch.full((3,), 1 / 3, dtype=dtype))
            elif feature in labels:
                constant.append(torch.zeros(len(variations), dtype=dtype))
            else:
                constant.append(linear_interpolation_coefficients(torch.full((1,), 0.5, dtype=dtype),
                                                                  anchors[feature])[0])
        constant = torch.cat(constant)
        exposed = torch.zeros(columns, dtype=torch.bool)
        for f in labels:
            exposed[start[f]:start[f] + len(PHENOTYPE_VARIATIONS[f])] = True
        row_constant = torch.where(mask & ~exposed, constant, torch.ones_like(constant)).prod(1)  # (R,)
        keep = row_constant != 0
        projection = model.phenotype_blendshape_projection
        projection = torch.eye(len(mask), dtype=dtype) if projection is None else projection.cpu().to(dtype)
        self.projection = (row_constant[:, None] * projection)[keep]  # (R', C)
        # The exposed phenotypes' weights side by side, each phenotype's block ending with a
        # constant 1 (for the rows that do not vary with it). Each kept row's factor of each
        # phenotype is one column of them.
        self.count = torch.tensor([len(anchors[f]) for f in labels])  # (F,) anchors
        self.first = torch.cumsum(self.count + 1, 0) - self.count - 1  # (F,) each block's first column
        gather = []
        for r in torch.nonzero(keep).flatten().tolist():
            gather.append([int(self.first[i]) + next((k for k in range(self.count[i]) if mask[r, start[f] + k]), int(self.count[i]))
                           for i, f in enumerate(labels)])
        self.gather = torch.tensor(gather)  # (R', F)
        self.anchors = torch.stack([torch.nn.functional.pad(anchors[f], (0, 5 - len(anchors[f])),
                                                            value=float("inf")) for f in labels])  # (F, 5)
        self.ones = self.first + self.count  # (F,) the constant columns
        self.lowest = self.anchors[:, 0]
        self.highest = self.anchors[torch.arange(len(labels)), self.count - 1]
        self.width = int((self.count + 1).sum())

    def to(self, device, dtype) -> "PhenotypeCoefficients":
        """The tables on ``device`` in ``dtype`` (floating ones), in place; returns self."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device, dtype) if value.is_floating_point() else value.to(device))
        return self

    def __call__(self, phenotypes: torch.Tensor) -> torch.Tensor:
        """(B, C) coefficients of phenotypes (B, F), differentiable (hand-written backward)."""
        return _PhenotypeCoefficientsFn.apply(phenotypes, self)

    def with_jacobian(self, phenotypes: torch.Tensor, jacobian: bool = True):
        """(coefficients (B, C), their Jacobian (B, F, C) or None) of phenotypes (B, F), without
        autograd."""
        products, derivatives = self._products(phenotypes, jacobian)
        return products @ self.projection, (derivatives.permute(2, 1, 0) @ self.projection if jacobian else None)

    def _products(self, phenotypes: torch.Tensor, jacobian: bool):
        """(the kept blend shapes' products (B, R'), their derivatives by each phenotype
        (R', F, B) or None): the coefficients and their Jacobian before the projection. Like
        Anny's, a phenotype is clamped to its anchors' range (no gradient beyond, a one-sided
        one on the boundary), and on an anchor it takes the segment below it."""
        B, F = phenotypes.shape
        anchors, count, lowest, highest = self.anchors, self.count, self.lowest, self.highest
        value = torch.minimum(torch.maximum(phenotypes, lowest), highest)
        upper = torch.searchsorted(anchors.expand(B, -1, -1).reshape(B * F, -1), value.reshape(B * F, 1)).view(B, F)
        upper = torch.minimum(upper.clamp(min=1), count - 1)
        a = anchors.expand(B, -1, -1)
        lo = torch.gather(a, 2, (upper - 1)[..., None])[..., 0]
        step = torch.gather(a, 2, upper[..., None])[..., 0] - lo
        alpha = (value - lo) / step
        E1 = self.width
        column = (self.first + upper - 1).repeat(1, 2)  # (B, 2F) the lower, then the upper anchors' columns
        column[:, F:] += 1
        weights = phenotypes.new_zeros(B, E1)
        weights[:, self.ones] = 1
        weights.scatter_(1, column, torch.cat([1 - alpha, alpha], 1))
        if not jacobian:  # the same products, in the same order
            values = weights.T.contiguous().index_select(0, self.gather.flatten()).view(*self.gather.shape, B)
            return values.cumprod(1)[:, -1].T, None
        inside = (phenotypes >= lowest) & (phenotypes <= highest)
        slope = torch.where(inside, 1 / step, 0.0)
        slopes = phenotypes.new_zeros(B, E1).scatter_(1, column, torch.cat([-slope, slope], 1))
        # factors (2, R', F, B): each row's weight of each phenotype, and its derivative
        index = torch.cat([self.gather.flatten(), self.gather.flatten() + E1])
        values, derivatives = torch.cat([weights.T, slopes.T]).index_select(0, index).view(2, *self.gather.shape, B)
        before = values.cumprod(1)  # products of the factors up to each phenotype, and after it
        after = values.flip(1).cumprod(1).flip(1)
        one = values.new_ones(len(values), 1, B)
        derivatives = derivatives * torch.cat([one, before[:, :-1]], 1) * torch.cat([after[:, 1:], one], 1)
        return before[:, -1].T, derivatives  # (B, R'), (R', F, B)


class _PhenotypeCoefficientsFn(torch.autograd.Function):
    """:meth:`PhenotypeCoefficients.__call__`: the coefficients, and the vector-Jacobian product
    ``grad @ J^T`` from the derivatives computed with them (projected in the backward: one
    product instead of one per phenotype)."""

    @staticmethod
    def forward(ctx, phenotypes, table):
        products, derivatives = table._products(phenotypes, ctx.needs_input_grad[0])
        ctx.table = table
        ctx.save_for_backward(derivatives)
        return products @ table.projection

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        derivatives, = ctx.saved_tensors
        return (derivatives * (grad @ ctx.table.projection.T).T[:, None]).sum(0).T, None


def _anny_joints(m: AnnyModel, rotvec, transl, offsets, frames, anchors):
    """Forward of :class:`_AnnyJoints` (see :meth:`AnnyModel._joints`): rotvec (B,n,3) of the
    bones ``m._sub``, transl (B,3), and offsets (n,B,3), frames (3,4,n,B) (entries first) and
    anchors (B,R,4n) from :meth:`AnnyModel._rest_joints` (frames None: the anchors are in the
    bones' frames). Bones first and in level order, so that the products by
    per-bone constants are one ``bmm`` over the bones: ``U_p^T D(v) U_c = D(U_p^T v) U_p^T U_c``
    (a rotation conjugated by U_p). The skinning transforms ``T = W [R | h]^-1`` side by side
    (B,3,4n) times the anchors are the regressed landmarks.

    Returns:
        (landmarks (B,J,3), what :func:`_anny_joints_backward` needs).
    """
    tree = m._tree
    order = tree._on(rotvec.device)[0]
    n, B = offsets.shape[:2]
    w = torch.bmm(rotvec.transpose(0, 1)[order], m._Up_levels)  # (n,B,3): U_p^T v
    D, rodrigues_saved = _rodrigues(w)
    local = offsets.new_empty(n, B, 4, 4)
    local[..., :3, :3] = torch.bmm(D.view(n, -1, 3), m._Q_levels).view(n, B, 3, 3)
    local[1:, :, :3, 3] = offsets[1:]
    local[0, :, :3, 3] = transl @ m._U[0]
    local[..., 3, :3] = 0.0
    local[..., 3, 3] = 1.0
    parents, world = _chain_levels(tree, local)
    W = world
    if frames is None:
        T = world.permute(1, 2, 0, 3).reshape(B, 3, 4 * n)
    else:  # T = W [R^T | -R^T h] on the entries (3,4,n,B): T_ic = sum_k W_ik F_kc (+ W_i3 for c = 3)
        W = world.permute(2, 3, 0, 1).contiguous()
        T = (W[:, :3, None] * frames[None]).sum(1)
        T[:, 3] += W[:, 3]
        T = T.permute(3, 0, 2, 1).reshape(B, 3, 4 * n)
    out = torch.cat([anchors @ T.transpose(1, 2), world[m._landmark_levels, ..., 3].transpose(0, 1)], dim=1)
    return out, (rodrigues_saved, local, parents, W, T)


def _anny_joints_backward(m: AnnyModel, saved, frames, anchors, G, needs):
    """dL/d (rotvec, transl, offsets, frames, anchors) of :func:`_anny_joints` from
    ``G = dL/dlandmarks`` (B,J,3), in reverse: the landmarks; ``T = W [R | h]^-1``; the chain
    (:func:`~bodyfit.body_models.kinematics._chain_backward_levels`); ``D(U_p^T v) Q``.
    Gradients ``needs`` (five bools) does not ask for are None."""
    rodrigues_saved, local, parents, W, T = saved
    tree, K = m._tree, len(m.regressed_names)
    n, B = local.shape[:2]
    Gr = G[:, :K]  # (B,R,3)
    g_anchors = Gr @ T if needs[4] else None  # (B,R,4n)
    g_T = (Gr.transpose(1, 2) @ anchors).view(B, 3, n, 4)
    g_frames = None
    if frames is None:
        g_world = g_T.permute(2, 0, 1, 3).contiguous()  # (n,B,3,4)
    else:  # entries first (3,4,n,B): dL/dF_kc = sum_i W_ik dT_ic, dL/dW_ik = sum_c dT_ic F_kc (+ dT_i3 for k = 3)
        g_T = g_T.permute(1, 3, 2, 0).contiguous()
        if needs[3]:
            g_frames = (W[:, :3, None] * g_T[:, None]).sum(0)
        g_world = torch.cat([(g_T[:, None] * frames[None]).sum(2), g_T[:, 3:]], 1).permute(2, 3, 0, 1).contiguous()
    g_world[m._landmark_levels, ..., 3] += G[:, K:].transpose(0, 1)
    g_local = _chain_backward_levels(tree, local, parents, g_world)  # (n,B,3,4)
    g_transl = g_local[0, :, :, 3] @ m._U[0].T
    g_offsets = None
    if needs[2]:
        g_offsets = g_local[..., 3].clone()
        g_offsets[0] = 0.0  # the root's is the translation's
    g_D = torch.bmm(g_local[..., :3].reshape(n, -1, 3), m._Q_levels.transpose(1, 2)).view(n, B, 3, 3)
    g_w = _rodrigues_backward(rodrigues_saved, g_D)
    g_rotvec = torch.bmm(g_w, m._Up_levels.transpose(1, 2))[tree._on(G.device)[1]].transpose(0, 1)
    return g_rotvec, g_transl, g_offsets, g_frames, g_anchors


class _AnnyJoints(torch.autograd.Function):
    """:meth:`AnnyModel._joints`: :func:`_anny_joints` and :func:`_anny_joints_backward`."""

    @staticmethod
    def forward(ctx, rotvec, transl, offsets, frames, anchors, model):
        out, saved = _anny_joints(model, rotvec, transl, offsets, frames, anchors)
        ctx.model, ctx.n_saved, ctx.has_frames = model, len(saved[0]), frames is not None
        ctx.save_for_backward(*saved[0], *saved[1:], frames if frames is not None else anchors, anchors)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G):
        tensors = ctx.saved_tensors
        n = ctx.n_saved
        saved = (tensors[:n], *tensors[n:-2])
        frames = tensors[-2] if ctx.has_frames else None
        grads = _anny_joints_backward(ctx.model, saved, frames, tensors[-1], G.contiguous(), ctx.needs_input_grad[:5])
        return *grads, None


def _strip_vertices(model):
    """A deep copy of an Anny model with zero vertices: it still computes rest bone poses and
    bone transforms (Anny's 'cached' bone orientations do not depend on vertices)."""
    if getattr(model, "bone_orientation", None) != "cached":
        raise RuntimeError(
            f"bodyfit expects Anny's 'cached' bone orientation, got {model.bone_orientation!r}; "
            "check the installed anny version against pyproject.toml.")
    skel = copy.deepcopy(model)
    for name in ["template_vertices", "vertex_bone_weights", "vertex_bone_indices",
                 "dense_vertex_bone_weights"]:
        if getattr(skel, name, None) is not None:
            setattr(skel, name, getattr(skel, name)[:0])
    skel.blendshapes = skel.blendshapes[:, :0]
    return skel


def _keypoint_anchors(model, W: torch.Tensor):
    """Per keypoint k and bone j, the homogeneous anchor a_kj = sum_v W_kv s_vj [r_v; 1] split
    into its constant part A0 (K,J,4) and its blendshape part AD (N,K,J,4) (last entry 0), where
    W (K,V) are regressor weights, s (V,J) skinning weights and r_v = template + blendshapes."""
    S = model.dense_vertex_bone_weights.to(W.dtype)  # (V, J)
    T = model.template_vertices.to(W.dtype)  # (V, 3)
    D = model.blendshapes.to(W.dtype)  # (N, V, 3)
    K, J, N = W.shape[0], S.shape[1], D.shape[0]
    A0 = torch.zeros(K, J, 4, dtype=W.dtype)
    AD = torch.zeros(N, K, J, 4, dtype=W.dtype)
    for j in range(J):
        v = torch.nonzero(S[:, j] > 0).squeeze(1)
        if v.numel() == 0:
            continue
        ws = W[:, v] * S[v, j][None]  # (K, |v|)
        A0[:, j, :3] = ws @ T[v]
        A0[:, j, 3] = ws.sum(1)
        AD[:, :, j, :3] = torch.einsum("kv,nvd->nkd", ws, D[:, v])
    return A0, AD
