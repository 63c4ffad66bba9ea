"""SMPL, SMPL-H and SMPL-X through the ``smplx`` package, with the user's own model files.

Sources: SMPL (Loper et al. 2015, "SMPL: A Skinned Multi-Person Linear Model"); SMPL-H / MANO
(Romero et al. 2017, "Embodied Hands"); SMPL-X (Pavlakos et al. 2019, "Expressive Body Capture").
The model files are licensed by the Max Planck Institute for Intelligent Systems: bodyfit never
ships or downloads them. Get them from https://smpl.is.tue.mpg.de (SMPL),
https://mano.is.tue.mpg.de (SMPL-H, "Extended SMPL+H model") and https://smpl-x.is.tue.mpg.de
(SMPL-X), and point ``model_path`` (or ``$BODYFIT_SMPL_DIR``) at them, laid out as smplx expects::

    <folder>/smpl/SMPL_NEUTRAL.pkl     (or <folder>/SMPL_NEUTRAL.pkl; .npz also accepted)
    <folder>/smplh/SMPLH_MALE.pkl
    <folder>/smplx/SMPLX_NEUTRAL.npz

Frames and units: the SMPL-family rest frame is Y up, +Z forward (the face looks along +Z), +X the
subject's left; metres. ``BodyParams`` for these models:

- ``global_orient`` (B,3): axis-angle of the root (pelvis). As in smplx, it rotates the body about
  the rest-pose pelvis joint ``J0(betas)``, not about the origin: a rest vertex ``x`` of the shaped
  body lands at ``R (x - J0) + J0 + transl`` when ``body_pose`` is zero.
- ``body_pose`` (B,23,3) for SMPL, (B,21,3) for SMPL-H and SMPL-X: axis-angle of each body joint
  relative to its parent (``SMPLFamilyModel.pose_joint_names``). Hands, jaw, eyes and expression
  are not parameters here: hands are kept at the model's mean hand pose, jaw and eyes at rest,
  expression at zero.
- ``shape`` (B,S): ``betas`` (S=10 by default).
- ``transl`` (B,3): metres, added to every vertex and joint.

Loading: official SMPL ``.pkl`` files hold chumpy objects, and chumpy does not import on current
Python/NumPy. ``load_model_arrays`` reads ``.pkl`` files with a restricted unpickler that maps any
chumpy class to a stand-in holding the stored array, allows the numpy / scipy.sparse classes model
files use, and refuses every other global (``pickle.UnpicklingError``), so a model file cannot run
code. ``.npz`` files are read with ``allow_pickle=False``. The arrays are then checked (keys and
shapes) and handed to smplx as plain numpy arrays.
"""
from __future__ import annotations

import builtins
import contextlib
import io
import os
import pickle
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bodyfit.body_models.anny_model import keypoint_table_map
from bodyfit.body_models.base import BodyModel, BodyOutput, BodyParams

ENV_VAR = "BODYFIT_SMPL_DIR"
GENDERS = ("neutral", "male", "female")


@dataclass(frozen=True)
class _Kind:
    label: str  # human name
    prefix: str  # file-name prefix smplx expects: SMPL_NEUTRAL.pkl
    site: str
    download: str  # what to download there
    exts: tuple[str, ...]  # preferred extension first
    n_verts: int
    n_joints: int  # skeleton joints incl. the root
    n_body: int  # body joints in BodyParams.body_pose


_KINDS = {
    "smpl": _Kind("SMPL", "SMPL", "https://smpl.is.tue.mpg.de",
                  "'SMPL for Python' (rename e.g. basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl "
                  "to SMPL_NEUTRAL.pkl)", ("pkl", "npz"), 6890, 24, 23),
    "smplh": _Kind("SMPL-H", "SMPLH", "https://mano.is.tue.mpg.de",
                   "the 'Extended SMPL+H model'", ("pkl", "npz"), 6890, 52, 21),
    "smplx": _Kind("SMPL-X", "SMPLX", "https://smpl-x.is.tue.mpg.de",
                   "'SMPL-X' (npz or pkl)", ("npz", "pkl"), 10475, 55, 21),
}

