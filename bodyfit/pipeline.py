"""The main job: pictures -> detector keypoints (and masks) -> start -> Fitter -> files.

One driver (:func:`fit_scenes`) runs every command's work: a *scene* is V views x T frames of
pictures (a picture: 1 x 1; calibrated views of one moment: V x 1; a video chunk: 1 x T, fitted
as a sequence). One writer (:func:`save_result`) writes each fitted sample's folder:
``fit.npz`` (parameters, joints, vertices, faces, K, R, t, keypoints), ``fit.json`` (model,
convention, source, errors, energies, runtimes, messages), ``mesh.ply`` (world frame, metres)
and an overlay picture per view. A picture that cannot be read or holds no person is reported
and left out; the rest go on.

Pictures above the pixel budget (``detector.max_pixels``) come in downscaled
(``bodyfit.data.images.read_picture``) with their full size in ``Scene.full_sizes``: detection
and fitting run at that size, and keypoints, K and errors are written at full resolution (the
overlay at the working size; ``downscaled`` in fit.json). :func:`done_result` tells whether a
result folder already holds the fit of a given picture (reruns skip it unless asked to redo).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bodyfit.api import initialize
from bodyfit.cameras import Camera, default_intrinsics
from bodyfit.fitting import Fitter, FitResult, load_config
from bodyfit.observations import Observations

log = logging.getLogger(__name__)
WORK_SIZE = 640  # longer side at which pictures and masks are handed to the dense energies


@dataclass
class Scene:
    """One fitting job.

    Attributes:
        pictures: ``pictures[v][t]`` (H,W,3) uint8 RGB, or None where a view has no picture.
        out_names: T output folder names relative to the run's folder ("" = the folder itself).
        cameras: V calibrated Cameras (batch 1) at the pictures' resolution; None: one view
            with a default camera at the origin (``fov_deg`` of the longer side).
        view_names: V names (overlay file names, messages).
        sequence: the T frames are consecutive frames of one person.
        extra: added to every fit.json (e.g. the source files).
        full_sizes: per view the (H, W) of the picture files when ``pictures`` were read
            downscaled for the pixel budget (``read_picture``: the working size is
            ``working_size(full, max_pixels)``, the scale its longer side over the full one);
            None (or None for a view): the pictures are at full size.
    """

    pictures: list[list[np.ndarray | None]]
    out_names: list[str]
    cameras: list[Camera] | None = None
    view_names: list[str] | None = None
    sequence: bool = False
    extra: dict = field(default_factory=dict)
    full_sizes: list[tuple[int, int] | None] | None = None

    def full_size(self, v: int) -> tuple[int, int]:
        """View ``v``'s full-resolution (H, W): ``full_sizes``, else its pictures' size, else
        its camera's.

        Raises:
            ValueError: the view has no picture and no camera.
        """
        if self.full_sizes is not None and self.full_sizes[v] is not None:
            return tuple(int(x) for x in self.full_sizes[v])
        pic = next((p for p in self.pictures[v] if p is not None), None)
        if pic is not None:
            return tuple(pic.shape[:2])
        if self.cameras is not None:
            return tuple(self.cameras[v].image_size)
        raise ValueError(f"view {v} has no picture and no camera")

    def downscaled(self, names: list[str]) -> dict:
        """``{view name: {"original_hw", "working_hw", "scale"}}`` for the views whose
        pictures are downscaled (the fit.json note); empty when none is."""
        out = {}
        for v, name in enumerate(names):
            pic = next((p for p in self.pictures[v] if p is not None), None)
            if pic is not None and self.picture_scale(v) < 1.0:
                out[name] = {"original_hw": list(self.full_size(v)), "working_hw": list(pic.shape[:2]),
                             "scale": self.picture_scale(v)}
        return out

    def picture_scale(self, v: int) -> float:
        """View ``v``'s picture pixels per full-resolution pixel (1 unless downscaled)."""
        pic = next((p for p in self.pictures[v] if p is not None), None)
        return 1.0 if pic is None else max(pic.shape[:2]) / max(self.full_size(v))


