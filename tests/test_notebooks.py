"""Every teaching notebook (examples/notebooks/*.py, jupytext percent scripts) runs top to bottom.

Each notebook runs as a plain Python script in its own process (``python tests/test_notebooks.py
NOTEBOOK FIGURES``): a percent script *is* Python, so this runs exactly the cells a reader runs,
without a Jupyter kernel (no ZeroMQ, no kernel to orphan on a timeout, the real traceback on a
failure). Matplotlib runs on the non-interactive Agg backend and ``plt.show()`` saves each open
figure as a PNG instead (set ``BODYFIT_NOTEBOOK_FIGURES=DIR`` to keep them and look at them).
Each notebook has a time budget; a notebook that takes longer fails.
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
BUDGET_S = 300  # per notebook on 2 cores; they take 15-90 s on a quiet machine


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
    env = {**os.environ, "MPLBACKEND": "Agg"}
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


if __name__ == "__main__":
    _run(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