# Keypoint name (any convention) -> (candidate landmarks, weight). The first candidate the model
# has is used; none -> the keypoint is absent (weight 0).
SMPL_KEYPOINTS: dict[str, tuple[tuple[str, ...] | None, float]] = {
    **{n: ((n,), 1.0) for n in [
        # SMPL skeleton joints
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
        "right_wrist", "left_knee", "right_knee", "left_ankle", "right_ankle", "neck",
        # smplx's vertex landmarks (VertexJointSelector)
        "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_big_toe",
        "right_big_toe", "left_small_toe", "right_small_toe", "left_heel", "right_heel",
    ]},
    # COCO/MediaPipe hips sit lower and wider than SMPL's hip joints: trust them less.
    "left_hip": (("left_hip",), 0.5), "right_hip": (("right_hip",), 0.5),
    "mid_hip": (("pelvis",), 0.5),
    "left_eye_inner": (("left_eye",), 0.3), "left_eye_outer": (("left_eye",), 0.3),
    "right_eye_inner": (("right_eye",), 0.3), "right_eye_outer": (("right_eye",), 0.3),
    "mouth_left": (None, 0.0), "mouth_right": (None, 0.0),
    # MediaPipe's hand points are knuckles: the SMPL-H/SMPL-X finger joints, else SMPL's hand joint.
    "left_pinky": (("left_pinky1", "left_hand"), 0.3),
    "right_pinky": (("right_pinky1", "right_hand"), 0.3),
    "left_index": (("left_index1", "left_hand"), 0.3),
    "right_index": (("right_index1", "right_hand"), 0.3),
    "left_thumb": (("left_thumb2", "left_hand"), 0.3),
    "right_thumb": (("right_thumb2", "right_hand"), 0.3),
    "left_foot_index": (("left_big_toe",), 0.7), "right_foot_index": (("right_big_toe",), 0.7),
}
# OpenPose hips sit close to SMPL's hip joints (SMPLify fits them directly).
SMPL_KEYPOINT_OVERRIDES = {
    "openpose25": {"left_hip": (("left_hip",), 1.0), "right_hip": (("right_hip",), 1.0)},
}


# --------------------------------------------------------------------------------------------
# Finding the model file
# --------------------------------------------------------------------------------------------
def _file_name(kind: str, gender: str, ext: str) -> str:
    return f"{_KINDS[kind].prefix}_{gender.upper()}.{ext}"


def _license_hint(kind: str, expected: str) -> str:
    k = _KINDS[kind]
    return (f"{k.label} model files are licensed and do not ship with bodyfit: register and "
            f"download {k.download} yourself from {k.site}, then put the file at {expected} "
            f"(or pass model_path=<the .pkl/.npz file>, or set {ENV_VAR}=<folder> holding "
            f"{kind}/{_file_name(kind, 'neutral', k.exts[0])}).")


def candidate_paths(kind: str, folder: str | os.PathLike, gender: str = "neutral") -> list[Path]:
    """Files ``resolve_model_file`` tries in ``folder``, best first:
    ``<folder>/<kind>/<PREFIX>_<GENDER>.<ext>`` then ``<folder>/<PREFIX>_<GENDER>.<ext>``."""
    folder = Path(folder).expanduser()
    return [folder / sub / _file_name(kind, gender, ext)
            for sub in (kind, "") for ext in _KINDS[kind].exts]


