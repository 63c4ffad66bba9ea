"""The ``bodyfit`` command.

    bodyfit fit IMAGE... --out DIR [--model anny|smpl|smplh|smplx] [--model-path PATH]
                         [--device cpu] [key=value ...]
    bodyfit demo [--out DIR] [--frames 0 50] [key=value ...]

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

    d = sub.add_parser("demo", help="fit real frames of the Pose2Sim demo (4 views), offline")
    d.add_argument("--out", default="bodyfit_demo", help="output folder (default: bodyfit_demo)")
    d.add_argument("--frames", type=int, nargs="+", default=[0], help="frame indices (default: 0)")
    d.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="fit config overrides (bodyfit/configs/fit.yaml)")
    common(d)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)  # pictures and key=value may follow the options
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    words = (args.images if args.command == "fit" else args.overrides) + rest
    overrides = [a for a in words if "=" in a and not Path(a).exists()]
    images = [a for a in words if a not in overrides]
    if args.command == "demo" and images:
        parser.error(f"bodyfit demo takes no pictures, got {images}")

    from bodyfit.body_models import body_model
    from bodyfit.fitting.fit import load_config
    from bodyfit.pipeline import fit_pictures

    try:
        load_config(overrides)
        model = body_model(args.model, model_path=args.model_path, device=args.device)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"bodyfit: {e}", file=sys.stderr)
        return 2

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


if __name__ == "__main__":
    sys.exit(main())
