"""Person boxes in pixels: from keypoints, squared for crops, and the crops themselves.

Boxes are (B,4) ``x0, y0, x1, y1`` in pixels with pixel centres at integers (as everywhere in
bodyfit); the person crops follow HMR (Kanazawa et al. 2018): a square around the box.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def boxes_from_keypoints(keypoints: torch.Tensor, pad: float = 0.1) -> torch.Tensor:
    """(..., K, 3) keypoints (x, y px, confidence) -> (..., 4) xyxy box around the visible ones
    (confidence > 0), padded by ``pad`` of its larger side on each side. Where no keypoint is
    visible the box is the unit box at the origin."""
    seen = keypoints[..., 2] > 0
    xy = keypoints[..., :2]
    big = torch.finfo(xy.dtype).max
    lo = torch.where(seen[..., None], xy, torch.full_like(xy, big)).amin(-2)
    hi = torch.where(seen[..., None], xy, torch.full_like(xy, -big)).amax(-2)
    none = ~seen.any(-1)
    lo = torch.where(none[..., None], torch.zeros_like(lo), lo)
    hi = torch.where(none[..., None], torch.ones_like(hi), hi)
    extent = (hi - lo).amax(-1, keepdim=True)
    return torch.cat([lo - pad * extent, hi + pad * extent], -1)


def square_boxes(boxes: torch.Tensor, scale: float = 1.2) -> torch.Tensor:
    """(B,4) xyxy pixel boxes -> (B,4) squares with the same centre and side ``scale`` times the
    longer side (HMR's person crops)."""
    c = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    half = 0.5 * scale * (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True).clamp(min=1.0)
    return torch.cat([c - half, c + half], 1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop and resize (bilinear, zeros outside the picture).

    Args:
        images: (B,H,W,3) uint8 or float in [0,1], RGB. boxes: (B,4) xyxy pixels (pixel
            centres at integers); the crop covers [x0, x1] x [y0, y1].
        size: output side in pixels.
    Returns:
        (B,3,size,size) float in [0,1].
    Raises:
        ValueError: wrong shapes.
    """
    if images.dim() != 4 or images.shape[-1] != 3 or boxes.shape != (images.shape[0], 4):
        raise ValueError(f"need images (B,H,W,3) and boxes (B,4), got {tuple(images.shape)} and "
                         f"{tuple(boxes.shape)}.")
    img = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    B, H, W, _ = img.shape
    t = torch.linspace(0, 1, size, device=img.device)
    x0, y0, x1, y1 = (boxes[:, i:i + 1].float() for i in range(4))
    xs = x0 + (x1 - x0) * t  # (B,size) pixel coordinates
    ys = y0 + (y1 - y0) * t
    grid = torch.stack([((xs + 0.5) / W * 2 - 1)[:, None, :].expand(B, size, size),
                        ((ys + 0.5) / H * 2 - 1)[:, :, None].expand(B, size, size)], -1)
    return F.grid_sample(img.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)
