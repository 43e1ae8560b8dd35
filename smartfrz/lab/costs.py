"""Cost accounting: training FLOPs integrated over the freeze timeline, memory, energy, overhead.

FLOPs are measured, not modelled: one training step is counted with ``FlopCounterMode`` at every
frozen-prefix length once, and the run's total is the sum over steps of the cost at the prefix
length then in force. ``check_step_flops`` re-counts a live step to cross-check that integral.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..units import Unit, param_owners


def count_step_flops(model: nn.Module, batch: Any, loss_fn: Callable) -> int:
    """FLOPs of one forward + backward on ``batch``; leaves no gradients behind."""
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, batch).backward()
    for p in model.parameters():
        p.grad = None
    return int(counter.get_total_flops())


def prefix_step_flops(model: nn.Module, units: Sequence[Unit], batch: Any, loss_fn: Callable,
                      max_prefix: int | None = None) -> list[int]:
    """Training-step FLOPs with the first k units frozen, for k = 0..max_prefix (measured, not modelled).

    Freezing is simulated with requires_grad alone, which is what removes the backward work; the
    model's flags are restored afterwards. A parameter freezes as the engine freezes it (``units.param_owners``:
    a tied head's never, one shared by two units with the later).
    """
    max_prefix = len(units) if max_prefix is None else max_prefix
    flags = {p: p.requires_grad for p in model.parameters()}
    owners = param_owners(model, units)
    was = model.training
    model.eval()  # no BN/dropout state changes while counting
    out = []
    try:
        for k in range(max_prefix + 1):
            for u in units[:k]:
                for p in u.parameters():
                    if all(o < k for o in owners[id(p)]):
                        p.requires_grad_(False)
            out.append(count_step_flops(model, batch, loss_fn))
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was)
    return out


def frozen_count_per_step(timeline: Sequence[dict], total_steps: int) -> list[int]:
    """Frozen-prefix length in force during each step 1..total_steps (a freeze decided after step s
    applies from step s + 1)."""
    change = {}
    for ev in timeline:
        delta = 1 if ev["event"] == "freeze" else -1
        change[ev["step"]] = change.get(ev["step"], 0) + delta
    k, out = 0, []
    for s in range(1, total_steps + 1):
        out.append(k)
        k += change.get(s, 0)
    return out


def integrate_train_flops(timeline: Sequence[dict], total_steps: int, prefix_flops: Sequence[int],
                          scale: Sequence[float] | None = None) -> float:
    """Sum over steps of the step cost at the prefix length then; ``scale`` (per step) corrects for
    batches larger or smaller than the measured one (e.g. dynamic padding)."""
    ks = frozen_count_per_step(timeline, total_steps)
    if scale is None:
        return float(sum(prefix_flops[k] for k in ks))
    return float(sum(prefix_flops[k] * s for k, s in zip(ks, scale)))


@torch.no_grad()
def prefix_forward_flops(model: nn.Module, units: Sequence[Unit], batch: Any, loss_fn: Callable,
                         max_prefix: int | None = None) -> list[int]:
    """Forward FLOPs spent before unit k receives its input, k = 0..max_prefix: what a step served by
    the prefix cache skips, and (as differences) what advancing the cache costs per batch."""
    from ..prefix_cache import forward_until
    max_prefix = len(units) if max_prefix is None else max_prefix
    was = model.training
    model.eval()
    out = [0]
    try:
        for k in range(1, max_prefix + 1):
            with FlopCounterMode(display=False) as counter:
                forward_until(units[k].members[0][1], lambda: loss_fn(model, batch))
            out.append(int(counter.get_total_flops()))
    finally:
        model.train(was)
    return out


def integrate_cached_train_flops(timeline: Sequence[dict], total_steps: int, prefix_flops: Sequence[int],
                                 forward_flops: Sequence[int], served: Sequence[int], scale: Sequence[float],
                                 advances: Sequence[dict], ref_work: int, full_forward: float) -> tuple[float, float]:
    """(training FLOPs, of which the cache's own work) with the prefix cache. A step fed at boundary b
    skips the forward before unit b. Each new boundary costs its verification rows (two full forwards
    and two to the boundary); an eager ``fill()`` batch from boundary j to k runs units j..k-1."""
    ks = frozen_count_per_step(timeline, total_steps)
    served = list(served) + [0] * (len(ks) - len(served))
    steps = sum((prefix_flops[k] - forward_flops[b]) * s for k, b, s in zip(ks, served, scale))
    own = sum((2 * full_forward + 2 * forward_flops[a["to"]] if a.get("verify")
               else forward_flops[a["to"]] - forward_flops[a["from"]])
              * a["work"] / ref_work for a in advances)
    return float(steps + own), float(own)


@torch.no_grad()
def forward_flops(model: nn.Module, batch: Any, loss_fn: Callable) -> int:
    """FLOPs of one forward pass (with the loss), in eval mode."""
    was = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            loss_fn(model, batch)
    finally:
        model.train(was)
    return int(counter.get_total_flops())


def probe_forward_flops(model: nn.Module, probe: Any) -> int:
    """FLOPs of one functional-veto forward on its probe batch (the veto counts how many it runs)."""
    from ..veto import logits
    return forward_flops(model, probe, logits)


def decision_flops(model: nn.Module, veto: Any) -> float:
    """What a run's functional veto (or None) spent: the forwards of each probe part, each part priced once."""
    if veto is None:
        return 0.0
    return float(sum(n * probe_forward_flops(model, part) for n, part in zip(veto.part_forwards, veto.parts) if n))


class PeakMemory:
    """Peak memory of a block: CUDA max allocated on GPU, sampled process RSS on CPU."""

    def __init__(self, device="cpu", interval: float = 0.05):
        self.cuda = torch.device(device).type == "cuda"
        self.device, self.interval, self.peak = device, interval, 0
        self._stop = threading.Event()

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil
            proc = psutil.Process(os.getpid())
            self.peak = proc.memory_info().rss

            def sample():
                while not self._stop.wait(self.interval):
                    self.peak = max(self.peak, proc.memory_info().rss)
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
        return False


class EnergyMeter:
    """GPU energy from NVML's cumulative counter (joules); ``None`` where there is no NVIDIA GPU."""

    def __init__(self, device="cpu"):
        self.joules: float | None = None
        self._handle = None
        if torch.device(device).type == "cuda":
            try:
                import pynvml
                pynvml.nvmlInit()
                idx = torch.device(device).index or 0
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(idx)
                self._nvml = pynvml
            except Exception:  # no NVML (or no energy counter): report None rather than guess
                self._handle = None

    def _read(self) -> float | None:
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0
        except Exception:
            return None

    def __enter__(self):
        self._start = self._read() if self._handle is not None else None
        return self

    def __exit__(self, *exc):
        if self._start is not None:
            end = self._read()
            self.joules = None if end is None else end - self._start
        return False


class Stopwatch:
    """Accumulates host time of a call site; cheap enough for the training hot path."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn: Callable) -> Callable:
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1
        return timed
