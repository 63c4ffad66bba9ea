"""Multi-person detection: time per picture and people found, per setting; agreement with the
legacy single-person API on the person both find.

    python benchmarks/bench_multi_person.py [PICTURE | VIDEO:FRAME ...] [--repeats 5]
        [--settings full fast thorough exhaustive] [--heavy pose_landmark_heavy.tflite] [--save DIR]

Without pictures: OpenCV's ``basketball2.png`` and ``vtest.avi`` frames 0, 100, 300, 500 from
the Debian package ``opencv-doc`` (``apt-get download opencv-doc && dpkg -x opencv-doc*.deb
DIR``; looked for under ``$OPENCV_DOC_DIR``, ``/usr/share/doc/opencv-doc`` and
``/tmp/opencv-doc``), and Pose2Sim's demo frame 50 of cam01 (a second person stands at the
left). Times are medians over ``--repeats`` calls after one warm-up call (the first call of a
detector also initializes XNNPACK, ~0.2 s), in milliseconds of wall time on this machine;
``windows`` is the number of detector runs (full picture + tiles). ``legacy px`` is the largest
keypoint distance between the legacy ``mp.solutions.pose`` person and the same person (matched
by keypoints) of each setting. ``--save`` writes overlays (boxes, confident keypoints) to look
at.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bodyfit.detectors import MultiPersonPose
from bodyfit.detectors.multi_person import tile_windows

_OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"


def _opencv_data() -> Path | None:
    roots = [os.environ.get("OPENCV_DOC_DIR", ""), "/usr/share/doc/opencv-doc/examples/data",
             "/tmp/opencv-doc"]
    for r in filter(None, roots):
        for p in (Path(r), Path(r) / _OPENCV_DATA, Path(r) / "examples" / "data"):
            if (p / "basketball2.png").is_file():
                return p
    return None


def _split(spec: str) -> tuple[str, int | None]:
    """``"clip.avi:120"`` -> ``("clip.avi", 120)``; ``"photo.png"`` -> ``("photo.png", None)``."""
    path, sep, frame = spec.rpartition(":")
    return (path, int(frame)) if sep and frame.isdigit() else (spec, None)


def _read(spec: str) -> np.ndarray:
    """RGB picture of a file, or of one frame of a video (``VIDEO:FRAME``)."""
    import cv2

    path, frame = _split(spec)
    if frame is not None:
        cap = cv2.VideoCapture(path)
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, img = cap.read()
        cap.release()
        if not ok:
            raise SystemExit(f"cannot read frame {frame} of {path}")
    else:
        img = cv2.imread(path)
        if img is None:
            raise SystemExit(f"cannot read {path}")
    return np.ascontiguousarray(img[:, :, ::-1])


def _pictures(specs: list[str]) -> list[tuple[str, np.ndarray]]:
    if specs:
        return [(Path(s).name, _read(s)) for s in specs]
    out = []
    data = _opencv_data()
    if data is None:
        print("opencv-doc data not found (see the module docstring); OpenCV pictures skipped")
    else:
        out.append(("basketball2.png", _read(str(data / "basketball2.png"))))
        out += [(f"vtest.avi:{f}", _read(f"{data / 'vtest.avi'}:{f}")) for f in (0, 100, 300, 500)]
    try:
        from bodyfit.data.pose2sim import demo_frames

        out += [(f"pose2sim {n}", img) for n, img in demo_frames((50,), cameras=("cam01",))]
    except Exception as e:  # noqa: BLE001 - a benchmark goes on without it
        print(f"Pose2Sim demo frames skipped: {e}")
    return out


def _time(fn, img, repeats: int) -> tuple[float, object]:
    out = fn(img)  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(img)
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts), out


def _legacy_keypoints(img: np.ndarray, repeats: int):
    import mediapipe as mp

    h, w = img.shape[:2]
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                enable_segmentation=True) as pose:
        ms, res = _time(pose.process, img, repeats)
    if res.pose_landmarks is None:
        return ms, None
    return ms, np.array([[p.x * w - 0.5, p.y * h - 0.5] for p in res.pose_landmarks.landmark])


def _save(path: Path, img: np.ndarray, people) -> None:
    import cv2

    vis = np.ascontiguousarray(img[:, :, ::-1])
    for i, p in enumerate(people):
        col = tuple(int(c) for c in np.random.default_rng(i).integers(60, 256, 3))
        x0, y0, x1, y1 = p.box.astype(int)
        cv2.rectangle(vis, (x0, y0), (x1, y1), col, 2)
        cv2.putText(vis, f"{i} {p.score:.2f}", (x0, max(y0 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, col, 1)
        for x, y, c in p.keypoints:
            if c > 0.5:
                cv2.circle(vis, (int(round(x)), int(round(y))), 3, col, -1)
    cv2.imwrite(str(path), vis)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pictures", nargs="*", help="picture files or VIDEO:FRAME")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--settings", nargs="+", default=["full", "fast", "thorough", "exhaustive"])
    ap.add_argument("--heavy", default=None, help="pose_landmark_heavy.tflite (also time it)")
    ap.add_argument("--save", default=None, help="folder for overlays")
    a = ap.parse_args()

    pictures = _pictures(a.pictures)
    detectors = {s: MultiPersonPose(s) for s in a.settings}
    if a.heavy:
        detectors["fast+heavy"] = MultiPersonPose("fast", model_complexity=2, landmark_model_path=a.heavy)
    if a.save:
        Path(a.save).mkdir(parents=True, exist_ok=True)
    print(f"{'picture':24s} {'size':>9s} {'setting':>10s} {'windows':>7s} {'people':>6s} "
          f"{'ms':>7s} {'legacy px':>9s}")
    for name, img in pictures:
        h, w = img.shape[:2]
        legacy_ms, ref = _legacy_keypoints(img, a.repeats)
        print(f"{name:24s} {w:4d}x{h:<4d} {'legacy':>10s} {1:7d} {int(ref is not None):6d} "
              f"{legacy_ms:7.0f} {'':>9s}")
        for s, det in detectors.items():
            ms, people = _time(det.detect_all, img, a.repeats)
            agree = ""
            if ref is not None and people:
                d = [np.abs(p.keypoints[:, :2] - ref).max() for p in people]
                agree = f"{min(d):9.3f}"
            nwin = len(tile_windows(h, w, det.levels, det.tile_overlap, det.min_tile_side))
            print(f"{name:24s} {w:4d}x{h:<4d} {s:>10s} {nwin:7d} {len(people):6d} {ms:7.0f} {agree:>9s}")
            if a.save:
                safe = name.replace("/", "_").replace(":", "_").replace(" ", "_")
                _save(Path(a.save) / f"{safe}_{s.replace('+', '_')}.png", img, people)
    for det in detectors.values():
        det.close()
    print(f"cpu cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
