"""Fit a video of one person: one body shape for all frames, smooth motion.

    python examples/fit_video.py walk.mp4 --out results/ --every 2 --max-frames 30
    python examples/fit_video.py --out results/      # the Pose2Sim demo's cam01 video

Frames are decoded, the person detected in each, and all frames fitted together as a sequence
(``Observations(sequence=True)``: one shape, temporal smoothness). Writes one folder per frame
and a plot of the joints' paths. ``bodyfit fit-video`` does the same in chunks of 50 frames and
adds texture consistency between consecutive frames.
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import bodyfit  # noqa: E402
from bodyfit.cameras import default_intrinsics  # noqa: E402
from bodyfit.data.images import read_video_frames  # noqa: E402
from bodyfit.detectors import NoPersonError  # noqa: E402
from bodyfit.files import atomic_write  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("video", nargs="?", help="a video file (default: the Pose2Sim demo, cam01)")
parser.add_argument("--out", default="example_outputs/fit_video")
parser.add_argument("--every", type=int, default=2)
parser.add_argument("--max-frames", type=int, default=12)
args = parser.parse_args()

if args.video is None:
    from bodyfit.data.pose2sim import demo_video

    args.video = demo_video("cam01")
frames, keypoints = [], []
with bodyfit.MediaPipePose() as detector:
    for name, image in read_video_frames(args.video, every=args.every, max_frames=args.max_frames):
        try:
            keypoints.append(torch.as_tensor(detector.detect(image).keypoints))
        except NoPersonError:
            keypoints.append(torch.zeros(33, 3))  # an unseen frame: fitted from its neighbours
        frames.append((name, image))
H, W = frames[0][1].shape[:2]
camera = bodyfit.Camera.identity(default_intrinsics((H, W), 1), (H, W))  # 55 degrees; give K if known
observations = bodyfit.Observations(torch.stack(keypoints)[:, None], [camera], "mediapipe33", sequence=True)
model = bodyfit.body_model("anny")
result = bodyfit.fit_views(observations, model)

out = Path(args.out)
for t, (name, image) in enumerate(frames):
    if bool(result.valid[t]):
        bodyfit.save_result(result, t, out / name, pictures=[image])
fig, ax = plt.subplots(figsize=(6, 3))
for joint in ["left_wrist", "left_ankle", "right_ankle"]:
    ax.plot(result.joints[:, model.joint_names.index(joint), 1].numpy(), label=joint)
ax.set_xlabel("frame")
ax.set_ylabel("height in the camera frame (m, y down)")
ax.legend()
fig.tight_layout()
atomic_write(out / "joints.png", lambda f: fig.savefig(f, format="png", dpi=80))
print(f"{len(frames)} frames, one shape {result.params.shape[0].numpy().round(2)}; written to {out}")
