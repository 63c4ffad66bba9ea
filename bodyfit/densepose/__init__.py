"""DensePose-style charts (24 parts, per-part UV) and IUV maps.

DensePose: R. A. Guler, N. Neverova, I. Kokkinos, "DensePose: Dense Human Pose Estimation in the
Wild", CVPR 2018. ``anny_chart(model)`` builds the chart of an Anny mesh, ``smpl_chart(path)``
reads DensePose's own SMPL chart; ``render_iuv`` renders IUV maps of posed bodies,
``read_iuv_png``/``write_iuv_png`` handle DensePose's PNG format, ``check_iuv`` validates maps and
``sample_foreground`` draws pixels for the fitting energy (``bodyfit.fitting.densepose``).

Modules: ``chart`` (``DensePoseChart``, ``PART_NAMES``, ``part_index``, ``surface_points``),
``geometry`` (2D triangle and UV-grid helpers), ``anny_chart`` and ``smpl_chart`` (the two
charts), ``iuv`` (IUV maps). The package attributes ``anny_chart`` and ``smpl_chart`` are the
functions, which shadow their modules: import from the modules with ``from ... import``.
"""
from bodyfit.densepose.anny_chart import anny_chart
from bodyfit.densepose.chart import PART_NAMES, DensePoseChart, part_index, surface_points
from bodyfit.densepose.iuv import (check_iuv, read_iuv_png, render_iuv, sample_foreground,
                                   write_iuv_png)
from bodyfit.densepose.smpl_chart import smpl_chart

__all__ = ["PART_NAMES", "part_index", "DensePoseChart", "anny_chart", "smpl_chart",
           "surface_points", "check_iuv", "read_iuv_png", "write_iuv_png", "render_iuv",
           "sample_foreground"]
