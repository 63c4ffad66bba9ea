"""Image regressor, HMR-style (Kanazawa et al. 2018): a person crop -> body parameters and a
weak-perspective camera, through a convolutional backbone and the same iterative-error-feedback
head and 6D rotations (Zhou et al. 2019) as the keypoint regressor. Trained from scratch on
synthetic renders (no pretrained weights can be downloaded here), on a GPU when one is lent.

The backbone is ResNet-18's layout (He et al. 2016) written in plain torch: timm's models need
torchvision, which has no build for the CPU torch this project pins.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from bodyfit.boxes import crop_boxes, square_boxes
from bodyfit.files import atomic_torch_save
from bodyfit.regressors.keypoint_regressor import IDENTITY_6D, KeypointRegressor

logger = logging.getLogger(__name__)

CROP_SIZE = 224
_MEAN = torch.tensor([0.485, 0.456, 0.406])
_STD = torch.tensor([0.229, 0.224, 0.225])


class _Block(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetBackbone(torch.nn.Module):
    """ResNet (He et al. 2016) basic-block backbone: (B,3,H,W) -> (B,C) pooled features.

    Args:
        widths: channels of the four stages ((64, 128, 256, 512) is ResNet-18).
        blocks: basic blocks per stage ((2, 2, 2, 2) is ResNet-18).
    """

    def __init__(self, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)):
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), torch.nn.BatchNorm2d(widths[0]),
            torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(_Block(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = torch.nn.Sequential(*layers)
        self.out_features = cin
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.layers(self.stem(x)).mean(dim=(2, 3))


class ImageRegressor(torch.nn.Module):
    """HMR: crop -> backbone features -> IEF head (3 iterations) -> parameters.

    Args:
        num_free_joints: F joints predicted (the model's ``free_pose_joints``), 6D each.
        shape_dim: S. widths / blocks: the backbone (ResNet-18 by default).
        hidden: IEF width. iterations: IEF steps.
        crop_size: the side (pixels) crops are seen at; 224 as in HMR, 128 for CPU training.

    ``forward(crops (B,3,s,s) in [0,1]) -> (B, 6 + 6F + S + 3)``, the keypoint regressor's
    output layout, so ``decode`` and ``camera_to_transl`` (weak perspective relative to the
    crop's box) are shared with it. Crops of another side s are resized (bilinear, antialiased)
    to ``crop_size``. ``predict(images, boxes, K, model)`` gives BodyParams in the camera frame.
    """

    decode = KeypointRegressor.decode
    camera_to_transl = staticmethod(KeypointRegressor.camera_to_transl)

    def __init__(self, num_free_joints: int, shape_dim: int, widths=(64, 128, 256, 512),
                 blocks=(2, 2, 2, 2), hidden: int = 1024, iterations: int = 3,
                 crop_size: int = CROP_SIZE):
        super().__init__()
        self.config = dict(num_free_joints=num_free_joints, shape_dim=shape_dim, widths=tuple(widths),
                           blocks=tuple(blocks), hidden=hidden, iterations=iterations,
                           crop_size=crop_size)
        self.crop_size = crop_size
        self.backbone = ResNetBackbone(widths, blocks)
        self.out_dim = 6 + 6 * num_free_joints + shape_dim + 3
        feat = self.backbone.out_features
        self.ief = torch.nn.Sequential(
            torch.nn.Linear(feat + self.out_dim, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
            torch.nn.Linear(hidden, self.out_dim))
        torch.nn.init.xavier_uniform_(self.ief[-1].weight, gain=0.01)
        init = torch.zeros(self.out_dim)
        init[:6] = IDENTITY_6D
        init[6:6 + 6 * num_free_joints] = IDENTITY_6D.repeat(num_free_joints)
        init[-3] = 0.9 / 1.2  # a body about one (unpadded) box high in the 1.2x crop
        self.register_buffer("init_output", init)
        self.register_buffer("mean", _MEAN.view(1, 3, 1, 1))
        self.register_buffer("std", _STD.view(1, 3, 1, 1))
        self.iterations = iterations

    def resize(self, crops: torch.Tensor) -> torch.Tensor:
        """(B,3,s,s) crops -> (B,3,crop_size,crop_size) (bilinear, antialiased; as is if s fits)."""
        if crops.shape[-2:] == (self.crop_size, self.crop_size):
            return crops
        return F.interpolate(crops, size=(self.crop_size, self.crop_size), mode="bilinear",
                             antialias=True, align_corners=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        feat = self.backbone((self.resize(crops) - self.mean) / self.std)
        y = self.init_output.expand(crops.shape[0], -1)
        for _ in range(self.iterations):
            y = y + self.ief(torch.cat([feat, y], 1))
        return y

    @torch.no_grad()
    def predict(self, images: torch.Tensor, boxes: torch.Tensor, K: torch.Tensor, model):
        """(B,H,W,3) pictures, (B,4) person boxes (xyxy px), (B,3,3) K -> BodyParams (B) in the
        camera frame (the crop is the 1.2x square around the box)."""
        sq = square_boxes(boxes)
        y = self(crop_boxes(images, sq, self.crop_size).to(self.init_output))
        params, cam = self.decode(y, model)
        params.transl = self.camera_to_transl(cam, sq, K.to(y))
        return params.to(model.dtype)


def synthetic_renders(model, n: int, size: int = CROP_SIZE, generator: torch.Generator | None = None,
                      image_size: tuple[int, int] = (512, 512)):
    """Synthetic training crops for the image regressor: sampled bodies (as
    ``bodyfit.data.synthetic.synthetic_batch``) wearing a smooth random texture, rendered over a
    random smooth background and cropped with ``bodyfit.boxes.square_boxes`` around their
    keypoints.

    Returns:
        (crops (n,3,size,size) in [0,1], SyntheticBatch ground truth, square boxes (n,4)), the
        pictures being ``image_size`` (H, W) pixels.
    """
    from bodyfit.data.synthetic import body_texture, synthetic_batch
    from bodyfit.renderers import ops
    from bodyfit.renderers.views import rasterize_view
    from bodyfit.cameras import Camera

    g = generator
    sb = synthetic_batch(model, n, noise=0.0, dropout=0.0, image_size=image_size, generator=g,
                         depth_range=(3.0, 6.0))
    with torch.no_grad():
        verts = model(sb.params).vertices
        rest = model(model.default_params(1)).vertices[0]
        cam = Camera.identity(sb.K, sb.image_size)
        pos, rast = rasterize_view(verts, model.faces, cam)
        phase = torch.rand(n, 1, 3, generator=g) * 2 * math.pi
        tex = body_texture(rest)[None] * 0.8 + 0.2 * torch.sin(rest[None, :, :1] * 7 + phase)
        rgb, _ = ops.interpolate(tex.clamp(0, 1), rast, model.faces)
        cover = (rast[..., 3:] > 0).float()
        img = ops.antialias(torch.cat([rgb * cover, cover], -1), rast, pos, model.faces)
        H, W = sb.image_size
        yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
        a = torch.rand(n, 1, 1, 3, generator=g)
        b = torch.rand(n, 1, 1, 3, generator=g)
        bg = (a + (b - a) * (0.5 + 0.5 * torch.sin(6 * xx[None, ..., None] * b + 4 * yy[None, ..., None] * a)))
        picture = img[..., :3] + (1 - img[..., 3:]) * bg
        sq = square_boxes(sb.boxes)
        crops = crop_boxes(picture, sq, size)
    return crops, sb, sq


def image_losses(reg: ImageRegressor, model, y: torch.Tensor, sb, boxes: torch.Tensor,
                 kp_index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The image regressor's supervised losses on synthetic renders (as the keypoint
    regressor's: ``bodyfit.regressors.train_keypoint.synthetic_losses``), with the camera
    relative to the square crop boxes."""
    from bodyfit.regressors.train_keypoint import synthetic_losses

    return synthetic_losses(reg, model, y, boxes, sb, kp_index)


def load_image_regressor(model, path=None) -> ImageRegressor:
    """An ImageRegressor for ``model``: from a file written by :func:`train_image_regressor`, or
    freshly initialized when ``path`` is None (no weights ship: train them on a GPU).

    Raises:
        FileNotFoundError: no file at ``path``. ValueError: weights for another model.
    """
    from pathlib import Path

    if path is None:
        return ImageRegressor(len(model.free_pose_joints), model.shape_dim)
    if not Path(path).is_file():
        raise FileNotFoundError(f"No image regressor weights at {str(path)!r}.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = state["config"]
    if cfg["num_free_joints"] != len(model.free_pose_joints) or cfg["shape_dim"] != model.shape_dim:
        raise ValueError(f"Image regressor weights {path} do not match model {model.name!r}.")
    reg = ImageRegressor(**cfg)
    reg.load_state_dict(state["state_dict"])
    return reg


@torch.no_grad()
def evaluate_image_regressor(reg: ImageRegressor, model, n: int = 64, seed: int = 12345,
                             batch_size: int = 32) -> dict[str, float]:
    """Error of ``reg`` on ``n`` held-out synthetic renders (a fixed ``seed`` that training,
    which starts its renders from its own seed, does not draw).

    Returns:
        ``mpjpe`` and ``pa_mpjpe`` (mm) of the 33 MediaPipe body landmarks against the truth,
        and ``mean_body_pa_mpjpe``: the mean body in the default pose, scored the same way (what
        a regressor that has learned nothing of pose reaches).
    """
    from bodyfit.metrics import mpjpe, pa_mpjpe

    kp_index, _ = model.keypoint_map("mediapipe33")
    g = torch.Generator().manual_seed(seed)
    was_training = reg.training
    reg.eval()
    dev = reg.init_output.device
    errs, pa, mean_pa = [], [], []
    mean_joints = model(model.default_params(1), vertices=False).joints[:, kp_index]
    for i in range(0, n, batch_size):
        crops, sb, _ = synthetic_renders(model, min(batch_size, n - i), size=reg.crop_size,
                                         generator=g, image_size=(256, 256))
        params, _ = reg.decode(reg(crops.to(dev)).cpu(), model)
        pred = model(params, vertices=False).joints[:, kp_index]
        gt = sb.joints[:, kp_index]
        errs.append(mpjpe(pred, gt))
        pa.append(pa_mpjpe(pred, gt))
        mean_pa.append(pa_mpjpe(mean_joints.expand_as(gt), gt))
    reg.train(was_training)
    return {"mpjpe": float(torch.cat(errs).mean()), "pa_mpjpe": float(torch.cat(pa).mean()),
            "mean_body_pa_mpjpe": float(torch.cat(mean_pa).mean())}


def train_image_regressor(minutes: float = 10.0, batch_size: int = 32, lr: float = 3e-4,
                          seed: int = 0, out: str | None = None, device: str | None = None,
                          crop_size: int = CROP_SIZE, widths=(64, 128, 256, 512),
                          eval_every: int = 0) -> ImageRegressor:
    """Train from scratch on fresh synthetic renders for ``minutes`` (on CUDA when available)
    and save ``{"config", "state_dict", "steps"}`` to ``out`` if given (atomically). Progress
    (every 20 steps) and, every ``eval_every`` steps (0: only at the end),
    :func:`evaluate_image_regressor` go to this module's logger at INFO.

        python -m bodyfit.regressors.image_regressor --minutes 60 --out image_regressor.pt
        python -m bodyfit.regressors.image_regressor --minutes 30 --crop-size 128 --widths 32,64,128,256
    """
    import time

    from bodyfit.body_models import body_model
    from bodyfit.regressors.train_keypoint import supervised_loss

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = body_model("anny")
    kp_index, _ = model.keypoint_map("mediapipe33")
    reg = ImageRegressor(len(model.free_pose_joints), model.shape_dim, widths=widths,
                         crop_size=crop_size).to(device)
    opt = torch.optim.AdamW(reg.parameters(), lr=lr, weight_decay=1e-4)
    start = time.time()
    deadline, step = start + 60 * minutes, 0
    while time.time() < deadline:
        crops, sb, sq = synthetic_renders(model, batch_size, size=crop_size, generator=g,
                                          image_size=(256, 256))
        y = reg(crops.to(device)).cpu()
        L = image_losses(reg, model, y, sb, sq, kp_index)
        loss = supervised_loss(L)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reg.parameters(), 5.0)
        opt.step()
        step += 1
        if step % 20 == 0:
            logger.info("step %d loss %.3f joints %.0f mm", step, loss.item(), 1000 * L["joints"].item())
        if eval_every and step % eval_every == 0:
            e = evaluate_image_regressor(reg, model)
            logger.info("eval step %d min %.1f held-out MPJPE %.1f mm PA-MPJPE %.1f mm (mean body "
                        "%.1f)", step, (time.time() - start) / 60, e["mpjpe"], e["pa_mpjpe"],
                        e["mean_body_pa_mpjpe"])
    e = evaluate_image_regressor(reg, model)
    logger.info("final step %d: held-out MPJPE %.1f mm PA-MPJPE %.1f mm (mean body %.1f)", step,
                e["mpjpe"], e["pa_mpjpe"], e["mean_body_pa_mpjpe"])
    if out:
        atomic_torch_save({"config": reg.config, "state_dict": reg.state_dict(), "steps": step}, out)
    return reg


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Train the image regressor on synthetic renders.")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--crop-size", type=int, default=CROP_SIZE)
    ap.add_argument("--widths", default="64,128,256,512", help="backbone stage widths")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--out", default="image_regressor.pt")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_image_regressor(a.minutes, a.batch_size, a.lr, out=a.out, crop_size=a.crop_size,
                          widths=tuple(int(w) for w in a.widths.split(",")),
                          eval_every=a.eval_every)
