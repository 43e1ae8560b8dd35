"""Freezing policies on one interface: each says how long the frozen prefix should be now.

A policy never touches the model; the engine applies its answer. ``decide`` returns the new
prefix length (never shorter than the current one) and a score per scored unit for the timeline.
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch

from .config import POLICIES

if TYPE_CHECKING:
    from .engine import SmartFRZ


class Policy:
    name = "base"
    needs_windows = False  # whether the engine must record weight windows
    decisions_per_epoch, decisions_per_run = 1, 0  # the cadence the engine asks at (0: no per-run floor)
    window, sample_size = 30, 1024  # the weight windows recorded when the policy reads them

    def bind(self, engine: "SmartFRZ") -> None:
        self.engine = engine

    def on_step(self, engine: "SmartFRZ") -> None:
        pass

    def decide(self, engine: "SmartFRZ") -> tuple[int, dict[int, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class NoFreezing(Policy):
    """Full training: the baseline every saving is measured against."""

    name = "none"

    def decide(self, engine):
        return engine.num_frozen, {}


class SmartFRZPolicy(Policy):
    """SmartFRZ (Li et al., ICLR 2023): the attention predictor scores each active unit's weight
    window; the longest front prefix whose units scored P(freeze) >= threshold at ``patience``
    consecutive decisions is frozen. Patience is ours: replaying held-out runs showed that single
    spikes caused every too-early freeze of CNN units (reports/predictor/report.md)."""

    name = "smartfrz"
    needs_windows = True

    def __init__(self, predictor=None, threshold: float | None = None, path: str | None = None,
                 patience: int | None = None):
        from .predictor import FreezePredictor

        self.predictor = predictor if predictor is not None else FreezePredictor.load(path)
        self.threshold = threshold if threshold is not None else float(self.predictor.threshold)
        self.patience = patience if patience is not None else int(getattr(self.predictor, "patience", 2))
        self.decisions_per_epoch = int(getattr(self.predictor, "decisions_per_epoch", 1))
        self.decisions_per_run = int(getattr(self.predictor, "decisions_per_run", 0))
        meta = getattr(self.predictor, "metadata", {})  # what it read in training; windows of other shapes shift its inputs
        self.window, self.sample_size = int(meta.get("window", self.window)), int(meta.get("sample_size", self.sample_size))
        self.streak: dict[int, int] = {}

    def bind(self, engine):
        super().bind(engine)
        self.predictor.to(engine.recorder.buffer.device)

    def decide(self, engine):
        k, limit, rec = engine.num_frozen, engine.max_frozen, engine.recorder
        candidates = [u for u in range(k, limit) if rec.ready(u)]
        if not candidates:
            return k, {}
        windows = rec.windows(candidates)
        finite = torch.isfinite(windows).flatten(1).all(1)
        probs = self.predictor.predict_proba(torch.nan_to_num(windows)).masked_fill(~finite, 0.0).tolist()
        if not bool(finite.all()):
            warnings.warn("non-finite weights in a recorded window: no freeze decision is made from them")
        scores = dict(zip(candidates, probs))
        self.streak = {u: self.streak.get(u, 0) + 1 if scores.get(u, 0.0) >= self.threshold else 0
                       for u in range(k, limit)}
        while k < limit and self.streak.get(k, 0) >= self.patience:
            k += 1
        return k, scores

    def state_dict(self):
        return {"streak": {str(u): s for u, s in self.streak.items()}}

    def load_state_dict(self, state):
        self.streak = {int(u): int(s) for u, s in state.get("streak", {}).items()}


class LinearPolicy(Policy):
    """FreezeOut (Brock et al., 2017) / Composer LayerFreezing-style schedule: from ``freeze_start``
    of training, the frozen share of units grows linearly to ``freeze_level`` at the end."""

    name = "linear"

    def decide(self, engine):
        cfg = engine.config
        total = cfg.total_steps
        if total is None:
            raise ValueError("policy 'linear' needs total_steps (the planned number of optimizer steps)")
        progress = engine.step_count / total
        if progress < cfg.freeze_start:
            return engine.num_frozen, {}
        span = max(1e-12, 1.0 - cfg.freeze_start)
        share = cfg.freeze_level * min(1.0, (progress - cfg.freeze_start) / span)
        n = min(engine.max_frozen, math.floor(share * len(engine.units) + 1e-9))
        return max(engine.num_frozen, n), {}


class AutoFreezePolicy(Policy):
    """AutoFreeze (Liu et al., 2021, "AutoFreeze: Automatically Freezing Model Blocks to Accelerate
    Fine-tuning"): per interval, each unit's accumulated gradient norm is compared with the previous
    interval's; the prefix before the first unit whose change ratio reaches the p-th percentile of
    the active units' ratios is frozen."""

    name = "autofreeze"

    def bind(self, engine):
        super().bind(engine)
        dev = engine.recorder_device
        self.acc = torch.zeros(len(engine.units), device=dev)
        self.prev: torch.Tensor | None = None
        self._params = [[p for p in u.parameters()] for u in engine.units]

    def on_step(self, engine):
        norms = []
        for u in range(len(engine.units)):
            grads = [p.grad for p in self._params[u] if p.grad is not None] if u >= engine.num_frozen else []
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
                         if grads else self.acc.new_zeros(()))
        self.acc += torch.stack(norms).to(self.acc.device)  # stays on device: no host sync per step

    def decide(self, engine):
        k, limit = engine.num_frozen, engine.max_frozen
        cur, self.acc = self.acc, torch.zeros_like(self.acc)
        prev, self.prev = self.prev, cur
        if prev is None or k >= limit:
            return k, {}
        ratio = ((prev - cur).abs() / prev.clamp_min(1e-12)).tolist()
        active = list(range(k, limit))
        cut = float(torch.quantile(torch.tensor([ratio[u] for u in active]), self.engine.config.autofreeze_percentile / 100))
        scores = {u: ratio[u] for u in active}
        first = next((u for u in active if ratio[u] >= cut), limit)
        return max(k, first), scores

    def state_dict(self):
        return {"acc": self.acc.cpu(), "prev": None if self.prev is None else self.prev.cpu()}

    def load_state_dict(self, state):
        self.acc = state["acc"].to(self.acc.device)
        self.prev = None if state["prev"] is None else state["prev"].to(self.acc.device)


