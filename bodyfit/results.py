"""Writing fits to folders, whole or not at all: what every command leaves on disk.

* :func:`save_result` (one person per picture: the demo) writes each fitted sample's folder:
  ``fit.npz`` (parameters, joints, vertices, faces, K, R, t, keypoints), ``fit.json`` (model,
  convention, source, errors, energies, runtimes, messages), ``mesh.ply`` and ``mesh.glb``
  (world frame, metres) and an overlay picture per view.
* :func:`save_people` (``bodyfit fit``, ``fit-views``, ``fit-video``: every person) writes a
  scene's folder: ``person_<k>/`` with those four files per person (k = 0 the largest box;
  several views: the person seen in the most views; a video: the track id), one ``overlay.png``
  (``overlay_<view>.png``) with every person in its colour in depth order, and ``people.json``
  (per person: id, box, detector score, errors, valid, flagged, truncated, file paths; several
  views: per view the detection, and the ``unmatched`` detections). A person who cannot be
  fitted is listed, not written; the others are.

Either folder is published whole (written into a temporary folder, then renamed into place):
complete or absent, never a mix. :func:`done_result` tells whether a result folder already holds
the fit of a given picture (reruns skip it unless asked to redo): for every person, a
``people.json`` of the same picture content (SHA-1), body model and detector options.
Keypoints, boxes, K and errors are written at the pictures' full resolution.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from bodyfit.cameras import Camera
from bodyfit.fitting import FitResult

log = logging.getLogger(__name__)


def rescale_pixels(xy: np.ndarray, s: float) -> np.ndarray:
    """(...,2|3) pixel coordinates at one resolution -> at 1/``s`` times it (pixel centres kept)."""
    out = np.array(xy, dtype=np.float64, copy=True)
    out[..., :2] = (out[..., :2] + 0.5) / s - 0.5
    return out


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
    kp = np.stack([rescale_pixels(result.keypoints[b, v].cpu().numpy(), scales[v]) for v in range(V)])
    proj = np.stack([rescale_pixels(result.projected[b, v].cpu().numpy(), scales[v]) for v in range(V)])
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
    return K, rescale_pixels(kp, 1 / sp), rescale_pixels(proj, 1 / sp)


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
                box = rescale_pixels(np.asarray(d["box"], np.float64).reshape(2, 2), 1 / sp).reshape(4) \
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
