"""Renderers: nvdiffrast's four ops (rasterize, interpolate, texture, antialias) on CPU
(moderngl or pure torch) and GPU (nvdiffrast), and pictures of fits built on them."""
from bodyfit.renderers.ops import (BACKENDS, antialias, antialias_construct_topology_hash,
                                   available_backends, clip_matrix, interpolate, rasterize,
                                   resolve_backend, texture)

__all__ = ["rasterize", "interpolate", "texture", "antialias", "antialias_construct_topology_hash",
           "clip_matrix", "resolve_backend", "available_backends", "BACKENDS"]
