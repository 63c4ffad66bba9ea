"""Every teaching notebook (examples/notebooks/*.py, jupytext percent scripts) runs top to bottom,
and every example script (examples/*.py) does its job.

Each notebook runs as a plain Python script in its own process (``python tests/test_notebooks.py
NOTEBOOK FIGURES``): a percent script *is* Python, so this runs exactly the cells a reader runs,
without a Jupyter kernel (no ZeroMQ, no kernel to orphan on a timeout, the real traceback on a
failure). Matplotlib runs on the non-interactive Agg backend and ``plt.show()`` saves each open
figure as a PNG instead (set ``BODYFIT_NOTEBOOK_FIGURES=DIR`` to keep them and look at them).
Each notebook has a time budget; a notebook that takes longer fails.

The notebooks and examples run with one torch thread (``OMP_NUM_THREADS=1``): they fit a few
bodies at a time, whose small tensors gain nothing from a second thread, and on a 2-core machine
shared with other work two threads wait on each other (the SPIN notebook took 9-22 s per step
instead of 1 s with two threads on a busy machine).
"""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("[0-9]*.py"))
BUDGET_S = 480  # per notebook or example; each takes 10-60 s of CPU time
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Each example script, with arguments that keep it small, and the files it must write.
EXAMPLES = {
    "fit_folder.py": ([], ["example_outputs/fit_folder/cam01_frame000/fit.npz",
                           "example_outputs/fit_folder/cam01_frame000/overlay.png"]),
    "fit_calibrated_views.py": ([], ["example_outputs/fit_calibrated_views/fit.npz",
                                     "example_outputs/fit_calibrated_views/overlay_cam04.png"]),
    "fit_video.py": (["--max-frames", "4"], ["example_outputs/fit_video/frame_000006/fit.npz",
                                             "example_outputs/fit_video/joints.png"]),
    "make_pseudo_gt.py": ([], ["example_outputs/pseudo_gt/run/export/pseudo_gt_0000.npz",
                               "example_outputs/pseudo_gt/run/index.jsonl"]),
    "export_gltf.py": ([], ["example_outputs/body.glb"]),
    "use_smpl_files.py": (["--model-path", "SMPL_NEUTRAL.npz"], ["example_outputs/smpl_fit/fit.npz"]),
}


def _run(notebook: Path, figures: Path) -> None:
    """Run ``notebook`` as ``__main__``, saving every figure ``plt.show()`` would show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    count = 0

    def show(*args, **kwargs):
        nonlocal count
        for num in plt.get_fignums():
            count += 1
            plt.figure(num).savefig(figures / f"{notebook.stem}_{count:02d}.png", dpi=72)
        plt.close("all")

    plt.show = show
    sys.argv = [str(notebook)]
    runpy.run_path(str(notebook), run_name="__main__")
    show()


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5, NOTEBOOKS


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_a_jupytext_percent_script(notebook):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(notebook)
    kinds = [c.cell_type for c in nb.cells]
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    assert kinds[0] == "markdown" and kinds.count("markdown") >= 3 and kinds.count("code") >= 3
    assert not any("__file__" in c.source for c in nb.cells)  # a Jupyter kernel has no __file__


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path):
    keep = os.environ.get("BODYFIT_NOTEBOOK_FIGURES")
    figures = Path(keep) if keep else tmp_path / "figures"
    env = {**os.environ, "MPLBACKEND": "Agg", **THREADS}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(notebook), str(figures)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=BUDGET_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{notebook.name} took more than {BUDGET_S} s")
    took = time.perf_counter() - start
    out = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"{notebook.name} failed after {took:.0f} s:\n{out}"
    pictures = sorted(figures.glob(f"{notebook.stem}_*.png"))
    assert pictures, f"{notebook.name} showed no figure"
    print(f"{notebook.name}: {took:.1f} s, {len(pictures)} figures")


def test_every_example_is_tested():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.notebook
@pytest.mark.parametrize("script", sorted(EXAMPLES), ids=[Path(n).stem for n in sorted(EXAMPLES)])
def test_example_runs(script, tmp_path):
    args, outputs = EXAMPLES[script]
    if script == "use_smpl_files.py":  # the user's licensed files, stood in for by a synthetic one
        sys.path.insert(0, str(ROOT / "tests"))
        from synthetic_smpl import write_synthetic_smpl

        pytest.importorskip("smplx")
        write_synthetic_smpl(tmp_path / "SMPL_NEUTRAL.npz", "npz")
    env = {**os.environ, "MPLBACKEND": "Agg", **THREADS}
    env.pop("BODYFIT_SMPL_DIR", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=BUDGET_S)
    out = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"{script} failed:\n{out}"
    missing = [o for o in outputs if not (tmp_path / o).is_file()]
    assert not missing, f"{script} did not write {missing}:\n{out}"
    print(f"{script}: {time.perf_counter() - start:.1f} s")


def test_smpl_example_says_what_is_missing(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "BODYFIT_SMPL_DIR"}, **THREADS}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "use_smpl_files.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "No SMPL model files: pass --model-path or set BODYFIT_SMPL_DIR" in proc.stderr
    assert not (tmp_path / "example_outputs").exists()


if __name__ == "__main__":
    _run(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
