"""Layer tailoring: a fixed random sample of each unit's weights, kept as a rolling window.

The sample keeps the predictor's input the same size for every layer of every network, and the
ring buffer lives on the training device so recording never synchronises with the host. It reads
the weights that train: in a LoRA fine-tune a unit is mostly fixed pretrained weights, whose flat
window would read as "settled" while the adapters inside it still learn.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import torch

from .units import Unit


def tailored_params(unit: Unit) -> list[torch.nn.Parameter]:
    """The weights a unit's window samples: those that train, or all of them where none does (a flat window)."""
    return [p for p in unit.parameters() if p.requires_grad] or unit.parameters()


def sample_indices(unit: Unit, sample_size: int, seed: int) -> torch.Tensor:
    """Seeded indices into the unit's concatenated flat ``tailored_params``; stable across processes."""
    n = sum(p.numel() for p in tailored_params(unit))
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(unit.name.encode())) % (2**63))
    if n <= 4 * sample_size:  # small units: without replacement where possible
        idx = torch.randperm(n, generator=g)[:sample_size]
        if n < sample_size:
            idx = torch.cat([idx, torch.randint(n, (sample_size - n,), generator=g)])
    else:
        idx = torch.randint(n, (sample_size,), generator=g)
    return idx.sort().values


class WeightRecorder:
    """Rolling windows of tailored weights, one per unit: buffer[u] is (window, sample_size)."""

    def __init__(self, units: Sequence[Unit], window: int = 30, sample_size: int = 1024, seed: int = 0,
                 indices: Sequence[torch.Tensor] | None = None):
        self.units, self.window, self.sample_size, self.seed = list(units), window, sample_size, seed
        device = self.units[0].parameters()[0].device
        self.params = [tailored_params(u) for u in self.units]  # as set now; the engine retargets a unit the user changes
        self.indices = [t.cpu() for t in indices] if indices is not None else \
            [sample_indices(u, sample_size, seed) for u in self.units]
        self._gather = [self._split(ps, idx) for ps, idx in zip(self.params, self.indices)]
        self.buffer = torch.zeros(len(self.units), window, sample_size, device=device)
        self.ptr = 0  # next write position in the ring
        self.count = [0] * len(self.units)  # records since the unit's window was last reset

    @staticmethod
    def _split(params: list, idx: torch.Tensor):
        """Per-parameter local indices, so a record is one index_select per parameter tensor."""
        out, start = [], 0
        for p in params:
            n = p.numel()
            lo, hi = torch.searchsorted(idx, torch.tensor([start, start + n]))
            if hi > lo:
                out.append((p, (idx[lo:hi] - start).to(p.device)))
            start += n
        return out

    @torch.no_grad()
    def record(self, active: Sequence[int]) -> None:
        if not active:
            return
        rows = torch.cat([p.detach().reshape(-1).index_select(0, i) for u in active for p, i in self._gather[u]]
                         ).to(self.buffer.device, self.buffer.dtype).view(len(active), self.sample_size)
        contiguous = isinstance(active, range) and active.step == 1  # the engine's active units: one plain copy
        self.buffer[slice(active.start, active.stop) if contiguous else list(active), self.ptr] = rows
        self.ptr = (self.ptr + 1) % self.window
        for u in active:
            self.count[u] += 1

    def retarget(self, u: int, keep_window: bool = False) -> None:
        """Unit u's trainable weights changed (the user's loop set them training or fixed them): a new sample of
        what trains now, and its window begins again. ``keep_window``: the window was recorded over what trains
        now (a resumed run), so its sample and snapshots stay."""
        self.params[u] = tailored_params(self.units[u])
        if not keep_window:
            self.indices[u], self.count[u] = sample_indices(self.units[u], self.sample_size, self.seed), 0
        self._gather[u] = self._split(self.params[u], self.indices[u])

    def ready(self, u: int) -> bool:
        return self.count[u] >= self.window

    def windows(self, units: Sequence[int]) -> torch.Tensor:
        """(len(units), window, sample_size), oldest snapshot first."""
        order = [(self.ptr + t) % self.window for t in range(self.window)]
        return self.buffer[list(units)][:, order]

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.detach().cpu().clone(), "ptr": self.ptr, "count": list(self.count),
                "indices": [i.clone() for i in self.indices], "window": self.window, "sample_size": self.sample_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["window"], state["sample_size"]) != (self.window, self.sample_size):
            raise ValueError(f"recorder state has window={state['window']}, sample_size={state['sample_size']}; "
                             f"this run uses window={self.window}, sample_size={self.sample_size}")
        if len(state["indices"]) != len(self.units):
            raise ValueError(f"recorder state covers {len(state['indices'])} units; this model has {len(self.units)}")
        self.indices = [i.clone() for i in state["indices"]]
        self._gather = [self._split(ps, idx) for ps, idx in zip(self.params, self.indices)]
        self.buffer.copy_(state["buffer"].to(self.buffer.device))
        self.ptr, self.count = int(state["ptr"]), [int(c) for c in state["count"]]
