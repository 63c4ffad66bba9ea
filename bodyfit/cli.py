"""The ``bodyfit`` command.

    bodyfit fit IMAGE... --out DIR [--redo] [--model anny|smpl|smplh|smplx] [--model-path PATH]
                         [--device cpu] [OVERRIDE ...]
    bodyfit fit-views IMAGE... --calib CALIB --out DIR [--keypoints-only] [OVERRIDE ...]
    bodyfit fit-video VIDEO --out DIR [--every N] [--max-frames M] [--calib CALIB --view NAME]
                      [--keypoints-only] [OVERRIDE ...]
    bodyfit demo [--out DIR] [--frames 0 50] [--views] [OVERRIDE ...]
    bodyfit train --out DIR [OVERRIDE ...]      (torchrun --nproc_per_node N -m bodyfit.cli train ...)
    bodyfit pseudo-gt COCO.json|FOLDER|IMAGE... --out DIR [--images DIR] [--batch-size 64]
                      [--shard-size 10000] [--redo] [OVERRIDE ...]
                      (torchrun --nproc_per_node N -m bodyfit.cli pseudo-gt ... shards the people)

OVERRIDEs are Hydra overrides of the packaged config (``stages.body.steps=300``,
``+stages.body.weights.silhouette=0.1``, ``~stages.camera``, ``model=smpl``). A word that ends
with a picture or video extension is a picture (``dir/a=b.jpg`` too); otherwise a word with ``=``
or starting with ``+`` or ``~`` is an override (a file named ``init=mean`` does not change that).
Everything after ``--`` is an override.

``bodyfit fit`` fits every person the multi-person detector finds in each picture, all people
of a picture as one batch: ``DIR/<stem>/person_<k>/{fit.npz,fit.json,mesh.ply,mesh.glb}`` (k = 0
the largest person), one ``overlay.png`` with every person and a ``people.json`` per picture.
``detector.max_people=N`` keeps the N largest, ``detector.min_box_height=0.1`` drops people
shorter than 10% of the picture, ``detector.setting=full|fast|thorough`` picks the detector's
tiling. ``fit-views`` fits every person seen in two calibrated views or more: each view's people
are associated across views (``bodyfit.association``), fitted in the views where seen, written as
``DIR/person_<k>/`` with ``people.json`` (per person its views and detections) and
``overlay_<view>.png``; people seen in one view only, and detections of nobody, are listed in
people.json's ``unmatched`` and not fitted. ``fit-video`` tracks every person over frames
(``bodyfit.tracking``) and fits each track with one shape per ``--chunk``:
``DIR/<frame>/person_<track id>/`` and a ``people.json`` per frame, track ids the same in every
frame (a person away for more than 3 frames comes back with a new id). ``demo`` fits one person
per picture.

Reruns: ``bodyfit fit`` skips a picture whose folder in ``--out`` already holds its people
(people.json of the same content, by SHA-1, the same body model and the same ``detector``
options; counted as "already done") unless ``--redo`` is given; a result that is replaced is
named in the log. Pictures above ``detector.max_pixels`` (16.8 Mpx)
are detected and fitted downscaled, results written at full resolution (``downscaled`` in
fit.json); a picture too large to decode (a decompression bomb) is reported and left out.

Exit codes: 0 every picture fitted; 1 some pictures failed (each is reported); 2 bad usage;
3 every picture fitted but some fits are flagged as far off (``flagged`` in fit.json), or some
people of a picture could not be fitted (``flagged`` in people.json). A person cut by the
picture's frame is fitted on what is seen and marked ``truncated``: a note, not a flag.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import math
import sys
from pathlib import Path

MEDIA_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm",
                  ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
log = logging.getLogger("bodyfit")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bodyfit", description="Fit 3D human bodies to pictures.")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--model", default=None, choices=["anny", "smpl", "smplh", "smplx"],
                       help="body model (default: anny, no licensed file needed); same as model=NAME")
        p.add_argument("--model-path", default=None,
                       help="SMPL-family model file or folder (your own licensed files)")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    f = sub.add_parser("fit", help="fit every person in pictures; writes DIR/<stem>/{people.json,overlay.png} "
                       "and DIR/<stem>/person_<k>/{fit.npz,fit.json,mesh.ply,mesh.glb}")
    f.add_argument("words", nargs="+", metavar="IMAGE_OR_OVERRIDE",
                   help="picture files, and config overrides (bodyfit/configs/fit.yaml; people: "
                        "detector.max_people=N, detector.min_box_height=SHARE, detector.setting=fast)")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--redo", action="store_true",
                   help="fit pictures again whose result in --out is already done (default: skip them)")
    cam = f.add_mutually_exclusive_group()
    cam.add_argument("--focal", type=float, default=None, metavar="PIXELS",
                     help="focal length in pixels of the full-size pictures (default: from the photo's "
                          "EXIF, else fov_deg of the longer side)")
    cam.add_argument("--K", dest="K_file", default=None, metavar="FILE",
                     help="3x3 intrinsics of the full-size pictures, pixels (text or .npy)")
    common(f)

    mv = sub.add_parser("fit-views", help="one moment seen by calibrated cameras: every person "
                        "found in two views or more, associated across views, fitted to the views "
                        "where seen; writes DIR/{people.json,overlay_<view>.png} and "
                        "DIR/person_<k>/{fit.npz,fit.json,mesh.ply,mesh.glb}")
    mv.add_argument("words", nargs="+", metavar="IMAGE_OR_OVERRIDE",
                    help="one picture per calibrated camera, in the calibration's order, and "
                         "overrides (bodyfit/configs/fit_views.yaml)")
    mv.add_argument("--calib", required=True, help="calibration: Qualisys/Pose2Sim .qca.txt or Pose2Sim Calib.toml")
    mv.add_argument("--out", required=True, help="output folder")
    mv.add_argument("--keypoints-only", action="store_true",
                    help="no silhouette or texture-consistency energies (faster)")
    common(mv)

    vid = sub.add_parser("fit-video", help="a video: every person tracked over frames, each track "
                         "fitted with one shape and smooth motion; writes DIR/<frame>/people.json and "
                         "DIR/<frame>/person_<track id>/{fit.npz,fit.json,mesh.ply,mesh.glb}")
    vid.add_argument("words", nargs="+", metavar="VIDEO_OR_OVERRIDE",
                     help="a video file, and overrides (bodyfit/configs/fit_views.yaml)")
    vid.add_argument("--out", required=True, help="output folder")
    vid.add_argument("--every", type=int, default=1, help="use every N-th frame (default 1)")
    vid.add_argument("--max-frames", type=int, default=100, help="at most this many frames (default 100)")
    vid.add_argument("--chunk", type=int, default=50, help="frames fitted together with one shape (default 50)")
    vid.add_argument("--calib", default=None, help="optional calibration (.qca.txt or Calib.toml) of the camera")
    vid.add_argument("--view", default=None, help="which camera of --calib filmed the video")
    vid.add_argument("--keypoints-only", action="store_true",
                     help="no silhouette or texture-consistency energies (faster)")
    common(vid)

    tr = sub.add_parser("train", help="the SPIN loop: fits supervise the keypoint regressor; "
                        "resumes from DIR/checkpoint.pt")
    tr.add_argument("words", nargs="*", default=[], metavar="OVERRIDE",
                    help="overrides of bodyfit/configs/train.yaml")
    tr.add_argument("--out", required=True, help="run folder (checkpoint, metrics.csv, store/)")
    common(tr)

    pg = sub.add_parser("pseudo-gt", help="fit every person of a dataset (a COCO keypoint file, or "
                        "pictures and videos); writes DIR/store, DIR/export/pseudo_gt_*.npz and DIR/index.jsonl")
    pg.add_argument("words", nargs="+", metavar="INPUT_OR_OVERRIDE",
                    help="a COCO-format keypoint .json, or picture and video files / folders of "
                         "them (every frame of a video); and overrides (bodyfit/configs/fit.yaml)")
    pg.add_argument("--out", required=True, help="run folder")
    pg.add_argument("--images", default=None, help="the pictures of a COCO file (for sizes it lacks)")
    pg.add_argument("--batch-size", type=int, default=64, help="people fitted together (default 64)")
    pg.add_argument("--shard-size", type=int, default=10000, help="people per exported npz (default 10000)")
    pg.add_argument("--redo", action="store_true", help="fit people again that are already in the store")
    common(pg)

    d = sub.add_parser("demo", help="fit real frames of the Pose2Sim demo (4 views), offline")
    d.add_argument("--out", default="bodyfit_demo", help="output folder (default: bodyfit_demo)")
    d.add_argument("--frames", type=int, nargs="+", default=[0], help="frame indices (default: 0)")
    d.add_argument("--views", action="store_true",
                   help="fit one body per frame to the 4 calibrated views together (fit-views)")
    d.add_argument("words", nargs="*", default=[], metavar="OVERRIDE",
                   help="config overrides (bodyfit/configs/fit.yaml; fit_views.yaml with --views)")
    common(d)
    return ap


def split_words(words: list[str]) -> tuple[list[str], list[str]]:
    """(pictures, overrides): everything after ``--`` is an override; before it, a word is a
    picture when it has a picture/video extension, else an override when it has ``=`` or starts
    with ``+`` or ``~``, else a picture (reported if it cannot be read)."""
    pictures, overrides = [], []
    after = False
    for w in words:
        if w == "--":
            after = True
        elif after:
            overrides.append(w)
        elif Path(w).suffix.lower() in MEDIA_SUFFIXES:
            pictures.append(w)
        elif "=" in w or w.startswith(("+", "~")):
            overrides.append(w)
        else:
            pictures.append(w)
    return pictures, overrides


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("bodyfit")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)  # pictures and overrides may follow the options
    unknown = [a for a in rest if a.startswith("-") and a != "--"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    pictures, overrides = split_words(list(args.words) + rest)
    if args.command in ("demo", "train") and pictures:
        parser.error(f"bodyfit {args.command} takes no pictures, got {pictures}")
    if args.model is not None:
        overrides = [f"model={args.model}", *overrides]
    if args.model_path is not None:
        overrides.append(f"model.model_path={args.model_path}")
    _setup_logging(args.quiet)
    if args.command == "train":
        return _train(args, overrides)

    from bodyfit.fitting import load_config

    views_mode = args.command in ("fit-views", "fit-video") or getattr(args, "views", False)
    try:
        cfg = load_config(overrides, name="fit_views" if views_mode else "fit")
        model = _build_model(cfg.model, args.device)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"bodyfit: {e}", file=sys.stderr)
        return 2
    run = {"fit": _fit, "fit-views": _fit_views, "fit-video": _fit_video, "demo": _demo,
           "pseudo-gt": _pseudo_gt}[args.command]
    return run(args, pictures, cfg, model)


def _build_model(mcfg, device: str):
    from bodyfit.body_models import body_model

    return body_model(mcfg.name, model_path=mcfg.model_path, topology=mcfg.topology,
                      gender=mcfg.gender, device=device, landmarks=mcfg.landmarks)


def _out_names(paths: list[str]) -> list[str]:
    """One output folder name per picture: its stem, plus a short hash of its path where two
    pictures share a stem (so that no result overwrites another)."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}-{hashlib.sha1(str(Path(p).resolve()).encode()).hexdigest()[:8]}"
            for s, p in zip(stems, paths)]


