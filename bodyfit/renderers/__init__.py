"""Renderers: pictures of fits (overlay) now; nvdiffrast-style differentiable ops next."""
