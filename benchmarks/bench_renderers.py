"""Renderer ops speed: rasterize + interpolate + antialias, forward and forward+backward, on the
default Anny mesh (27,420 triangles), per rasterizer context available on the CPU, 1 and 16
views, 256^2 and 512^2.

    python benchmarks/bench_renderers.py [--repeats 5] [--depth 4.9]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bodyfit.body_models import body_model
from bodyfit.cameras import Camera, default_intrinsics
import bodyfit.renderers as dr
from bodyfit.renderers.views import to_clip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--depth", type=float, default=4.9, help="body distance, metres")
    a = ap.parse_args()
    model = body_model("anny")
    verts = model(model.default_params(1, depth=a.depth)).vertices
    faces = model.faces
    topo = dr.antialias_construct_topology_hash(faces)
    print(f"{'backend':10s} {'size':>5s} {'views':>5s} {'fwd ms':>8s} {'fwd+bwd ms':>11s}")
    for backend in dr.available_backends("cpu"):
        glctx = dr.default_context("cpu", backend)
        for size in (256, 512):
            for views in (1, 16):
                cam = Camera.identity(default_intrinsics((size, size), views), (size, size))
                v = verts.expand(views, -1, -1).clone().requires_grad_(True)
                attr = torch.rand(views, v.shape[1], 3)

                def run(backward: bool):
                    pos = to_clip(v, cam)
                    rast, _ = dr.rasterize(glctx, pos, faces, (size, size))
                    img, _ = dr.interpolate(attr, rast, faces)
                    img = dr.antialias(img, rast, pos, faces, topology_hash=topo)
                    if backward:
                        img.sum().backward()

                times = {}
                for backward in (False, True):
                    run(backward)
                    ts = []
                    for _ in range(a.repeats):
                        t = time.perf_counter()
                        run(backward)
                        ts.append(time.perf_counter() - t)
                    times[backward] = 1000 * statistics.median(ts)
                print(f"{backend:10s} {size:5d} {views:5d} {times[False]:8.1f} {times[True]:11.1f}")


if __name__ == "__main__":
    main()
