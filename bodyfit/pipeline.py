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


def _fit_arrays(result, b: int, out_dir: Path) -> dict[str, np.ndarray]:
    """Sample ``b``'s parameters, joints, faces and vertices as arrays (the shape under its
    model's name: ``phenotypes`` or ``betas``); makes ``out_dir``. Refuses an invalid fit."""
    if not bool(result.valid[b]):
        raise ValueError(f"refusing to store an invalid fit: {result.messages[b]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    p = {k: v[b].detach().cpu().numpy() for k, v in result.params.as_dict().items()}
    arrays = dict(global_orient=p["global_orient"], body_pose=p["body_pose"], transl=p["transl"],
                  joints=result.joints[b].cpu().numpy(), faces=result.faces.cpu().numpy())
    arrays["phenotypes" if result.model_name == "anny" else "betas"] = p["shape"]
    if result.vertices is not None:
        arrays["vertices"] = result.vertices[b].cpu().numpy()
    return arrays


def _write_fit(out_dir: Path, arrays: dict, summary: dict, overlays: list[tuple]) -> None:
    """fit.npz, fit.json and, with vertices, mesh.ply and the overlay pictures: ``overlays`` is
    ``(file name, picture, R, t, K, keypoints, projected)`` per picture, R, t taking the mesh's
    frame to that camera's."""
    import trimesh

    from bodyfit.data.images import write_image
    from bodyfit.renderers.views import overlay_picture

    np.savez_compressed(out_dir / "fit.npz", **arrays)
    (out_dir / "fit.json").write_text(json.dumps(summary, indent=2))
    if "vertices" not in arrays:
        return
    trimesh.Trimesh(arrays["vertices"], arrays["faces"], process=False).export(out_dir / "mesh.ply")
    for name, picture, R, t, K, keypoints, projected in overlays:
        pic = overlay_picture(picture, arrays["vertices"] @ R.T + t, arrays["faces"], K, keypoints,
                              projected)
        write_image(out_dir / name, pic)


def save_fit(result: FitResult, b: int, out_dir: Path, image: np.ndarray | None = None,
             runtime_s: dict | None = None, extra: dict | None = None) -> dict:
    """Write sample ``b`` of ``result`` to ``out_dir`` (fit.npz, fit.json, mesh.ply, overlay.png
    when the picture is given). Returns the JSON summary. Refuses to store an invalid fit."""
    arrays = _fit_arrays(result, b, out_dir)
    arrays.update(K=result.camera.K[b].cpu().numpy(), R=result.camera.R[b].cpu().numpy(),
                  t=result.camera.t[b].cpu().numpy(), keypoints=result.keypoints[b].cpu().numpy())
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
    # the vertices are in the camera frame already
    overlays = [] if image is None else [("overlay.png", image, np.eye(3), np.zeros(3), arrays["K"],
                                          arrays["keypoints"], result.projected[b].cpu().numpy())]
    _write_fit(out_dir, arrays, summary, overlays)
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


# --------------------------------------------------------------------------------------------
# calibrated views and video
# --------------------------------------------------------------------------------------------
WORK_SIZE = 640  # longer side at which pictures and masks are handed to fit_views


def save_views_fit(result, b: int, out_dir: Path, pictures: list[np.ndarray | None] | None = None,
                   full_cameras: list | None = None, runtime_s: dict | None = None,
                   extra: dict | None = None) -> dict:
    """Write frame ``b`` of a ``ViewsFitResult`` to ``out_dir``: ``fit.npz`` (parameters, world
    frame joints and vertices, each view's K, R, t and keypoints), ``fit.json`` (per-view
    errors, energies, messages), ``mesh.ply`` (world frame, metres) and ``overlay_<view>.png``
    for each view whose picture is given (full-resolution ``full_cameras`` when the fit ran on
    reduced pictures). Refuses to store an invalid fit."""
    arrays = _fit_arrays(result, b, out_dir)
    cams = full_cameras or result.cameras
    scale = [c.K[0, 0, 0] / r.K[0, 0, 0] for c, r in zip(cams, result.cameras)]
    arrays.update(K=np.stack([c.K[0].cpu().numpy() for c in cams]),
                  R=np.stack([c.R[0].cpu().numpy() for c in cams]),
                  t=np.stack([c.t[0].cpu().numpy() for c in cams]),
                  keypoints=np.stack([_rescale_kp(result.keypoints[b, v], s) for v, s in enumerate(scale)]))
    err = result.reprojection_error_px[b]
    box = result.box_height_px[b]
    summary = {
        "model": result.model_name,
        "keypoint_convention": result.convention,
        "views": result.names,
        # None for a view that does not see the person in this frame
        "reprojection_error_px": {n: _finite_or_none(err[v] * scale[v]) for v, n in enumerate(result.names)},
        "reprojection_error_over_box": {n: _finite_or_none(err[v] / box[v]) for v, n in enumerate(result.names)},
        "energies": {k: float(v[b]) for k, v in result.energies.items()},
        "skipped_energies": result.skipped_energies,
        "messages": [m for m in (result.messages[b], *result.view_messages) if m],
        "runtime_s": runtime_s or {},
        "frame": "world frame of the calibration; metres; cameras map X -> R X + t (OpenCV)",
        **(extra or {}),
    }
    overlays = [(f"overlay_{name}.png", pictures[v], arrays["R"][v], arrays["t"][v], arrays["K"][v],
                 arrays["keypoints"][v], _rescale_kp(result.projected[b, v], scale[v]))
                for v, name in enumerate(result.names) if pictures is not None and pictures[v] is not None]
    _write_fit(out_dir, arrays, summary, overlays)
    return summary


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _rescale_kp(kp: torch.Tensor, s) -> np.ndarray:
    """(K,2|3) pixel coordinates at one resolution -> at ``s`` times it (pixel centres kept)."""
    out = kp.detach().cpu().numpy().copy()
    out[:, :2] = (out[:, :2] + 0.5) * float(s) - 0.5
    return out


def _work_views(pictures, detections, cameras, names=None):
    """``Views`` at the working resolution (longer side <= WORK_SIZE) from full pictures
    (``pictures[v][t]``), detections (``detections[v][t]``, None where nobody was found) and the
    full-resolution cameras."""
    from bodyfit.cameras import Camera
    from bodyfit.fitting.multiview import Views, _scaled_camera

    kps, masks, images, work_cams = [], [], [], []
    for v, cam in enumerate(cameras):
        wc, s = _scaled_camera(cam, WORK_SIZE)
        work_cams.append(wc)
        h, w = wc.image_size
        per_frame_kp, per_frame_mask, per_frame_img = [], [], []
        for pic, det in zip(pictures[v], detections[v]):
            kp = torch.zeros(33, 3)
            mask = torch.zeros(h, w)
            if det is not None:
                kp = torch.as_tensor(det.keypoints).clone()
                kp[:, :2] = (kp[:, :2] + 0.5) * s - 0.5
                if det.mask is not None:
                    mask = torch.as_tensor(_resize_np(det.mask.astype(np.float32), (h, w)))
            per_frame_kp.append(kp)
            per_frame_mask.append(mask)
            per_frame_img.append(torch.as_tensor(_resize_np(pic, (h, w))))
        kps.append(torch.stack(per_frame_kp))
        masks.append(torch.stack(per_frame_mask))
        images.append(torch.stack(per_frame_img))
    views = Views(cameras=[Camera(c.K.float(), c.R.float(), c.t.float(), c.image_size) for c in work_cams],
                  keypoints=torch.stack(kps, 1), masks=masks, images=images, names=names)
    return views


def _resize_np(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    if a.shape[:2] == tuple(size):
        return a
    return cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def fit_view_pictures(pictures, cameras, out_dir: str | Path, model=None, overrides=None,
                      names: list[str] | None = None, dense: bool = True, log=print,
                      extra: dict | None = None) -> PictureReport:
    """One moment seen by several calibrated cameras: detect the person in each picture, fit
    one body to all views (``fit_views``) and write ``out_dir`` (``save_views_fit``).

    Args:
        pictures: V paths or (H,W,3) uint8 RGB arrays, undistorted, in the cameras' order.
        cameras: V bodyfit Cameras (batch 1) whose image_size matches each picture.
        dense: also use the person masks (silhouette) and the pictures (texture consistency).
    Returns:
        a PictureReport; a view without a person or with an unreadable picture is left out and
        reported (``log``); the fit fails only when no view sees the person.
    """
    from bodyfit.body_models import body_model
    from bodyfit.data.images import read_image
    from bodyfit.detectors import MediaPipePose, NoPersonError
    from bodyfit.fitting.multiview import fit_views

    out_dir = Path(out_dir)
    model = model if model is not None else body_model("anny")
    if len(pictures) != len(cameras):
        raise ValueError(f"got {len(pictures)} pictures for {len(cameras)} calibrated cameras: "
                         f"give one picture per camera, in the calibration's order.")
    names = names or [f"view{v}" for v in range(len(cameras))]
    images, dets, used_cams, used_names = [], [], [], []
    t0 = time.perf_counter()
    with MediaPipePose() as detector:
        for item, cam, name in zip(pictures, cameras, names):
            try:
                image = read_image(item) if not isinstance(item, np.ndarray) else item
                if tuple(image.shape[:2]) != tuple(cam.image_size):
                    raise ValueError(f"picture is {image.shape[1]}x{image.shape[0]} but the "
                                     f"calibration says {cam.image_size[1]}x{cam.image_size[0]}")
                det = detector.detect(image)
            except (FileNotFoundError, ValueError, NoPersonError) as e:
                log(f"view {name} left out: {e}")
                continue
            images.append([image])
            dets.append([det])
            used_cams.append(cam)
            used_names.append(name)
    if not used_cams:
        return PictureReport(out_dir.name, False, error="no view sees a person")
    views = _work_views(images, dets, used_cams, used_names)
    if not dense:
        views.masks = views.images = None
    t1 = time.perf_counter()
    result = fit_views(views, model, overrides=overrides)
    if not bool(result.valid[0]):
        return PictureReport(out_dir.name, False, error=result.messages[0])
    runtime = {"detection": t1 - t0, **result.runtime_s, "total": time.perf_counter() - t0}
    summary = save_views_fit(result, 0, out_dir, [im[0] for im in images], used_cams, runtime, extra)
    return PictureReport(out_dir.name, True, out_dir, summary=summary)


def fit_video_frames(frames, out_dir: str | Path, camera=None, model=None, overrides=None,
                     chunk: int = 50, dense: bool = True, progress: bool = True, log=print,
                     extra: dict | None = None) -> list[PictureReport]:
    """Consecutive frames of one person seen by one camera: one shape per chunk of ``chunk``
    frames, smooth motion (``fit_views(..., sequence=True)``), texture consistency between
    consecutive frames. Each frame gets ``out_dir/<name>/`` like ``bodyfit fit``.

    Args:
        frames: iterable of (name, (H,W,3) uint8 RGB) in time order.
        camera: a calibrated Camera (batch 1); None puts a default camera (``fov_deg``) at the
            origin.
    Returns:
        one PictureReport per frame; frames without a person are reported and skipped, and
        their neighbours are fitted without them.
    """
    from tqdm import tqdm

    from bodyfit.body_models import body_model
    from bodyfit.cameras import Camera, default_intrinsics
    from bodyfit.detectors import MediaPipePose, NoPersonError
    from bodyfit.fitting.fit import load_config
    from bodyfit.fitting.multiview import fit_views

    out_dir = Path(out_dir)
    model = model if model is not None else body_model("anny")
    cfg = load_config(overrides, name="fit_views")
    reports: list[PictureReport] = []
    frames = iter(frames)
    bar = tqdm(desc="frames", unit="frame", disable=not progress)
    with MediaPipePose() as detector:
        while True:
            batch = [f for _, f in zip(range(chunk), frames)]
            if not batch:
                break
            names = [n for n, _ in batch]
            pics = [im for _, im in batch]
            H, W = pics[0].shape[:2]
            cam = camera if camera is not None else Camera.identity(
                default_intrinsics((H, W), 1, cfg.fov_deg), (H, W))
            dets = []
            for name, pic in batch:
                try:
                    if pic.shape[:2] != (H, W):
                        raise ValueError(f"frame is {pic.shape[1]}x{pic.shape[0]}, not {W}x{H}")
                    dets.append(detector.detect(pic))
                except (ValueError, NoPersonError) as e:
                    log(f"frame {name}: {e}")
                    dets.append(None)
            views = _work_views([pics], [dets], [cam], ["video"])
            if not dense:
                views.masks = views.images = None
            result = fit_views(views, model, config=cfg, sequence=True)
            for b, name in enumerate(names):
                if not bool(result.valid[b]):
                    reports.append(PictureReport(name, False, error=result.messages[b]))
                    continue
                summary = save_views_fit(result, b, out_dir / name, [pics[b]], [cam],
                                         {k: v / len(names) for k, v in result.runtime_s.items()}, extra)
                reports.append(PictureReport(name, True, out_dir / name, summary=summary))
            bar.update(len(batch))
    bar.close()
    return reports
