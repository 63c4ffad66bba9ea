"""nvdiffrast (Laine et al. 2020) as a backend: the GPU path for rasterize, interpolate and
texture (antialias stays in torch on every device; see :mod:`bodyfit.renderers.antialias`).

nvdiffrast is under NVIDIA's Source Code License (non-commercial): it is an optional extra
(``pip install "bodyfit[nvdiffrast]"``, the registry's ``diffrp-nvdiffrast``, NVlabs' 0.3.3
source), never vendored and never a hard dependency. Its CUDA plugin is compiled on first use
with nvcc and ninja (a few minutes, cached by torch). On torch >= 2.9, ``load()`` no longer
puts the extension's build folder on ``sys.path``, so nvdiffrast's ``import`` of its plugin
fails; ``load_nvdiffrast`` adds it first.
"""
from __future__ import annotations

import os
import re
import shutil
import sys

import torch

_INSTALL = ('pip install "bodyfit[nvdiffrast]" (diffrp-nvdiffrast; NVIDIA Source Code License, '
            'non-commercial use only)')
_dr = None  # the imported nvdiffrast.torch module


def load_nvdiffrast():
    """Import ``nvdiffrast.torch`` ready to compile/load its CUDA plugin.

    Raises:
        RuntimeError: no CUDA device, or no nvcc to compile the plugin.
        ImportError: the package is not installed (the message says how to install it).
    """
    global _dr
    if _dr is not None:
        return _dr
    if not torch.cuda.is_available():
        raise RuntimeError("nvdiffrast needs a CUDA GPU; on CPU use RasterizeGLContext() or "
                           "RasterizeTorchContext() (or default_context()).")
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if shutil.which("nvcc") is None and not (cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))):
        raise RuntimeError("the nvdiffrast backend compiles a CUDA plugin on first use and needs "
                           "nvcc (CUDA toolkit) on PATH or CUDA_HOME set.")
    try:
        import nvdiffrast
        import nvdiffrast.torch as dr
    except ImportError as e:
        raise ImportError(f"nvdiffrast is not installed: {_INSTALL}") from e
    from torch.utils import cpp_extension

    name = f"nvdiffrast_plugin_{nvdiffrast.__version__}_torch{torch.__version__}"
    name = re.sub(r"\W|^(?=\d)", "_", name)  # the name nvdiffrast gives its plugin
    build_dir = cpp_extension._get_build_directory(name, False)
    if build_dir not in sys.path:
        sys.path.insert(0, build_dir)
    _dr = dr
    return dr


def is_available() -> bool:
    """True when the nvdiffrast backend can run here (CUDA, nvcc and the package present)."""
    try:
        load_nvdiffrast()
        return True
    except (RuntimeError, ImportError):
        return False
