"""Rasterizer contexts: the backend of :func:`bodyfit.renderers.rasterize`, as an object the
caller creates once and passes in, the way nvdiffrast (Laine et al. 2020) does.

* :class:`RasterizeGLContext`: the triangle-ID pass on a real OpenGL rasterizer, moderngl on a
  headless EGL context (Mesa's llvmpipe on CPU machines: about 6.5 ms for one 512x512 view of a
  28k-triangle mesh). Tensors may live on any device; the pass runs on the CPU.
* :class:`RasterizeTorchContext`: the pure-torch z-buffer (:mod:`bodyfit.renderers.zbuffer`),
  on the device of the positions; runs everywhere.
* :class:`RasterizeCudaContext`: nvdiffrast itself on CUDA, the optional non-commercial extra
  (``pip install "bodyfit[nvdiffrast]"``); ``rasterize`` then runs in nvdiffrast.

With the first two, only visibility (which triangle covers each pixel centre) comes from the
context; ``ops.rasterize`` recomputes the barycentrics in torch from the positions, as
nvdiffrast's second stage does, so gradients flow the same way on every context.
``interpolate``, ``texture`` and ``antialias`` take no context (as in nvdiffrast): the first two
run in nvdiffrast when all their tensors are on CUDA and nvdiffrast can be loaded, else in
torch; ``antialias`` always runs in torch, on the tensors' device.

:func:`default_context` picks the best context available for a device (nvdiffrast for CUDA
tensors, else OpenGL, else torch), reports the choice on this module's logger (INFO) and
shares one context of each kind per process (creating an EGL context takes seconds the first
time); a caller that wants its own creates one with the class.
"""
from __future__ import annotations

import logging

import torch

from bodyfit.renderers import nvdiffrast_backend
from bodyfit.renderers.moderngl_backend import ModernGLTriangleIds, ModernGLUnavailable
from bodyfit.renderers.zbuffer import zbuffer_ids

__all__ = ["RasterizeContext", "RasterizeGLContext", "RasterizeTorchContext",
           "RasterizeCudaContext", "default_context", "available_backends", "resolve_backend",
           "BACKENDS", "ModernGLUnavailable"]

logger = logging.getLogger(__name__)

BACKENDS = ("nvdiffrast", "moderngl", "torch")
_shared: dict[tuple[str, str], object] = {}  # (backend, device) -> shared context or why not
_defaults: dict[tuple[str, str], "RasterizeContext"] = {}  # default_context's choices


