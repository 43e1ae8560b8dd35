"""Frozen-prefix activation cache: a frozen prefix's output for an example never changes, so later
epochs feed the first active unit from a per-example store and run no frozen forward.

Opt-in and separate from the engine: ``fit(..., frz=frz, cache=True)`` or a ``PrefixCache``. Batches
carry dataset indices (``(x, y, index)`` or a dict with ``"index"``). After the prefix grows, training
steps keep the new boundary's input as their forward computes it, starting from the previous boundary's
store (only the newly frozen units run). A shuffled batch is served only once all its examples are stored,
so ``fit`` completes a part-filled store at an epoch's start (``fill``). A served step stubs the frozen
members out (zeros of their recorded shape) and swaps the stored input in. Each new boundary is first
checked on a few rows run both ways; a mismatch (not a chain, a padded position that matters, ...), random
augmentation, a loader without indices or tied trainable weights refuse the cache with a warning naming why.
"""
from __future__ import annotations

import contextlib
import copy
import math
import mmap
import os
import tempfile
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

INDEX_KEY = "index"
VERIFY_ROWS = 8  # examples run both ways at each new boundary


class _StopForward(Exception):
    """Raised at the boundary to end an advance pass: nothing after the prefix needs to run."""


def forward_until(module: nn.Module, run: Callable[[], Any]) -> torch.Tensor | None:
    """Calls ``run`` (a forward pass) and stops it as ``module`` is entered; returns that input."""
    captured = {}

    def grab(mod, args, kwargs):
        captured["x"] = _boundary(args, kwargs)
        raise _StopForward

    handle = module.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with contextlib.suppress(_StopForward):
            run()
    finally:
        handle.remove()
    return captured.get("x")


