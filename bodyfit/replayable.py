"""Whether the code running now must not read values back from the device.

A step that is captured as a CUDA graph and replayed (``bodyfit.fitting.graphs``) must do the
same work every time, with no decision taken on the host from a tensor's value. Code that can
work either way asks :func:`host_reads_allowed`: where they are allowed it may stop an
iteration early or take a rare branch only where needed (cheaper on the CPU); where not, it
runs a fixed number of iterations and computes the rare branch for every element, selecting
with ``torch.where``. The optimizer sets this for the stages whose steps it captures
(:func:`replayable`). This module sits below the body models and the fitting code.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def replayable(on: bool = True) -> Iterator[None]:
    """Within it (``on``), :func:`host_reads_allowed` is False in this thread."""
    before = getattr(_local, "replayable", False)
    _local.replayable = on or before
    try:
        yield
    finally:
        _local.replayable = before


def host_reads_allowed() -> bool:
    """False within :func:`replayable`: take no decision from a tensor's value."""
    return not getattr(_local, "replayable", False)
