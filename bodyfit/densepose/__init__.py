"""DensePose-style charts (24 parts, per-part UV) and IUV maps.

DensePose: R. A. Guler, N. Neverova, I. Kokkinos, "DensePose: Dense Human Pose Estimation in the
Wild", CVPR 2018. ``anny_chart(model)`` builds the chart of an Anny mesh, ``smpl_chart(path)``
reads DensePose's own SMPL chart; ``render_iuv`` renders IUV maps of posed bodies,
``read_iuv_png``/``write_iuv_png`` handle DensePose's PNG format, ``check_iuv`` validates maps and
``sample_foreground`` draws pixels for the fitting energy (``bodyfit.fitting.densepose``).
"""
from bodyfit.densepose.chart import (PART_NAMES, DensePoseChart, anny_chart, part_index,
                                     smpl_chart, surface_points)
from bodyfit.densepose.iuv import (check_iuv, read_iuv_png, render_iuv, sample_foreground,
                                   write_iuv_png)

__all__ = ["PART_NAMES", "part_index", "DensePoseChart", "anny_chart", "smpl_chart",
           "surface_points", "check_iuv", "read_iuv_png", "write_iuv_png", "render_iuv",
           "sample_foreground"]
