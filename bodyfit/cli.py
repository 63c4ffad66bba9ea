"""The ``bodyfit`` command.

    bodyfit fit IMAGE... --out DIR [--model anny|smpl|smplh|smplx] [--model-path PATH]
                         [--device cpu] [key=value ...]
    bodyfit fit-views IMAGE... --calib CALIB --out DIR [--keypoints-only] [key=value ...]
    bodyfit fit-video VIDEO --out DIR [--every N] [--max-frames M] [--calib CALIB --view NAME]
                      [--keypoints-only] [key=value ...]
    bodyfit demo [--out DIR] [--frames 0 50] [--views] [key=value ...]
    bodyfit train --out DIR [key=value ...]      (torchrun --nproc_per_node N -m bodyfit.cli train ...)

Exit codes: 0 every picture fitted; 1 some pictures failed (each is reported); 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bodyfit", description="Fit 3D human bodies to pictures.")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--model", default="anny", choices=["anny", "smpl", "smplh", "smplx"],
                       help="body model (default: anny, no licensed file needed)")
        p.add_argument("--model-path", default=None,
                       help="SMPL-family model file or folder (your own licensed files)")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    f = sub.add_parser("fit", help="fit pictures; writes DIR/<stem>/{fit.npz,fit.json,mesh.ply,overlay.png}")
    f.add_argument("images", nargs="+", metavar="IMAGE_OR_KEY=VALUE",
                   help="picture files, and fit config overrides key=value (bodyfit/configs/fit.yaml)")
    f.add_argument("--out", required=True, help="output folder")
    common(f)

    mv = sub.add_parser("fit-views", help="one moment seen by calibrated cameras: one body fitted "
                        "to all views; writes DIR/{fit.npz,fit.json,mesh.ply,overlay_<view>.png}")
    mv.add_argument("images", nargs="+", metavar="IMAGE_OR_KEY=VALUE",
                    help="one picture per calibrated camera, in the calibration's order, and "
                         "overrides key=value (bodyfit/configs/fit_views.yaml)")
    mv.add_argument("--calib", required=True, help="calibration: Qualisys/Pose2Sim .qca.txt")
    mv.add_argument("--out", required=True, help="output folder")
    mv.add_argument("--keypoints-only", action="store_true",
                    help="no silhouette or texture-consistency energies (faster)")
    common(mv)

    vid = sub.add_parser("fit-video", help="a video of one person: one shape, smooth motion; "
                         "writes DIR/<frame>/ per frame")
    vid.add_argument("images", nargs="+", metavar="VIDEO_OR_KEY=VALUE",
                     help="a video file, and overrides key=value (bodyfit/configs/fit_views.yaml)")
    vid.add_argument("--out", required=True, help="output folder")
    vid.add_argument("--every", type=int, default=1, help="use every N-th frame (default 1)")
    vid.add_argument("--max-frames", type=int, default=100, help="at most this many frames (default 100)")
    vid.add_argument("--calib", default=None, help="optional .qca.txt calibration of the camera")
    vid.add_argument("--view", default=None, help="which camera of --calib filmed the video")
    vid.add_argument("--keypoints-only", action="store_true",
                     help="no silhouette or texture-consistency energies (faster)")
    common(vid)

    tr = sub.add_parser("train", help="the SPIN loop: fits supervise the keypoint regressor; "
                        "resumes from DIR/checkpoint.pt")
    tr.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides of bodyfit/configs/train.yaml")
    tr.add_argument("--out", required=True, help="run folder (checkpoint, metrics.csv, store/)")
    common(tr)

    d = sub.add_parser("demo", help="fit real frames of the Pose2Sim demo (4 views), offline")
    d.add_argument("--out", default="bodyfit_demo", help="output folder (default: bodyfit_demo)")
    d.add_argument("--frames", type=int, nargs="+", default=[0], help="frame indices (default: 0)")
    d.add_argument("--views", action="store_true",
                   help="fit one body per frame to the 4 calibrated views together (fit-views)")
    d.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="fit config overrides (bodyfit/configs/fit.yaml; fit_views.yaml with --views)")
    common(d)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)  # pictures and key=value may follow the options
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    words = (args.overrides if args.command in ("demo", "train") else args.images) + rest
    overrides = [a for a in words if "=" in a and not Path(a).exists()]
    images = [a for a in words if a not in overrides]
    if args.command in ("demo", "train") and images:
        parser.error(f"bodyfit {args.command} takes no pictures, got {images}")
    if args.command == "train":
        return _train(args, overrides)

    from bodyfit.body_models import body_model
    from bodyfit.fitting.fit import load_config
    from bodyfit.pipeline import fit_pictures

    try:
        views_mode = args.command in ("fit-views", "fit-video") or getattr(args, "views", False)
        load_config(overrides, name="fit_views" if views_mode else "fit")
        model = body_model(args.model, model_path=args.model_path, device=args.device)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"bodyfit: {e}", file=sys.stderr)
        return 2
    if args.command == "fit-views":
        return _fit_views(args, images, overrides, model)
    if args.command == "fit-video":
        return _fit_video(args, images, overrides, model)
    if args.command == "demo" and args.views:
        return _demo_views(args, overrides, model)

    extra = {}
    if args.command == "fit":
        pictures = [Path(p) for p in images]
    else:
        from bodyfit.data.pose2sim import ATTRIBUTION, demo_frames

        try:
            pictures = demo_frames(frame_indices=tuple(args.frames))
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            print(f"bodyfit demo: {e}", file=sys.stderr)
            return 1
        extra = {"source": ATTRIBUTION}
        print(f"Pose2Sim Demo_SinglePerson frames {args.frames}, 4 views. {ATTRIBUTION}")

    reports = fit_pictures(pictures, args.out, model, overrides, progress=not args.quiet,
                           log=lambda m: print(m, file=sys.stderr), extra=extra)
    for r in reports:
        if r.ok:
            s = r.summary
            print(f"{r.name}: reprojection {s['reprojection_error_px']:.1f} px "
                  f"({100 * s['reprojection_error_over_box']:.2f}% of the {s['box_height_px']:.0f} px box), "
                  f"{s['runtime_s']['total']:.2f} s -> {r.out_dir}")
    failed = [r for r in reports if not r.ok]
    print(f"{len(reports) - len(failed)} fitted, {len(failed)} failed; results in {args.out}")
    return 1 if failed else 0


def _fit_views(args, images, overrides, model) -> int:
    from bodyfit.data.calibration import load_calibration, undistort_image
    from bodyfit.data.images import read_image
    from bodyfit.pipeline import fit_view_pictures

    try:
        calib = load_calibration(args.calib)
    except (ValueError, FileNotFoundError) as e:
        print(f"bodyfit fit-views: {e}", file=sys.stderr)
        return 2
    if len(images) != len(calib):
        print(f"bodyfit fit-views: {len(images)} pictures for the {len(calib)} cameras of "
              f"{args.calib} ({', '.join(c.name for c in calib)}): give one per camera, in that "
              f"order.", file=sys.stderr)
        return 2
    pictures = []
    for path, cam in zip(images, calib):
        try:
            pictures.append(undistort_image(read_image(path), cam))
        except (FileNotFoundError, ValueError) as e:
            print(f"view {cam.name} left out: {e}", file=sys.stderr)
            pictures.append(None)
    keep = [i for i, p in enumerate(pictures) if p is not None]
    report = fit_view_pictures([pictures[i] for i in keep], [calib[i].camera for i in keep],
                               args.out, model, overrides, names=[calib[i].name for i in keep],
                               dense=not args.keypoints_only,
                               log=lambda m: print(m, file=sys.stderr))
    if not report.ok:
        print(f"bodyfit fit-views: not fitted: {report.error}", file=sys.stderr)
        return 1
    errs = ", ".join(f"{k} {v:.1f} px" for k, v in report.summary["reprojection_error_px"].items()
                     if v is not None)
    print(f"fitted {len(report.summary['views'])} views ({errs}) in "
          f"{report.summary['runtime_s']['total']:.1f} s -> {args.out}")
    return 0 if len(keep) == len(calib) else 1


def _train(args, overrides) -> int:
    from bodyfit.body_models import body_model
    from bodyfit.data.samples import pose2sim_samples, synthetic_samples
    from bodyfit.fitting.fit import load_config
    from bodyfit.regressors.spin import train

    try:
        cfg = load_config(overrides, name="train")
        model = body_model(args.model, model_path=args.model_path, device=args.device)
        if cfg.regressor not in ("keypoint", "image"):
            raise ValueError(f"regressor must be 'keypoint' or 'image', got {cfg.regressor!r}")
        if cfg.data == "pose2sim":
            samples = pose2sim_samples(range(*cfg.frames), crops=cfg.regressor == "image")
        elif cfg.data == "synthetic" and cfg.regressor == "keypoint":
            samples, _ = synthetic_samples(model, cfg.synthetic_samples, seed=cfg.seed + 1)
        else:
            raise ValueError(f"data must be 'pose2sim' (or 'synthetic' for the keypoint regressor), "
                             f"got {cfg.data!r}")
        regressor = None
        if cfg.regressor == "image":
            from bodyfit.regressors.image_regressor import load_image_regressor

            regressor = load_image_regressor(model, cfg.image_weights)
        metrics = train(samples, args.out, cfg, model, regressor=regressor,
                        progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        print(f"bodyfit train: {e}", file=sys.stderr)
        return 2
    print(f"trained to step {metrics.get('step')}; regressor, checkpoint and store in {args.out}")
    return 0


def _demo_views(args, overrides, model) -> int:
    from bodyfit.data.pose2sim import ATTRIBUTION, demo_views
    from bodyfit.pipeline import fit_view_pictures

    print(f"Pose2Sim Demo_SinglePerson frames {args.frames}, 4 calibrated views fitted together. "
          f"{ATTRIBUTION}")
    failed = 0
    for frame in args.frames:
        try:
            mv = demo_views([frame])
        except (RuntimeError, ValueError, IndexError, FileNotFoundError) as e:
            print(f"bodyfit demo: {e}", file=sys.stderr)
            return 1
        cams = [mv.cameras.index(slice(v, v + 1)) for v in range(len(mv.names))]
        out = Path(args.out) / f"frame_{frame:03d}"
        report = fit_view_pictures(mv.images[0], cams, out, model, overrides, names=list(mv.names),
                                   log=lambda m: print(m, file=sys.stderr),
                                   extra={"source": ATTRIBUTION})
        if not report.ok:
            print(f"frame {frame} not fitted: {report.error}", file=sys.stderr)
            failed += 1
            continue
        errs = ", ".join(f"{k} {v:.1f} px" for k, v in report.summary["reprojection_error_px"].items()
                         if v is not None)
        print(f"frame {frame}: {errs}; {report.summary['runtime_s']['total']:.1f} s -> {out}")
    return 1 if failed else 0


def _fit_video(args, images, overrides, model) -> int:
    from bodyfit.data.calibration import load_calibration, undistort_image
    from bodyfit.data.images import read_video_frames
    from bodyfit.pipeline import fit_video_frames

    if len(images) != 1:
        print(f"bodyfit fit-video: give one video file, got {images}", file=sys.stderr)
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
    try:
        frames = read_video_frames(images[0], every=args.every, max_frames=args.max_frames)
        if cam is not None:
            frames = ((name, undistort_image(im, cam)) for name, im in frames)
        reports = fit_video_frames(frames, args.out, cam.camera if cam is not None else None, model,
                                   overrides, dense=not args.keypoints_only,
                                   progress=not args.quiet, log=lambda m: print(m, file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:
        print(f"bodyfit fit-video: {e}", file=sys.stderr)
        return 1
    failed = [r for r in reports if not r.ok]
    for r in failed:
        print(f"frame {r.name} not fitted: {r.error}", file=sys.stderr)
    print(f"{len(reports) - len(failed)} frames fitted, {len(failed)} failed; results in {args.out}")
    return 1 if failed or not reports else 0


if __name__ == "__main__":
    sys.exit(main())