class RasterizeContext:
    """Base of the rasterizer contexts.

    Attributes:
        backend: 'moderngl', 'torch' or 'nvdiffrast'.
        output_db: whether ``rasterize`` returns the barycentric pixel derivatives ``rast_db``
            (B,H,W,4); when False it returns an empty (B,H,W,0) tensor, as nvdiffrast does.
    """

    backend = ""

    def __init__(self, output_db: bool = True):
        if output_db is not True and output_db is not False:
            raise ValueError(f"output_db must be True or False, got {output_db!r}.")
        self.output_db = output_db

    def triangle_ids(self, pos: torch.Tensor, tri: torch.Tensor, height: int,
                     width: int) -> torch.Tensor:
        """Nearest triangle per pixel centre.

        Args:
            pos: (B,V,4) clip-space positions, detached. tri: (F,3) int64 on pos's device.
            height: output height in pixels (nvdiffrast's pixel-centre grid).
            width: output width in pixels.
        Returns:
            (B*H*W,) int64 triangle index (-1 where empty) on pos's device, flat index
            ``(b * H + y) * W + x``; row 0 at NDC y = -1.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output_db={self.output_db})"


class RasterizeTorchContext(RasterizeContext):
    """The pure-torch z-buffer (:func:`bodyfit.renderers.zbuffer.zbuffer_ids`), on the device
    of the positions given to ``rasterize``; no dependencies, runs everywhere.

    Args:
        output_db: return ``rast_db`` from ``rasterize`` (see :class:`RasterizeContext`).
    """

    backend = "torch"

    def triangle_ids(self, pos, tri, height, width):
        return zbuffer_ids(pos, tri, height, width)


class RasterizeGLContext(RasterizeContext):
    """The triangle-ID pass on OpenGL: moderngl on a headless EGL context (Mesa's llvmpipe on
    CPU machines). Unlike nvdiffrast's class of the same name, tensors may be on any device: the
    pass runs on the CPU and the ids come back to the positions' device.

    Creating a context takes a few seconds the first time in a process (loading Mesa), then
    about 10 ms; reuse one (or use :func:`default_context`). Each object owns its EGL context.

    Args:
        output_db: return ``rast_db`` from ``rasterize`` (see :class:`RasterizeContext`).
        mode: 'automatic' or 'manual', accepted for nvdiffrast compatibility (moderngl makes its
            context current by itself, so :meth:`set_context` / :meth:`release_context` do
            nothing).
        device: accepted for nvdiffrast compatibility and unused.
    Raises:
        ModernGLUnavailable (a RuntimeError): moderngl is not installed or no EGL context can be
            made here; the message says what to install, and that ``RasterizeTorchContext()``
            runs everywhere. There is no silent fallback: :func:`default_context` is the
            function that falls back.
        ValueError: a bad output_db or mode.
    """

    backend = "moderngl"

    def __init__(self, output_db: bool = True, mode: str = "automatic", device=None):
        super().__init__(output_db)
        if mode not in ("automatic", "manual"):
            raise ValueError(f"mode must be 'automatic' or 'manual', got {mode!r}.")
        self.mode = mode
        try:
            self._gl = ModernGLTriangleIds()
        except ModernGLUnavailable as e:
            raise ModernGLUnavailable(
                f"RasterizeGLContext cannot run here: {e}. RasterizeTorchContext() (pure torch) "
                "runs everywhere, and default_context() picks the best context available."
            ) from e
        self.renderer = self._gl.renderer

    def set_context(self) -> None:
        """No-op (nvdiffrast's 'manual' mode API; moderngl manages its context)."""

    def release_context(self) -> None:
        """No-op (nvdiffrast's 'manual' mode API; moderngl manages its context)."""

    def triangle_ids(self, pos, tri, height, width):
        p = pos.to("cpu", torch.float32)
        t = tri.to("cpu")
        if t.shape[0] == 0:
            return torch.full((pos.shape[0] * height * width,), -1, dtype=torch.int64,
                              device=pos.device)
        ids = []
        for b in range(p.shape[0]):
            # The torch z-buffer's policy, so both CPU contexts agree: a triangle with a vertex at
            # w <= 0 or a non-finite coordinate is skipped rather than clipped.
            corners = p[b][t]  # (F,3,4)
            keep = torch.nonzero((corners[..., 3] > 0).all(1)
                                 & torch.isfinite(corners).all((1, 2)))[:, 0]
            drawn = torch.from_numpy(self._gl.render(p[b].numpy(), t[keep].numpy(), height,
                                                     width)).long()
            lookup = torch.cat([torch.tensor([-1]), keep])  # GL id (index + 1) -> triangle index
            ids.append(lookup[drawn])
        return torch.stack(ids).to(pos.device).reshape(-1)

    def __repr__(self) -> str:
        return f"RasterizeGLContext(output_db={self.output_db}, renderer={self.renderer!r})"


class RasterizeCudaContext(RasterizeContext):
    """nvdiffrast's own CUDA rasterizer (Laine et al. 2020): ``rasterize`` with this context
    runs ``nvdiffrast.torch.rasterize``; positions and triangles must be CUDA tensors.

    nvdiffrast is an optional extra under NVIDIA's non-commercial license
    (``pip install "bodyfit[nvdiffrast]"``, the registry's ``diffrp-nvdiffrast``); its plugin is
    compiled with nvcc on first use. This object owns the ``nvdiffrast.torch.RasterizeCudaContext``
    (attribute ``context``).

    Args:
        device: CUDA device (torch.device, 'cuda:1' or an index); None: the current one.
    Raises:
        ImportError: nvdiffrast is not installed (the message says how to install it).
        RuntimeError: no CUDA device, or no nvcc to compile nvdiffrast's plugin.
    """

    backend = "nvdiffrast"

    def __init__(self, device=None):
        super().__init__(True)
        self.nvdiffrast = nvdiffrast_backend.load_nvdiffrast()
        self.context = self.nvdiffrast.RasterizeCudaContext(device=device)

    def triangle_ids(self, pos, tri, height, width):
        raise NotImplementedError("RasterizeCudaContext rasterizes in nvdiffrast as a whole.")

    def __repr__(self) -> str:
        return "RasterizeCudaContext()"


def _device_key(name: str, device: torch.device) -> tuple[str, str]:
    # One shared CPU-side context serves every device; nvdiffrast's is per CUDA device.
    return (name, str(device) if name == "nvdiffrast" else "")


def _shared_context(name: str, device: torch.device) -> RasterizeContext:
    """The process-wide context of backend ``name`` (created on first use; a failure to create
    it is remembered and raised again)."""
    key = _device_key(name, device)
    got = _shared.get(key)
    if got is None:
        try:
            if name == "nvdiffrast":
                got = RasterizeCudaContext(device if device.type == "cuda" else None)
            elif name == "moderngl":
                got = RasterizeGLContext()
            else:
                got = RasterizeTorchContext()
        except (ImportError, RuntimeError) as e:  # ModernGLUnavailable is a RuntimeError
            got = e
        _shared[key] = got
    if isinstance(got, Exception):
        raise got
    return got


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can rasterize tensors on ``device`` here, best first (the last is always
    'torch'). Checking creates the shared contexts :func:`default_context` hands out."""
    device = torch.device(device)
    found = []
    for name in (("nvdiffrast",) if device.type == "cuda" else ()) + ("moderngl",):
        try:
            _shared_context(name, device)
            found.append(name)
        except (ImportError, RuntimeError):
            pass
    return found + ["torch"]


def resolve_backend(backend: str = "auto", device: torch.device | str = "cpu") -> str:
    """The backend that ``backend`` names for tensors on ``device``.

    'auto' picks nvdiffrast for CUDA tensors when it is installed, else moderngl (OpenGL on a
    headless EGL context) when an EGL context can be made, else the pure-torch z-buffer.

    Raises:
        ValueError: an unknown backend, or one that cannot run here (the message says why).
    """
    device = torch.device(device)
    if backend == "auto":
        return available_backends(device)[0]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}.")
    try:
        _shared_context(backend, device)
    except (ImportError, RuntimeError) as e:
        raise ValueError(f"backend {backend!r} is unavailable: {e}") from None
    return backend


def default_context(device: torch.device | str = "cpu", backend: str = "auto") -> RasterizeContext:
    """The shared rasterizer context for tensors on ``device``.

    Args:
        device: where the positions given to ``rasterize`` live.
        backend: 'auto' (the best available: :class:`RasterizeCudaContext` for CUDA tensors when
            nvdiffrast is installed, else :class:`RasterizeGLContext` when an EGL context can be
            made, else :class:`RasterizeTorchContext`), or one of 'nvdiffrast', 'moderngl',
            'torch' (for configuration files that name one).
    Returns:
        One context per kind (and CUDA device) per process, created on first use; the first
        choice for each (backend, device) is reported on this module's logger at INFO.
    Raises:
        ValueError: an unknown backend, or one that cannot run here (the message says why).
    """
    device = torch.device(device)
    key = (backend, str(device))
    ctx = _defaults.get(key)
    if ctx is None:
        ctx = _shared_context(resolve_backend(backend, device), device)
        _defaults[key] = ctx
        logger.info("rasterizer for %s tensors (backend=%r): %r", device, backend, ctx)
    return ctx


def nvdiffrast_for(*tensors):
    """nvdiffrast's ``torch`` module when every tensor is on CUDA and nvdiffrast is usable,
    else None (the torch implementation of the op then runs)."""
    if not all(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors):
        return None
    return nvdiffrast_backend.load_nvdiffrast() if nvdiffrast_backend.is_available() else None