def resolve_model_file(kind: str, model_path: str | os.PathLike | None,
                       gender: str = "neutral") -> Path:
    """The model file for ``kind`` (``"smpl"``, ``"smplh"``, ``"smplx"``) and ``gender``.

    Args:
        model_path: a .pkl/.npz file, or a folder (see ``candidate_paths``); None uses
            ``$BODYFIT_SMPL_DIR``.

    Raises:
        FileNotFoundError: nothing found; the message lists the paths looked at, where to
            download the licensed files and the exact path to put them at.
        ValueError: unknown kind or gender, or a file that is neither .pkl nor .npz.
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown SMPL-family model {kind!r}; choose one of {sorted(_KINDS)}.")
    if gender not in GENDERS:
        raise ValueError(f"Unknown gender {gender!r}; choose one of {list(GENDERS)}.")
    label = _KINDS[kind].label
    if model_path is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            expected = f"${ENV_VAR}/{kind}/{_file_name(kind, gender, _KINDS[kind].exts[0])}"
            raise FileNotFoundError(
                f"No {label} model file: model_path is None and ${ENV_VAR} is not set. "
                + _license_hint(kind, expected))
        model_path = env
    path = Path(model_path).expanduser()
    if path.is_file():
        if path.suffix.lower() not in (".pkl", ".npz"):
            raise ValueError(f"{label} model file {path} must be a .pkl or .npz file. "
                             + _license_hint(kind, str(path)))
        return path
    if path.suffix.lower() in (".pkl", ".npz"):  # a file that does not exist
        raise FileNotFoundError(f"{label} model file not found: looked at {path}. "
                                + _license_hint(kind, str(path)))
    candidates = candidate_paths(kind, path, gender)
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{label} model file not found: looked at {looked}. "
                            + _license_hint(kind, str(candidates[0])))


# --------------------------------------------------------------------------------------------
# Reading model files safely
# --------------------------------------------------------------------------------------------
class ChumpyArray:
    """Stand-in for any pickled chumpy object (chumpy itself is broken on current Python/NumPy).

    chumpy ``Ch`` objects pickle their ``__dict__`` as state, the value under key ``'x'``;
    ``.x`` (and ``np.asarray``) give that value as a numpy array. Derived chumpy expressions that
    stored no value raise ValueError when converted.
    """

    def __new__(cls, *args, **kwargs):  # NEWOBJ / REDUCE may pass arguments: ignore them
        obj = object.__new__(cls)
        obj.state = {}
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = dict(state) if isinstance(state, dict) else {"x": state}

    @property
    def x(self) -> np.ndarray:
        state = getattr(self, "state", {})  # copyreg._reconstructor bypasses __new__
        if "x" not in state:
            raise ValueError(f"a pickled chumpy object holds no stored value 'x' "
                             f"(state keys: {sorted(state)})")
        value = state["x"]
        return np.asarray(value.x if isinstance(value, ChumpyArray) else value)

    def __array__(self, dtype=None, copy=None):
        a = self.x
        return a if dtype is None else a.astype(dtype)


_BUILTINS = {"object", "set", "frozenset", "slice", "complex", "bytearray", "bytes", "list",
             "dict", "tuple", "int", "float", "str", "bool"}
_SPARSE = {"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"}


def _numpy_core(sub: str):
    import importlib

    try:  # NumPy >= 2 (and the forward-compatibility shims of NumPy 1.26)
        return importlib.import_module(f"numpy._core.{sub}")
    except ImportError:  # pragma: no cover - older NumPy
        return importlib.import_module(f"numpy.core.{sub}")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for SMPL-family model files: chumpy -> ``ChumpyArray``; numpy arrays, dtypes and
    scalars; scipy.sparse matrices; a few harmless builtins. Any other global raises
    ``pickle.UnpicklingError`` (a pickle can otherwise run arbitrary code)."""

    def find_class(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyArray
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if module == "builtins" and name in _BUILTINS:
            return getattr(builtins, name)
        if (module, name) == ("copyreg", "_reconstructor"):
            import copyreg

            return copyreg._reconstructor
        if (module, name) == ("_codecs", "encode"):  # bytes pickled by Python 3, protocol < 3
            import codecs

            return codecs.encode
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
                "_reconstruct", "scalar"):
            return getattr(_numpy_core("multiarray"), name)
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return getattr(_numpy_core("numeric"), name)
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE:
            import scipy.sparse

            return getattr(scipy.sparse, name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name} from a model file: only numpy, "
            "scipy.sparse and chumpy arrays are allowed")


