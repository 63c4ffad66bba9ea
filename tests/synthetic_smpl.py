"""Synthetic SMPL-format model files for tests (the real ones are licensed: never commit them).

``write_synthetic_smpl`` writes a file with SMPL's keys, shapes and kinematic tree and plausible,
deterministic content: a skeleton in SMPL's rest T-pose (Y up, metres, about 1.75 m tall),
vertices scattered along its bones, skinning weights blending each vertex's two bone ends, a
joint regressor averaging the vertices nearest each joint, small random shape and pose blend
shapes. The .pkl variant stores the joint regressor as a scipy.sparse csc_matrix and ``shapedirs``
as a fake chumpy ``Ch`` object, like the official files.
"""
from __future__ import annotations

import contextlib
import pickle
import sys
import types
from pathlib import Path

import numpy as np

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]

# Approximate SMPL rest joint positions (metres, Y up, +Z forward, +X the subject's left).
SMPL_REST_JOINTS = [
    (0.0, -0.22, 0.03), (0.06, -0.31, 0.01), (-0.06, -0.31, 0.01), (0.0, -0.11, -0.01),
    (0.10, -0.69, 0.01), (-0.10, -0.69, 0.01), (0.0, 0.03, 0.0), (0.09, -1.09, -0.03),
    (-0.09, -1.09, -0.03), (0.0, 0.08, 0.02), (0.12, -1.15, 0.09), (-0.12, -1.15, 0.09),
    (0.0, 0.29, -0.01), (0.08, 0.20, 0.0), (-0.08, 0.20, 0.0), (0.0, 0.36, 0.04),
    (0.17, 0.23, -0.01), (-0.17, 0.23, -0.01), (0.43, 0.21, -0.03), (-0.43, 0.21, -0.03),
    (0.68, 0.22, -0.01), (-0.68, 0.22, -0.01), (0.76, 0.21, -0.02), (-0.76, 0.21, -0.02),
]

ROOT_PARENT = 4294967295  # how the official files store the root's parent (uint32 -1)


def _skeleton(model: str) -> tuple[list[int], np.ndarray]:
    """(parents, rest joint positions (J,3)) for smpl (24), smplh (52) or smplx (55)."""
    if model == "smpl":
        return list(SMPL_PARENTS), np.array(SMPL_REST_JOINTS)
    parents = SMPL_PARENTS[:22]
    pos = [np.array(p) for p in SMPL_REST_JOINTS[:22]]
    if model == "smplx":  # jaw, left eye, right eye under the head
        for off in [(0.0, -0.05, 0.06), (0.03, 0.04, 0.08), (-0.03, 0.04, 0.08)]:
            parents.append(15)
            pos.append(pos[15] + np.array(off))
    for wrist, sign in ((20, 1.0), (21, -1.0)):  # index, middle, pinky, ring, thumb: 3 each
        for finger, z in enumerate([0.03, 0.01, -0.03, -0.01, 0.05]):
            parent = wrist
            for seg in range(3):
                parents.append(parent)
                base = pos[wrist] + np.array([sign * 0.08, 0.0, z])
                pos.append(base + np.array([sign * 0.03 * seg, 0.0, 0.0]))
                parent = len(parents) - 1
    return parents, np.stack(pos)