def batch_indices(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        return batch.get(INDEX_KEY)
    if isinstance(batch, (tuple, list)) and len(batch) == 3 and torch.is_tensor(batch[2]) and batch[2].dim() == 1:
        return batch[2]
    return None


def batch_work(batch: Any) -> int:
    """Rows, or padded tokens for text: the unit by which step FLOPs scale across batches."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        ids = batch.get("input_ids", batch.get("attention_mask"))
        if ids is not None:
            return int(ids.numel())
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(x.shape[0])


def _valid_lengths(batch: Any) -> torch.Tensor | None:
    """Per-example token counts for padded text batches (right padding), else None."""
    if isinstance(batch, dict) and torch.is_tensor(batch.get("attention_mask")):
        return batch["attention_mask"].sum(1)
    return None


class _Store:
    """Per-example tensors in RAM up to ``max_bytes``, then in a memory-mapped spill file."""

    def __init__(self, max_bytes: int | None, spill_dir: str | None):
        self.max_bytes, self.spill_dir = max_bytes, spill_dir
        self.clear()

    def clear(self) -> None:
        self.ram: dict[int, torch.Tensor] = {}
        self.disk: dict[int, tuple[int, tuple, torch.dtype]] = {}
        self.ram_bytes = self.disk_bytes = 0
        if getattr(self, "_file", None) is not None:
            self._file.close()
        self._file, self._map = None, None

    def put(self, i: int, t: torch.Tensor) -> None:
        t = t.detach().to("cpu", copy=True).contiguous()
        n = t.numel() * t.element_size()
        if self.max_bytes is None or self.ram_bytes + n <= self.max_bytes:
            self.ram[i] = t
            self.ram_bytes += n
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self.spill_dir, prefix="smartfrz-prefix-cache-")
        self._file.seek(0, os.SEEK_END)
        self.disk[i] = (self._file.tell(), tuple(t.shape), t.dtype)
        self._file.write(t.view(torch.uint8).reshape(-1).numpy().tobytes())
        self.disk_bytes += n
        self._map = None  # grown: map again on the next read

    def get(self, i: int) -> torch.Tensor:
        if i in self.ram:
            return self.ram[i]
        offset, shape, dtype = self.disk[i]
        if self._map is None:
            self._file.flush()
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        raw = torch.frombuffer(bytearray(self._map[offset:offset + n]), dtype=torch.uint8)
        return raw.view(dtype).reshape(shape)

    def __contains__(self, i: int) -> bool:
        return i in self.ram or i in self.disk

    def __len__(self) -> int:
        return len(self.ram) + len(self.disk)


class PrefixCache:
    """Stores the first active unit's input per example; ``dtype`` is the storage precision (fp16 by
    default: half the memory, a small rounding of the boundary activations; fp32 is exact).

    Filling is lazy (see the module's doc): a freeze costs a few verification rows; ``fill()`` passes
    over the examples still missing, once an epoch's steps have stored what they ran."""

    def __init__(self, dtype: torch.dtype = torch.float16, max_bytes: int | None = None, spill_dir: str | None = None,
                 atol: float = 1e-4, rtol: float = 1e-3):
        self.dtype, self.atol, self.rtol, self.max_bytes, self.spill_dir = dtype, atol, rtol, max_bytes, spill_dir
        self.store = _Store(max_bytes, spill_dir)
        self.level = 0  # units whose work the values in ``store`` contain (the engine's frozen prefix)
        self._older: list[tuple[int, _Store]] = []  # earlier boundaries' stores, deepest first, until ``store`` is full
        self.enabled, self.refused = True, None
        self.fill_examples = self.fill_work = self.captured = 0
        self.served: list[int] = []  # per training step: the boundary it was fed at (0: ran from the input)
        self.advances: list[dict] = []  # {"from", "to", "work"}: forward work outside training steps, per freeze
        self._specs: dict[nn.Module, tuple] = {}
        self._trimmed = self._channels_last = False
        self.expected = None  # examples the training loader can bring: when ``store`` holds them all, it is full
        self._lingering: list = []  # the last step's feed of unit k, for its backward's recomputation (``_replay``)

    # ------------------------------------------------------------------ setup
    def attach(self, model: nn.Module, frz, train_loader, loss_fn: Callable, to_device: Callable, device) -> bool:
        self.model, self.frz, self.loss_fn, self.to_device, self.device = model, frz, loss_fn, to_device, device
        self.train_loader = train_loader
        self.fill_loader = self._ordered()
        return self.enabled

    def refuse(self, why: str) -> None:
        if self.enabled:
            warnings.warn(f"prefix cache off: {why}; training goes on without it", stacklevel=3)
        self.enabled, self.refused = False, why
        self._release()
        self._drop_older()
        self.store.clear()
        self.level = 0

    def _ordered(self):
        """This epoch's examples (a DistributedSampler deals each rank other ones every epoch) in a fixed order,
        without touching the training loader's shuffle state."""
        loader = self.train_loader
        while hasattr(loader, "loader") and not isinstance(loader, torch.utils.data.DataLoader):
            loader = loader.loader  # a wrapper that observes batches (the lab's cost tap)
        if getattr(loader, "augment", False) or getattr(getattr(loader, "dataset", None), "augment", False) \
                or "Random" in repr(getattr(getattr(loader, "dataset", None), "transform", "")):
            return self.refuse("the training data is randomly augmented, so a frozen prefix's output is not fixed")
        if hasattr(loader, "x") and hasattr(loader, "shuffle"):  # smartfrz.lab.data.ArrayLoader
            ordered, self.expected = copy.copy(loader), len(loader.y)
            ordered.shuffle = ordered.drop_last = False  # every example, once
            return ordered
        if isinstance(loader, torch.utils.data.DataLoader):
            ds, sampler = loader.dataset, loader.sampler
            self.expected = len(ds)
            if isinstance(sampler, torch.utils.data.DistributedSampler):  # this rank's examples this epoch
                ds = torch.utils.data.Subset(ds, list(iter(sampler)))
            by_length = sorted(range(len(ds)), key=sampler.lengths.__getitem__) if hasattr(sampler, "lengths") else None
            return torch.utils.data.DataLoader(ds, batch_size=loader.batch_size, sampler=by_length,  # pads little
                                               collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                                               generator=torch.Generator())  # draws no global random numbers
        return self.refuse(f"cannot iterate {type(loader).__name__} in a fixed order (use a DataLoader)")

    # ------------------------------------------------------------------ following the engine
    def sync(self) -> None:
        """Moves the boundary to the engine's frozen prefix (call after each ``frz.step()``). Costs one
        verification batch; the new boundary's values are then kept as training steps compute them."""
        k = self.frz.num_frozen
        if not self.enabled or k == self.level:
            return
        if k < self.level:  # unfrozen: what is stored is past the boundary now
            self._drop_older()
            self.store.clear()
            self.level = 0
            if k == 0:
                return
        if any(p.requires_grad for u in self.frz.units[:k] for p in u.parameters()):
            return self.refuse("a frozen unit shares trainable (tied) parameters, so its output keeps changing")
        if not (work := self._verify(k)):
            return
        if len(self.store):  # serves the transition: steps run from here and keep the new boundary's values
            self._older = [(self.level, self.store), *self._older][:2]
        held = sum(s.ram_bytes for _, s in self._older)
        self.store = _Store(None if self.max_bytes is None else max(0, self.max_bytes - held), self.spill_dir)
        self.advances.append({"from": self.level, "to": k, "work": work, "verify": True})
        self.fill_work += work
        self.level = k

    def _drop_older(self) -> None:
        for _, s in self._older:
            s.clear()
        self._older, self.store.max_bytes = [], self.max_bytes  # the whole RAM budget is the current store's again

    def _stored_in(self, ids: list[int]):
        """(boundary, store) of the deepest store holding every example of ``ids``, else (0, None)."""
        for level, store in ((self.level, self.store), *self._older):
            if all(i in store for i in ids):
                return level, store
        return 0, None

    @torch.no_grad()
    def fill(self) -> None:
        """Stores the missing examples in one ordered pass, each batch from its deepest stored boundary."""
        if not self.enabled or not self.level or len(self.store) >= self.expected:
            return
        was = self.model.training
        self.model.eval()
        try:
            for batch in self._ordered():  # this epoch's examples
                batch = self.to_device(batch, self.device)
                ids = batch_indices(batch).tolist()  # the verification found indices
                if not (missing := [r for r, i in enumerate(ids) if i not in self.store]):
                    continue
                batch, ids = _rows(batch, missing), [ids[r] for r in missing]  # only the missing examples run
                base, store = self._stored_in(ids)
                out = self._run_to(self.level, batch, base, None if store is None else self._gather(store, ids, batch))
                self._put(ids, out, batch)
                self.fill_examples += len(ids)
                self.fill_work += batch_work(batch)
                self.advances.append({"from": base, "to": self.level, "work": batch_work(batch)})
        finally:
            self.model.train(was)
        self._drop_older()

    def _run_to(self, k: int, batch, base: int = 0, stored: torch.Tensor | None = None) -> torch.Tensor:
        """The input of unit k for this batch, running only units base..k-1 (on ``stored`` when base > 0)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._record(k))
            if base:
                stack.enter_context(self._replay(batch, base, stored))
            x = forward_until(self.frz.units[k].members[0][1], lambda: self.loss_fn(self.model, batch))
        if x is None:
            raise RuntimeError(f"unit {self.frz.units[k].name} did not run in the forward pass")
        return x

    def _put(self, ids: list[int], x: torch.Tensor, batch) -> None:
        lengths = _valid_lengths(batch)
        seq = lengths is not None and x.dim() >= 2 and x.shape[1] == batch["attention_mask"].shape[1]
        self._trimmed = seq  # rows stored without their padding
        self._channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        x = x.detach().to(self.dtype).cpu()  # one device-to-host copy per batch, not one per row
        lengths = lengths.tolist() if seq else None
        for row, i in enumerate(ids):
            self.store.put(i, x[row, :lengths[row]] if seq else x[row])
        if self.expected is not None and len(self.store) >= self.expected:
            self._drop_older()  # the boundary is complete: earlier ones serve nothing any more

    @contextlib.contextmanager
    def _record(self, k: int):
        """Notes each frozen member's output structure, so a stub can stand in for it later."""
        handles = []
        for u in self.frz.units[:k]:
            for _, m in u.members:
                def note(mod, args, out):
                    leaves, spec = tree_flatten(out)
                    self._specs[mod] = (spec, [("tensor", tuple(t.shape), t.dtype) if torch.is_tensor(t)
                                               else ("value", t, None) for t in leaves])
                handles.append(m.register_forward_hook(note))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # ------------------------------------------------------------------ replay
    def _gather(self, store: _Store, ids: list[int], batch) -> torch.Tensor:
        rows = [store.get(i) for i in ids]
        lengths = _valid_lengths(batch)
        if lengths is not None and self._trimmed:
            width = batch["attention_mask"].shape[1]
            out = rows[0].new_zeros((len(rows), width, *rows[0].shape[1:]))
            for r, t in enumerate(rows):
                out[r, :t.shape[0]] = t
            return out
        out = torch.stack(rows)  # served in the layout the live forward had: same kernels, same rounding
        return out.contiguous(memory_format=torch.channels_last) if self._channels_last else out

    @contextlib.contextmanager
    def _replay(self, batch, k: int, stored: torch.Tensor, step: bool = False):
        """Frozen members of units < k return zeros of their recorded shape; unit k gets ``stored``. ``step``: a
        training step's forward, whose backward may run unit k again (activation checkpointing recomputes it from
        the input it was called with): until the next step, unit k is fed ``stored`` again for that input alone."""
        dims = _batch_dims(batch)
        param = next(self.model.parameters())
        stored = stored.to(device=param.device)
        restore = []
        for u in self.frz.units[:k]:
            for _, m in u.members:
                spec, leaves = self._specs[m]

                def stub(*args, _spec=spec, _leaves=leaves, **kwargs):
                    return tree_unflatten([torch.zeros(_resize(v, dims), dtype=d, device=param.device)
                                           if kind == "tensor" else v for kind, v, d in _leaves], _spec)
                restore.append((m, m.__dict__.get("forward")))
                m.forward = stub

        seen: list[torch.Tensor] = []  # the input unit k got in the step's forward (kept: its memory is not reused)

        def feed(mod, args, kwargs):
            live = _boundary(args, kwargs)
            if handle in self._lingering and not any(_same_values(live, t) for t in seen):
                return None  # after the step, only its recomputation is fed
            seen.append(live)
            value = stored.to(live.dtype)
            if live.requires_grad:  # the engine feeds reentrant checkpointing (engine._boundary_hook): so does the store
                value = value.detach().requires_grad_().clone()
            return _swap_boundary(args, kwargs, value)

        handle = self.frz.units[k].members[0][1].register_forward_pre_hook(feed, with_kwargs=True)
        try:
            yield
        finally:
            if step:
                self._lingering.append(handle)
            else:
                handle.remove()
            for m, fwd in restore:
                if fwd is None:
                    del m.forward
                else:
                    m.forward = fwd

    def context(self, batch):
        """A context for a training step's forward: served from the current boundary's store; or run
        from an earlier boundary's store (or the input) while keeping the current boundary's input."""
        self._release()
        idx = batch_indices(batch) if self.enabled and self.level else None
        if idx is None:
            self.served.append(0)
            return None
        ids = idx.tolist()
        base, store = self._stored_in(ids)
        self.served.append(base)
        stored = None if store is None else self._gather(store, ids, batch)
        if base == self.level:
            return self._replay(batch, base, stored, step=True)
        return self._capturing(batch, ids, base, stored)

    def _release(self) -> None:
        """Ends the previous step's feeding of its recomputation (see ``_replay``)."""
        for h in self._lingering:
            h.remove()
        self._lingering = []

    @contextlib.contextmanager
    def _capturing(self, batch, ids: list[int], base: int, stored: torch.Tensor | None):
        """The step runs units base..; the input the boundary unit receives goes into the store."""
        got = {}

        def keep(mod, args, kwargs):
            got["x"] = _boundary(args, kwargs)

        handle = self.frz.units[self.level].members[0][1].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            with self._replay(batch, base, stored, step=True) if base else contextlib.nullcontext():
                yield
        finally:
            handle.remove()
        if (x := got.get("x")) is None:
            return
        if x.requires_grad and not _fed(x):
            return self.refuse(f"the input of unit {self.frz.units[self.level].name} depends on trainable "
                               "parameters outside the frozen units, so it keeps changing")
        self._put(ids, x, batch)
        self.captured += len(ids)

    @torch.no_grad()
    def _verify(self, k: int) -> int:
        """One batch through the model both ways, in eval mode: the outputs must agree. And nothing random
        (dropout in train mode) may run before unit k outside the frozen units. Returns the batch's work
        (rows or padded tokens; 0 when refused): two full forwards and two to unit k. A few rows suffice: what
        is checked is the model's structure, and the check is paid at every freeze."""
        batch = _rows(self.to_device(next(iter(self.fill_loader)), self.device), slice(VERIFY_ROWS))
        if batch_indices(batch) is None:
            self.refuse(f"the loader yields no example indices (batches (x, y, index) or a dict with {INDEX_KEY!r})")
            return 0
        was = self.model.training
        self.model.eval()
        try:  # a unit fed no tensor (DenseNet's layers read a list) fails here already: refused, not raised
            if (noisy := self._random_before(k, batch)) is not None:
                self.refuse(f"{noisy} draws random numbers in training mode before unit {self.frz.units[k].name}, "
                            "outside the frozen units, so the prefix's output is not fixed")
                return 0
            x = self._run_to(k, batch).float()
            want = self.loss_fn(self.model, batch)
            with self._replay(batch, k, x):
                got = self.loss_fn(self.model, batch)
        except Exception as e:  # noqa: BLE001 - any failure of the stubbed forward means: not cacheable
            self.refuse(f"the model cannot run from the stored prefix output ({type(e).__name__}: {e})")
            return 0
        finally:
            self.model.train(was)
        if not torch.allclose(got.float(), want.float(), atol=self.atol, rtol=self.rtol):
            self.refuse(f"the prefix is not a chain: feeding unit {self.frz.units[k].name} the stored output of the "
                        f"frozen units changes the loss ({float(want):.6g} -> {float(got):.6g}); some frozen unit's "
                        "output reaches the rest of the model by another path")
            return 0
        return batch_work(batch)

    def _random_before(self, k: int, batch) -> str | None:
        """The name of an active dropout module that runs before unit k's input, if any."""
        frozen = {id(m) for u in self.frz.units[:k] for _, top in u.members for m in top.modules()}
        names = {id(m): n for n, m in self.model.named_modules()}
        seen: list[nn.Module] = []
        handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(mod))
                   for m in self.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                   and id(m) not in frozen]
        was = self.model.training
        cuda = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda):  # the check draws no number the training run would see
                self.model.train()  # as in a training step (frozen members stay in eval through the engine's hooks)
                forward_until(self.frz.units[k].members[0][1], lambda: self.loss_fn(self.model, batch))
        finally:
            self.model.train(was)
            for h in handles:
                h.remove()
        return names.get(id(seen[0]), type(seen[0]).__name__) if seen else None

    @property
    def hits(self) -> int:
        """Training steps fed from a store (the current boundary's or, right after a freeze, an earlier one)."""
        return sum(1 for b in self.served if b)

    def stats(self) -> dict:
        stores = [self.store, *(s for _, s in self._older)]
        return {"enabled": self.enabled, "refused": self.refused, "level": self.level, "entries": len(self.store),
                "ram_bytes": sum(s.ram_bytes for s in stores), "disk_bytes": sum(s.disk_bytes for s in stores),
                "hits": self.hits, "captured": self.captured, "fill_examples": self.fill_examples,
                "fill_work": self.fill_work, "advances": self.advances, "dtype": str(self.dtype).removeprefix("torch.")}


