"""Run code on PyTorch's ``meta`` device and count what it would ask of an accelerator.

On ``meta`` every operation checks its operands' devices and shapes but computes nothing, so a
tensor made on the CPU where the model's device was meant (the bug class that only shows on CUDA)
raises at once, on a machine without a GPU. Reading a value back to the host
(``aten._local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``; ``aten.nonzero``: boolean
indexing and ``torch.nonzero``; ``aten.equal``: ``torch.equal``) is what synchronizes a CUDA
stream: under :class:`MetaProbe` it is counted and answered with a placeholder (0 / False /
nothing found / equal) so the code runs on.
Operations that launch no kernel (views, reshapes, detach) are left out of ``launches``.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_NO_KERNEL = {"view", "_unsafe_view", "as_strided", "t", "transpose", "permute", "expand", "unsqueeze",
              "squeeze", "select", "slice", "split", "split_with_sizes", "unbind", "alias", "detach",
              "_reshape_alias", "unflatten", "lift_fresh", "diagonal", "narrow", "chunk",
              "_to_copy_noop", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
              "_local_scalar_dense", "equal", "sym_size", "sym_stride", "is_same_size"}


_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
             torch.ops.aten._index_put_impl_.default}


def _masks_as_indices(indices, found: bool):
    """Boolean masks replaced by long indices (a mask of d dims, d of them) that find nothing,
    or (``found``) as many elements as the mask has."""
    out = []
    for i in indices:
        if i is not None and i.dtype == torch.bool:
            out += [torch.zeros(i.numel() if found else 0, dtype=torch.long, device=i.device)] * i.dim()
        else:
            out.append(i)
    return out


class MetaProbe(TorchDispatchMode):
    """Counts host reads (``syncs``, by operation) and kernel-launching operations
    (``launches``, by operation) of the code run under it; on meta tensors host reads return a
    placeholder instead of raising: with ``found`` False, 0 / False / no element found; with
    ``found`` True, 1 / True / every element found (the branches taken when every sample needs
    them)."""

    def __init__(self, found: bool = False):
        super().__init__()
        self.found = found
        self.syncs: Counter = Counter()
        self.launches: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name not in _NO_KERNEL:
            self.launches[name] += 1
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs[name] += 1
            if args[0].is_meta:
                return {torch.bool: bool, torch.float32: float, torch.float64: float}.get(args[0].dtype, int)(self.found)
        if func is torch.ops.aten.nonzero.default:
            self.syncs[name] += 1
            if args[0].is_meta:
                return torch.empty((args[0].numel() if self.found else 0, args[0].dim()), dtype=torch.long, device="meta")
        if func in _INDEXING and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.syncs["boolean mask"] += 1  # indexing by a mask finds its True entries first
            if args[0].is_meta:
                args = (args[0], _masks_as_indices(args[1], self.found), *args[2:])
        if func is torch.ops.aten._to_copy.default and args[0].is_meta and kwargs.get("device") not in (None, torch.device("meta")):
            self.syncs["copy to host"] += 1
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype, device=kwargs["device"])
        if func is torch.ops.aten.equal.default:
            self.syncs[name] += 1
            if args[0].is_meta:
                return args[0].shape == args[1].shape
        return func(*args, **kwargs)
