"""Training samples for the SPIN loop: detected 2D keypoints with their camera, one id each."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KeypointSamples:
    """N samples of one person's 2D keypoints.

    Attributes:
        ids: N unique sample ids (letters, digits, ``_ . -``), the fit store's keys.
        keypoints: (N,K,3) pixels + confidence, in ``convention``.
        K: (N,3,3) intrinsics, pixels. image_size: (H, W) shared by the samples.
        convention: keypoint convention name.
        crops: optional (N,3,S,S) uint8 person crops (for the image regressor; S = 224 by
            default), cut at ``crop_boxes`` (N,4) xyxy pixels (``bodyfit.boxes.square_boxes`` of
            the keypoints' box).
    """

    ids: list[str]
    keypoints: torch.Tensor
    K: torch.Tensor
    image_size: tuple[int, int]
    convention: str = "mediapipe33"
    crops: torch.Tensor | None = None
    crop_boxes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, idx) -> "KeypointSamples":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return KeypointSamples([self.ids[i] for i in idx.tolist()], self.keypoints[idx], self.K[idx],
                               self.image_size, self.convention,
                               None if self.crops is None else self.crops[idx],
                               None if self.crop_boxes is None else self.crop_boxes[idx])


def pose2sim_samples(frames=range(0, 100), cameras=("cam01", "cam02", "cam03", "cam04"),
                     cache_dir=None, crops: bool = False, crop_size: int = 224) -> KeypointSamples:
    """Pose2Sim Demo_SinglePerson frames x views with cached MediaPipe-33 keypoints
    (``bodyfit.data.pose2sim.demo_keypoints``: undistorted, on the calibration's 1088 x 1920
    grid); ids ``cam01_f000``; with ``crops``, also the ``crop_size`` px person crops for the
    image regressor (decodes the frames: about 0.1 s each; 224 is the image regressor's
    ``CROP_SIZE``). Data: BSD-3-Clause, see ``bodyfit.data.pose2sim.ATTRIBUTION``."""
    from bodyfit.data.pose2sim import demo_cameras, demo_keypoints

    frames = list(frames)
    kp = torch.as_tensor(demo_keypoints(frames, cameras, cache_dir), dtype=torch.float32)  # (T,V,33,3)
    cams = demo_cameras(cameras, cache_dir)
    T, V = kp.shape[:2]
    ids = [f"{cam}_f{f:03d}" for f in frames for cam in cameras]
    K = cams.K.float()[None].expand(T, V, 3, 3).reshape(T * V, 3, 3).clone()
    kp = kp.reshape(T * V, 33, 3)
    out = KeypointSamples(ids, kp, K, tuple(cams.image_size))
    if crops:
        from bodyfit.boxes import boxes_from_keypoints, crop_boxes, square_boxes
        from bodyfit.data.pose2sim import demo_views

        out.crop_boxes = square_boxes(boxes_from_keypoints(kp))
        pieces = []
        for t, f in enumerate(frames):  # one frame at a time: full pictures are large
            mv = demo_views([f], cameras, cache_dir=cache_dir)
            pics = torch.stack([torch.as_tensor(im) for im in mv.images[0]])
            boxes = out.crop_boxes[t * V:(t + 1) * V]
            pieces.append((crop_boxes(pics, boxes, crop_size) * 255).round().to(torch.uint8))
        out.crops = torch.cat(pieces)
    return out


def synthetic_samples(model, n: int, seed: int = 0, noise: float = 0.015,
                      dropout: float = 0.1) -> tuple[KeypointSamples, object]:
    """n synthetic samples (``bodyfit.data.synthetic.synthetic_batch``) with ids ``syn_00000``
    and their ground truth (a SyntheticBatch), for tests and benchmarks of the loop."""
    from bodyfit.data.synthetic import synthetic_batch

    sb = synthetic_batch(model, n, noise=noise, dropout=dropout,
                         generator=torch.Generator().manual_seed(seed))
    return KeypointSamples([f"syn_{i:05d}" for i in range(n)], sb.keypoints.float(), sb.K.float(),
                           sb.image_size), sb
