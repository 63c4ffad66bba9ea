"""Pseudo-ground-truth at dataset scale: every person of a dataset fitted in batches, on one or
many processes, resumable, exported in the layout the field's training code loads.

The way SPIN's (Kolotouros et al. 2019), EFT's (Joo et al. 2021) and CameraHMR's (Patel & Black
2025) pseudo-ground-truth was made: 2D keypoints per person (from a COCO-format keypoint file or
from the detector), a fit per person through the one engine (:class:`bodyfit.fitting.Fitter`),
the fits kept with their quality.

Run folder ``out``::

    run.lock                  one run at a time (bodyfit.files.run_lock)
    people/<picture>.npz      the detector's people of each picture or video (folder input), once
    store/<sample>.npz        one record per person, written atomically once it is fitted
    store/corrupt/            records that could not be read back (set aside, refitted)
    export/pseudo_gt_<i>.npz  the shards, rebuilt from the store at the end of every run
    index.jsonl               one line per person: id, picture, box, energies, errors, flags

Killed at any point (kill -9), a rerun skips every committed record and fits the rest. With
``torchrun --nproc_per_node N``, rank r takes the people whose position in the (sorted) list is
r modulo N and is not yet done; a rerun with another N finishes every person exactly once.
The export is sorted by sample id, so it does not depend on how many processes made it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bodyfit.api import initialize
from bodyfit.body_models.conventions import keypoint_names
from bodyfit.cameras import default_intrinsics
from bodyfit.data.images import is_video
from bodyfit.distributed import barrier, hold_run_folder, rank_and_world
from bodyfit.files import atomic_save_npz, atomic_write_text
from bodyfit.observations import Observations

__all__ = ["Person", "coco_people", "picture_people", "run_pseudo_gt", "export", "RECORD_FIELDS"]

log = logging.getLogger(__name__)
RECORD_FIELDS = ("global_orient", "body_pose", "shape", "transl", "K", "keypoints", "box",
                 "energy", "joint_limits", "reprojection_error_px", "error_over_box", "converged",
                 "valid", "plausible", "steps")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Person:
    """One person to fit.

    Attributes:
        id: the sample id, unique in the dataset and safe as a file name.
        picture: the picture's path or COCO ``file_name``. person: the person's number in it
            (COCO: the annotation id).
        keypoints: (K,3) float32 x, y in pixels (OpenCV convention: pixel centres at integers)
            and confidence in [0,1]; 0 = missing.
        box: (4,) float32 person box x0, y0, x1, y1 in pixels.
        K: (3,3) float32 intrinsics in pixels (the default field of view when unknown).
        image_size: (H, W) pixels.
        problem: why the person cannot be fitted (then recorded as not valid with this reason,
            never fitted); None when fine.
        iuv: the picture's DensePose IUV PNG (``<stem>_IUV.png`` beside it), or None.
    """

    id: str
    picture: str
    person: int
    keypoints: np.ndarray
    box: np.ndarray
    K: np.ndarray
    image_size: tuple[int, int]
    problem: str | None = None
    iuv: str | None = None


def iuv_beside(picture: str | os.PathLike) -> str | None:
    """The DensePose IUV PNG of a picture, ``<stem>_IUV.png`` in its folder (the name DensePose's
    ``infer_simple.py`` gives it), or None when there is none."""
    p = Path(picture)
    q = p.with_name(f"{p.stem}_IUV.png")
    return str(q) if q.is_file() else None


def is_iuv_file(path: str | os.PathLike) -> bool:
    """True for a DensePose IUV PNG by its name (``*_IUV.png``): not a picture to fit."""
    return str(path).endswith("_IUV.png")


def _sample_id(picture: str, person: int) -> str:
    stem = _SAFE.sub("_", Path(picture).stem)[:60] or "picture"
    digest = hashlib.sha1(picture.encode()).hexdigest()[:8]
    return f"{stem}-{digest}_{person}"


def _intrinsics(size: tuple[int, int], fov_deg: float) -> np.ndarray:
    return default_intrinsics(size, 1, fov_deg)[0].numpy()


def coco_people(json_path: str | os.PathLike, images: str | os.PathLike | None = None,
                fov_deg: float = 55.0) -> list[Person]:
    """Every person annotation of a COCO-format keypoint file (Lin et al. 2014, the "person
    keypoints" task): ``images`` (id, file_name, width, height) and ``annotations`` (image_id,
    id, keypoints: 17 x (x, y, v), bbox: x, y, w, h).

    Keypoints with ``v > 0`` (labelled, visible or not) get confidence 1, the rest 0. COCO's
    pixel coordinates put the picture on [0, W] (pixel centres at +0.5): they are shifted by
    -0.5 to bodyfit's convention. The picture size comes from the file's width/height, else from
    the picture's header under ``images``. Intrinsics: ``fov_deg`` of the longer side.

    Returns:
        the people sorted by sample id; a person with something wrong (no picture size, a box
        outside the picture, NaN or a wrong number of keypoints) carries a ``problem``.
    Raises:
        ValueError: the file is not JSON or has no ``annotations`` list (names the file).
        FileNotFoundError: no such file.
    """
    path = Path(json_path)
    try:
        data = json.loads(path.read_text())
        annotations = data["annotations"]
        if not isinstance(annotations, list):
            raise TypeError("annotations is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a COCO keypoint file ({type(e).__name__}: {e}); it needs "
                         f"'images' and 'annotations' lists.") from None
    pictures = {im.get("id"): im for im in data.get("images", []) if isinstance(im, dict)}
    people = []
    for n, ann in enumerate(annotations):
        ann = ann if isinstance(ann, dict) else {}
        im = pictures.get(ann.get("image_id"), {})
        name = str(im.get("file_name", f"image_{ann.get('image_id', 'unknown')}"))
        pid = ann.get("id", n)
        pid = int(pid) if isinstance(pid, (int, float)) and math.isfinite(pid) else n
        problem = None
        try:
            kp = np.asarray(ann.get("keypoints", []), dtype=np.float32).reshape(17, 3)
        except (ValueError, TypeError):
            kp, problem = np.zeros((17, 3), np.float32), "not 17 COCO keypoints (x, y, v)"
        if problem is None and not np.isfinite(kp).all():
            problem = "keypoints hold NaN or inf"
        keypoints = np.zeros((17, 3), np.float32)
        seen = np.isfinite(kp).all(1) & (np.nan_to_num(kp[:, 2]) > 0)
        keypoints[seen, :2] = kp[seen, :2] - 0.5
        keypoints[seen, 2] = 1.0
        size = None
        if isinstance(im.get("height"), (int, float)) and isinstance(im.get("width"), (int, float)) \
                and im["height"] > 0 and im["width"] > 0:
            size = (int(im["height"]), int(im["width"]))
        elif images is not None:
            from bodyfit.data.images import picture_size

            try:
                size = picture_size(Path(images) / name)
            except OSError:
                size = None
        box = np.zeros(4, np.float32)
        bbox = ann.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
            box = np.array([x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5], np.float32)
        except (TypeError, ValueError):
            if seen.sum() >= 2:  # no box: the keypoints' extent
                box = np.concatenate([keypoints[seen, :2].min(0), keypoints[seen, :2].max(0)])
        if problem is None and size is None:
            problem = f"size of picture {name} unknown (no width/height in the file and no picture to read)"
        if problem is None and (not np.isfinite(box).all() or box[2] - box[0] < 1 or box[3] - box[1] < 1):
            problem = f"person box {bbox} is empty or not finite"
        if problem is None and (box[2] < 0 or box[3] < 0 or box[0] > size[1] - 1 or box[1] > size[0] - 1):
            problem = f"person box {bbox} lies outside the {size[1]}x{size[0]} picture"
        size = size or (1, 1)
        iuv = iuv_beside(Path(images) / name) if images is not None else None
        people.append(Person(_sample_id(name, pid), name, pid, keypoints, box.astype(np.float32),
                             _intrinsics(size, fov_deg), size, problem, iuv))
    return sorted(people, key=lambda p: p.id)


def picture_people(paths, out: str | os.PathLike, detector, max_pixels: int | None = None,
                   fov_deg: float = 55.0, detector_options: str = "") -> list[Person]:
    """Every person the detector finds in each picture, or in every frame of each video
    (MediaPipe-33 keypoints).

    Each picture's or video's detections are kept in ``out/people/`` (written once, atomically,
    a video's once all its frames are detected), so a rerun does not detect again. A picture or
    video that cannot be read, or a picture that shows nobody, gives no person; it is named in a
    warning. A video frame is named ``<video path>#frame_<index>`` (``Person.picture``, the
    export's imgname), its index counted from 0 in the file.

    Args:
        paths: picture or video files (videos: ``bodyfit.data.images.VIDEO_SUFFIXES``).
        detector: an object with ``detect_all(image) -> list[Detection]`` (``bodyfit.detectors``),
            or None to read only what was detected before (inputs never detected are left out).
        max_pixels: pictures above it are detected downscaled (``read_picture``); keypoints and
            boxes are mapped back to full resolution. Video frames are detected at full size.
        detector_options: the detector's settings, kept with its detections: detections made
            with other settings are made again (with a detector; without one they are read).
    Returns:
        the people sorted by sample id.
    """
    folder = Path(out) / "people"
    folder.mkdir(parents=True, exist_ok=True)
    people = []
    for path in paths:
        name = str(Path(path).resolve())  # the same picture gets the same ids from any working folder
        video = is_video(name)
        key = _sample_id(name, 0).rsplit("_", 1)[0]
        cache = folder / f"{key}.npz"
        found = None
        if cache.exists():
            try:
                with np.load(cache, allow_pickle=False) as d:
                    found = {k: d[k] for k in ("keypoints", "boxes", "size")}
                    found["frame"] = d["frame"] if "frame" in d else np.full(len(found["boxes"]), -1)
                    made_with = str(d["detector"]) if "detector" in d else ""
                if detector is not None and made_with != detector_options:
                    log.info("%s: detected with other settings (%s), detecting again (%s)", name,
                             made_with or "unknown", detector_options)
                    found = None
            except Exception as e:  # a damaged cache: detect again
                log.warning("%s unreadable (%s): detecting %s again", cache, e, name)
                found = None
        if found is None:
            if detector is None:  # not detected: it could not be read (reported when it was tried)
                continue
            try:
                found = _detect_video(name, detector) if video else _detect_picture(name, detector, max_pixels)
            except (OSError, ValueError) as e:
                log.warning("%s left out: %s", name, e)
                continue
            atomic_save_npz(cache, **found, detector=np.array(detector_options))
        if len(found["keypoints"]) == 0:
            log.warning("%s: nobody found", name)
        size = (int(found["size"][0]), int(found["size"][1]))
        K = _intrinsics(size, fov_deg)
        iuv = None if video else iuv_beside(name)
        counts: dict[int, int] = {}
        for kp, box, t in zip(found["keypoints"], found["boxes"], found["frame"].tolist()):
            picture = f"{name}#frame_{t:06d}" if t >= 0 else name
            i = counts[t] = counts.get(t, -1) + 1  # the person's number in its picture
            people.append(Person(_sample_id(picture, i), picture, i, kp, box, K, size, iuv=iuv))
    return sorted(people, key=lambda p: p.id)


def _found(dets, scale: float, size, frame: int) -> dict:
    """Detections as arrays: keypoints (N,33,3), boxes (N,4) at full resolution (``scale``:
    full over working size), size (H,W), frame (N,) the frame index (-1 for a picture)."""
    kps = np.stack([d.keypoints for d in dets]).copy() if dets else np.zeros((0, 33, 3), np.float32)
    boxes = np.stack([d.box for d in dets]) if dets else np.zeros((0, 4), np.float32)
    kps[..., :2] = (kps[..., :2] + 0.5) * scale - 0.5
    boxes = (boxes + 0.5) * scale - 0.5
    return {"keypoints": kps.astype(np.float32), "boxes": boxes.astype(np.float32),
            "size": np.array(size), "frame": np.full(len(dets), frame, dtype=np.int64)}


def _detect_picture(path: str, detector, max_pixels: int | None) -> dict:
    from bodyfit.data.images import read_picture

    image, full = read_picture(path, max_pixels)
    return _found(detector.detect_all(image), full[1] / image.shape[1], full, -1)


def _detect_video(path: str, detector) -> dict:
    """Every frame's people (one frame decoded at a time), with a progress bar."""
    from tqdm import tqdm

    from bodyfit.data.images import read_video_frames

    parts, size = [], None
    for frame, image in tqdm(read_video_frames(path), desc=f"detecting {Path(path).name}", unit="frame",
                             disable=not log.isEnabledFor(logging.INFO)):
        size = image.shape[:2]
        parts.append(_found(detector.detect_all(image), 1.0, size, int(frame.rsplit("_", 1)[1])))
    return {k: np.concatenate([p[k] for p in parts]) for k in ("keypoints", "boxes", "frame")} | {"size": np.array(size)}


def _record_path(out: Path, sample_id: str) -> Path:
    return out / "store" / f"{sample_id}.npz"


def _is_done(out: Path, person: Person) -> bool:
    """A record of this person is committed, made from the same keypoints (the input file or
    the detections may have changed since: then the person is fitted again)."""
    record = _load_record(_record_path(out, person.id))
    if record is None:
        return False
    same = record["keypoints"].shape == person.keypoints.shape and np.allclose(
        record["keypoints"], person.keypoints, equal_nan=True)
    if not same:
        log.info("%s: its keypoints changed since it was fitted, fitting it again", person.id)
    return same


def _load_record(path: Path) -> dict | None:
    """A committed record, or None when there is none; an unreadable one is set aside."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as d:
            record = {k: d[k] for k in d.files}
        missing = [k for k in RECORD_FIELDS if k not in record]
        if missing:
            raise ValueError(f"fields {missing} missing")
        return record
    except Exception as e:
        aside = path.parent / "corrupt" / path.name
        aside.parent.mkdir(exist_ok=True)
        os.replace(path, aside)
        log.warning("%s is unreadable (%s): moved to %s, the person is fitted again", path, e, aside)
        return None


def _plausible(valid: bool, flagged: str | None, message: str | None, joint_limits: float,
               shape_ok: bool) -> tuple[bool, str | None]:
    """Whether a fit may serve as supervision, and why not (its ``FitResult`` row: valid,
    flagged, message; its joint-limit energy; whether its shape is in the model's range)."""
    if not valid:
        return False, message or "not fitted"
    if flagged:
        return False, flagged
    if not joint_limits <= 1.0:
        return False, f"joint-limit energy {joint_limits:.2f} above 1 (a pose beyond anatomical ranges)"
    if not shape_ok:
        return False, "shape outside the model's range"
    return True, message


def _on_host(result, model) -> dict[str, np.ndarray]:
    """What a record reads of a batch's ``FitResult``, moved to the host once for the batch
    (one copy per field, not a read per person: on CUDA each read waits for the device):
    name -> (B, ...) array."""
    lo, hi = (0.0, 1.0) if model.shape_name == "phenotypes" else (-5.0, 5.0)
    fields = dict(result.params.as_dict())
    fields.update(energy=result.energies["total"], reprojection_error_px=result.reprojection_error_px,
                  error_over_box=result.error_over_box, converged=result.converged, valid=result.valid,
                  shape_ok=((result.params.shape >= lo) & (result.params.shape <= hi)).all(1))
    return {k: v.detach().cpu().numpy() for k, v in fields.items()}


def run_pseudo_gt(people: list[Person], out: str | os.PathLike, fitter, convention: str,
                  batch_size: int = 64, redo: bool = False, shard_size: int = 10000,
                  progress: bool = True) -> dict:
    """Fit every person not yet in the store, then export (see the module docstring).

    Args:
        people: the people (:func:`coco_people`, :func:`picture_people`), in one keypoint
            ``convention`` ("coco17", "mediapipe33").
        out: the run folder. fitter: a :class:`bodyfit.fitting.Fitter` (its model and config).
        batch_size: people fitted together. redo: fit people again that are done.
        shard_size: people per exported npz.
    Returns:
        {"people": N, "fitted": fitted by this process now, "done_before": skipped as done,
        "valid": valid fits in the store, "plausible": ..., "flagged": ...} (the last three
        from rank 0's export; None on other ranks).
    Raises:
        FolderLockedError: another run holds ``out``.
    """
    from tqdm import tqdm

    out = Path(out)
    rank, world = rank_and_world()
    with hold_run_folder(out, "bodyfit pseudo-gt"):
        (out / "store").mkdir(parents=True, exist_ok=True)
        barrier()
        mine = [p for i, p in enumerate(people) if i % world == rank]
        todo = [p for p in mine if redo or not _is_done(out, p)]
        done_before = len(mine) - len(todo)
        if done_before:
            log.info("rank %d: %d of its %d people already done, skipped", rank, done_before, len(mine))
        bar = tqdm(total=len(todo), desc=f"pseudo-gt rank {rank}" if world > 1 else "pseudo-gt",
                   unit="person", disable=not progress or not todo, dynamic_ncols=True)
        model = fitter.model
        regressor = None
        if fitter.config.init == "regressor" and todo:
            from bodyfit.regressors.keypoint_regressor import load_regressor

            regressor = load_regressor(model, convention)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            _fit_batch(batch, out, fitter, model, convention, regressor)
            bar.update(len(batch))
        bar.close()
        barrier()
        summary = {"people": len(people), "fitted": len(todo), "done_before": done_before}
        if rank == 0:
            summary.update(export(out, people, shard_size, model.name, convention))
        barrier()
    return summary


def _fit_batch(batch: list[Person], out: Path, fitter, model, convention: str, regressor) -> None:
    """Fit one batch and commit a record per person (people with a ``problem`` too, as not
    valid with that reason). People with a DensePose IUV file are fitted apart, on crops
    (:func:`_dense_observations`), when the config weighs the ``densepose`` energy."""
    fine = [p for p in batch if p.problem is None]
    iuvs = _read_iuvs(fine) if _weighs_densepose(fitter.config) else {}
    fitted: dict[str, tuple] = {}
    for group in ([p for p in fine if p.id not in iuvs], [p for p in fine if p.id in iuvs]):
        if not group:
            continue
        if group[0].id in iuvs:  # px: fit pixels per picture pixel
            obs, px = _dense_observations(group, [iuvs[p.id] for p in group], convention,
                                          fitter.config.render_size)
        else:
            obs = Observations.from_pictures(torch.as_tensor(np.stack([p.keypoints for p in group])),
                                             K=torch.as_tensor(np.stack([p.K for p in group])),
                                             boxes=torch.as_tensor(np.stack([p.box for p in group])),
                                             convention=convention)
            px = torch.ones(len(group))
        how = "regressor" if regressor is not None else "mean"
        result = fitter(obs, vertices=False, start=lambda o: initialize(o, model, how, regressor))
        limits = _joint_limits(fitter, obs, result).numpy()
        host = _on_host(result, model)
        fitted.update({p.id: (result, host, b, float(limits[b]), float(px[b])) for b, p in enumerate(group)})
    default = {k: v[0].cpu().numpy() for k, v in model.default_params(1).as_dict().items()}
    for p in batch:
        if p.id not in fitted:
            rec = dict(default)
            nan = np.float32(math.nan)
            rec.update(energy=nan, joint_limits=nan, reprojection_error_px=nan, error_over_box=nan,
                       converged=False, valid=False, plausible=False, steps=0, reason=p.problem)
        else:
            result, host, b, limits, px = fitted[p.id]
            rec = {k: host[k][b] for k in default}
            plausible, reason = _plausible(bool(host["valid"][b]), result.flagged[b], result.messages[b], limits,
                                           bool(host["shape_ok"][b]))
            rec.update(energy=float(host["energy"][b]), joint_limits=limits,
                       reprojection_error_px=float(host["reprojection_error_px"][b]) / px,
                       error_over_box=float(host["error_over_box"][b]),
                       converged=bool(host["converged"][b]), valid=bool(host["valid"][b]),
                       plausible=plausible, steps=sum(result.stage_steps.values()), reason=reason or "",
                       densepose=p.id in iuvs)
        rec.update(K=p.K, keypoints=p.keypoints, box=p.box, picture=p.picture, person=p.person,
                   image_size=np.array(p.image_size))
        atomic_save_npz(_record_path(out, p.id), **{k: np.asarray(v) for k, v in rec.items()})


def _weighs_densepose(config) -> bool:
    return any(st.weights.get("densepose", 0) for st in config.stages.values())


def _read_iuvs(people: list[Person]) -> dict[str, torch.Tensor]:
    """Each person's IUV (3,H,W) by id, for the people with an IUV file that can be read and
    matches the picture's size; the others are named in a warning and fitted without it."""
    from bodyfit.densepose import read_iuv_png

    out = {}
    for p in people:
        if p.iuv is None:
            continue
        try:
            iuv = read_iuv_png(p.iuv)
            if tuple(iuv.shape[1:]) != tuple(p.image_size):
                raise ValueError(f"it is {iuv.shape[2]}x{iuv.shape[1]} but the picture is "
                                 f"{p.image_size[1]}x{p.image_size[0]}")
        except (OSError, ValueError) as e:
            log.warning("%s: DensePose file %s left out (%s); fitted on keypoints alone", p.id, p.iuv, e)
            continue
        out[p.id] = iuv
    return out


def _dense_observations(group: list[Person], iuvs: list[torch.Tensor], convention: str,
                        size: int) -> tuple[Observations, torch.Tensor]:
    """Observations of people with IUV files, each on a square crop of ``size`` pixels around
    its box (1.2 times its longer side), so that pictures of any size share one batch.

    The crop camera keeps the camera centre and axes: ``K' = S (K - corner)`` with S the scale,
    so a body fitted in the crop is the body of the full picture (the same global_orient,
    body_pose, shape and transl). IUV pixels outside the person's box are set to background,
    which keeps other people's surfaces out where boxes do not overlap.

    Args:
        iuvs: per person its picture's IUV (3,H,W) (``read_iuv_png``, the picture's size).
    Returns:
        the observations (B samples, keypoints and K in crop pixels, iuv (B,3,size,size)), and
        (B,) crop pixels per picture pixel.
    """
    import cv2

    kps, Ks, boxes, crops, scales = [], [], [], [], []
    for p, iuv in zip(group, iuvs):
        x0, y0, x1, y1 = (float(v) for v in p.box)
        side = 1.2 * max(x1 - x0, y1 - y0, 1.0)
        left, top = 0.5 * (x0 + x1) - side / 2, 0.5 * (y0 + y1) - side / 2  # crop edges, picture px
        s = size / side
        # picture pixel x (centres at integers) -> crop pixel s (x - left + 0.5) - 0.5
        M = np.array([[s, 0, s * (0.5 - left) - 0.5], [0, s, s * (0.5 - top) - 0.5]])
        crop = cv2.warpAffine(iuv.permute(1, 2, 0).numpy(), M, (size, size), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        crop = torch.from_numpy(crop).permute(2, 0, 1).clone()
        bx = torch.tensor([x0, y0, x1, y1]) * s + torch.tensor([*M[:, 2], *M[:, 2]])
        u = torch.arange(size, dtype=torch.float32)
        inside = ((u[None] >= bx[0]) & (u[None] <= bx[2]) & (u[:, None] >= bx[1]) & (u[:, None] <= bx[3]))
        crop[0][~inside] = 0.0
        kp = torch.as_tensor(p.keypoints).clone()
        kp[:, :2] = kp[:, :2] * s + torch.as_tensor(M[:, 2], dtype=kp.dtype)
        K = torch.as_tensor(p.K, dtype=torch.float32).clone()
        K[:2] = K[:2] * s
        K[0, 2] += M[0, 2]
        K[1, 2] += M[1, 2]
        kps.append(kp), Ks.append(K), boxes.append(bx), crops.append(crop), scales.append(s)
    obs = Observations.from_pictures(torch.stack(kps), image_size=(size, size), K=torch.stack(Ks),
                                     boxes=torch.stack(boxes), convention=convention, iuv=torch.stack(crops))
    return obs, torch.tensor(scales)


def _joint_limits(fitter, obs, result) -> torch.Tensor:
    """(B,) joint-limit energy of the fits (unweighted)."""
    return fitter.energies_at(obs, result.params, names=["joint_limits"])["joint_limits"].detach().cpu()


def export(out: str | os.PathLike, people: list[Person], shard_size: int, model_name: str,
           convention: str) -> dict:
    """Write the shards and the index from the store: every person of ``people`` with a record,
    sorted by sample id (atomically; old shards beyond the new count are removed).

    Shard fields (N people; SPIN / CameraHMR conventions where they exist): ``imgname`` (N,)
    str, ``person_id`` (N,), ``center`` (N,2) box centre px, ``scale`` (N,) box size / 200 (SPIN),
    ``global_orient`` (N,3), ``body_pose`` (N,P,3) axis-angle, ``betas`` or ``phenotypes``
    (N,S), ``pose`` (N,3+3P) for SMPL-family models (SPIN's layout), ``transl`` (N,3) metres in
    the camera frame, ``cam_int`` (N,3,3), ``keypoints`` (N,K,3) (x, y px, confidence; the
    ``keypoint_convention``), ``valid``, ``plausible`` (N,) bool, ``error_over_box``, ``energy``.

    Returns:
        {"valid": ..., "plausible": ..., "flagged": ..., "shards": [...], "index": path}.
    """
    out = Path(out)
    rows, records = [], []
    for p in sorted(people, key=lambda p: p.id):
        rec = _load_record(_record_path(out, p.id))
        if rec is None:
            continue
        records.append(rec)
        box = [round(float(v), 2) for v in rec["box"]]
        rows.append({"id": p.id, "picture": p.picture, "person": p.person, "box": box,
                     "energy": _num(rec["energy"]), "joint_limits": _num(rec["joint_limits"]),
                     "keypoint_error_px": _num(rec["reprojection_error_px"]),
                     "error_over_box": _num(rec["error_over_box"]), "converged": bool(rec["converged"]),
                     "valid": bool(rec["valid"]), "plausible": bool(rec["plausible"]),
                     "densepose": bool(rec.get("densepose", False)),
                     "reason": str(rec.get("reason", "")) or None})
    atomic_write_text(out / "index.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    folder = out / "export"
    folder.mkdir(exist_ok=True)
    shards = []
    for i, start in enumerate(range(0, len(records), shard_size)):
        part = records[start:start + shard_size]
        path = folder / f"pseudo_gt_{i:04d}.npz"
        atomic_save_npz(path, **_shard(part, model_name, convention))
        shards.append(str(path))
    for stale in sorted(folder.glob("pseudo_gt_*.npz"))[len(shards):]:
        stale.unlink()
    return {"valid": sum(r["valid"] for r in rows), "plausible": sum(r["plausible"] for r in rows),
            "flagged": sum(r["valid"] and not r["plausible"] for r in rows), "shards": shards,
            "index": str(out / "index.jsonl")}


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _shard(records: list[dict], model_name: str, convention: str) -> dict:
    def stack(key, dtype=np.float32):
        return np.stack([np.asarray(r[key]) for r in records]).astype(dtype)

    box = stack("box")
    fields = {
        "imgname": np.array([str(r["picture"]) for r in records]),
        "person_id": stack("person", np.int64),
        "center": (box[:, :2] + box[:, 2:]) / 2,
        "scale": np.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) / 200.0,
        "global_orient": stack("global_orient"), "body_pose": stack("body_pose"),
        "transl": stack("transl"), "cam_int": stack("K"), "keypoints": stack("keypoints"),
        "valid": stack("valid", bool), "plausible": stack("plausible", bool),
        "error_over_box": stack("error_over_box"), "energy": stack("energy"),
        "model": np.array(model_name), "keypoint_convention": np.array(convention),
        "keypoint_names": np.array(keypoint_names(convention)),
    }
    shape = stack("shape")
    if model_name == "anny":
        fields["phenotypes"] = shape
    else:
        fields["betas"] = shape
        fields["pose"] = np.concatenate([fields["global_orient"], fields["body_pose"].reshape(len(records), -1)], 1)
    return fields
