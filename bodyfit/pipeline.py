"""The main job: pictures -> detector keypoints (and masks) -> start -> Fitter -> files.

One driver (:func:`fit_scenes`) runs every command's work: a *scene* is V views x T frames of
pictures (a picture: 1 x 1; calibrated views of one moment: V x 1; a video chunk: 1 x T, fitted
as a sequence). Two writers share one way of writing a fitted sample:

* :func:`save_result` (demo, ``fit_scenes`` without ``people``: one person per picture) writes each fitted
  sample's folder: ``fit.npz`` (parameters, joints, vertices, faces, K, R, t, keypoints),
  ``fit.json`` (model, convention, source, errors, energies, runtimes, messages), ``mesh.ply``
  and ``mesh.glb`` (world frame, metres) and an overlay picture per view.
* :func:`save_people` (``bodyfit fit``, ``bodyfit fit-views``, ``fit_scenes(people=True)``:
  every person of a picture, or of one moment seen by calibrated views after
  :func:`associate_people` grouped each view's detections into people, fitted as one batch)
  writes the scene's folder: ``person_<k>/`` with those four files per
  person (k = 0 the largest box; several views: the person seen in the most views), one
  ``overlay.png`` (``overlay_<view>.png``) with every person in its colour in depth order, and
  ``people.json`` (per person: id, box, detector score, errors, valid, flagged, truncated, file
  paths; several views: per view the detection, and the ``unmatched`` detections). A video
  (``bodyfit fit-video``) is tracked (:func:`_fit_tracks`, :mod:`bodyfit.tracking`), each track
  fitted as a sequence, and each frame's folder written the same way with ``person_<track id>/``. A person who cannot be fitted is listed, not written; the others are.
  A person cut by the frame is fitted on what is seen and noted ``truncated``
  (:func:`truncation`).

Either folder is published whole (written into a temporary folder, then renamed into place):
complete or absent, never a mix. A picture that cannot be read or holds no person is reported
and left out; the rest go on.

Pictures above the pixel budget (``detector.max_pixels``) come in downscaled
(``bodyfit.data.images.read_picture``) with their full size in ``Scene.full_sizes``: detection
and fitting run at that size, and keypoints, boxes, K and errors are written at full resolution
(the overlay at the working size; ``downscaled`` in fit.json). :func:`done_result` tells whether
a result folder already holds the fit of a given picture (reruns skip it unless asked to redo):
for every person, a ``people.json`` of the same picture content (SHA-1), body model and
detector options.
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
from bodyfit.association import DEFAULT_GATE
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


def observe(scene: Scene, detections, fov_deg: float, dense: bool,
            frames: list[int] | None = None) -> tuple[Observations, list[float]]:
    """Observations of a scene from its detections: keypoints and the detector's world landmarks
    (``Detection.world_keypoints``, metres; zeros for a view without them, None when no view has
    any), and with ``dense`` the person masks and pictures, at the working resolution: full
    resolution for keypoints only, longer side at most WORK_SIZE where ``dense``. Returns them and each view's scale from full
    resolution to the working one.

    Args:
        detections: ``detections[v][b]``: sample ``b``'s Detection in view ``v`` (keypoints in
            the pictures' pixels, which may be downscaled: ``Scene.full_sizes``), None where
            nobody was found.
        frames: per sample the index ``t`` of its picture in ``scene.pictures[v]``; None: sample
            ``b`` is frame ``b`` (one person per frame). Several people of one picture: their
            samples share the frame.
    Raises:
        ValueError: ``frames`` and ``detections`` disagree on the number of samples.
    """
    V = len(scene.pictures)
    B = len(detections[0])
    frames = list(range(B)) if frames is None else list(frames)
    if len(frames) != B or any(len(d) != B for d in detections):
        raise ValueError(f"observe: {len(frames)} frame indices for {[len(d) for d in detections]} detections per view")
    cameras = full_cameras(scene, fov_deg)
    kps, worlds, masks, images, work, scales = [], [], [], [], [], []
    for v in range(V):
        full = cameras[v]
        cam, s = full.at_most(WORK_SIZE) if dense else (full, 1.0)
        work.append(cam)
        scales.append(s)
        to_work = s / scene.picture_scale(v)  # picture pixels -> working pixels
        h, w = cam.image_size
        kp_v, world_v, mask_v, img_v = [], [], [], []
        for b, t in enumerate(frames):
            det, pic = detections[v][b], scene.pictures[v][t]
            kp = torch.zeros(33, 3)
            world = getattr(det, "world_keypoints", None) if det is not None else None
            world_v.append(torch.zeros(33, 3) if world is None else torch.as_tensor(world, dtype=torch.float32))
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
        worlds.append(torch.stack(world_v))
        masks.append(torch.stack(mask_v))
        images.append(torch.stack(img_v))
    obs = Observations(torch.stack(kps, 1), work, "mediapipe33",
                       masks=masks if dense else None, images=images if dense else None,
                       names=scene.view_names, sequence=scene.sequence,
                       world_keypoints=torch.stack(worlds, 1) if any(bool(w.any()) for w in worlds) else None)
    return obs, scales


def _open_detector(det_cfg, people: bool):
    """The detector of a run: ``MultiPersonPose`` (``det_cfg.setting``) for every person, the
    legacy single-person ``MediaPipePose`` otherwise; built once, from the config."""
    from bodyfit.detectors import MediaPipePose, MultiPersonPose

    common = dict(min_detection_confidence=det_cfg.min_detection_confidence,
                  enable_segmentation=det_cfg.enable_segmentation,
                  model_complexity=det_cfg.model_complexity,
                  landmark_model_path=det_cfg.landmark_model_path)
    return MultiPersonPose(det_cfg.setting, **common) if people else MediaPipePose(**common)


def fit_scenes(scenes, out_dir: str | Path, model=None, config=None, dense: bool = False,
               progress: bool = True, people: bool = False) -> list[PictureReport]:
    """Detect, fit and write every scene; one report per output folder, in order.

    Args:
        scenes: iterable of :class:`Scene`.
        out_dir: the run's folder.
        model: a BodyModel (Anny when None). config: a FitConfig (``configs/fit.yaml``).
        dense: also hand person masks and pictures to the fit (silhouette, texture).
        people: fit every person of each scene (``bodyfit fit``, ``bodyfit fit-views``): each
            scene must be one moment (one frame), one picture or one per calibrated view; the
            multi-person detector (``detector.setting``) finds the people of each picture,
            :func:`select_people` keeps those the config asks for (``detector.max_people``,
            ``detector.min_box_height``, per view), several views are associated into people
            (:func:`associate_people`: people seen in one view only and detections of nobody are
            listed in people.json's ``unmatched``, not fitted), all are fitted as one batch and
            :func:`save_people` writes the scene's folder. Otherwise one person per picture: the
            legacy detector's, written by :func:`save_result`.
    Raises:
        ValueError: with ``people``, a scene of several frames, or of several views without
            cameras.
    """
    from tqdm import tqdm

    from bodyfit.body_models import body_model
    from bodyfit.detectors import NoPersonError

    out_dir = Path(out_dir)
    model = model if model is not None else body_model("anny")
    cfg = config if config is not None else load_config()
    fitter = Fitter(model, cfg)
    det_cfg = cfg.detector
    reports: list[PictureReport] = []
    tracker = None  # one for the run: sequence scenes are consecutive chunks of one video
    with _open_detector(det_cfg, people) as detector:
        bar = tqdm(scenes, desc="fitting", unit="scene", disable=not progress)
        for scene in bar:
            t0 = time.perf_counter()
            names = scene.view_names or [f"view{v}" for v in range(len(scene.pictures))]
            many = len(scene.pictures) > 1
            if people and scene.sequence and not many:  # a video chunk: people tracked over frames
                if tracker is None:
                    from bodyfit.tracking import Tracker

                    tracker = Tracker(max_missed=det_cfg.track_max_missed,
                                      min_similarity=det_cfg.track_min_similarity)
                reports += _fit_tracks(scene, detector, tracker, fitter, model, cfg, dense, out_dir, t0)
                continue
            if people and (len(scene.out_names) != 1 or (many and scene.cameras is None)):
                raise ValueError("fit_scenes(people=True) fits one moment per scene: one picture, or one "
                                 "picture per calibrated view; or a sequence of one view")
            dets, frames, chosen, dropped = [], None, [], []
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
                        if people:
                            kept, left = select_people(detector.detect_all(pic), pic.shape[:2],
                                                       det_cfg.max_people, det_cfg.min_box_height)
                            dets[v] += kept
                            dropped += [{"view": names[v], **d} for d in left] if many else left
                        else:
                            dets[v].append(detector.detect(pic))
                    except (ValueError, NoPersonError) as e:
                        log.warning("%s left out: %s", where or "picture", e)
                        if not people:
                            dets[v].append(None)
            unmatched, anchors = [], None
            if people and many:  # which detection of each view is which person
                found = [list(d) for d in dets]
                dets, chosen, unmatched, anchors = associate_people(scene, found, names, cfg.fov_deg,
                                                                    det_cfg.association_gate)
                if not chosen and any(found):
                    why = (f"no person seen in two views or more ({sum(map(len, found))} detections, none "
                           "consistent with one in another view: see the log)")
                    for u in unmatched:
                        log.warning("view %s detection %d left out: %s", u["view"], u["detection"], u["why"])
                    reports.append(PictureReport(scene.out_names[0] or out_dir.name, False, error=why))
                    continue
            elif people:
                chosen = [person_notes(d, scene.picture_scale(0)) for d in dets[0]]
            if people:
                frames = [0] * len(dets[0])
            if all(d is None for per_view in dets for d in per_view):
                why = "no person found"
                if dropped:
                    why += (f" ({len(dropped)} found, none kept: {dropped[0]['why']}"
                            f"{'; ...' if len(dropped) > 1 else ''})")
                reports += [PictureReport(n or out_dir.name, False, error=why) for n in scene.out_names]
                continue
            t1 = time.perf_counter()
            obs, scales = observe(scene, dets, cfg.fov_deg, dense, frames)
            cams = full_cameras(scene, cfg.fov_deg)
            extra = dict(scene.extra)
            shrunk = scene.downscaled(names)
            if shrunk:  # one view: its entry itself; several: per view name
                extra["downscaled"] = {
                    **(shrunk[names[0]] if len(names) == 1 else shrunk), "note": (f"above the pixel budget (detector.max_pixels={det_cfg.max_pixels}): "
                                       "detected and fitted downscaled; keypoints, K and errors are at the "
                                       "original size, the overlay at the working size")}
            start = initialize(obs, model, cfg.init)
            if anchors is not None:  # several views: start where the views triangulate the person
                start = place_on_points(model, start, anchors)
            result = fitter(obs, start, vertices=True)
            T = len(scene.out_names)
            runtime = {"detection": (t1 - t0) / T, **{k: v / T for k, v in result.runtime_s.items()},
                       "total": (time.perf_counter() - t0) / T}
            if people:
                name = scene.out_names[0]
                target = out_dir / name
                pics = [p[0] for p in scene.pictures]
                try:
                    summary = save_people(result, target, chosen, pics if many else pics[0],
                                          scales if many else scales[0], cams if many else cams[0], runtime,
                                          extra, dropped=dropped, detector=people_options(det_cfg),
                                          unmatched=unmatched)
                except ValueError as e:  # nobody could be fitted
                    reports.append(PictureReport(name or out_dir.name, False, error=str(e)))
                except OSError as e:
                    log.error("%s: could not write the result: %s", target, e)
                    reports.append(PictureReport(name or out_dir.name, False, error=f"could not write: {e}"))
                else:
                    reports.append(PictureReport(name or out_dir.name, True, target, summary=summary))
                continue
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


def _fit_tracks(scene: Scene, detector, tracker, fitter, model, cfg, dense: bool, out_dir: Path,
                t0: float) -> list[PictureReport]:
    """Every person of a video chunk (one view, T frames): detect each frame's people, follow
    them with ``tracker`` (:class:`bodyfit.tracking.Tracker`, which carries on over the run's
    chunks), fit each track of the chunk as its own sequence (one shape, the temporal energy;
    frames of a track where its person was missed are samples without keypoints, not fitted),
    then write each frame's folder with :func:`save_people`: ``person_<track id>/`` per person
    and ``people.json`` (``id`` = the track id, the same in every frame). One report per frame;
    a frame with nobody is reported and left out."""
    from bodyfit.detectors import NoPersonError

    det_cfg = cfg.detector
    T = len(scene.out_names)
    found, dropped, ids = [], [], []
    for t, pic in enumerate(scene.pictures[0]):
        kept, left = [], []
        try:
            if pic is None:
                raise ValueError("no picture")
            full = scene.full_size(0)
            if scene.cameras is not None and full != tuple(scene.cameras[0].image_size):
                H, W = scene.cameras[0].image_size
                raise ValueError(f"picture is {full[1]}x{full[0]} but the calibration says {W}x{H}")
            kept, left = select_people(detector.detect_all(pic), pic.shape[:2], det_cfg.max_people,
                                       det_cfg.min_box_height)
        except (ValueError, NoPersonError) as e:
            log.warning("%s left out: %s", scene.out_names[t], e)
        found.append(kept)
        dropped.append(left)
        ids.append(tracker.update(np.array([d.box for d in kept]).reshape(-1, 4),
                                  np.array([d.keypoints for d in kept]).reshape(-1, 33, 3)))
    t1 = time.perf_counter()
    spans: dict[int, dict[int, object]] = {}
    for t, (dets, tids) in enumerate(zip(found, ids)):
        for d, tid in zip(dets, tids):
            spans.setdefault(tid, {})[t] = d
    fits, scales = {}, [1.0]
    for tid, seen in sorted(spans.items()):
        first, last = min(seen), max(seen)
        sub = Scene([scene.pictures[0][first:last + 1]], scene.out_names[first:last + 1], scene.cameras,
                    scene.view_names, sequence=True, extra=scene.extra, full_sizes=scene.full_sizes)
        obs, scales = observe(sub, [[seen.get(t) for t in range(first, last + 1)]], cfg.fov_deg, dense)
        fits[tid] = (fitter(obs, initialize(obs, model, cfg.init), vertices=True), first)
    cams = full_cameras(scene, cfg.fov_deg)
    names = scene.view_names or ["video"]
    extra = dict(scene.extra)
    shrunk = scene.downscaled(names)
    if shrunk:
        extra["downscaled"] = shrunk[names[0]]
    total = time.perf_counter() - t0
    runtime = {"detection": (t1 - t0) / T, "fit": (total - (t1 - t0)) / T, "total": total / T}
    reports = []
    for t, name in enumerate(scene.out_names):
        if not found[t]:
            why = "no person found"
            if dropped[t]:
                why += f" ({len(dropped[t])} found, none kept: {dropped[t][0]['why']})"
            reports.append(PictureReport(name, False, error=why))
            continue
        members = [(fits[tid][0], t - fits[tid][1]) for tid in ids[t]]
        notes = [{**person_notes(d, scene.picture_scale(0)), "id": tid} for d, tid in zip(found[t], ids[t])]
        target = out_dir / name
        try:
            summary = save_people(members, target, notes, scene.pictures[0][t], scales[0], cams[0], runtime,
                                  {**extra, "frame": name}, dropped=dropped[t],
                                  detector=people_options(det_cfg))
        except ValueError as e:  # nobody of this frame could be fitted
            reports.append(PictureReport(name, False, error=str(e)))
        except OSError as e:
            log.error("%s: could not write the result: %s", target, e)
            reports.append(PictureReport(name, False, error=f"could not write: {e}"))
        else:
            reports.append(PictureReport(name, True, target, summary=summary))
    return reports


def associate_people(scene: Scene, found: list[list], names: list[str], fov_deg: float,
                     gate: float = DEFAULT_GATE):
    """The people of one moment seen by calibrated views (:func:`bodyfit.association.associate`
    on each view's detections, at full resolution, sizes = box heights).

    A detection whose left and right keypoints the detector swapped (a person seen from behind)
    joins its person mirrored and is fitted swapped back (``left_right_swapped`` in its note).
    A person seen in one view only is reported in ``unmatched`` and not fitted (from one view a
    calibrated camera gives no depth, and such a detection cannot be told from a spurious one;
    ``bodyfit fit`` on that view's picture fits it alone); so is a detection that belongs to
    nobody: it is never merged into someone else's body.

    Args:
        found: ``found[v]``: view ``v``'s kept Detections (pictures' pixels), largest box first.
    Returns:
        (``dets[v][p]``: person p's Detection in view v or None; per person the note
        :func:`save_people` takes for several views; ``unmatched``: per detection left out
        ``{"view", "detection", "box", "score", "why"}``; ``(P,33,4)`` the people's keypoints
        triangulated from their views, world frame, metres + quality, or None for nobody).
    """
    from dataclasses import replace

    from bodyfit.association import associate, mirror_index

    K = 33
    mirror = mirror_index("mediapipe33")
    kps, sizes = [], []
    for v, per_view in enumerate(found):
        s = scene.picture_scale(v)
        kps.append(np.stack([_rescale(d.keypoints, s) for d in per_view]) if per_view
                   else np.zeros((0, K, 3)))
        sizes.append(np.array([max(d.box_height / s, 1.0) for d in per_view]))
    assoc = associate(kps, full_cameras(scene, fov_deg), sizes, gate=gate, mirror=mirror)

    def swapped(d):  # the detector swapped this person's left and right in this view
        w = d.world_keypoints
        return replace(d, keypoints=d.keypoints[mirror], world_keypoints=None if w is None else w[mirror])

    dets = [[None] * len(assoc.people) for _ in found]
    for p, m in enumerate(assoc.people):
        for v, i in m.detections.items():
            dets[v][p] = swapped(found[v][i]) if v in m.mirrored else found[v][i]
    notes = [{"views": {names[v]: {**person_notes(found[v][i], scene.picture_scale(v)), "detection": i,
                                   "association_error_over_box": round(m.error_over_box[v], 4),
                                   "left_right_swapped": v in m.mirrored}
                        for v, i in m.detections.items()}} for m in assoc.people]
    unmatched = [{"view": names[u.view], "detection": u.detection,
                  "box": person_notes(found[u.view][u.detection], scene.picture_scale(u.view))["box"],
                  "score": _opt_float(found[u.view][u.detection].score), "why": u.reason}
                 for u in assoc.unmatched]
    for u in unmatched:
        log.info("view %s detection %d not fitted: %s", u["view"], u["detection"], u["why"])
    anchors = torch.as_tensor(np.stack([m.points for m in assoc.people])) if assoc.people else None
    return dets, notes, unmatched, anchors


def place_on_points(model, params, points, convention: str = "mediapipe33"):
    """Move a start so that each body's torso (shoulders and hips) sits on triangulated points:
    ``transl`` shifted by the mean difference between the points and the body's keypoints over
    the torso keypoints triangulated (quality > 0). A start from one view's regressor can put a
    person seen by few views at a wrong depth, from which the fit may not recover; the
    association has already triangulated where the person is.

    Args:
        params: BodyParams (B), world frame. points: (B,K,4) x, y, z metres (world) + quality
            in ``convention``.
    Returns:
        the BodyParams with ``transl`` moved (unchanged for a body without triangulated torso
        keypoints).
    """
    from dataclasses import replace

    from bodyfit.body_models.conventions import keypoint_names

    names = keypoint_names(convention)
    torso = [names.index(n) for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]
    kp_index, kp_weight = model.keypoint_map(convention)
    with torch.no_grad():
        joints = model(params, vertices=False).joints[:, kp_index[torso]]
    pts = torch.as_tensor(points, dtype=joints.dtype, device=joints.device)[:, torso]
    ok = ((pts[..., 3] > 0) & (kp_weight[torso].to(pts.device) > 0)).to(joints.dtype)
    shift = ((pts[..., :3] - joints) * ok[..., None]).sum(1) / ok.sum(1, keepdim=True).clamp(min=1)
    return replace(params, transl=params.transl + shift)


def select_people(detections, image_size: tuple[int, int], max_people: int | None = None,
                  min_box_height: float = 0.0) -> tuple[list, list[dict]]:
    """The people of a picture to fit: those whose box is at least ``min_box_height`` of the
    picture height, then the ``max_people`` largest of them.

    Args:
        detections: Detections of one picture, largest box first (``MultiPersonPose.detect_all``).
        image_size: (H, W) of the picture the detections are in, pixels.
        max_people: keep at most this many (None: all).
        min_box_height: share of the picture height in [0, 1).
    Returns:
        (kept Detections in the given order, dropped: one ``{"box", "score", "why"}`` per
        person left out, box ``x0, y0, x1, y1`` in the picture's pixels).
    """
    H = float(image_size[0])
    kept, dropped = [], []
    for d in detections:
        why = None
        if d.box_height < min_box_height * H:
            why = (f"box {d.box_height:.0f} px high, below detector.min_box_height={min_box_height:g} "
                   f"of the {H:.0f} px picture")
        elif max_people is not None and len(kept) >= max_people:
            why = f"beyond detector.max_people={max_people} (smaller box)"
        if why is None:
            kept.append(d)
        else:
            dropped.append({"box": [float(x) for x in d.box], "score": _opt_float(d.score), "why": why})
    return kept, dropped


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


def truncation(detection, edge_pixels: int = 3) -> dict:
    """Is a person cut by the picture's frame? A note, never a failure: the person is fitted on
    what is seen (landmarks outside the picture have confidence 0).

    A person is ``truncated`` when some of its 33 landmarks are predicted outside the picture
    (x outside [-0.5, W - 0.5] or y outside [-0.5, H - 0.5], pixel centres at integers), or when
    its mask (> 0.5) covers at least ``edge_pixels`` pixels of a picture edge (a head or
    feet cut off whose landmarks still fall inside).

    Args:
        detection: a Detection (keypoints (33,3) px, mask (H,W) or None, image_size (H,W)).
    Returns:
        ``{"truncated": bool, "edges": sorted subset of ["bottom", "left", "right", "top"],
        "outside_landmarks": MediaPipe-33 names of the landmarks outside the picture}``.
    """
    from bodyfit.body_models.conventions import keypoint_names

    H, W = detection.image_size
    x, y = detection.keypoints[:, 0], detection.keypoints[:, 1]
    sides = {"left": x < -0.5, "right": x > W - 0.5, "top": y < -0.5, "bottom": y > H - 0.5}
    outside = np.zeros(len(x), bool)
    edges = set()
    for edge, m in sides.items():
        outside |= m
        if m.any():
            edges.add(edge)
    if detection.mask is not None:
        m = detection.mask > 0.5
        for edge, strip in (("top", m[0]), ("bottom", m[-1]), ("left", m[:, 0]), ("right", m[:, -1])):
            if np.count_nonzero(strip) >= edge_pixels:
                edges.add(edge)
    names = keypoint_names("mediapipe33")
    out = [names[i] for i in np.flatnonzero(outside)]
    return {"truncated": bool(out or edges), "edges": sorted(edges), "outside_landmarks": out}


def person_notes(detection, picture_scale: float = 1.0) -> dict:
    """What the detector says of one person, for fit.json and people.json: ``box`` (x0, y0,
    x1, y1 at full resolution, pixel centres at integers), ``score`` (detector confidence or
    None) and :func:`truncation`'s ``truncated``, ``edges``, ``outside_landmarks``.

    Args:
        detection: a Detection in the picture's pixels.
        picture_scale: picture pixels per full-resolution pixel (``Scene.picture_scale``).
    """
    box = _rescale(np.asarray(detection.box, np.float64).reshape(2, 2), picture_scale).reshape(4)
    return {"box": [round(float(b), 2) for b in box], "score": _opt_float(detection.score),
            **truncation(detection)}


def people_options(det_cfg) -> dict:
    """The detector config as written in people.json (``detector``): a picture's folder is
    done (:func:`done_result`) only for the same options, since they decide who is fitted."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(det_cfg)))


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _sample(result: FitResult, b: int, scales=None, full_cameras: list[Camera] | None = None,
            runtime_s: dict | None = None, extra: dict | None = None) -> tuple[dict, dict, dict]:
    """Sample ``b`` of ``result`` as written: (fit.json summary, fit.npz arrays, per-view
    ``K``, ``R``, ``t``, ``kp``, ``proj`` stacked over views, at full resolution)."""
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
    return summary, arrays, {"K": K, "R": R, "t": t, "kp": kp, "proj": proj, "cams": cams}


def _write_sample(folder: Path, summary: dict, arrays: dict) -> None:
    """fit.npz, fit.json and (with vertices) mesh.ply and mesh.glb into ``folder``, each
    written atomically."""
    import trimesh

    from bodyfit.files import atomic_save_npz, atomic_write_bytes, atomic_write_text

    atomic_save_npz(folder / "fit.npz", compress=True, **arrays)
    atomic_write_text(folder / "fit.json", json.dumps(summary, indent=2))
    if "vertices" in arrays:
        mesh = trimesh.Trimesh(arrays["vertices"], arrays["faces"], process=False)
        atomic_write_bytes(folder / "mesh.ply", mesh.export(file_type="ply"))
        atomic_write_bytes(folder / "mesh.glb", mesh.export(file_type="glb"))


def _at_picture(picture: np.ndarray, size: tuple[int, int], K: np.ndarray, kp: np.ndarray, proj: np.ndarray):
    """K (3,3), keypoints (K,3) and projections (K,2) at full resolution ``size`` (H, W) ->
    at the picture's size (a picture downscaled for the pixel budget)."""
    H, W = size
    if tuple(picture.shape[:2]) == (H, W):
        return K, kp, proj
    sp = max(picture.shape[:2]) / max(H, W)
    K = K.copy()
    K[:2, :2] *= sp
    K[:2, 2] = (K[:2, 2] + 0.5) * sp - 0.5
    return K, _rescale(kp, 1 / sp), _rescale(proj, 1 / sp)


def _in_new_folder(out_dir: Path, fill, summary: dict) -> None:
    """Run ``fill(tmp)`` on a new temporary folder beside ``out_dir``, then publish it as
    ``out_dir`` (:func:`_publish`); an interrupted or failed fill leaves ``out_dir`` as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fill(tmp)
        old = previous_result(out_dir)
        _publish(tmp, out_dir)
        _say_replaced(out_dir, old, summary)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_result(result: FitResult, b: int, out_dir: str | Path, pictures=None, scales=None,
                full_cameras: list[Camera] | None = None, runtime_s: dict | None = None,
                extra: dict | None = None) -> dict:
    """Write sample ``b`` of ``result`` to ``out_dir``, all or nothing: the files are written into
    a temporary folder beside it, which then replaces ``out_dir``; an interrupted write leaves
    the previous folder (if any) as it was.

    Files: ``fit.npz`` (``global_orient``, ``body_pose``, ``phenotypes`` (Anny) or ``betas``,
    ``transl``, ``joints``, ``vertices``, ``faces``; ``K``, ``R``, ``t``, ``keypoints``: (3,3),
    (3,3), (3,), (K,3) for one view, with a leading view axis for several), ``fit.json``,
    ``mesh.ply`` and ``mesh.glb`` (glTF binary; world frame, metres) and ``overlay.png`` (one
    view) or ``overlay_<view>.png``.

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
        FileExistsError: ``out_dir`` holds files that are not a result (see :func:`_publish`).
    """
    from bodyfit.data.images import write_image
    from bodyfit.renderers.views import overlay_picture

    if not bool(result.valid[b]):
        raise ValueError(f"refusing to store an invalid fit: {result.messages[b]}")
    out_dir = Path(out_dir)
    summary, arrays, per_view = _sample(result, b, scales, full_cameras, runtime_s, extra)
    one = len(result.cameras) == 1

    def fill(tmp: Path) -> None:
        _write_sample(tmp, summary, arrays)
        if "vertices" not in arrays:
            return
        for v, name in enumerate(result.view_names):
            if pictures is None or pictures[v] is None:
                continue
            R, t = per_view["R"][v], per_view["t"][v]
            Kp, kpp, projp = _at_picture(pictures[v], per_view["cams"][v].image_size, per_view["K"][v],
                                         per_view["kp"][v], per_view["proj"][v])
            pic = overlay_picture(pictures[v], arrays["vertices"] @ R.T + t, arrays["faces"], Kp, kpp, projp)
            write_image(tmp / ("overlay.png" if one else f"overlay_{name}.png"), pic)

    _in_new_folder(out_dir, fill, summary)
    return summary


PALETTE = np.array([[0.12, 0.47, 0.71], [1.00, 0.50, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16],
                    [0.58, 0.40, 0.74], [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.09, 0.75, 0.81],
                    [0.74, 0.74, 0.13], [0.50, 0.50, 0.50]], np.float32)
"""Person colours of the overlays (matplotlib's tab10): person ``k`` is ``PALETTE[k % 10]``."""


def _shade_crop(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int]):
    """``shade`` of one mesh (camera frame, metres) rendered only over its projected box:
    ((H,W) shading in [0,1] premultiplied by coverage, (H,W) coverage)."""
    from bodyfit.renderers.views import _MESH_RGB, shade

    H, W = size
    light, cover = np.zeros((H, W), np.float32), np.zeros((H, W), np.float32)
    v = torch.as_tensor(vertices, dtype=torch.float32)
    front = v[:, 2] > 1e-3
    if not bool(front.any()):
        return light, cover
    Kt = torch.as_tensor(K, dtype=torch.float32)
    uv = (v[front] @ Kt.T)[:, :2] / v[front, 2:]
    x0, y0 = (int(max(0, np.floor(float(uv[:, i].min())) - 2)) for i in (0, 1))
    x1, y1 = (int(min(n, np.ceil(float(uv[:, i].max())) + 3)) for i, n in ((0, W), (1, H)))
    if x1 <= x0 or y1 <= y0:
        return light, cover
    Kc = Kt.clone()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    rgb, a = shade(v[None], torch.as_tensor(faces, dtype=torch.long), Camera.identity(Kc[None], (y1 - y0, x1 - x0)))
    light[y0:y1, x0:x1] = (rgb[0].sum(-1) / float(_MESH_RGB.sum())).numpy()
    cover[y0:y1, x0:x1] = a[0].numpy()
    return light, cover


def people_overlay(picture: np.ndarray, people: list[dict], alpha: float = 0.7) -> np.ndarray:
    """Every fitted person of a picture over it, each in its own colour, drawn in depth order
    (the farthest first, so nearer people cover farther ones), each with its keypoints (green:
    detected, red: the fit's), box and id.

    Args:
        picture: (H,W,3) uint8 RGB.
        people: per person ``{"id": int, "vertices": (N,3) metres in the camera frame (OpenCV),
            "faces": (F,3), "K": (3,3) px, "keypoints": (K,3) px + confidence,
            "projected": (K,2) px, "box": (4,) x0, y0, x1, y1 px}``, all at the picture's size.
        alpha: opacity of the meshes.
    Returns:
        (H,W,3) uint8 RGB.
    """
    import cv2

    from bodyfit.renderers.views import draw_keypoints

    H, W = picture.shape[:2]
    out = picture.astype(np.float32) / 255.0
    order = sorted(people, key=lambda p: -float(np.median(np.asarray(p["vertices"])[:, 2])))
    for p in order:
        colour = PALETTE[int(p["id"]) % len(PALETTE)]
        light, cover = _shade_crop(p["vertices"], p["faces"], p["K"], (H, W))
        shaded = (0.35 + 0.65 * light[..., None] / np.maximum(cover[..., None], 1e-6)) * colour
        a = (alpha * cover)[..., None]
        out = out * (1 - a) + shaded * a
        img = (out.clip(0, 1) * 255).round().astype(np.uint8)
        img = draw_keypoints(img, p["keypoints"], p["projected"], radius=3)
        c255 = tuple(int(x) for x in (colour * 255).round())
        x0, y0, x1, y1 = (int(round(float(x))) for x in p["box"])
        cv2.rectangle(img, (x0, y0), (x1, y1), c255, 2, cv2.LINE_AA)
        cv2.putText(img, str(p["id"]), (x0 + 4, max(y0 + 22, 22)), cv2.FONT_HERSHEY_SIMPLEX, 0.8, c255, 2,
                    cv2.LINE_AA)
        out = img.astype(np.float32) / 255.0
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def save_people(result, out_dir: str | Path, people: list[dict], picture=None,
                scale=1.0, full_camera=None, runtime_s: dict | None = None,
                extra: dict | None = None, dropped: list[dict] | None = None,
                detector: dict | None = None, unmatched: list[dict] | None = None) -> dict:
    """Write every person of one picture, or of one moment seen by V calibrated views (the B
    samples of ``result``), to ``out_dir``, all or nothing (one temporary folder, published
    whole as in :func:`save_result`):

    * ``person_<k>/`` per fitted person: ``fit.npz``, ``fit.json``, ``mesh.ply``, ``mesh.glb``
      as :func:`save_result` writes them, fit.json with the person's ``person_id``, and for one
      view ``box_xyxy_px``, ``detection_score``, ``truncated`` (cut by the frame: a note, not a
      failure), ``truncation`` (``edges``, ``outside_landmarks``); for several views
      ``person_views`` (per view name the detection's note as below);
    * ``overlay.png`` (one view) or ``overlay_<view>.png``: every person seen there in its
      colour (:data:`PALETTE`), in depth order, at the picture's size (:func:`people_overlay`);
    * ``people.json``: ``source``, ``source_sha1``, ``model``, ``image_size`` (H, W, full
      resolution; several views: per view name), ``detector`` (:func:`people_options`),
      ``people`` (per person: ``id``, ``box`` x0, y0, x1, y1 px, ``score``,
      ``reprojection_error_px``, ``reprojection_error_over_box``, ``box_height_px``,
      ``depth_m`` (median camera-frame z of the mesh), ``valid``, ``flagged``, ``truncated``,
      ``truncation``, ``message``, ``files`` relative to the folder, None for a person not
      fitted; several views: no ``box``, ``score``, ``truncation``, ``depth_m`` but ``views``:
      per view name where the person is seen ``detection`` (index among that view's
      detections, largest box first), ``box``, ``score``, ``truncated``, ``truncation``,
      ``association_error_over_box`` (:mod:`bodyfit.association`), ``left_right_swapped`` (the
      detector swapped the person's left and right there; fitted swapped back),
      ``reprojection_error_px``
      and ``reprojection_error_over_box`` of the fit), ``dropped`` (people the options left
      out, and why), ``unmatched`` (several views: detections that belong to no person seen in
      two views, and why), ``overlay`` (``overlays`` per view name for several views),
      ``runtime_s`` (the whole scene: its people are fitted together), ``flagged`` (None, or
      which people are flagged or could not be fitted).

    A person who could not be fitted (``valid`` False) is listed with its message and gets no
    folder; the others are written. Person ``k`` is sample ``k`` unless its note gives an
    ``id`` (a track id: ``person_<id>/``).

    Args:
        result: the FitResult of the B people, or per person ``(FitResult, sample index)`` (a
            video frame's people, each from the fit of its own track; one view).
        people: per sample, one view: :func:`person_notes` (``box`` at full resolution,
            ``score``, ``truncated``, ``edges``, ``outside_landmarks``); several views:
            ``{"views": {view name: person_notes + "detection", "association_error_over_box"}}``
            for the views where the person is seen.
        picture: the picture (full size or downscaled) for the overlay, None: no overlay;
            several views: a list, per view a picture or None.
        scale: working resolution over the full one (1 for keypoint-only fits); several views:
            a list.
        full_camera: the full-resolution Camera (batch 1); the result's otherwise; several
            views: a list.
        unmatched: written as ``unmatched`` (several views).
    Returns:
        the people.json content.
    Raises:
        ValueError: ``people`` or the per-view lists do not match the batch and the views, or
            nobody could be fitted (nothing is written then).
        FileExistsError: ``out_dir`` holds files that are not a result (see :func:`_publish`).
    """
    from bodyfit.data.images import write_image

    out_dir = Path(out_dir)
    members = ([(result, k) for k in range(result.batch_size)] if isinstance(result, FitResult)
               else list(result))
    if not members:
        raise ValueError("save_people: no person to write")
    result = members[0][0]
    B, V = len(members), len(result.cameras)
    if any(len(r.cameras) != V for r, _ in members):
        raise ValueError("save_people: the people's fits have different views")
    many = V > 1
    pictures = list(picture) if many and picture is not None else [picture] * V
    scales = list(scale) if many else [scale]
    cams = (list(full_camera) if many else [full_camera]) if full_camera is not None else None
    if len(people) != B or len(pictures) != V or len(scales) != V or (cams is not None and len(cams) != V):
        raise ValueError(f"save_people: {len(people)} people for a fit of {B} samples in {V} views, "
                         f"{len(pictures)} pictures, {len(scales)} scales (expected one entry per sample, "
                         "one picture, scale and camera per view)")
    if many and not all("views" in n for n in people):
        raise ValueError("save_people: several views need per person {'views': {view name: note}}")
    ids = [int(n.get("id", k)) for k, n in enumerate(people)]
    if len(set(ids)) != B:
        raise ValueError(f"save_people: person ids {ids} repeat")
    if not any(bool(r.valid[b]) for r, b in members):
        raise ValueError("no person could be fitted: " + "; ".join(
            f"person_{ids[k]}: {r.messages[b]}" for k, (r, b) in enumerate(members)))
    extra = dict(extra or {})
    names = list(result.view_names)
    entries, samples, drawn = [], {}, {v: [] for v in range(V)}
    for (res, b), note, k in zip(members, people, ids):
        seen = ({names.index(n): dict(d) for n, d in note["views"].items()} if many else {0: note})
        entry = {"id": k}
        if many:
            entry["views"] = {names[v]: {key: d.get(key) for key in (
                "detection", "box", "score", "truncated", "association_error_over_box", "left_right_swapped")}
                for v, d in sorted(seen.items())}
            for v, d in seen.items():
                entry["views"][names[v]]["truncation"] = {"edges": d["edges"],
                                                          "outside_landmarks": d["outside_landmarks"]}
            truncated = any(d["truncated"] for d in seen.values())
            person = {"person_id": k, "person_views": entry["views"]}
        else:
            truncated = note["truncated"]
            entry.update(box=note["box"], score=note["score"])
            person = {"person_id": k, "box_xyxy_px": note["box"], "detection_score": note["score"],
                      "truncated": truncated,
                      "truncation": {"edges": note["edges"], "outside_landmarks": note["outside_landmarks"]}}
        entry.update({"reprojection_error_px": None, "reprojection_error_over_box": None,
                      "box_height_px": None,
                      **({} if many else {"depth_m": None}),
                      "valid": bool(res.valid[b]), "flagged": None, "truncated": truncated,
                      **({} if many else {"truncation": person["truncation"]}),
                      "message": res.messages[b], "files": None})
        if entry["valid"]:
            summary, arrays, pv = _sample(res, b, scales, cams, runtime_s, {**person, **extra})
            entry.update(reprojection_error_px=summary["reprojection_error_px"],
                         reprojection_error_over_box=summary["reprojection_error_over_box"],
                         box_height_px=summary["box_height_px"], flagged=summary["flagged"],
                         files={n.replace(".", "_"): f"person_{k}/{n}"
                                for n in ("fit.npz", "fit.json", "mesh.ply", "mesh.glb")})
            samples[k] = (summary, arrays)
            for v, d in seen.items():
                if many:
                    entry["views"][names[v]].update(
                        {key: summary["views"][names[v]][key] for key in ("reprojection_error_px",
                                                                          "reprojection_error_over_box")})
                if "vertices" not in arrays:
                    continue
                verts_cam = arrays["vertices"] @ pv["R"][v].T + pv["t"][v]
                if not many:
                    entry["depth_m"] = float(np.median(verts_cam[:, 2]))
                pic = pictures[v]
                if pic is None:
                    continue
                Kp, kpp, projp = _at_picture(pic, pv["cams"][v].image_size, pv["K"][v], pv["kp"][v],
                                             pv["proj"][v])
                sp = max(pic.shape[:2]) / max(pv["cams"][v].image_size)
                box = _rescale(np.asarray(d["box"], np.float64).reshape(2, 2), 1 / sp).reshape(4) \
                    if sp != 1.0 else d["box"]
                drawn[v].append({"id": k, "vertices": verts_cam, "faces": arrays["faces"], "K": Kp,
                                 "keypoints": kpp, "projected": projp, "box": box})
        entries.append(entry)
    bad = [f"person_{e['id']}: {e['flagged']}" for e in entries if e["flagged"]]
    bad += [f"person_{e['id']}: not fitted ({e['message']})" for e in entries if not e["valid"]]
    overlays = {v: ("overlay.png" if not many else f"overlay_{names[v]}.png") for v in range(V) if drawn[v]}
    if many:
        sizes = {n: [int(x) for x in (cams[v] if cams is not None else result.camera(v)).image_size]
                 for v, n in enumerate(names)}
        where = {"image_size": sizes}
        shown = {"overlays": {names[v]: f for v, f in overlays.items()}, "unmatched": unmatched or []}
    else:
        cam = cams[0] if cams is not None else result.camera(0).index(slice(0, 1))
        where = {"image_size": [int(x) for x in cam.image_size]}
        shown = {"overlay": overlays.get(0)}
    listing = {
        "source": extra.get("source"), "source_sha1": extra.get("source_sha1"), "model": result.model_name,
        **where, "detector": detector,
        "people": entries, "dropped": dropped or [], **shown,
        "runtime_s": runtime_s or {}, "flagged": "; ".join(bad) or None,
        **{k: v for k, v in extra.items() if k not in ("source", "source_sha1")},
    }

    def fill(tmp: Path) -> None:
        for k, (summary, arrays) in samples.items():
            (tmp / f"person_{k}").mkdir()
            _write_sample(tmp / f"person_{k}", summary, arrays)
        for v, f in overlays.items():
            write_image(tmp / f, people_overlay(pictures[v], drawn[v]))
        from bodyfit.files import atomic_write_text

        atomic_write_text(tmp / "people.json", json.dumps(listing, indent=2))

    _in_new_folder(out_dir, fill, listing)
    return listing


RESULT_FILES = ("fit.npz", "fit.json", "mesh.ply", "mesh.glb", "overlay.png", "people.json")


def _is_result_entry(f: Path) -> bool:
    """Is ``f`` (in a result folder) something a result folder holds: a result file, an
    ``overlay_<view>.png``, or a ``person_<k>`` folder of result files?"""
    if f.is_dir():
        name = f.name
        return (name.startswith("person_") and name[7:].isdigit()
                and all(g.is_file() and g.name in RESULT_FILES for g in f.iterdir()))
    return f.name in RESULT_FILES or (f.name.startswith("overlay_") and f.suffix == ".png")


def previous_result(folder: str | Path) -> dict | None:
    """The summary of the finished result in ``folder``, or None: a multi-person folder's
    ``people.json`` (a JSON object with a ``people`` list), else a single fit's ``fit.json``
    when ``fit.npz`` is there too; None for no folder, a missing or unreadable file, or one
    that is not a JSON object (result folders are published whole, so these files present
    means a complete result)."""
    folder = Path(folder)
    try:
        if (folder / "people.json").is_file():
            summary = json.loads((folder / "people.json").read_text())
            return summary if isinstance(summary, dict) and isinstance(summary.get("people"), list) else None
        if not (folder / "fit.npz").is_file():
            return None
        summary = json.loads((folder / "fit.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def done_result(folder: str | Path, source_sha1: str, model: str | None = None,
                detector: dict | None = None) -> dict | None:
    """The summary (fit.json, or people.json for every person of a picture) of ``folder`` when
    it already holds the finished fit of the picture whose content has SHA-1 ``source_sha1``
    (hex), made with body model ``model`` when given, and, when ``detector`` is given
    (:func:`people_options`), a multi-person result (people.json) made with those detector
    options (they decide who is fitted); None otherwise (nothing there, another picture, model
    or detector options, a single-person result where people are asked for, an unreadable
    result). Reruns (``bodyfit fit``, pseudo-GT) skip such a picture unless asked to redo it."""
    summary = previous_result(folder)
    if summary is None or summary.get("source_sha1") != source_sha1:
        return None
    if model is not None and summary.get("model") != model:
        return None
    if detector is not None and ("people" not in summary or summary.get("detector") != detector):
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
        foreign = [f.name for f in out_dir.iterdir() if not _is_result_entry(f)]
        if foreign:
            raise FileExistsError(f"{out_dir} exists and holds other files ({', '.join(sorted(foreign)[:3])}"
                                  f"{'...' if len(foreign) > 3 else ''}): choose an empty or new --out folder.")
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
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