def _sha1(path) -> str:
    """Hex SHA-1 of a file's bytes (which picture a result came from, even after a rename)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _report(reports, out) -> int:
    for r in reports:
        if r.skipped:
            print(f"{r.name or out}: already done -> {r.out_dir} (--redo fits it again)")
        elif r.ok and "people" in r.summary:
            s = r.summary
            fitted = [p for p in s["people"] if p["valid"]]
            each = ", ".join(f"person_{p['id']} {p['reprojection_error_px']:.1f} px "
                             f"({100 * p['reprojection_error_over_box']:.2f}%)"
                             f"{' truncated' if p['truncated'] else ''}" for p in fitted)
            print(f"{r.name or out}: {len(fitted)} of {len(s['people'])} people fitted ({each}), "
                  f"{s['runtime_s'].get('total', float('nan')):.2f} s -> {r.out_dir}")
            for u in s.get("unmatched", []):  # several views: detections of nobody seen twice
                print(f"{r.name or out}: view {u['view']} detection {u['detection']} not fitted: {u['why']}",
                      file=sys.stderr)
        elif r.ok:
            s = r.summary
            print(f"{r.name or out}: reprojection {s['reprojection_error_px']:.1f} px "
                  f"({100 * s['reprojection_error_over_box']:.2f}% of the {s['box_height_px']:.0f} px box), "
                  f"{s['runtime_s']['total']:.2f} s -> {r.out_dir}")
        else:
            print(f"{r.name} not fitted: {r.error}", file=sys.stderr)
    failed = [r for r in reports if not r.ok]
    skipped = [r for r in reports if r.skipped]
    flagged = [r for r in reports if r.ok and r.flagged]
    for r in flagged:
        print(f"{r.name or out} flagged: {r.flagged}", file=sys.stderr)
    done = f"{len(skipped)} already done, " if skipped else ""
    print(f"{len(reports) - len(failed) - len(skipped)} fitted ({len(flagged)} flagged as far off), {done}"
          f"{len(failed)} failed; results in {out}")
    return 1 if failed or not reports else (3 if flagged else 0)


def read_intrinsics(path) -> torch.Tensor:
    """(3,3) intrinsics in pixels from a text file (3 rows of 3 numbers) or a .npy file.

    Raises:
        OSError: unreadable. ValueError: not 3x3, not finite, non-positive focal lengths or a
            last row other than (0, 0, 1).
    """
    import numpy as np
    import torch

    p = Path(path)
    K = np.load(p) if p.suffix.lower() == ".npy" else np.loadtxt(p, ndmin=2)
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"expected 3x3 finite numbers (pixels), got shape {K.shape}")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
        raise ValueError("K needs positive focal lengths K[0,0], K[1,1] and a last row 0 0 1")
    return torch.as_tensor(K, dtype=torch.float32)


def picture_intrinsics(path, size: tuple[int, int], fov_deg: float, focal: float | None = None,
                       K: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The full-size picture's intrinsics (3,3) pixels, and the fit.json note on where they came
    from: ``{"focal_source": "user" | "exif35" | "exif" | "default", "focal_px": f}`` (plus
    ``"focal_note"`` where EXIF tags were ignored). In turn: ``K``, ``focal`` (pixels, principal
    point at the centre), the photo's EXIF (:func:`bodyfit.data.images.exif_focal_px`), else
    ``fov_deg`` of the longer side (:func:`bodyfit.cameras.default_intrinsics`)."""
    from bodyfit.cameras import default_intrinsics
    from bodyfit.data.images import exif_focal_px

    K0 = default_intrinsics(size, 1, fov_deg)[0]
    if K is not None:
        return K.clone(), {"focal_source": "user", "focal_px": float(K[0, 0])}
    note = None
    source = "user"
    if focal is None:
        focal, source, note = exif_focal_px(path, size)
    out = {"focal_source": source, "focal_px": float(K0[0, 0]) if focal is None else float(focal)}
    if note:
        out["focal_note"] = note
    if focal is None:
        out["fov_deg"] = float(fov_deg)
        return K0, out
    K0[0, 0] = K0[1, 1] = float(focal)
    return K0, out


