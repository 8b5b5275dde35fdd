"""Live tensor bytes by storage and by role, seen from a ``TorchDispatchMode``.

The approach of PyTorch's own (private) ``torch.distributed._tools.mem_tracker.MemTracker``: every
tensor an operator returns is looked up by its ``UntypedStorage``; a storage seen for the first time
adds its bytes to the running total and gets a weak reference whose callback takes them off again
when the storage dies. Views share their base's storage, in-place ops return a known storage, so each
allocation is counted once. The peak is checked after every operator.

Unlike ``MemTracker`` (which finds forward / backward with module hooks and refuses a second
iteration), the caller drives the step and says which phase it is in (:attr:`category` is what new
tensors count as), so two optimizer steps, gradient accumulation and an eval pass can be tracked in
one go. A storage's role can change after it was allocated (a backward temporary becomes ``.grad``,
an optimizer temporary becomes its state): the peak keeps references to the live entries, so its
breakdown is read with the roles they end up with.

Works the same on fake tensors (``FakeTensorMode``: shapes, dtypes and storages, no data) and on real
ones. Not seen: memory a kernel allocates internally without returning it as a tensor (im2col
buffers, cuDNN / oneDNN workspaces), and allocator rounding except the optional ``round_to``.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

CATEGORIES = ("parameters", "gradients", "optimizer_state", "input", "activations", "temporary", "workspace")


class _Entry:
    __slots__ = ("nbytes", "category", "__weakref__")

    def __init__(self, nbytes: int, category: str) -> None:
        self.nbytes = nbytes
        self.category = category


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages; ``with tracker:`` around the code to watch.

    ``round_to``: allocation granularity (the CUDA caching allocator rounds every block up to 512
    bytes; 1 on CPU). ``workspace(func, args, kwargs, out) -> bytes``: memory the operator's kernel
    held beyond the tensors it returned (see :mod:`cnnbench.memory.workspace`), counted in the peak
    as category ``workspace``. Tensors created before entering (parameters, a batch) are registered
    with :meth:`mark`.
    """

    def __init__(self, *, round_to: int = 1, workspace: Callable[..., int] | None = None) -> None:
        super().__init__()
        self.round_to = max(1, int(round_to))
        self.workspace = workspace
        self._peak_workspace = 0
        self.category = "temporary"  # what tensors returned by operators count as right now
        self.phase = ""  # a label stored with the peak ("step 2 backward")
        self._entries = WeakIdKeyDictionary()  # UntypedStorage -> _Entry
        self._live: dict[int, _Entry] = {}  # id(entry) -> entry, for the peak's breakdown
        self.total = 0
        self.peak = 0
        self.peak_phase = ""
        self._peak_entries: list[_Entry] = []

    # -- registering storages ------------------------------------------------------------------
    def _rounded(self, nbytes: int) -> int:
        if nbytes <= 0:
            return 0
        return -(-nbytes // self.round_to) * self.round_to

    def _storage(self, t: torch.Tensor):
        try:
            return t.untyped_storage()
        except (NotImplementedError, RuntimeError):  # sparse / nested layouts have no single storage
            return None

    def _add(self, t: torch.Tensor, category: str, *, recategorize: bool) -> None:
        storage = self._storage(t)
        if storage is None:
            return
        entry = self._entries.get(storage)
        nbytes = self._rounded(storage.nbytes())
        if entry is None:
            entry = _Entry(nbytes, category)
            self._entries[storage] = entry
            self._live[id(entry)] = entry
            self.total += nbytes
            weakref.finalize(storage, self._release, entry)
            return
        if entry.nbytes != nbytes:  # resized in place (resize_, out= variants)
            self.total += nbytes - entry.nbytes
            entry.nbytes = nbytes
        if recategorize:
            entry.category = category

    def _release(self, entry: _Entry) -> None:
        if self._live.pop(id(entry), None) is not None:
            self.total -= entry.nbytes

    def mark(self, tensors, category: str) -> None:
        """Register ``tensors`` (a tensor, or any nesting of lists / dicts / tuples of them) as
        ``category``; already known storages change role."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; one of {', '.join(CATEGORIES)}")
        for t in tree_leaves(tensors):
            if isinstance(t, torch.Tensor):
                self._add(t, category, recategorize=True)
        self._check_peak()

    # -- peak ------------------------------------------------------------------------------------
    def _check_peak(self, workspace: int = 0) -> None:
        if self.total + workspace > self.peak:
            self.peak = self.total + workspace
            self.peak_phase = self.phase
            self._peak_entries = list(self._live.values())
            self._peak_workspace = workspace

    def reset_peak(self) -> None:
        """Start a new peak from what is live now."""
        self.peak = -1
        self._check_peak()

    def live(self) -> dict[str, int]:
        """Bytes live now, by category."""
        return _by_category(self._live.values())

    def peak_breakdown(self) -> dict[str, int]:
        """Bytes live at the peak by category (roles as they are now); sums to :attr:`peak`."""
        out = _by_category(self._peak_entries)
        out["workspace"] = self._peak_workspace
        return out

    # -- the mode --------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t, self.category, recategorize=False)
        self._check_peak(self.workspace(func, args, kwargs or {}, out) if self.workspace is not None else 0)
        return out


def _by_category(entries) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    for entry in entries:
        out[entry.category] += entry.nbytes
    return out