def _densify(value) -> np.ndarray:
    """A scipy.sparse matrix (possibly pickled by an old scipy) as a dense numpy array."""
    try:
        return np.asarray(value.toarray())
    except Exception:  # attributes renamed between scipy versions: rebuild from the raw arrays
        import scipy.sparse

        d = vars(value)
        shape = d.get("_shape", d.get("shape"))
        fmt = type(value).__name__[:3]
        if fmt in ("csc", "csr"):
            cls = scipy.sparse.csc_matrix if fmt == "csc" else scipy.sparse.csr_matrix
            return cls((d["data"], d["indices"], d["indptr"]), shape=shape).toarray()
        return scipy.sparse.coo_matrix((d["data"], (d["row"], d["col"])), shape=shape).toarray()


def _plain(value):
    """Stand-ins and sparse matrices -> numpy arrays; anything else unchanged."""
    if isinstance(value, ChumpyArray):
        return value.x
    if type(value).__module__.startswith("scipy.sparse"):
        return _densify(value)
    return value


def read_model_file(path: str | os.PathLike) -> dict:
    """The raw key -> value dict of a .pkl (restricted unpickler, latin1) or .npz
    (``allow_pickle=False``; object arrays are skipped) model file, with chumpy and sparse values
    turned into numpy arrays.

    Raises:
        pickle.UnpicklingError: the pickle references a global that is not allowed.
        ValueError: the file does not hold a dict of arrays.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz":
        out = {}
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                try:
                    out[key] = z[key]
                except ValueError:  # an object array (pickled): never load it
                    continue
        return out
    with open(path, "rb") as f:
        data = RestrictedUnpickler(f, encoding="latin1").load()
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, expected a dict of arrays")
    return {k: _plain(v) for k, v in data.items()}


def _check_arrays(raw: dict, kind: str, path: Path) -> dict[str, np.ndarray]:
    """Select, convert and check the arrays smplx needs; ValueError names the problem."""
    k = _KINDS[kind]
    V, J = k.n_verts, k.n_joints

    def bad(problem: str) -> ValueError:
        return ValueError(f"{path} is not a valid {k.label} model file: {problem}. "
                          + _license_hint(kind, str(path)))

    def get(key: str, shape: tuple, integer: bool = False) -> np.ndarray:
        if key not in raw:
            raise bad(f"missing key {key!r} (found {sorted(raw)})")
        try:
            a = np.asarray(_plain(raw[key]))
        except ValueError as e:
            raise bad(f"{key!r}: {e}") from None
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise bad(f"{key!r} is not a numeric array (dtype {a.dtype})")
        if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise bad(f"{key!r} has shape {a.shape}, expected {want}")
        if integer:
            if not np.issubdtype(a.dtype, np.integer) and not np.all(a == np.round(a)):
                raise bad(f"{key!r} must hold integers")
            return a.astype(np.int64)
        return a.astype(np.float64)

    out = {
        "v_template": get("v_template", (V, 3)),
        "shapedirs": get("shapedirs", (V, 3, None)),
        "posedirs": get("posedirs", (V, 3, 9 * (J - 1))),
        "J_regressor": get("J_regressor", (J, V)),
        "weights": get("weights", (V, J)),
        "f": get("f", (None, 3), integer=True),
    }
    if "kintree_table" not in raw:
        raise bad("missing key 'kintree_table'")
    kt = np.asarray(_plain(raw["kintree_table"]))
    if kt.shape != (2, J) or not np.issubdtype(kt.dtype, np.integer):
        raise bad(f"'kintree_table' has shape {kt.shape} and dtype {kt.dtype}, expected ({2}, {J}) "
                  "integers")
    parents = kt[0].astype(np.int64)
    if any(not 0 <= parents[j] < j for j in range(1, J)):
        raise bad("'kintree_table' parents must precede their children")
    out["kintree_table"] = np.stack([np.r_[-1, parents[1:]], np.arange(J)])
    if out["f"].size and (out["f"].min() < 0 or out["f"].max() >= V):
        raise bad("'f' references vertices out of range")
    if out["shapedirs"].shape[2] < 1:
        raise bad("'shapedirs' has no shape component")
    if kind in ("smplh", "smplx"):
        for side in "lr":
            # The AMASS / extended SMPL+H files may lack MANO's hand PCA: flat hands then.
            comp, mean = f"hands_components{side}", f"hands_mean{side}"
            out[comp] = get(comp, (None, 45)) if comp in raw else np.eye(45)
            out[mean] = get(mean, (45,)) if mean in raw else np.zeros(45)
    if kind == "smplx":
        out["lmk_faces_idx"] = get("lmk_faces_idx", (None,), integer=True)
        n = out["lmk_faces_idx"].shape[0]
        out["lmk_bary_coords"] = get("lmk_bary_coords", (n, 3))
        if n and (out["lmk_faces_idx"].min() < 0 or out["lmk_faces_idx"].max() >= len(out["f"])):
            raise bad("'lmk_faces_idx' references faces out of range")
    return out


def load_model_arrays(path: str | os.PathLike, kind: str = "smpl") -> dict[str, np.ndarray]:
    """Read and check a ``kind`` model file; returns plain numpy arrays (float64 / int64) under
    smplx's key names (``v_template``, ``shapedirs``, ``posedirs``, ``J_regressor`` (dense),
    ``weights``, ``kintree_table`` (root parent -1), ``f``, plus hands / landmarks for SMPL-H and
    SMPL-X).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        pickle.UnpicklingError: the pickle references a forbidden global.
        ValueError: missing keys or wrong array shapes (the message names them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{_KINDS[kind].label} model file not found: looked at {path}. "
                                + _license_hint(kind, str(path)))
    try:
        raw = read_model_file(path)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"{path}: {e}") from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
        raise ValueError(f"{path} is not a readable {_KINDS[kind].label} model file ({e}). "
                         + _license_hint(kind, str(path))) from e
    return _check_arrays(raw, kind, path)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
