"""The main job: pictures -> MediaPipe keypoints -> regressor init -> fit -> files.

For each picture, ``DIR/<stem>/`` gets ``fit.npz`` (parameters, vertices, joints, K, R, t),
``fit.json`` (model, convention, errors, box height, energies, runtimes), ``mesh.ply`` (camera
frame, metres) and ``overlay.png`` (the mesh over the picture and a side view).
A picture that cannot be read or holds no person is reported and skipped; the rest go on.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bodyfit.fitting.fit import FitResult, fit, load_config


@dataclass
class PictureReport:
    """Outcome of one picture: ``ok``; ``out_dir`` when written; ``error`` when skipped."""

    name: str
    ok: bool
    out_dir: Path | None = None
    error: str | None = None
    summary: dict | None = None


def save_fit(result: FitResult, b: int, out_dir: Path, image: np.ndarray | None = None,
             runtime_s: dict | None = None, extra: dict | None = None) -> dict:
    """Write sample ``b`` of ``result`` to ``out_dir`` (fit.npz, fit.json, mesh.ply, overlay.png
    when the picture is given). Returns the JSON summary. Refuses to store an invalid fit."""
    import trimesh

    if not bool(result.valid[b]):
        raise ValueError(f"refusing to store an invalid fit: {result.messages[b]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    p = {k: v[b].detach().cpu().numpy() for k, v in result.params.as_dict().items()}
    shape_key = "phenotypes" if result.model_name == "anny" else "betas"
    arrays = dict(global_orient=p["global_orient"], body_pose=p["body_pose"], transl=p["transl"],
                  joints=result.joints[b].cpu().numpy(), K=result.camera.K[b].cpu().numpy(),
                  R=result.camera.R[b].cpu().numpy(), t=result.camera.t[b].cpu().numpy(),
                  keypoints=result.keypoints[b].cpu().numpy(), faces=result.faces.cpu().numpy())
    arrays[shape_key] = p["shape"]
    if result.vertices is not None:
        arrays["vertices"] = result.vertices[b].cpu().numpy()
    np.savez_compressed(out_dir / "fit.npz", **arrays)
    seen = result.keypoints[b, :, 2] > 0
    summary = {
        "model": result.model_name,
        "keypoint_convention": result.convention,
        "reprojection_error_px": float(result.reprojection_error_px[b]),
        "box_height_px": float(result.box_height_px[b]),
        "reprojection_error_over_box": float(result.reprojection_error_px[b] / result.box_height_px[b]),
        "visible_keypoints": int(seen.sum()),
        "energies": {k: float(v[b]) for k, v in result.energies.items()},
        "converged": bool(result.converged[b]),
        "stage_steps": result.stage_steps,
        "image_size": list(result.camera.image_size),
        "runtime_s": runtime_s or {},
        "frame": "OpenCV camera: x right, y down, z forward; metres",
        **(extra or {}),
    }
    (out_dir / "fit.json").write_text(json.dumps(summary, indent=2))
    if result.vertices is not None:
        trimesh.Trimesh(arrays["vertices"], arrays["faces"], process=False).export(out_dir / "mesh.ply")
        if image is not None:
            from bodyfit.data.images import write_image
            from bodyfit.renderers.views import overlay_picture

            pic = overlay_picture(image, arrays["vertices"], arrays["faces"], arrays["K"],
                                  arrays["keypoints"], result.projected[b].cpu().numpy())
            write_image(out_dir / "overlay.png", pic)
    return summary


def fit_pictures(pictures, out_dir: str | Path, model=None, overrides: list[str] | None = None,
                 progress: bool = True, log=print, extra: dict | None = None) -> list[PictureReport]:
    """Fit every picture and write its files.

    Args:
        pictures: iterable of paths, or of (name, (H,W,3) uint8 RGB array) pairs.
        out_dir: output folder; each picture gets ``out_dir/<name>/``.
        model: a BodyModel (Anny when None).
        overrides: fit config overrides (``key=value``).
    Returns:
        one PictureReport per picture, in order.
    """
    from tqdm import tqdm

    from bodyfit.body_models import body_model
    from bodyfit.data.images import read_image
    from bodyfit.detectors import MediaPipePose, NoPersonError

    out_dir = Path(out_dir)
    pictures = list(pictures)
    model = model if model is not None else body_model("anny")
    cfg = load_config(overrides)
    reports: list[PictureReport] = []
    with MediaPipePose() as detector:
        bar = tqdm(pictures, desc="fitting", unit="picture", disable=not progress or len(pictures) < 2)
        for item in bar:
            name, image = (item if isinstance(item, tuple) else (Path(item).stem, None))
            try:
                if image is None:
                    image = read_image(item)
                t0 = time.perf_counter()
                det = detector.detect(image)
                t1 = time.perf_counter()
                kp = torch.as_tensor(det.keypoints)[None]
                box = torch.as_tensor(det.box)[None]
                H, W = image.shape[:2]
                result = fit(kp, model, "mediapipe33", image_size=(H, W), boxes=box, config=cfg)
                t2 = time.perf_counter()
                if not bool(result.valid[0]):
                    raise ValueError(result.messages[0])
                runtime = {"detection": t1 - t0, **result.runtime_s, "total": t2 - t0}
                summary = save_fit(result, 0, out_dir / name, image, runtime, extra)
                reports.append(PictureReport(name, True, out_dir / name, summary=summary))
            except (FileNotFoundError, ValueError, NoPersonError) as e:
                log(f"skipped {name}: {e}")
                reports.append(PictureReport(name, False, error=str(e)))
    return reports