def _fit(args, pictures, cfg, model) -> int:
    from bodyfit.cameras import Camera
    from bodyfit.data.images import check_picture_path, read_picture
    from bodyfit.pipeline import PictureReport, Scene, fit_scenes, people_options
    from bodyfit.results import done_result

    if not pictures:
        print("bodyfit fit: give one or more pictures", file=sys.stderr)
        return 2
    user_K = None
    if args.K_file is not None:
        try:
            user_K = read_intrinsics(args.K_file)
        except (OSError, ValueError) as e:
            print(f"bodyfit fit: --K {args.K_file}: {e}", file=sys.stderr)
            return 2
    if args.focal is not None and not (math.isfinite(args.focal) and args.focal > 0):
        print(f"bodyfit fit: --focal must be a positive number of pixels, got {args.focal}", file=sys.stderr)
        return 2
    names = _out_names(pictures)
    failed, skipped, paths = [], [], {}
    for path, name in zip(pictures, names):
        paths[name] = path

    def scenes():
        for name, path in paths.items():
            try:
                check_picture_path(path)
                sha1 = _sha1(path)
                target = Path(args.out) / name
                done = None if args.redo else done_result(target, sha1, cfg.model.name,
                                                          people_options(cfg.detector))
                if done is not None:
                    log.info("%s: already done in %s, skipped (--redo fits it again)", path, target)
                    skipped.append(PictureReport(name, True, target, summary=done, skipped=True))
                    continue
                image, full = read_picture(path, cfg.detector.max_pixels)
            except (OSError, ValueError) as e:  # missing, a folder, unreadable, corrupt, a bomb
                log.warning("%s left out: %s", path, e)
                failed.append(PictureReport(name, False, error=str(e)))
                continue
            if image.shape[:2] != full:
                log.info("%s is %dx%d: detected and fitted at %dx%d (detector.max_pixels=%d)", path,
                         full[1], full[0], image.shape[1], image.shape[0], cfg.detector.max_pixels)
            K, focal = picture_intrinsics(path, full, cfg.fov_deg, args.focal, user_K)
            if focal.get("focal_note"):
                log.warning("%s: %s", path, focal["focal_note"])
            yield Scene([[image]], [name], None if focal["focal_source"] == "default" else
                        [Camera.identity(K[None], full)],
                        extra={"source": str(Path(path).resolve()), "source_sha1": sha1, **focal},
                        full_sizes=[full])

    reports = fit_scenes(scenes(), args.out, model, cfg, progress=not args.quiet, people=True)
    return _report(failed + skipped + reports, args.out)


