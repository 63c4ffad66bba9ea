"""MkDocs hook: a line ``<!-- bodyfit-help CMD -->`` in a page becomes the output of
``bodyfit CMD --help``, so the command pages cannot drift from the command itself."""
from __future__ import annotations

import contextlib
import io
import os
import re

_MARK = re.compile(r"^<!-- bodyfit-help ([a-z-]+) -->$", re.MULTILINE)


def _help(command: str) -> str:
    from bodyfit.cli import main

    os.environ["COLUMNS"] = "84"  # argparse wraps at the terminal's width: the page's code width
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        main([command, "--help"])
    if not text.getvalue().startswith("usage:"):
        raise ValueError(f"bodyfit {command} --help printed no usage")
    return "```text\n" + text.getvalue().rstrip() + "\n```"


def on_page_markdown(markdown, **kwargs):
    return _MARK.sub(lambda m: _help(m.group(1)), markdown)
