"""The documentation site builds with warnings as errors (``mkdocs build --strict``, as README
says), with the API reference made from the docstrings, a page per command holding that
command's ``--help``, and every notebook rendered."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["fit", "fit-views", "fit-video", "demo", "train", "pseudo-gt"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("mkdocs_jupyter")
    out = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if k != "BODYFIT_DOCS_EXECUTE"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-5000:]}"
    return out


def text(page: Path) -> str:
    return re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8"))


def test_the_api_reference_comes_from_the_docstrings(site):
    page = text(site / "api" / "bodyfit" / "index.html")
    assert "bodyfit.fit" in page and "bodyfit.Fitter" in page
    assert "Fit a body model to the 2D keypoints of B pictures" in page  # bodyfit.fit's docstring
    fitting = text(site / "api" / "fitting" / "index.html")
    assert "GMoF" in fitting or "gmof" in fitting


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_a_page_with_its_help(site, command):
    page = text(site / "commands" / command / "index.html")
    assert f"usage: bodyfit {command}" in page
    assert "--out" in page


def test_every_notebook_is_rendered(site):
    notebooks = sorted((ROOT / "examples" / "notebooks").glob("[0-9]*.py"))
    assert notebooks
    for nb in notebooks:
        page = site / "notebooks" / nb.stem / "index.html"
        assert page.is_file(), f"{nb.name} is not rendered"
        first_title = next(line for line in nb.read_text().splitlines() if line.startswith("# # "))[4:]
        assert first_title.split(":")[0] in text(page)
        assert "import bodyfit" in text(page)  # the code cells are there too
