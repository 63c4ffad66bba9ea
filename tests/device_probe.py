"""Run code on PyTorch's ``meta`` device and count what it would ask of an accelerator; check
that the optimizer's steps can be replayed as CUDA graphs.

On ``meta`` every operation checks its operands' devices and shapes but computes nothing, so a
tensor made on the CPU where the model's device was meant (the bug class that only shows on CUDA)
raises at once, on a machine without a GPU. Reading device data back to the host (the kinds of
:class:`bodyfit.fitting.graphs.HostReads`: ``.item()``, ``bool(t)``, ``torch.nonzero``, boolean
masks, ``torch.equal``, copies to the host) is what synchronizes a CUDA stream: under
:class:`MetaProbe` it is counted and answered with a placeholder so the code runs on.
Operations that launch no kernel (views, reshapes, detach) are left out of ``launches``.
:class:`EmulatedCapture` stands in for ``capture_step`` on the CPU and checks every replayed
step against the captured one (:class:`StepTrace`).
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bodyfit.fitting.graphs import HostReads

_NO_KERNEL = {"view", "_unsafe_view", "as_strided", "t", "transpose", "permute", "expand", "unsqueeze",
              "squeeze", "select", "slice", "split", "split_with_sizes", "unbind", "alias", "detach",
              "_reshape_alias", "unflatten", "lift_fresh", "diagonal", "narrow", "chunk",
              "_to_copy_noop", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
              "_local_scalar_dense", "equal", "sym_size", "sym_stride", "is_same_size"}


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


class MetaProbe(HostReads):
    """Counts host reads of device (meta) data (``reads``, by kind:
    :class:`~bodyfit.fitting.graphs.HostReads`) and
    kernel-launching operations (``launches``, by operation) of the code run under it; on meta
    tensors a host read returns a placeholder instead of raising: with ``found`` False, 0 /
    False / no element found; with ``found`` True, 1 / True / every element found (the branches
    taken when every sample needs them); copies to the host are zeros. ``transfers`` counts the
    copies from the host to the device."""

    def __init__(self, found: bool = False):
        super().__init__()
        self.found = found
        self.launches: Counter = Counter()
        self.transfers = 0  # copies from the host to the device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name not in _NO_KERNEL:
            self.launches[name] += 1
        kind = self.kind(func, args, kwargs)
        source = args[1] if func is torch.ops.aten.copy_.default else args[0]
        if kind == "copy" and not source.is_meta:
            self.transfers += 1
        if kind is None or not source.is_meta:  # reading host memory costs no device sync
            return func(*args, **kwargs)
        self.reads[kind] += 1
        x = args[0]
        if kind == "boolean mask" and x.is_meta:
            return func(x, _masks_as_indices(args[1], self.found), *args[2:], **kwargs)
        if kind == "_local_scalar_dense" and x.is_meta:
            return {torch.bool: bool, torch.float32: float, torch.float64: float}.get(x.dtype, int)(self.found)
        if kind == "nonzero" and x.is_meta:
            return torch.empty((x.numel() if self.found else 0, x.dim()), dtype=torch.long, device="meta")
        if kind == "equal" and x.is_meta:
            return x.shape == args[1].shape
        if kind == "copy" and func is torch.ops.aten._to_copy.default and x.is_meta:
            return torch.zeros(x.shape, dtype=kwargs.get("dtype") or x.dtype, device=kwargs["device"])
        if kind == "copy" and func is torch.ops.aten.copy_.default and args[1].is_meta:
            return x
        return func(*args, **kwargs)


class StepTrace(TorchDispatchMode):
    """Records what a CUDA graph of the code run under it would hold: each operation with its
    non-tensor arguments (baked into a graph), and for each tensor it reads
    either its storage, shape and offset (made outside the traced code: a graph reads that
    memory at every replay) or its shape alone (made inside: a graph makes it anew)."""

    def __init__(self):
        super().__init__()
        self.trace: list = []
        self.reads = HostReads()
        self._outside: set[int] = set()
        self._inside: set[int] = set()

    def _key(self, x):
        if isinstance(x, torch.Tensor):
            ptr = x.untyped_storage().data_ptr()
            if ptr not in self._inside:
                self._outside.add(ptr)
                return ("outside", ptr, x.storage_offset(), tuple(x.shape), tuple(x.stride()), x.dtype)
            return ("inside", tuple(x.shape), tuple(x.stride()), x.dtype)
        if isinstance(x, (list, tuple)):
            return tuple(self._key(v) for v in x)
        if isinstance(x, dict):
            return tuple((k, self._key(v)) for k, v in sorted(x.items()))
        return x

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self.reads.kind(func, args, kwargs)
        if kind is not None:
            self.reads.reads[kind] += 1
        if func is torch.ops.aten.lift_fresh.default:  # a number made a tensor in the step: its value is baked
            self._inside.add(args[0].untyped_storage().data_ptr())
            self.trace.append((str(func), ("number", args[0].tolist())))
            return func(*args, **kwargs)
        self.trace.append((str(func), self._key(args), self._key(kwargs)))
        out = func(*args, **kwargs)
        for t in (out if isinstance(out, (list, tuple)) else [out]):
            if isinstance(t, torch.Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self._outside:
                    self._inside.add(ptr)
        return out


class EmulatedCapture:
    """``fitting.graphs.capture_step`` on the CPU, for tests: the step runs once for real
    (refused, None returned, where it reads from the host, as on CUDA); the first replay
    records the step's trace (:class:`StepTrace`), and every later replay runs the step eagerly
    and asserts that its trace is the recorded one: what the CUDA graph would replay is then
    what an eager step does. ``captured``/``refused``/``replays`` count."""

    def __init__(self):
        self.captured = self.refused = self.replays = 0

    def __call__(self, step, leaves):
        reads = HostReads()
        with reads:
            step()
        if reads.reads:
            self.refused += 1
            return None
        self.captured += 1
        recorded = []

        def replay():
            trace = StepTrace()
            with trace:
                step()
            assert not trace.reads.reads, dict(trace.reads.reads)
            if not recorded:
                recorded.append(trace.trace)
            else:
                first_diff = next((i for i, (a, b) in enumerate(zip(recorded[0], trace.trace)) if a != b), None)
                assert trace.trace == recorded[0], (
                    f"step {self.replays} differs from the captured one at operation {first_diff}: "
                    f"{recorded[0][first_diff] if first_diff is not None else len(recorded[0])} vs "
                    f"{trace.trace[first_diff] if first_diff is not None else len(trace.trace)}")
            self.replays += 1

        return replay