def _import_smplx():
    try:
        import smplx
    except ImportError as e:
        raise ImportError('SMPL, SMPL-H and SMPL-X need the smplx package: '
                          'pip install "bodyfit[smpl]"') from e
    return smplx


def _smplx_joint_names(kind: str, n_landmarks: int = 0) -> list[str]:
    """Names of the joints smplx returns, in its order: skeleton joints (J_regressor order), then
    the VertexJointSelector's vertex landmarks (nose, eyes, ears, feet, fingertips), then for
    SMPL-X the face landmarks. smplx's ``JOINT_NAMES`` is the SMPL-X list, so it is only a prefix
    for SMPL-X: SMPL's joints 22-23 are the hands and SMPL-H has no jaw / eye joints."""
    from smplx.joint_names import JOINT_NAMES

    body, face_joints, hands = JOINT_NAMES[:22], JOINT_NAMES[22:25], JOINT_NAMES[25:55]
    extra = JOINT_NAMES[55:76]
    assert extra[0] == "nose" and extra[-1] == "right_pinky", "unexpected smplx JOINT_NAMES"
    if kind == "smpl":
        return body + ["left_hand", "right_hand"] + extra
    if kind == "smplh":
        return body + hands + extra
    face = JOINT_NAMES[76:76 + n_landmarks] if n_landmarks == 51 else [
        f"face_landmark_{i}" for i in range(n_landmarks)]
    return body + face_joints + hands + extra + face


