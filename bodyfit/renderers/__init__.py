"""Renderers: nvdiffrast's four ops (rasterize, interpolate, texture, antialias) with nvdiffrast's
signatures, on a context the caller owns (OpenGL via moderngl/EGL, pure torch, or nvdiffrast on
CUDA), and pictures of fits built on them (:mod:`bodyfit.renderers.views`).

Code written for nvdiffrast (Laine et al. 2020) runs with ``import bodyfit.renderers as dr``::

    glctx = dr.RasterizeGLContext()  # dr.RasterizeTorchContext(), dr.RasterizeCudaContext(),
                                     # or dr.default_context(device): the best available
    rast, _ = dr.rasterize(glctx, pos, tri, resolution=[H, W])
    color, _ = dr.interpolate(attr, rast, tri)
    color = dr.antialias(color, rast, pos, tri)
"""
from bodyfit.renderers.antialias import antialias, antialias_construct_topology_hash
from bodyfit.renderers.backends import (BACKENDS, ModernGLUnavailable, RasterizeContext,
                                        RasterizeCudaContext, RasterizeGLContext,
                                        RasterizeTorchContext, available_backends,
                                        default_context, resolve_backend)
from bodyfit.renderers.ops import clip_matrix, interpolate, rasterize, texture

__all__ = ["rasterize", "interpolate", "texture", "antialias", "antialias_construct_topology_hash",
           "clip_matrix", "RasterizeGLContext", "RasterizeTorchContext", "RasterizeCudaContext",
           "RasterizeContext", "default_context", "available_backends", "resolve_backend",
           "BACKENDS", "ModernGLUnavailable"]
