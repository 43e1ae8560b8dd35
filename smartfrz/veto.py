"""The functional veto: a unit freezes only once it has stopped mattering, not only once it looks settled.

At a high learning rate a unit's weights keep moving in ways that no longer change what the model predicts,
and a weight-window predictor reads that as "still learning"; the reverse error, a window that looks settled
while the unit still matters, costs accuracy. At each decision the veto puts the units about to freeze back
to their weights at the previous decision and counts how many of the model's predictions on a fixed probe
batch change: the online twin of the rewind label (``smartfrz.predictor_training.labels``), and free of the
learning rate. Above ``tau`` the frozen prefix stops short of that unit.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .units import Unit, call_model, first_tensor


def unit_state(unit: Unit) -> list:
    """Copies of a unit's parameters and buffers, on the CPU (one copy of the active units in all)."""
    return [{k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()} for _, m in unit.members] + \
        [p.detach().to("cpu", copy=True) for _, p in unit.extra_params]


def load_unit_state(unit: Unit, state: list) -> None:
    for (_, m), s in zip(unit.members, state):
        m.load_state_dict(s)
    for (_, p), v in zip(unit.extra_params, state[len(unit.members):]):
        p.data.copy_(v)


def logits(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    out = call_model(model, batch)
    return first_tensor(getattr(out, "logits", out)).float()


def first_rows(batch: Any, n: int) -> Any:
    """The first n examples of a batch: a tensor, or a dict, list or tuple of them (other values as they are)."""
    if isinstance(batch, dict):
        return {k: first_rows(v, n) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(first_rows(v, n) for v in batch)
    return batch[:n] if isinstance(batch, torch.Tensor) and batch.dim() else batch


def changed_share(ref: torch.Tensor, new: torch.Tensor) -> float:
    """Share of changed predictions (classification); regression: mean |change| over the outputs' std."""
    if ref.shape[-1] > 1:
        return float((ref.argmax(-1) != new.argmax(-1)).float().mean())
    return float((ref - new).abs().mean() / ref.std().clamp_min(1e-12))


class FunctionalVeto:
    """``allow(model, start, stop)``: how far the frozen prefix may grow, given the units' weights at the
    previous decision (``snapshot``). A unit with no earlier weights yet is never allowed."""

    def __init__(self, units: Sequence[Unit], probe: Any, tau: float, rows: int | None = None):
        self.units, self.probe, self.tau = list(units), probe if rows is None else first_rows(probe, rows), tau
        self.previous: dict[int, list] = {}  # unit index -> its weights at the previous decision
        self.at: int | None = None  # the step they were taken at
        self.vetoed = 0  # decisions the veto cut short
        self.forwards = 0  # probe forwards run: the veto's cost, counted so savings can be reported net of it

    def snapshot(self, start: int, stop: int, step: int, every: int = 1) -> None:
        """Keeps units start..stop-1 as they are now, at most once every ``every`` steps (a policy that decides
        at every step compares with weights at least that old, and copies them that seldom)."""
        if self.at is None or step - self.at >= every:
            self.previous, self.at = {i: unit_state(self.units[i]) for i in range(start, stop)}, step

    @torch.no_grad()
    def allow(self, model: torch.nn.Module, start: int, stop: int) -> int:
        if stop <= start:
            return start
        was = model.training
        model.eval()
        current = {}  # copied only for the units actually put back
        ok = start
        try:
            ref = logits(model, self.probe)
            self.forwards += 1
            for i in range(start, stop):
                if i not in self.previous:
                    break
                current[i] = unit_state(self.units[i])
                load_unit_state(self.units[i], self.previous[i])  # units start..i together, as the label rewinds a prefix
                self.forwards += 1
                if changed_share(ref, logits(model, self.probe)) > self.tau:
                    break
                ok = i + 1
        finally:
            for i, s in current.items():
                load_unit_state(self.units[i], s)
            model.train(was)
        self.vetoed += ok < stop
        return ok

    def state_dict(self) -> dict:
        return {"previous": {str(i): s for i, s in self.previous.items()}, "vetoed": self.vetoed, "at": self.at,
                "forwards": self.forwards}

    def load_state_dict(self, state: dict) -> None:
        self.previous = {int(i): s for i, s in state.get("previous", {}).items()}
        self.vetoed = int(state.get("vetoed", 0))
        self.forwards = int(state.get("forwards", 0))
        self.at = None if state.get("at") is None else int(state["at"])
