"""What was seen: the one input type of fitting.

``Observations`` holds B samples (people, or the frames of one person's sequence) seen by V
views. Each view has its camera; per view there are 2D keypoints and, optionally, a person mask,
the picture and a DensePose IUV map. One picture is one view whose camera sits at the origin
(``Observations.from_pictures``); calibrated views share the calibration's world frame.

Conventions: pixels, metres, OpenCV cameras (x right, y down, z forward); keypoints are
x, y in pixels and a confidence in [0, 1] (0 = missing) in a named convention
(``bodyfit.body_models.conventions``). Shapes, dtypes and cameras are validated here, once, when
an ``Observations`` is made: a malformed input raises ``ValueError`` saying what was wrong; a
sample-level problem (NaN keypoints, a degenerate camera for one sample) is not an error but is
reported per sample by :meth:`Observations.problems`, so one bad sample never sinks the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from bodyfit.body_models.conventions import keypoint_names
from bodyfit.boxes import boxes_from_keypoints
from bodyfit.cameras import DEFAULT_FOV_DEG, Camera, default_intrinsics


def _per_view(value, V: int, label: str) -> list | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and V == 1:
        value = [value]
    value = list(value)
    if len(value) != V:
        raise ValueError(f"{label} must be a list with one entry (or None) per view: {V}, got "
                         f"{len(value)}.")
    return value


@dataclass
class Observations:
    """B samples seen by V views.

    Attributes:
        keypoints: (B,V,K,3) x, y pixels and confidence in [0,1] (0 = missing; a view that does
            not see the sample has all zeros), in ``convention``'s order.
        cameras: V Cameras, one per view, each of batch B (one camera per sample, e.g. single
            pictures with their own K) or 1 (shared by the batch, e.g. a calibrated rig): K
            (pixels), R, t (world -> camera, metres) and that view's image size (H, W).
        convention: keypoint convention name ("mediapipe33", "coco17", "coco17_feet",
            "openpose25").
        boxes: optional (B,V,4) xyxy person boxes in pixels (the energies' scale is the box
            height); from the visible keypoints when None.
        masks: optional per view (B,H,W) person mask in [0,1], or None for a view without one.
        images: optional per view (B,H,W,C) pictures, float in [0,1] or uint8, RGB.
        iuv: optional per view (B,3,H,W) DensePose IUV: I in 0..24 (0 = background), U, V in
            [0,1].
        world_keypoints: optional (B,V,K,3) per view, the detector's metric 3D landmarks of the
            sample in ``convention``'s order (MediaPipe's world landmarks: metres, origin between
            the hips, axes of the view's camera: x right, y down, z away from it); all zeros (or
            non-finite) where a view has none. Their weights are the 2D keypoints' confidences.
            None: no view has any (the world-landmark energy is then left out).
        names: optional view names (messages and file names); ``view0``... when None.
        sequence: the B samples are consecutive frames of one person (one shape for all of them,
            temporal smoothness, texture consistency between consecutive frames).

    Raises (on construction):
        ValueError: a shape, dtype or size that does not fit the rest (the message names it).
    """

    keypoints: torch.Tensor
    cameras: list[Camera]
    convention: str = "mediapipe33"
    boxes: torch.Tensor | None = None
    masks: list[torch.Tensor | None] | None = None
    images: list[torch.Tensor | None] | None = None
    iuv: list[torch.Tensor | None] | None = None
    names: list[str] | None = None
    sequence: bool = False
    world_keypoints: torch.Tensor | None = None
    _problems: list[list[str]] = field(default_factory=list, init=False, repr=False)
    _usable: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        names_kp = keypoint_names(self.convention)
        if isinstance(self.cameras, Camera):
            raise ValueError("cameras must be a list with one Camera per view (a single picture: "
                             "use Observations.from_pictures).")
        self.cameras = list(self.cameras)
        V = len(self.cameras)
        if V == 0:
            raise ValueError("Observations need at least one view (camera).")
        kp = torch.as_tensor(self.keypoints)
        if not kp.is_floating_point():
            kp = kp.float()
        if kp.dim() != 4 or kp.shape[1] != V or kp.shape[2] != len(names_kp) or kp.shape[3] != 3:
            raise ValueError(f"keypoints must have shape (B, V={V}, {len(names_kp)}, 3) = x px, y px, "
                             f"confidence for convention {self.convention!r} and {V} camera(s), got "
                             f"{tuple(kp.shape)}.")
        B = kp.shape[0]
        if B == 0:
            raise ValueError("Observations hold no sample (batch size 0): give at least one.")
        self.keypoints = kp
        for v, cam in enumerate(self.cameras):
            if not isinstance(cam, Camera):
                raise ValueError(f"camera {v} must be a bodyfit.Camera, got {type(cam).__name__}.")
            if cam.batch_size not in (1, B):
                raise ValueError(f"camera {v} has batch {cam.batch_size}: give 1 (shared) or B={B}.")
            size = cam.image_size
            if (not isinstance(size, (tuple, list)) or len(size) != 2
                    or not all(isinstance(s, int) and s > 0 for s in size)):
                raise ValueError(f"camera {v}: image_size must be (H, W) positive integers, got {size!r}.")
        self.names = list(self.names) if self.names is not None else [f"view{v}" for v in range(V)]
        if len(self.names) != V:
            raise ValueError(f"names must have one entry per view ({V}), got {len(self.names)}.")
        if self.boxes is not None:
            boxes = torch.as_tensor(self.boxes, dtype=kp.dtype, device=kp.device)
            if boxes.dim() == 2 and V == 1:
                boxes = boxes[:, None]
            if tuple(boxes.shape) != (B, V, 4):
                raise ValueError(f"boxes must have shape (B,V,4) = ({B},{V},4) xyxy pixels, got "
                                 f"{tuple(boxes.shape)}.")
            self.boxes = boxes
        if self.world_keypoints is not None:
            wk = torch.as_tensor(self.world_keypoints, dtype=kp.dtype, device=kp.device)
            if wk.dim() == 3 and V == 1:
                wk = wk[:, None]
            if tuple(wk.shape) != tuple(kp.shape):
                raise ValueError(f"world_keypoints must have shape (B,V,K,3) = {tuple(kp.shape)} "
                                 f"(metres, like the keypoints' B, V and K), got {tuple(wk.shape)}.")
            self.world_keypoints = wk
        self.masks = _per_view(self.masks, V, "masks")
        self.images = _per_view(self.images, V, "images")
        self.iuv = _per_view(self.iuv, V, "iuv")
        for v in range(V):
            H, W = self.cameras[v].image_size
            name = self.names[v]
            if self.masks is not None and self.masks[v] is not None:
                m = torch.as_tensor(self.masks[v])
                m = m.float() if not m.is_floating_point() else m
                if tuple(m.shape) != (B, H, W):
                    raise ValueError(f"mask of {name} must have shape (B,H,W) = ({B},{H},{W}) like its "
                                     f"camera, got {tuple(m.shape)}.")
                self.masks[v] = m
            if self.images is not None and self.images[v] is not None:
                im = torch.as_tensor(self.images[v])
                if im.dim() != 4 or tuple(im.shape[:3]) != (B, H, W) or im.shape[3] not in (1, 3):
                    raise ValueError(f"images of {name} must have shape (B,H,W,C) = ({B},{H},{W},3), "
                                     f"got {tuple(im.shape)}.")
                self.images[v] = im
            if self.iuv is not None and self.iuv[v] is not None:
                iuv = torch.as_tensor(self.iuv[v])
                if iuv.dim() != 4 or iuv.shape[0] != B or iuv.shape[1] != 3 or tuple(iuv.shape[-2:]) != (H, W):
                    raise ValueError(f"IUV of {name} is {tuple(iuv.shape)} but the picture is "
                                     f"(B,3,H,W) = ({B},3,{H},{W}): resize the IUV (nearest "
                                     f"neighbour) or pass the matching picture.")
                self.iuv[v] = iuv
        if not isinstance(self.sequence, bool):
            raise ValueError(f"sequence must be True or False, got {self.sequence!r}.")
        self._problems, self._usable = self._find_problems()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pictures(cls, keypoints, image_size: tuple[int, int] | None = None,
                      K: torch.Tensor | None = None, convention: str = "mediapipe33",
                      boxes: torch.Tensor | None = None, fov_deg: float = DEFAULT_FOV_DEG,
                      world_keypoints=None, **views) -> "Observations":
        """B single pictures (one view each) seen by cameras at the world origin.

        Args:
            keypoints: (B,K,3) or (K,3) x, y pixels and confidence.
            image_size: (H, W) pixels, shared by the batch; needed when K is None, and for the
                dense energies (masks, images, IUV). From K's principal point when None.
            K: (B,3,3) or (3,3) intrinsics in pixels; from ``fov_deg`` of the longer image side
                when None (``bodyfit.cameras.default_intrinsics``).
            boxes: (B,4) xyxy person boxes in pixels; from the keypoints when None.
            world_keypoints: (B,K,3) or (K,3) the detector's metric 3D landmarks (metres, camera
                axes, root-relative), or None.
            **views: masks / images / iuv of the one view (tensors of batch B).
        Raises:
            ValueError: wrong shapes, neither K nor image_size, a malformed image_size.
        """
        kp = torch.as_tensor(keypoints)
        if kp.dim() == 2:
            kp = kp[None]
        if kp.dim() != 3:
            n = len(keypoint_names(convention))
            raise ValueError(f"keypoints must have shape (B, {n}, 3) = x px, y px, confidence for "
                             f"convention {convention!r}; got {tuple(kp.shape)}.")
        kp = kp.float() if not kp.is_floating_point() else kp
        B = kp.shape[0]
        if image_size is not None:
            try:
                H, W = (int(s) for s in image_size)
            except (TypeError, ValueError):
                raise ValueError(f"image_size must be (H, W) in pixels, got {image_size!r}.") from None
            image_size = (H, W)
        if K is None:
            if image_size is None:
                raise ValueError("Give the image size (H, W) or the intrinsics K of the pictures.")
            K = default_intrinsics(image_size, B, fov_deg, kp.dtype, kp.device)
        K = torch.as_tensor(K, dtype=kp.dtype, device=kp.device)
        if K.dim() == 2:
            K = K.expand(B, 3, 3)
        if tuple(K.shape) != (B, 3, 3):
            raise ValueError(f"K must have shape (3,3) or (B,3,3) with B={B}, got {tuple(K.shape)}.")
        if image_size is None:
            cx, cy = K[0, 0, 2], K[0, 1, 2]
            if not (torch.isfinite(cx) and torch.isfinite(cy) and cx > 0 and cy > 0):
                raise ValueError(f"K's principal point ({float(cx)}, {float(cy)}) is not in the picture: "
                                 f"give image_size.")
            image_size = (max(1, int(round(2 * float(cy)))), max(1, int(round(2 * float(cx)))))
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=kp.dtype, device=kp.device)
            boxes = boxes[None] if boxes.dim() == 1 else boxes
            if tuple(boxes.shape) != (B, 4):
                raise ValueError(f"boxes must have shape (B,4) = ({B},4), got {tuple(boxes.shape)}.")
            boxes = boxes[:, None]
        if world_keypoints is not None:
            wk = torch.as_tensor(world_keypoints, dtype=kp.dtype, device=kp.device)
            wk = wk[None] if wk.dim() == 2 else wk
            if tuple(wk.shape) != tuple(kp.shape):
                raise ValueError(f"world_keypoints must have shape {tuple(kp.shape)} like the keypoints "
                                 f"(metres), got {tuple(wk.shape)}.")
            world_keypoints = wk[:, None]
        return cls(kp[:, None], [Camera.identity(K.clone(), image_size)], convention, boxes,
                   world_keypoints=world_keypoints, names=["picture"], **views)

    # ------------------------------------------------------------------ accessors
    @property
    def batch_size(self) -> int:
        return self.keypoints.shape[0]

    @property
    def num_views(self) -> int:
        return len(self.cameras)

    def camera(self, v: int) -> Camera:
        """View ``v``'s Camera of batch B (a view of shared tensors when it is shared)."""
        cam = self.cameras[v]
        return cam if cam.batch_size == self.batch_size else cam.expand(self.batch_size)

    def box_heights(self) -> torch.Tensor:
        """(B,V) person box heights in pixels (at least 1), from ``boxes`` or the keypoints."""
        boxes = self.boxes if self.boxes is not None else boxes_from_keypoints(self.clean_keypoints())
        return (boxes[..., 3] - boxes[..., 1]).clamp(min=1.0)

    def clean_keypoints(self) -> torch.Tensor:
        """(B,V,K,3) keypoints with non-finite views zeroed (unseen) and confidence clamped to
        [0, 1]."""
        kp = self.keypoints
        finite = torch.isfinite(kp).all(dim=(2, 3))
        kp = torch.where(torch.isfinite(kp), kp, torch.zeros_like(kp))
        kp = torch.cat([kp[..., :2], kp[..., 2:].clamp(0.0, 1.0)], -1)
        return kp * finite[..., None, None]

    def clean_world_keypoints(self) -> torch.Tensor | None:
        """(B,V,K,4) world landmarks (metres) + weight: the 2D keypoint's confidence where the
        view's landmarks are finite and not all zero, else 0 (and the landmark zeroed); None when
        there are none."""
        if self.world_keypoints is None:
            return None
        wk = self.world_keypoints
        ok = torch.isfinite(wk).all(dim=(2, 3)) & (wk.abs().amax(dim=(2, 3)) > 0)
        wk = torch.where(ok[..., None, None], wk, torch.zeros_like(wk)).nan_to_num(0.0, 0.0, 0.0)
        conf = self.clean_keypoints()[..., 2] * ok[..., None]
        return torch.cat([wk, conf[..., None]], -1)

    def problems(self) -> list[list[str]]:
        """Per sample, what makes some of its views unusable (NaN keypoints, a degenerate
        camera); empty lists where all is well. A view with a problem is left out of that
        sample's fit."""
        return self._problems

    def usable_views(self) -> torch.Tensor:
        """(B,V) bool: the view's keypoints are finite and its camera is sane for that sample."""
        return self._usable.clone()

    def index(self, idx) -> "Observations":
        """The samples ``idx`` (anything that indexes the batch dimension) of every view."""
        B = self.batch_size

        def pick(x):
            return None if x is None else x[idx]

        cams = [c if c.batch_size == 1 and B != 1 else c.index(idx) for c in self.cameras]
        cams = [Camera(c.K.reshape(-1, 3, 3), c.R.reshape(-1, 3, 3), c.t.reshape(-1, 3), c.image_size)
                for c in cams]
        per_view = {k: None if getattr(self, k) is None else [pick(x) for x in getattr(self, k)]
                    for k in ("masks", "images", "iuv")}
        kp = self.keypoints[idx]
        if kp.dim() == 3:
            raise ValueError("index() needs an index that keeps the batch dimension (a slice, a "
                             "list or a tensor), not a single integer.")
        return replace(self, keypoints=kp, cameras=cams, boxes=pick(self.boxes),
                       world_keypoints=pick(self.world_keypoints), **per_view)

    def _find_problems(self) -> tuple[list[list[str]], torch.Tensor]:
        """Per sample the notes on unusable views, and the (B,V) usable mask."""
        B = self.batch_size
        out: list[list[str]] = [[] for _ in range(B)]
        usable = torch.isfinite(self.keypoints).all(dim=(2, 3))
        for v, cam in enumerate(self.cameras):
            reasons = _camera_problems(cam, B)
            for b in torch.nonzero(~usable[:, v]).flatten().tolist():
                out[b].append(f"{self.names[v]}: keypoints hold NaN or inf, view left out")
            for b, why in enumerate(reasons):
                if why is not None:
                    out[b].append(f"{self.names[v]}: {why}, view left out")
                    usable[b, v] = False
        return out, usable