def _demo(args, pictures, cfg, model) -> int:
    from bodyfit.data.pose2sim import ATTRIBUTION, demo_frames, demo_views
    from bodyfit.pipeline import Scene, fit_scenes

    print(f"Pose2Sim Demo_SinglePerson frames {args.frames}, 4 views"
          f"{' fitted together' if args.views else ''}. {ATTRIBUTION}")
    extra = {"source": ATTRIBUTION}
    try:
        if args.views:
            scenes = []
            for frame in args.frames:
                mv = demo_views([frame])
                cams = [mv.cameras.index(slice(v, v + 1)) for v in range(len(mv.names))]
                scenes.append(Scene([[im] for im in mv.images[0]], [f"frame_{frame:03d}"], cams,
                                    list(mv.names), extra=extra))
        else:
            scenes = [Scene([[im]], [name], extra=extra)
                      for name, im in demo_frames(frame_indices=tuple(args.frames))]
    except (RuntimeError, ValueError, IndexError, FileNotFoundError) as e:
        print(f"bodyfit demo: {e}", file=sys.stderr)
        return 1
    reports = fit_scenes(scenes, args.out, model, cfg, dense=args.views, progress=not args.quiet)
    return _report(reports, args.out)


def _fit_views(args, pictures, cfg, model) -> int:
    from dataclasses import replace

    from bodyfit.data.calibration import load_calibration, undistort_image
    from bodyfit.data.images import read_picture
    from bodyfit.pipeline import Scene, fit_scenes

    try:
        calib = load_calibration(args.calib)
    except (ValueError, FileNotFoundError) as e:
        print(f"bodyfit fit-views: {e}", file=sys.stderr)
        return 2
    if len(pictures) != len(calib):
        print(f"bodyfit fit-views: {len(pictures)} pictures for the {len(calib)} cameras of "
              f"{args.calib} ({', '.join(c.name for c in calib)}): give one per camera, in that "
              f"order.", file=sys.stderr)
        return 2
    images, sizes = [], []
    for path, cam in zip(pictures, calib):
        try:
            image, full = read_picture(path, cfg.detector.max_pixels)
            H, W = cam.camera.image_size
            if full != (H, W):
                raise ValueError(f"picture is {full[1]}x{full[0]} but camera {cam.name!r} is calibrated "
                                 f"for {W}x{H}: use the calibration of this camera and resolution.")
            if image.shape[:2] != full:  # downscaled for the pixel budget: undistort at its size
                cam = replace(cam, camera=cam.camera.at_most(max(image.shape[:2]))[0])
            images.append([undistort_image(image, cam)])
            sizes.append(full)
        except (OSError, ValueError) as e:
            log.warning("view %s left out: %s", cam.name, e)
            images.append([None])
            sizes.append(None)
    scene = Scene(images, [""], [c.camera for c in calib], [c.name for c in calib],
                  extra={"source": [str(Path(p).resolve()) for p in pictures]}, full_sizes=sizes)
    reports = fit_scenes([scene], args.out, model, cfg, dense=not args.keypoints_only, progress=False,
                         people=True)
    code = _report(reports, args.out)
    return code if code else (1 if any(im[0] is None for im in images) else 0)