def _boundary(args, kwargs) -> torch.Tensor:
    if args and torch.is_tensor(args[0]):
        return args[0]
    for v in kwargs.values():
        if torch.is_tensor(v):
            return v
    raise TypeError("the first active unit receives no tensor input")


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:  # or a detached alias (reentrant checkpointing's)
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())


def _fed(x: torch.Tensor) -> bool:
    """Whether x requires grad only through the engine's feed (``engine._boundary_hook``): the one leaf upstream of
    it is the feed's copy of the prefix's output, no weight (a short walk: a longer graph counts as a weight)."""
    todo, seen = [x.grad_fn], 0
    while todo and (seen := seen + 1) < 256:
        if (fn := todo.pop()) is not None and hasattr(fn, "variable") and not getattr(fn.variable, "smartfrz_fed", 0):
            return False
        todo.extend(f for f, _ in (fn.next_functions if fn is not None else ()))
    return not todo and x.grad_fn is not None


def _swap_boundary(args, kwargs, value):
    if args and torch.is_tensor(args[0]):
        return (value, *args[1:]), kwargs
    key = next(k for k, v in kwargs.items() if torch.is_tensor(v))
    return args, {**kwargs, key: value}


def _rows(batch: Any, rows: slice | list[int]) -> Any:
    """Those examples of a batch (every tensor that is batch-first)."""
    idx = batch_indices(batch)
    if idx is None:
        return batch
    cut = lambda v: v[rows] if torch.is_tensor(v) and v.dim() and v.shape[0] == len(idx) else v
    return {k: cut(v) for k, v in batch.items()} if hasattr(batch, "keys") else type(batch)(cut(v) for v in batch)


def _batch_dims(batch) -> tuple[int, int | None]:
    if isinstance(batch, dict):
        ids = batch.get("input_ids", batch.get("attention_mask"))
        return ids.shape[0], ids.shape[1] if ids is not None and ids.dim() > 1 else None
    return batch[0].shape[0], None


def _resize(shape: tuple, dims) -> tuple:
    """A recorded shape for this batch: batch-first, and (text) the sequence length second."""
    b, t = dims
    out = [b, *shape[1:]] if shape else []
    if t is not None and len(out) >= 2:
        out[1] = t
    return tuple(out)