@dataclass
class PictureReport:
    """Outcome of one output folder: ``ok``; ``out_dir`` when written (or found done:
    ``skipped``); ``error`` when not; ``flagged``: why a written fit is far off (see
    ``FitResult.flagged``)."""

    name: str
    ok: bool
    out_dir: Path | None = None
    error: str | None = None
    summary: dict | None = None
    skipped: bool = False  # already done by an earlier run (``done_result``), not fitted again

    @property
    def flagged(self) -> str | None:
        return (self.summary or {}).get("flagged")


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    return a if a.shape[:2] == tuple(size) else cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _rescale(xy: np.ndarray, s: float) -> np.ndarray:
    """(...,2|3) pixel coordinates at one resolution -> at 1/``s`` times it (pixel centres kept)."""
    out = np.array(xy, dtype=np.float64, copy=True)
    out[..., :2] = (out[..., :2] + 0.5) / s - 0.5
    return out


def full_cameras(scene: Scene, fov_deg: float) -> list[Camera]:
    """Per view the full-resolution Camera (batch 1, float32): the scene's calibrated cameras,
    else one at the origin with ``default_intrinsics`` of the full picture size."""
    if scene.cameras is None:
        H, W = scene.full_size(0)
        return [Camera.identity(default_intrinsics((H, W), 1, fov_deg), (H, W))]
    return [Camera(*(x.float() for x in (c.K, c.R, c.t)), tuple(c.image_size)) for c in scene.cameras]


def observe(scene: Scene, detections, fov_deg: float, dense: bool) -> tuple[Observations, list[float]]:
    """Observations of a scene from its detections (``detections[v][t]``, None where nobody was
    found; keypoints in the pictures' pixels, which may be downscaled: ``Scene.full_sizes``):
    keypoints, and with ``dense`` the person masks and pictures, at the working resolution:
    full resolution for keypoints only, longer side at most WORK_SIZE where ``dense``. Returns
    them and each view's scale from full resolution to the working one."""
    V, T = len(scene.pictures), len(scene.out_names)
    cameras = full_cameras(scene, fov_deg)
    kps, masks, images, work, scales = [], [], [], [], []
    for v in range(V):
        full = cameras[v]
        cam, s = full.at_most(WORK_SIZE) if dense else (full, 1.0)
        work.append(cam)
        scales.append(s)
        to_work = s / scene.picture_scale(v)  # picture pixels -> working pixels
        h, w = cam.image_size
        kp_v, mask_v, img_v = [], [], []
        for t in range(T):
            det, pic = detections[v][t], scene.pictures[v][t]
            kp = torch.zeros(33, 3)
            mask = np.zeros((h, w), np.float32)
            if det is not None:
                kp = torch.as_tensor(det.keypoints, dtype=torch.float32).clone()
                kp[:, :2] = (kp[:, :2] + 0.5) * to_work - 0.5
                if dense and det.mask is not None:
                    mask = _resize(det.mask.astype(np.float32), (h, w))
            kp_v.append(kp)
            mask_v.append(torch.as_tensor(mask))
            img_v.append(torch.as_tensor(_resize(pic, (h, w)) if pic is not None else np.zeros((h, w, 3), np.uint8)))
        kps.append(torch.stack(kp_v))
        masks.append(torch.stack(mask_v))
        images.append(torch.stack(img_v))
    obs = Observations(torch.stack(kps, 1), work, "mediapipe33",
                       masks=masks if dense else None, images=images if dense else None,
                       names=scene.view_names, sequence=scene.sequence)
    return obs, scales