def _camera_problems(cam: Camera, B: int) -> list[str | None]:
    """Per sample (B), why ``cam`` cannot be used (None when it can): non-finite values,
    non-positive focal lengths, a principal point far outside the picture, R not a rotation.
    Checked for the whole batch at once; only the cameras that fail are looked at one by one."""
    K, R, t = cam.K.detach().cpu().double(), cam.R.detach().cpu().double(), cam.t.detach().cpu().double()
    H, W = cam.image_size
    eye = torch.eye(3, dtype=K.dtype)
    ok = torch.isfinite(K).all((1, 2)) & torch.isfinite(R).all((1, 2)) & torch.isfinite(t).all(1)
    ok &= (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0)
    ok &= ((K[:, 2] - eye[2]).abs().amax(1) <= 1e-6) & (K[:, 1, 0] == 0)
    ok &= (K[:, 0, 2] >= -W) & (K[:, 0, 2] <= 2 * W) & (K[:, 1, 2] >= -H) & (K[:, 1, 2] <= 2 * H)
    ok &= ((R @ R.transpose(1, 2) - eye).abs().amax((1, 2)) <= 1e-3) & (torch.linalg.det(R) >= 0.5)
    out: list[str | None] = [None] * cam.batch_size
    for b in torch.nonzero(~ok).flatten().tolist():
        out[b] = _camera_problem(K[b], R[b], t[b], H, W) or "the camera cannot be used"
    return out * B if cam.batch_size == 1 else out