class OraclePolicy(Policy):
    """Hindsight CKA: each unit freezes at the step its representation converged in a reference
    run (``smartfrz.predictor_training.labels``). The best any predictor could do on that run."""

    name = "oracle"

    def bind(self, engine):
        super().bind(engine)
        steps = engine.config.oracle_freeze_steps
        if not steps:
            raise ValueError("policy 'oracle' needs oracle_freeze_steps ({unit name: step}) from a reference run; "
                             "see smartfrz.predictor_training.labels.freeze_steps")
        self.steps = [steps.get(u.name) for u in engine.units]

    def decide(self, engine):
        k = engine.num_frozen
        while k < engine.max_frozen and self.steps[k] is not None and engine.step_count >= self.steps[k]:
            k += 1
        return k, {}


_REGISTRY = {"none": NoFreezing, "smartfrz": SmartFRZPolicy, "linear": LinearPolicy,
             "autofreeze": AutoFreezePolicy, "oracle": OraclePolicy}
assert set(_REGISTRY) == set(POLICIES)


def make_policy(policy: "str | Policy", config) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if policy not in _REGISTRY:
        raise ValueError(f"unknown policy {policy!r}; allowed: {sorted(_REGISTRY)} or a Policy instance")
    if policy == "smartfrz":
        return SmartFRZPolicy(threshold=config.threshold, path=config.predictor_path, patience=config.patience)
    return _REGISTRY[policy]()