def _fit_video(args, pictures, cfg, model) -> int:
    from bodyfit.data.calibration import load_calibration, undistort_image
    from bodyfit.data.images import read_video_frames
    from bodyfit.pipeline import Scene, fit_scenes

    if len(pictures) != 1:
        print(f"bodyfit fit-video: give one video file, got {pictures}", file=sys.stderr)
        return 2
    if args.chunk < 1 or args.every < 1 or args.max_frames < 1:
        print("bodyfit fit-video: --chunk, --every and --max-frames must be >= 1", file=sys.stderr)
        return 2
    cam = None
    if args.calib is not None:
        try:
            calib = {c.name: c for c in load_calibration(args.calib)}
        except (ValueError, FileNotFoundError) as e:
            print(f"bodyfit fit-video: {e}", file=sys.stderr)
            return 2
        if args.view not in calib:
            print(f"bodyfit fit-video: --view must name one camera of {args.calib}: "
                  f"{', '.join(calib)}", file=sys.stderr)
            return 2
        cam = calib[args.view]
    source = str(Path(pictures[0]).resolve())

    def scenes(frames):
        frames = iter(frames)
        while batch := [f for _, f in zip(range(args.chunk), frames)]:
            pics = [undistort_image(im, cam) if cam is not None else im for _, im in batch]
            yield Scene([pics], [n for n, _ in batch], [cam.camera] if cam is not None else None,
                        ["video"], sequence=True, extra={"source": source})

    try:
        frames = read_video_frames(pictures[0], every=args.every, max_frames=args.max_frames)
        reports = fit_scenes(scenes(frames), args.out, model, cfg, dense=not args.keypoints_only,
                             progress=not args.quiet, people=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"bodyfit fit-video: {e}", file=sys.stderr)
        return 1
    return _report(reports, args.out)


