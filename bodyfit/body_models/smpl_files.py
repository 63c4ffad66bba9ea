"""Finding and safely reading SMPL / SMPL-H / SMPL-X model files (for ``smpl_model``).

The model files are licensed by the Max Planck Institute for Intelligent Systems: bodyfit never
ships or downloads them (see :mod:`bodyfit.body_models.smpl_model` for where to get them and how
to lay them out). ``resolve_model_file`` finds the file for a model and gender in a folder (or
``$BODYFIT_SMPL_DIR``), with an error message that says where to download it and where to put it.

Loading: official SMPL ``.pkl`` files hold chumpy objects, and chumpy does not import on current
Python/NumPy. ``load_model_arrays`` reads ``.pkl`` files with a restricted unpickler that maps any
chumpy class to a stand-in holding the stored array, allows the numpy / scipy.sparse classes model
files use, and refuses every other global (:class:`UnsafePickleError`, a
``pickle.UnpicklingError`` and a ``ValueError``), so a model file cannot run code. ``.npz`` files
are read with ``allow_pickle=False``. A file that is not a model file at all (text, random bytes,
cut short, or asking for more memory than there is) is a ``ValueError`` naming the file. The
arrays are then checked (keys and shapes) and handed to smplx as plain numpy arrays.
"""
from __future__ import annotations

import builtins
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ENV_VAR", "GENDERS", "KINDS", "ModelKind", "candidate_paths", "resolve_model_file",
           "ChumpyArray", "RestrictedUnpickler", "UnsafePickleError", "read_model_file",
           "load_model_arrays"]

ENV_VAR = "BODYFIT_SMPL_DIR"
GENDERS = ("neutral", "male", "female")


@dataclass(frozen=True)
class ModelKind:
    """What differs between SMPL, SMPL-H and SMPL-X: file names, where to get them, sizes."""

    label: str  # human name
    prefix: str  # file-name prefix smplx expects: SMPL_NEUTRAL.pkl
    site: str
    download: str  # what to download there
    exts: tuple[str, ...]  # preferred extension first
    n_verts: int
    n_joints: int  # skeleton joints incl. the root
    n_body: int  # body joints in BodyParams.body_pose


KINDS: dict[str, ModelKind] = {
    "smpl": ModelKind("SMPL", "SMPL", "https://smpl.is.tue.mpg.de",
                      "'SMPL for Python' (rename e.g. basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl "
                      "to SMPL_NEUTRAL.pkl)", ("pkl", "npz"), 6890, 24, 23),
    "smplh": ModelKind("SMPL-H", "SMPLH", "https://mano.is.tue.mpg.de",
                       "the 'Extended SMPL+H model'", ("pkl", "npz"), 6890, 52, 21),
    "smplx": ModelKind("SMPL-X", "SMPLX", "https://smpl-x.is.tue.mpg.de",
                       "'SMPL-X' (npz or pkl)", ("npz", "pkl"), 10475, 55, 21),
}


# --------------------------------------------------------------------------------------------
# Finding the model file
# --------------------------------------------------------------------------------------------
def _file_name(kind: str, gender: str, ext: str) -> str:
    return f"{KINDS[kind].prefix}_{gender.upper()}.{ext}"


def _license_hint(kind: str, expected: str) -> str:
    k = KINDS[kind]
    return (f"{k.label} model files are licensed and do not ship with bodyfit: register and "
            f"download {k.download} yourself from {k.site}, then put the file at {expected} "
            f"(or pass model_path=<the .pkl/.npz file>, or set {ENV_VAR}=<folder> holding "
            f"{kind}/{_file_name(kind, 'neutral', k.exts[0])}).")


def candidate_paths(kind: str, folder: str | os.PathLike, gender: str = "neutral") -> list[Path]:
    """Files ``resolve_model_file`` tries in ``folder``, best first:
    ``<folder>/<kind>/<PREFIX>_<GENDER>.<ext>`` then ``<folder>/<PREFIX>_<GENDER>.<ext>``."""
    folder = Path(folder).expanduser()
    return [folder / sub / _file_name(kind, gender, ext)
            for sub in (kind, "") for ext in KINDS[kind].exts]


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
    if kind not in KINDS:
        raise ValueError(f"Unknown SMPL-family model {kind!r}; choose one of {sorted(KINDS)}.")
    if gender not in GENDERS:
        raise ValueError(f"Unknown gender {gender!r}; choose one of {list(GENDERS)}.")
    label = KINDS[kind].label
    if model_path is None:
        env = os.environ.get(ENV_VAR)
        if not env:
            expected = f"${ENV_VAR}/{kind}/{_file_name(kind, gender, KINDS[kind].exts[0])}"
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


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A model file's pickle names a global that is not allowed (unpickling it could run code)."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for SMPL-family model files: chumpy -> ``ChumpyArray``; numpy arrays, dtypes and
    scalars; scipy.sparse matrices; a few harmless builtins. Any other global raises
    :class:`UnsafePickleError` (a pickle can otherwise run arbitrary code)."""

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
        raise UnsafePickleError(
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
        UnsafePickleError: the pickle references a global that is not allowed.
        ValueError: the file does not hold a dict of arrays.
        Exception: anything the pickle or zip reader raises on a file that is not a model file
            (:func:`load_model_arrays` turns those into a ValueError naming the file).
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
    k = KINDS[kind]
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
        FileNotFoundError: ``path`` does not exist. IsADirectoryError: ``path`` is a folder.
        UnsafePickleError: the pickle references a forbidden global (also a ValueError and a
            ``pickle.UnpicklingError``).
        ValueError: not a model file (text, random bytes, a truncated file, a pickle asking for
            more memory than there is), missing keys or wrong array shapes; the message names
            the file and the problem.
    """
    path = Path(path)
    label = KINDS[kind].label
    if path.is_dir():
        raise IsADirectoryError(f"{label} model file {path} is a folder: pass the .pkl/.npz file, "
                                f"or the folder as model_path (see resolve_model_file).")
    if not path.is_file():
        raise FileNotFoundError(f"{label} model file not found: looked at {path}. "
                                + _license_hint(kind, str(path)))
    try:
        raw = read_model_file(path)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except MemoryError:
        raise ValueError(f"{path} is not a readable {label} model file: it asks for more memory than "
                         f"there is (a damaged or crafted file). " + _license_hint(kind, str(path))) from None
    except Exception as e:  # text, random bytes, cut short: the reader fails in many ways
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise ValueError(f"{path} is not a readable {label} model file ({what}): a damaged file, or "
                         f"not a model file. " + _license_hint(kind, str(path))) from None
    return _check_arrays(raw, kind, path)

