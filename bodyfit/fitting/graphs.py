"""Optimizer steps captured as CUDA graphs and replayed.

On a GPU at the batch sizes of a fit (up to a few thousand samples), a step costs what launching
its few hundred small kernels costs, not what they compute. A CUDA graph (``torch.cuda.graph``;
PyTorch's "whole network capture") records the step's kernels once and replays them in one launch.
A step can be replayed only when it is the same every time: it reads nothing back to the host
(``.item()``, ``bool(t)``, boolean masks, ``torch.equal``, copies to or from the CPU), takes no
Python decision from tensor values, and keeps every tensor it reads from outside the step in place
(updated in place, never replaced). :class:`HostReads` counts the first kind on one real step
before anything is captured; a step with any is run eagerly. The rest is the optimizer's own
discipline (``fitting.optimizer``), and is checked on the CPU by tests/test_graphs.py, which
replays every step against the captured one (tests/device_probe.py).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger(__name__)

_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
             torch.ops.aten._index_put_impl_.default}


def _device_type(x) -> str | None:
    return x.device.type if isinstance(x, torch.Tensor) else None


class HostReads(TorchDispatchMode):
    """Counts, by kind, the operations run under it that wait for the device or move data
    between host and device: ``_local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``),
    ``nonzero`` (``torch.nonzero``), ``boolean mask`` (indexing by a mask), ``equal``
    (``torch.equal``) and ``copy`` (``.to()``/``copy_`` between the CPU and another device).
    ``reads``: Counter of kind -> count."""

    def __init__(self):
        super().__init__()
        self.reads: Counter = Counter()

    def kind(self, func, args, kwargs) -> str | None:
        """The kind of host read ``func(*args, **kwargs)`` is, or None."""
        if func is torch.ops.aten._local_scalar_dense.default:
            return "_local_scalar_dense"
        if func is torch.ops.aten.nonzero.default:
            return "nonzero"
        if func is torch.ops.aten.equal.default:
            return "equal"
        if func in _INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1]):
            return "boolean mask"
        if func is torch.ops.aten._to_copy.default and kwargs.get("device") is not None:
            if torch.device(kwargs["device"]).type != args[0].device.type:
                return "copy"
        if func is torch.ops.aten.copy_.default and _device_type(args[0]) != _device_type(args[1]):
            return "copy"
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self.kind(func, args, kwargs)
        if kind is not None:
            self.reads[kind] += 1
        return func(*args, **kwargs)


def capture_step(step: Callable[[], None], leaves: list[torch.Tensor]) -> Callable[[], None] | None:
    """Run ``step`` once (a real step, on a side stream, counting host reads), then, where it
    read nothing back, capture it as a CUDA graph.

    Args:
        step: one optimizer step: updates ``leaves`` (and whatever else it keeps) in place.
        leaves: the tensors whose gradients ``step`` computes; their ``.grad`` is dropped before
            the capture, so that backward makes it in the graph's memory.
    Returns:
        The graph's replay (one more step per call), or None where ``step`` reads from the host
        or the capture fails (the caller runs ``step`` eagerly; the reason is logged).
    """
    current = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(current)
    probe = HostReads()
    with torch.cuda.stream(side), probe:  # the warm-up the capture needs: lazy handles and tables made here
        step()
    current.wait_stream(side)
    if probe.reads:
        log.debug("optimizer step not captured as a CUDA graph: it reads from the host (%s)", dict(probe.reads))
        return None
    for leaf in leaves:
        leaf.grad = None
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as e:  # the capture is abandoned; nothing of it ran
        log.warning("optimizer step not captured as a CUDA graph (%s); steps run one by one", e)
        return None
    return graph.replay