class SMPLFamilyModel(BodyModel):
    """SMPL / SMPL-H / SMPL-X (smplx) in bodyfit's ``BodyModel`` interface; see the module
    docstring for frames, parameters and where the licensed model files go.

    Args:
        name: ``"smpl"``, ``"smplh"`` or ``"smplx"``.
        model_path: the model file (.pkl or .npz) or a folder holding
            ``<name>/<NAME>_<GENDER>.{pkl,npz}`` or ``<NAME>_<GENDER>.{pkl,npz}``; None uses
            ``$BODYFIT_SMPL_DIR``.
        gender: ``"neutral"``, ``"male"`` or ``"female"`` (picks the file in a folder).
        dtype: float32 by default.
        num_betas: shape coefficients used (smplx caps it at 10 for 10-component files).

    Attributes (besides ``BodyModel``'s): ``smpl`` (the wrapped smplx module, without
    parameters of its own), ``model_file`` (the file read), ``gender``.

    Raises:
        ImportError: smplx is not installed.
        FileNotFoundError: no model file (the message says where to download it and where to
            put it).
        ValueError: unknown name or gender, or a model file with missing keys / wrong shapes.
        pickle.UnpicklingError: a .pkl file referencing a global other than numpy / scipy.sparse
            / chumpy arrays.
    """

    shape_name = "betas"

    def __init__(self, name: str = "smpl", model_path: str | os.PathLike | None = None,
                 gender: str = "neutral", dtype: torch.dtype = torch.float32,
                 num_betas: int = 10):
        super().__init__()
        if name not in _KINDS:
            raise ValueError(f"Unknown SMPL-family model {name!r}; choose one of {sorted(_KINDS)}.")
        smplx = _import_smplx()
        self.name = name
        self.gender = gender
        self.model_file = resolve_model_file(name, model_path, gender)
        arrays = load_model_arrays(self.model_file, name)
        self.smpl = _build_smplx(smplx, name, arrays, self.model_file, gender, dtype, num_betas)
        if dtype != torch.float32:
            _restore_precision(self.smpl, arrays, dtype)
        self.register_buffer("_probe", torch.zeros(0, dtype=dtype))
        self.register_buffer("faces", self.smpl.faces_tensor.clone().long(), persistent=False)
        self.shape_dim = int(self.smpl.num_betas)
        self.num_expression = int(self.smpl.num_expression_coeffs)
        n_lmk = len(arrays["lmk_faces_idx"]) if name == "smplx" else 0
        self.joint_names = _smplx_joint_names(name, n_lmk)
        self.pose_joint_names = self.joint_names[1:1 + _KINDS[name].n_body]
        self.free_pose_joints = list(range(len(self.pose_joint_names)))
        # SMPL rest frame (Y up, +Z forward) -> OpenCV camera (y down, z forward, facing it).
        self.up_to_camera = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=dtype))
        self._keypoint_table = self._resolve(SMPL_KEYPOINTS)
        self._keypoint_overrides = {c: self._resolve(t) for c, t in SMPL_KEYPOINT_OVERRIDES.items()}

    def _resolve(self, table: dict) -> dict[str, tuple[str | None, float]]:
        out = {}
        for key, (candidates, weight) in table.items():
            found = next((c for c in candidates or () if c in self.joint_names), None)
            out[key] = (found, weight if found is not None else 0.0)
        return out

    # -- keypoint map ---------------------------------------------------------------------
    def keypoint_map(self, convention: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(index (K,) long into ``joint_names``, weight (K,)) for the K keypoints of
        ``convention``; keypoints the model has no landmark for get weight 0.

        Raises:
            ValueError: unknown convention.
        """
        from bodyfit.body_models.conventions import keypoint_names

        return keypoint_table_map(self, keypoint_names(convention), self._keypoint_table,
                                  self._keypoint_overrides.get(convention, {}))

    # -- forward ----------------------------------------------------------------------------
    def forward(self, params: BodyParams, vertices: bool = True) -> BodyOutput:
        """Pose and shape the body.

        Args:
            params: BodyParams with body_pose (B,23,3) (SMPL) or (B,21,3) (SMPL-H, SMPL-X) and
                betas (B,S).
            vertices: False to return joints only (``vertices`` None; smplx still skins the
                mesh, since its vertex landmarks need it).

        Returns:
            BodyOutput: joints (B,J,3) named by ``joint_names`` (SMPL J=45, SMPL-H 73, SMPL-X
            127), vertices (B,V,3) (V=6890, 10475 for SMPL-X), metres, SMPL world frame; faces.

        Raises:
            ValueError: a parameter has the wrong shape.
        """
        self.check_params(params)
        B = params.batch_size
        kw = dict(dtype=params.global_orient.dtype, device=params.global_orient.device)
        extra = {}
        if self.name in ("smplh", "smplx"):
            extra["left_hand_pose"] = torch.zeros(B, 45, **kw)
            extra["right_hand_pose"] = torch.zeros(B, 45, **kw)
        if self.name == "smplx":
            extra.update(jaw_pose=torch.zeros(B, 3, **kw), leye_pose=torch.zeros(B, 3, **kw),
                         reye_pose=torch.zeros(B, 3, **kw),
                         expression=torch.zeros(B, self.num_expression, **kw),
                         return_shaped=False)
        out = self.smpl(betas=params.shape, global_orient=params.global_orient,
                        body_pose=params.body_pose.reshape(B, -1), transl=params.transl,
                        return_verts=True, **extra)
        return BodyOutput(joints=out.joints, vertices=out.vertices if vertices else None,
                          faces=self.faces)


def _build_smplx(smplx, kind: str, arrays: dict, path: Path, gender: str, dtype: torch.dtype,
                 num_betas: int):
    """The smplx module, built from checked arrays, without parameters of its own."""
    common = dict(gender=gender, dtype=dtype, num_betas=num_betas, batch_size=1,
                  create_betas=False, create_global_orient=False, create_body_pose=False,
                  create_transl=False)
    hands = dict(use_pca=False, flat_hand_mean=False, create_left_hand_pose=False,
                 create_right_hand_pose=False)
    quiet = contextlib.redirect_stdout(io.StringIO())  # smplx prints warnings on stdout
    if kind == "smpl":
        with quiet:
            return smplx.SMPL(model_path=str(path), data_struct=types.SimpleNamespace(**arrays),
                              **common)
    if kind == "smplh":
        with quiet:
            return smplx.SMPLH(model_path=str(path), data_struct=types.SimpleNamespace(**arrays),
                               **hands, **common)
    # smplx.SMPLX takes no data_struct: it always reads model_path itself, with an unrestricted
    # pickle.load / np.load(allow_pickle=True). Hand it a clean .npz of the checked arrays.
    with tempfile.TemporaryDirectory(prefix="bodyfit_smplx_") as tmp:
        clean = Path(tmp) / "SMPLX_CLEAN.npz"
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        np.savez(clean, **{k: v.astype(np_dtype) if v.dtype == np.float64 else v
                           for k, v in arrays.items()})
        with quiet:
            return smplx.SMPLX(model_path=str(clean), ext="npz", num_expression_coeffs=10,
                               create_expression=False, create_jaw_pose=False,
                               create_leye_pose=False, create_reye_pose=False,
                               use_face_contour=False, **hands, **common)


def _restore_precision(module, arrays: dict, dtype: torch.dtype) -> None:
    """smplx rounds model arrays through float32 (its ``to_np``) whatever the dtype: reload the
    main buffers from the float64 arrays."""
    nb = module.shapedirs.shape[-1]
    n_pose = arrays["posedirs"].shape[-1]
    fresh = {
        "v_template": arrays["v_template"],
        "shapedirs": arrays["shapedirs"][:, :, :nb],
        "posedirs": arrays["posedirs"].reshape(-1, n_pose).T,
        "J_regressor": arrays["J_regressor"],
        "lbs_weights": arrays["weights"],
    }
    for key, value in fresh.items():
        old = getattr(module, key)
        if tuple(old.shape) == value.shape:
            setattr(module, key, torch.as_tensor(np.ascontiguousarray(value), dtype=dtype))
