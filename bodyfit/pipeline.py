"""The main job: pictures -> detector keypoints (and masks) -> start -> Fitter -> files.

One driver (:func:`fit_scenes`) runs every command's work: a *scene* is V views x T frames of
pictures (a picture: 1 x 1; calibrated views of one moment: V x 1; a video chunk: 1 x T, fitted
as a sequence). Without ``people`` (the demo) each picture's one person is fitted and written by
:func:`bodyfit.results.save_result`. With ``people`` (``bodyfit fit``, ``fit-views``,
``fit-video``) every person is: the people of a picture, or of one moment seen by calibrated
views after :func:`associate_people` grouped each view's detections into people, are fitted as
one batch; a video is tracked (:func:`_fit_tracks`, :mod:`bodyfit.tracking`) and each track
fitted as a sequence; :func:`bodyfit.results.save_people` writes each scene's folder. A person
cut by the frame is fitted on what is seen and noted ``truncated`` (:func:`truncation`). A
picture that cannot be read or holds no person is reported and left out; the rest go on.

Pictures above the pixel budget (``detector.max_pixels``) come in downscaled
(``bodyfit.data.images.read_picture``) with their full size in ``Scene.full_sizes``: detection
and fitting run at that size, and keypoints, boxes, K and errors are written at full resolution
(the overlay at the working size; ``downscaled`` in fit.json).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bodyfit.api import initialize
from bodyfit.association import DEFAULT_GATE
from bodyfit.cameras import Camera, default_intrinsics
from bodyfit.fitting import Fitter, load_config
from bodyfit.observations import Observations
from bodyfit.results import rescale_pixels, save_people, save_result

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
                        _check_picture(scene, v, pic)
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
            def start(o, anchors=anchors):  # several views: where the views triangulate the person
                s = initialize(o, model, cfg.init)
                return s if anchors is None else place_on_points(model, s, anchors)

            result = fitter(obs, vertices=True, start=start)
            T = len(scene.out_names)
            runtime = {"detection": (t1 - t0) / T, **{k: v / T for k, v in result.runtime_s.items()},
                       "total": (time.perf_counter() - t0) / T}
            if people:
                name = scene.out_names[0]
                pics = [p[0] for p in scene.pictures]
                reports.append(_write_people(
                    name or out_dir.name, result, out_dir / name, chosen, pics if many else pics[0],
                    scales if many else scales[0], cams if many else cams[0], runtime, extra,
                    dropped=dropped, detector=people_options(det_cfg), unmatched=unmatched))
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
            _check_picture(scene, 0, pic)
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
        fits[tid] = (fitter(obs, vertices=True, start=lambda o: initialize(o, model, cfg.init)), first)
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
        reports.append(_write_people(name, members, out_dir / name, notes, scene.pictures[0][t], scales[0],
                                     cams[0], runtime, {**extra, "frame": name}, dropped=dropped[t],
                                     detector=people_options(det_cfg)))
    return reports


def _check_picture(scene: Scene, v: int, picture) -> None:
    """Raise ValueError when view ``v``'s picture is missing or not the size its camera was
    calibrated for."""
    if picture is None:
        raise ValueError("no picture")
    full = scene.full_size(v)
    if scene.cameras is not None and full != tuple(scene.cameras[v].image_size):
        H, W = scene.cameras[v].image_size
        raise ValueError(f"picture is {full[1]}x{full[0]} but the calibration says {W}x{H}")


def _write_people(name: str, result, target: Path, *args, **kwargs) -> PictureReport:
    """``save_people(result, target, *args, **kwargs)`` as the report of ``name``: not ok when
    nobody could be fitted (ValueError) or the folder could not be written (OSError)."""
    try:
        summary = save_people(result, target, *args, **kwargs)
    except ValueError as e:
        return PictureReport(name, False, error=str(e))
    except OSError as e:
        log.error("%s: could not write the result: %s", target, e)
        return PictureReport(name, False, error=f"could not write: {e}")
    return PictureReport(name, True, target, summary=summary)


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
        kps.append(np.stack([rescale_pixels(d.keypoints, s) for d in per_view]) if per_view
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
    box = rescale_pixels(np.asarray(detection.box, np.float64).reshape(2, 2), picture_scale).reshape(4)
    return {"box": [round(float(b), 2) for b in box], "score": _opt_float(detection.score),
            **truncation(detection)}


def people_options(det_cfg) -> dict:
    """The detector config as written in people.json (``detector``): a picture's folder is
    done (:func:`done_result`) only for the same options, since they decide who is fitted."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(det_cfg)))