def _camera_problem(Kb: torch.Tensor, Rb: torch.Tensor, tb: torch.Tensor, H: int, W: int) -> str | None:
    """Why one camera (K (3,3), R (3,3), t (3,)) cannot be used, or None."""
    bad = [n for n, x in (("K", Kb), ("R", Rb), ("t", tb)) if not torch.isfinite(x).all()]
    if bad:
        return f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite (NaN or inf)"
    if float(Kb[0, 0]) <= 0 or float(Kb[1, 1]) <= 0:
        return (f"focal lengths must be positive pixels, got fx={float(Kb[0, 0]):g}, "
                f"fy={float(Kb[1, 1]):g}")
    if (Kb[2] - Kb.new_tensor([0.0, 0.0, 1.0])).abs().max() > 1e-6 or float(Kb[1, 0]) != 0.0:
        return "K's last row must be (0, 0, 1) and K upper triangular"
    if not (-W <= float(Kb[0, 2]) <= 2 * W and -H <= float(Kb[1, 2]) <= 2 * H):
        return (f"the principal point ({float(Kb[0, 2]):g}, {float(Kb[1, 2]):g}) px is far outside "
                f"the {W}x{H} picture")
    if (float((Rb @ Rb.T - torch.eye(3, dtype=Rb.dtype)).abs().max()) > 1e-3
            or float(torch.linalg.det(Rb)) < 0.5):
        return "R is not a rotation (check the extrinsics)"
    return None
