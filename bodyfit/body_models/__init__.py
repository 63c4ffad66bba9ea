"""Body models behind one interface: ``body_model(name, ...)`` -> ``BodyModel``.

Anny is the default and needs no licensed file. SMPL, SMPL-H and SMPL-X go through the ``smplx``
package (``pip install bodyfit[smpl]``) with the user's own model files.
"""
from __future__ import annotations

import torch

from bodyfit.body_models.base import BodyModel, BodyOutput, BodyParams
from bodyfit.body_models.conventions import CONVENTIONS, keypoint_names

MODELS = ["anny", "smpl", "smplh", "smplx"]


def body_model(name: str = "anny", *, model_path: str | None = None, topology: str = "default",
               gender: str = "neutral", dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", cache_dir: str | None = None,
               landmarks: str = "mediapipe") -> BodyModel:
    """Build a body model.

    Args:
        name: ``"anny"`` (default), ``"smpl"``, ``"smplh"`` or ``"smplx"``.
        model_path: SMPL-family only: the model file (.pkl or .npz) or the folder holding
            ``<name>/<NAME>_<GENDER>.{pkl,npz}`` as smplx expects.
        topology: Anny only: ``"default"`` or a low-poly topology (``notoes_collapse3pc``...).
        gender: SMPL-family only: ``"neutral"``, ``"male"`` or ``"female"``.
        dtype: the model's float type (float32 by default).
        device: where the model lives (the CPU by default).
        cache_dir: Anny only: where Anny caches its parsed assets.
        landmarks: Anny only: where its keypoint landmarks sit: ``"mediapipe"`` (default: moved to
            where MediaPipe puts them, ``keypoint_tables.ANNY_LANDMARK_OFFSETS``) or ``"coco"``
            (Anny's COCO keypoint regressor as is, e.g. for other detectors or annotations).

    Returns:
        a ``BodyModel``.

    Raises:
        ValueError: unknown model name or landmark set.
        FileNotFoundError: SMPL-family model files missing (the message says where to get them).
    """
    if name == "anny":
        from bodyfit.body_models.anny_model import AnnyModel

        if landmarks not in ("mediapipe", "coco"):
            raise ValueError(f"Unknown Anny landmark set {landmarks!r}; choose mediapipe or coco.")
        return AnnyModel(topology=topology, dtype=dtype, cache_dir=cache_dir,
                         landmark_offsets=None if landmarks == "mediapipe" else {}).to(device)
    if name in ("smpl", "smplh", "smplx"):
        from bodyfit.body_models.smpl_model import SMPLFamilyModel

        return SMPLFamilyModel(name, model_path=model_path, gender=gender, dtype=dtype).to(device)
    raise ValueError(f"Unknown body model {name!r}; choose one of {MODELS}.")


__all__ = ["BodyModel", "BodyOutput", "BodyParams", "body_model", "CONVENTIONS", "keypoint_names", "MODELS"]