def synthetic_smpl_arrays(n_verts: int = 6890, model: str = "smpl", seed: int = 0) -> dict:
    """The arrays of a synthetic ``model`` ("smpl", "smplh" or "smplx") file, as numpy."""
    rng = np.random.default_rng(seed)
    parents, joints = _skeleton(model)
    J = len(parents)
    # Vertices along the bones (parent -> child), plus a head blob up to about 0.55 m.
    child = rng.integers(1, J, n_verts)
    t = rng.random(n_verts)
    v = (1 - t)[:, None] * joints[np.array(parents)[child]] + t[:, None] * joints[child]
    head = rng.random(n_verts) < 0.08
    v[head] = joints[15] + rng.normal(0.0, 1.0, (head.sum(), 3)) * [0.07, 0.09, 0.08] + [0, 0.08, 0]
    v += rng.normal(0.0, 0.03, v.shape)
    # Skinning weights: each vertex blends the two ends of its bone.
    weights = np.zeros((n_verts, J))
    rows = np.arange(n_verts)
    weights[rows, np.array(parents)[child]] += 1 - t
    weights[rows, child] += t
    weights[head] = 0.0
    weights[head, 15] = 1.0
    # Joint regressor: each joint the mean of its 8 nearest vertices.
    regressor = np.zeros((J, n_verts))
    for j in range(J):
        near = np.argpartition(np.linalg.norm(v - joints[j], axis=1), 8)[:8]
        regressor[j, near] = 1.0 / 8
    n_faces = {"smplx": 20908}.get(model, 13776)
    start = rng.integers(0, n_verts, n_faces)
    faces = np.stack([start, (start + 1) % n_verts, (start + 2) % n_verts], 1).astype(np.uint32)
    n_shape = 20 if model == "smplx" else 10  # SMPL-X: 10 shape + 10 expression components
    out = {
        "v_template": v,
        "shapedirs": rng.normal(0.0, 0.01, (n_verts, 3, n_shape)),
        "posedirs": rng.normal(0.0, 0.001, (n_verts, 3, 9 * (J - 1))).astype(np.float32),
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": np.array([[ROOT_PARENT] + parents[1:], list(range(J))], dtype=np.int64),
        "f": faces,
        "J": regressor @ v,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    if model in ("smplh", "smplx"):
        for side in "lr":
            out[f"hands_components{side}"] = np.eye(45)
            out[f"hands_mean{side}"] = np.zeros(45)
    if model == "smplx":
        out["lmk_faces_idx"] = rng.integers(0, n_faces, 51)
        bary = rng.random((51, 3))
        out["lmk_bary_coords"] = bary / bary.sum(1, keepdims=True)
    return out


@contextlib.contextmanager
def fake_chumpy():
    """Register a throwaway ``chumpy`` / ``chumpy.ch`` module while the block runs and yield its
    ``Ch`` class, which pickles like chumpy's: by class reference plus its ``__dict__`` as
    state, the value under 'x'. The modules are removed (or restored) afterwards."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)
            self.dterms = ("x",)
            self._dirty_vars = set()

        def __getstate__(self):
            return dict(self.__dict__)

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch.Ch = Ch
    chumpy.ch = ch
    chumpy.Ch = Ch
    fake = {"chumpy": chumpy, "chumpy.ch": ch}
    saved = {name: sys.modules.get(name) for name in fake}
    sys.modules.update(fake)
    try:
        yield Ch
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def write_synthetic_smpl(path, kind: str = "pkl", n_verts: int = 6890, model: str = "smpl",
                         seed: int = 0) -> Path:
    """Write a synthetic ``model`` file at ``path`` (``kind`` "pkl" or "npz"); returns the path.

    pkl: protocol 2 like the official files, J_regressor a scipy.sparse csc_matrix, shapedirs a
    fake chumpy ``Ch`` (the fake ``chumpy`` modules are removed from ``sys.modules`` afterwards).
    npz: plain arrays plus one pickled object array (``joint2num``, as in the official SMPL-X
    files), which loaders must skip.
    """
    import scipy.sparse

    if kind not in ("pkl", "npz"):
        raise ValueError(f"kind must be 'pkl' or 'npz', got {kind!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_smpl_arrays(n_verts, model, seed)
    if kind == "npz":
        np.savez(path, **arrays, joint2num=np.array({"pelvis": 0}, dtype=object))
        return path
    data = dict(arrays)
    data["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
    with fake_chumpy() as Ch:
        data["shapedirs"] = Ch(arrays["shapedirs"])
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)
    return path