def _pseudo_gt(args, words, cfg, model) -> int:
    from bodyfit.distributed import barrier, rank_and_world
    from bodyfit.fitting import Fitter
    from bodyfit.pseudo_gt import coco_people, is_iuv_file, picture_people, run_pseudo_gt

    if args.batch_size < 1 or args.shard_size < 1:
        print("bodyfit pseudo-gt: --batch-size and --shard-size must be at least 1", file=sys.stderr)
        return 2
    coco = [w for w in words if w.lower().endswith(".json")]
    if coco and len(words) > 1:
        print("bodyfit pseudo-gt: give one COCO .json, or pictures, not both", file=sys.stderr)
        return 2
    try:
        if coco:
            people, convention = coco_people(coco[0], args.images, cfg.fov_deg), "coco17"
            cfg.try_mirror = False  # annotated keypoints: their left and right are right
        else:
            paths = []
            for w in words:
                p = Path(w)
                paths += sorted(q for q in p.iterdir() if q.suffix.lower() in MEDIA_SUFFIXES
                                and not is_iuv_file(q)) if p.is_dir() else [p]
            rank, world = rank_and_world()
            from bodyfit.detectors.multi_person import MultiPersonPose

            d = cfg.detector
            options = (f"setting={d.setting} min_detection_confidence={d.min_detection_confidence} "
                       f"model_complexity={d.model_complexity} landmark_model_path={d.landmark_model_path}")
            with MultiPersonPose(d.setting, min_detection_confidence=d.min_detection_confidence,
                                 enable_segmentation=False, model_complexity=d.model_complexity,
                                 landmark_model_path=d.landmark_model_path) as detector:  # each rank its share
                picture_people(paths[rank::world], args.out, detector, d.max_pixels, cfg.fov_deg, options)
            barrier()
            people, convention = picture_people(paths, args.out, None, d.max_pixels, cfg.fov_deg, options), "mediapipe33"
        summary = run_pseudo_gt(people, args.out, Fitter(model, cfg), convention, args.batch_size,
                                args.redo, args.shard_size, progress=not args.quiet)
    except (ValueError, OSError, ImportError, RuntimeError) as e:  # RuntimeError: FolderLockedError
        print(f"bodyfit pseudo-gt: {e}", file=sys.stderr)
        return 2
    if "valid" in summary:
        print(f"{summary['people']} people: {summary['fitted']} fitted now, {summary['done_before']} done "
              f"before; {summary['valid']} valid, {summary['plausible']} plausible, {summary['flagged']} "
              f"flagged; index {summary['index']}, {len(summary['shards'])} shard(s) in {Path(args.out) / 'export'}")
    return 0


def _train(args, overrides) -> int:
    from bodyfit.data.samples import pose2sim_samples, synthetic_samples
    from bodyfit.distributed import hold_run_folder
    from bodyfit.regressors.spin import train
    from bodyfit.regressors.train_config import load_train_config

    try:
        cfg = load_train_config(overrides)
        with hold_run_folder(args.out, "bodyfit train"):  # a second train on this folder stops here, at once
            model = _build_model(cfg.model, args.device)
            if cfg.data == "pose2sim":
                samples = pose2sim_samples(range(*cfg.frames), crops=cfg.regressor == "image")
            else:
                samples, _ = synthetic_samples(model, cfg.synthetic_samples, seed=cfg.seed + 1)
            regressor = None
            if cfg.regressor == "image":
                from bodyfit.regressors.image_regressor import load_image_regressor

                regressor = load_image_regressor(model, cfg.image_weights)
            metrics = train(samples, args.out, cfg, model, regressor=regressor, progress=not args.quiet)
    except (ValueError, OSError, ImportError, RuntimeError) as e:  # RuntimeError: FolderLockedError too
        print(f"bodyfit train: {e}", file=sys.stderr)
        return 2
    print(f"trained to step {metrics.get('step')}; regressor, checkpoint and store in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