def fit_scenes(scenes, out_dir: str | Path, model=None, config=None, dense: bool = False,
               progress: bool = True) -> list[PictureReport]:
    """Detect, fit and write every scene; one report per output folder, in order.

    Args:
        scenes: iterable of :class:`Scene`.
        out_dir: the run's folder.
        model: a BodyModel (Anny when None). config: a FitConfig (``configs/fit.yaml``).
        dense: also hand person masks and pictures to the fit (silhouette, texture).
    """
    from tqdm import tqdm

    from bodyfit.body_models import body_model
    from bodyfit.detectors import MediaPipePose, NoPersonError

    out_dir = Path(out_dir)
    model = model if model is not None else body_model("anny")
    cfg = config if config is not None else load_config()
    fitter = Fitter(model, cfg)
    det_cfg = cfg.detector
    reports: list[PictureReport] = []
    with MediaPipePose(min_detection_confidence=det_cfg.min_detection_confidence,
                       enable_segmentation=det_cfg.enable_segmentation,
                       model_complexity=det_cfg.model_complexity) as detector:
        bar = tqdm(scenes, desc="fitting", unit="scene", disable=not progress)
        for scene in bar:
            t0 = time.perf_counter()
            names = scene.view_names or [f"view{v}" for v in range(len(scene.pictures))]
            dets = []
            for v, pics in enumerate(scene.pictures):
                dets.append([])
                for t, pic in enumerate(pics):
                    where = "/".join(x for x in (scene.out_names[t], names[v] if len(names) > 1 else "") if x)
                    try:
                        if pic is None:
                            raise ValueError("no picture")
                        full = scene.full_size(v)
                        if scene.cameras is not None and full != tuple(scene.cameras[v].image_size):
                            H, W = scene.cameras[v].image_size
                            raise ValueError(f"picture is {full[1]}x{full[0]} but the "
                                             f"calibration says {W}x{H}")
                        dets[v].append(detector.detect(pic))
                    except (ValueError, NoPersonError) as e:
                        log.warning("%s left out: %s", where or "picture", e)
                        dets[v].append(None)
            if all(d is None for per_view in dets for d in per_view):
                reports += [PictureReport(n or out_dir.name, False, error="no person found")
                            for n in scene.out_names]
                continue
            t1 = time.perf_counter()
            obs, scales = observe(scene, dets, cfg.fov_deg, dense)
            cams = full_cameras(scene, cfg.fov_deg)
            extra = dict(scene.extra)
            shrunk = scene.downscaled(names)
            if shrunk:  # one view: its entry itself; several: per view name
                extra["downscaled"] = {
                    **(shrunk[names[0]] if len(names) == 1 else shrunk), "note": (f"above the pixel budget (detector.max_pixels={det_cfg.max_pixels}): "
                                       "detected and fitted downscaled; keypoints, K and errors are at the "
                                       "original size, the overlay at the working size")}
            result = fitter(obs, initialize(obs, model, cfg.init), vertices=True)
            T = len(scene.out_names)
            runtime = {"detection": (t1 - t0) / T, **{k: v / T for k, v in result.runtime_s.items()},
                       "total": (time.perf_counter() - t0) / T}
            for t, name in enumerate(scene.out_names):
                if not bool(result.valid[t]):
                    reports.append(PictureReport(name or out_dir.name, False, error=result.messages[t]))
                    continue
                target = out_dir / name
                try:
                    summary = save_result(result, t, target, [p[t] for p in scene.pictures], scales,
                                          cams, runtime, extra)
                except OSError as e:  # a full disk, a read-only or occupied --out: this one fails
                    log.error("%s: could not write the result: %s", target, e)
                    reports.append(PictureReport(name or out_dir.name, False, error=f"could not write: {e}"))
                    continue
                reports.append(PictureReport(name or out_dir.name, True, target, summary=summary))
    return reports


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def save_result(result: FitResult, b: int, out_dir: str | Path, pictures=None, scales=None,
                full_cameras: list[Camera] | None = None, runtime_s: dict | None = None,
                extra: dict | None = None) -> dict:
    """Write sample ``b`` of ``result`` to ``out_dir``, all or nothing: the files are written into
    a temporary folder beside it, which then replaces ``out_dir``; an interrupted write leaves
    the previous folder (if any) as it was.

    Files: ``fit.npz`` (``global_orient``, ``body_pose``, ``phenotypes`` (Anny) or ``betas``,
    ``transl``, ``joints``, ``vertices``, ``faces``; ``K``, ``R``, ``t``, ``keypoints``: (3,3),
    (3,3), (3,), (K,3) for one view, with a leading view axis for several), ``fit.json``,
    ``mesh.ply`` (world frame, metres) and ``overlay.png`` (one view) or ``overlay_<view>.png``.

    Args:
        pictures: per view the picture or None (no overlay for that view), at full resolution
            or downscaled (the overlay is drawn at the picture's size).
        scales: per view the working resolution over the full one (1 when the fit ran at full
            resolution); keypoints, projections and errors are written at full resolution.
        full_cameras: per view the full-resolution Camera (batch 1); the result's otherwise.
    Returns:
        the fit.json summary.
    Raises:
        ValueError: the sample was not fitted (``valid`` False): an invalid fit is never stored.
    """
    import trimesh

    from bodyfit.data.images import write_image
    from bodyfit.renderers.views import overlay_picture

    if not bool(result.valid[b]):
        raise ValueError(f"refusing to store an invalid fit: {result.messages[b]}")
    out_dir = Path(out_dir)
    V = len(result.cameras)
    scales = scales or [1.0] * V
    cams = full_cameras or [result.camera(v).index(slice(b, b + 1)) for v in range(V)]
    p = {k: v[b].detach().cpu().numpy() for k, v in result.params.as_dict().items()}
    arrays = dict(global_orient=p["global_orient"], body_pose=p["body_pose"], transl=p["transl"],
                  joints=result.joints[b].cpu().numpy(), faces=result.faces.cpu().numpy())
    arrays["phenotypes" if result.model_name == "anny" else "betas"] = p["shape"]
    if result.vertices is not None:
        arrays["vertices"] = result.vertices[b].cpu().numpy()
    K = np.stack([c.K[-1].cpu().numpy() for c in cams])
    R = np.stack([c.R[-1].cpu().numpy() for c in cams])
    t = np.stack([c.t[-1].cpu().numpy() for c in cams])
    kp = np.stack([_rescale(result.keypoints[b, v].cpu().numpy(), scales[v]) for v in range(V)])
    proj = np.stack([_rescale(result.projected[b, v].cpu().numpy(), scales[v]) for v in range(V)])
    one = V == 1
    arrays.update(K=K[0] if one else K, R=R[0] if one else R, t=t[0] if one else t,
                  keypoints=kp[0] if one else kp)
    view_err = [_finite(result.view_error_px[b, v] / scales[v]) for v in range(V)]
    boxes = [float(result.box_height_px[b, v] / scales[v]) for v in range(V)]
    err_px = np.nanmean([e for e in view_err if e is not None]) if any(e is not None for e in view_err) else None
    summary = {
        "model": result.model_name,
        "keypoint_convention": result.convention,
        "reprojection_error_px": _finite(err_px) if err_px is not None else None,
        "reprojection_error_over_box": _finite(result.error_over_box[b]),
        "box_height_px": float(np.mean([bx for bx, e in zip(boxes, view_err) if e is not None])),
        "visible_keypoints": int((result.keypoints[b, ..., 2] > 0).sum()),
        "views": {n: {"reprojection_error_px": view_err[v], "box_height_px": boxes[v],
                      "reprojection_error_over_box": None if view_err[v] is None else view_err[v] / boxes[v]}
                  for v, n in enumerate(result.view_names)},
        "energies": {k: float(v[b]) for k, v in result.energies.items()},
        "skipped_energies": result.skipped_energies,
        "converged": bool(result.converged[b]),
        "flagged": result.flagged[b] if result.flagged else None,
        "stage_steps": result.stage_steps,
        "messages": [result.messages[b]] if result.messages[b] else [],
        "runtime_s": runtime_s or {},
        "frame": ("OpenCV camera: x right, y down, z forward; metres"
                  if one and np.allclose(R[0], np.eye(3)) and not t[0].any()
                  else "world frame of the calibration; metres; cameras map X -> R X + t (OpenCV)"),
        **(extra or {}),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        np.savez_compressed(tmp / "fit.npz", **arrays)
        (tmp / "fit.json").write_text(json.dumps(summary, indent=2))
        if "vertices" in arrays:
            trimesh.Trimesh(arrays["vertices"], arrays["faces"], process=False).export(tmp / "mesh.ply")
            for v, name in enumerate(result.view_names):
                if pictures is None or pictures[v] is None:
                    continue
                Kp, kpp, projp = K[v], kp[v], proj[v]
                H, W = cams[v].image_size
                if tuple(pictures[v].shape[:2]) != (H, W):  # a downscaled picture: draw at its size
                    sp = max(pictures[v].shape[:2]) / max(H, W)
                    Kp = Kp.copy()
                    Kp[:2, :2] *= sp
                    Kp[:2, 2] = (Kp[:2, 2] + 0.5) * sp - 0.5
                    kpp, projp = _rescale(kpp, 1 / sp), _rescale(projp, 1 / sp)
                pic = overlay_picture(pictures[v], arrays["vertices"] @ R[v].T + t[v], arrays["faces"], Kp,
                                      kpp, projp)
                write_image(tmp / ("overlay.png" if one else f"overlay_{name}.png"), pic)
        old = previous_result(out_dir)
        _publish(tmp, out_dir)
        _say_replaced(out_dir, old, summary)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary


RESULT_FILES = ("fit.npz", "fit.json", "mesh.ply", "overlay.png")


def previous_result(folder: str | Path) -> dict | None:
    """The fit.json summary of the finished result in ``folder``, or None: no folder, no
    ``fit.npz``, or a ``fit.json`` that is missing or not a JSON object (result folders are
    published whole, so both files present means a complete result)."""
    folder = Path(folder)
    try:
        if not (folder / "fit.npz").is_file():
            return None
        summary = json.loads((folder / "fit.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def done_result(folder: str | Path, source_sha1: str, model: str | None = None) -> dict | None:
    """The fit.json summary of ``folder`` when it already holds the finished fit of the picture
    whose content has SHA-1 ``source_sha1`` (hex), made with body model ``model`` when given;
    None otherwise (nothing there, another picture or model, an unreadable result). Reruns
    (``bodyfit fit``, pseudo-GT) skip such a picture unless asked to redo it."""
    summary = previous_result(folder)
    if summary is None or summary.get("source_sha1") != source_sha1:
        return None
    if model is not None and summary.get("model") != model:
        return None
    return summary


def _describe(summary: dict) -> str:
    """A previous result in a few words: its model, source and the source's SHA-1."""
    src = summary.get("source")
    src = src if isinstance(src, str) else (", ".join(map(str, src)) if isinstance(src, list) else "?")
    sha = summary.get("source_sha1")
    sha = f", sha1 {sha[:10]}" if isinstance(sha, str) else ""
    return f"{summary.get('model', '?')} fit of {src}{sha}"


def _say_replaced(out_dir: Path, old: dict | None, new: dict) -> None:
    """Log that the result ``old`` (a fit.json summary; None: there was none) in ``out_dir``
    was replaced by ``new``: a warning when it came from another picture or model, else (a
    redo) an info line."""
    if old is None:
        return
    same = (old.get("source_sha1") is not None and old.get("source_sha1") == new.get("source_sha1")
            and old.get("model") == new.get("model"))
    if same:
        log.info("%s: replaced the previous result (%s): fitted again", out_dir, _describe(old))
    else:
        log.warning("%s: replaced the previous result (%s) by the %s", out_dir, _describe(old),
                    _describe(new))


def _publish(tmp: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the finished folder ``tmp`` (same parent): its files are flushed
    to disk first, then the old folder is moved aside, the new one renamed into place and the
    old one removed, so that ``out_dir`` is always either the old or the new, complete result.

    Raises:
        FileExistsError: ``out_dir`` holds files that are not a previous result (it is never
            replaced then: nothing of the user's is deleted).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file, not a folder: choose another --out.")
    if out_dir.exists():
        foreign = [f.name for f in out_dir.iterdir()
                   if f.name not in RESULT_FILES and not (f.name.startswith("overlay_") and f.suffix == ".png")]
        if foreign:
            raise FileExistsError(f"{out_dir} exists and holds other files ({', '.join(sorted(foreign)[:3])}"
                                  f"{'...' if len(foreign) > 3 else ''}): choose an empty or new --out folder.")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    fd = os.open(out_dir.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
