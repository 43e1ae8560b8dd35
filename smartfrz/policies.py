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
    reads_veto = False  # whether decide() consults the engine's functional veto itself (else the engine applies it)
    # the cadence the engine asks at: every step, or per epoch and at least per run (0: none of that kind)
    decides_every_step = False
    decisions_per_epoch, decisions_per_run = 1, 0
    window, sample_size = 30, 1024  # the weight windows recorded when the policy reads them
    start = 0  # the first step decide() may freeze at; the engine skips recording and copying only earlier steps need

    def cadence(self, steps_per_epoch: int | None, total_steps: int | None) -> int | None:
        """Steps between decisions: every step, or the policy's per epoch and at least its per run when the
        run's length is known (a 3-epoch fine-tune gets enough looks). None: decide at ``epoch_end()``."""
        if self.decides_every_step:
            return 1
        every = [steps_per_epoch // self.decisions_per_epoch] if steps_per_epoch and self.decisions_per_epoch else []
        if self.decisions_per_run and total_steps:
            every.append(total_steps // self.decisions_per_run)
        return max(1, min(every)) if every else None

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
    window; the longest front prefix whose units looked settled at ``patience`` consecutive decisions
    is frozen. Settled: P(freeze) >= threshold for the unit and every active unit before it and, with
    the functional veto (smartfrz.veto), putting that prefix back to its earlier weights changes at
    most tau of the probe's predictions. Patience is ours: single spikes caused every too-early freeze
    of CNN units (reports/predictor/report.md); the veto too (docs/predictor.md, "decision rule")."""

    name = "smartfrz"
    needs_windows = True
    reads_veto = True

    def __init__(self, predictor=None, threshold: float | None = None, path: str | None = None,
                 patience: int | None = None, decide_from: float | None = None, freeze_per_decision: int | None = None):
        from .predictor import FreezePredictor

        self.predictor = predictor if predictor is not None else FreezePredictor.load(path)
        self.threshold = threshold if threshold is not None else float(self.predictor.threshold)
        self.patience = patience if patience is not None else int(getattr(self.predictor, "patience", 2))
        self.decisions_per_epoch = int(getattr(self.predictor, "decisions_per_epoch", 1))
        self.decisions_per_run = int(getattr(self.predictor, "decisions_per_run", 0))
        self.veto_tau = getattr(self.predictor, "veto_tau", None)  # the engine's default veto, part of the rule
        self.veto_probe_rows = getattr(self.predictor, "veto_probe_rows", None)  # and what it may spend
        self.veto_lookback = getattr(self.predictor, "veto_lookback", "decision")  # and how far back it looks
        self.decide_from = decide_from if decide_from is not None else float(getattr(self.predictor, "decide_from", 0.0))
        self.freeze_per_decision = freeze_per_decision if freeze_per_decision is not None else \
            int(getattr(self.predictor, "freeze_per_decision", 0))
        self.max_frozen_share = float(getattr(self.predictor, "max_frozen_share", 1.0))
        meta = getattr(self.predictor, "metadata", {})  # what it read in training; windows of other shapes shift its inputs
        self.window, self.sample_size = int(meta.get("window", self.window)), int(meta.get("sample_size", self.sample_size))
        self.streak: dict[int, int] = {}

    def bind(self, engine):
        super().bind(engine)
        self.predictor.to(engine.recorder.buffer.device)
        total = engine.config.total_steps
        self.start = math.ceil(self.decide_from * total) if total else 0  # decide_from as a step
        if getattr(self.predictor, "reads_progress", False) and not total:
            raise ValueError("the predictor reads the run's progress: pass total_steps= (the planned optimizer steps)")
        if self.decide_from and not total:
            warnings.warn(f"the rule decides nothing before {self.decide_from:.0%} of the planned run, but total_steps "
                          "is not given: decisions start at the first full window instead", UserWarning, stacklevel=3)

    def decide(self, engine):
        k, limit, rec = engine.num_frozen, engine.max_frozen, engine.recorder
        limit = max(k, min(limit, math.floor(self.max_frozen_share * len(engine.units) + 1e-9)))  # as linear counts
        ready = [u for u in range(k, limit) if rec.ready(u)] if engine.step_count >= self.start else []
        if not ready:
            return k, {}  # and before the start nothing is scored: no decision would read it
        trains = engine.trainable_per_unit
        scores = {u: 1.0 for u in ready if not trains[u]}  # no weight of it trains: nothing to wait for
        if candidates := [u for u in ready if trains[u]]:
            windows = rec.windows(candidates)
            finite = torch.isfinite(windows).flatten(1).all(1)
            progress = (engine.step_count / engine.config.total_steps,) if getattr(self.predictor, "reads_progress", False) else ()
            probs = self.predictor.predict_proba(torch.nan_to_num(windows), *progress).masked_fill(~finite, 0.0)
            if not bool(finite.all()):
                warnings.warn("non-finite weights in a recorded window: no freeze decision is made from them")
            scores.update(zip(candidates, probs.tolist()))
        settled = k  # units k..settled-1 look settled now, each with every active unit before it
        while settled < limit and scores.get(settled, 0.0) >= self.threshold:
            settled += 1
        if engine.veto is not None and settled > k:
            settled = k if self._too_late(engine, k) else engine.veto.allow(engine.model, k, settled, engine.step_count)
        self.streak = {u: self.streak.get(u, 0) + 1 if u < settled else 0 for u in range(k, limit)}
        cap = engine.num_frozen + self.freeze_per_decision if self.freeze_per_decision else limit
        while k < min(limit, cap) and self.streak.get(k, 0) >= self.patience:
            k += 1
        return k, scores

    def _too_late(self, engine, k: int) -> bool:
        """Unit k's streak can't reach patience by total_steps: no freeze can follow, the veto would buy nothing."""
        total, every = engine.config.total_steps, engine.decide_every
        if not total or not every or engine.step_count > total:
            return False
        return (total - engine.step_count) // every < self.patience - self.streak.get(k, 0) - 1

    def state_dict(self):
        return {"streak": {str(u): s for u, s in self.streak.items()}}

    def load_state_dict(self, state):
        self.streak = {int(u): int(s) for u, s in state.get("streak", {}).items()}


class LinearPolicy(Policy):
    """FreezeOut (Brock et al., 2017) / Composer LayerFreezing-style schedule: from ``freeze_start``
    of training, the frozen share of units grows linearly to ``freeze_level`` at the end. Checked at
    every step, as FreezeOut anneals per iteration: each unit freezes at the first step its time comes."""

    name = "linear"
    decides_every_step = True

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
    Fine-tuning"), as its reference code runs it: the run is cut into ``num_intervals`` = 20 equal
    intervals; over each, every active unit's gradient is summed, and at the interval's end each unit's
    L1 gradient norm is compared with the previous interval's. The prefix before the first unit whose
    change ratio reaches the p-th percentile (50) of the active units' ratios is frozen."""

    name = "autofreeze"
    decisions_per_epoch, decisions_per_run = 5, 20  # num_intervals=20 in the authors' run.sh (4 epochs there)

    def cadence(self, steps_per_epoch, total_steps):
        """20 intervals a run; 5 an epoch (its run.sh's 20 over 4 epochs) only when the run's length is unknown."""
        if total_steps:
            return max(1, total_steps // self.decisions_per_run)
        return max(1, steps_per_epoch // self.decisions_per_epoch) if steps_per_epoch else None

    def bind(self, engine):
        super().bind(engine)
        self._params = [[p for p in u.parameters()] for u in engine.units]
        self.sums: dict[int, list[torch.Tensor]] = {}  # unit -> summed gradients over this interval
        self.prev: torch.Tensor | None = None

    def on_step(self, engine):
        for u in range(engine.num_frozen, len(engine.units)):
            grads = [p.grad for p in self._params[u] if p.grad is not None]
            if not grads:
                continue
            acc = self.sums.get(u)
            if acc is None or len(acc) != len(grads):
                self.sums[u] = [g.detach().clone() for g in grads]
            else:
                torch._foreach_add_(acc, grads)

    def _interval_norms(self, engine) -> torch.Tensor:
        zero = torch.zeros((), dtype=torch.float64, device=engine.recorder_device)
        norms = [torch.stack([t.abs().sum(dtype=torch.float64) for t in self.sums[u]]).sum()
                 if u in self.sums and u >= engine.num_frozen else zero for u in range(len(engine.units))]
        self.sums = {}
        return torch.stack(norms).cpu()  # one host sync per interval

    def decide(self, engine):
        k, limit = engine.num_frozen, engine.max_frozen
        cur = self._interval_norms(engine)
        prev, self.prev = self.prev, cur
        if prev is None or k >= limit:
            return k, {}
        ratio = torch.where(cur > 0, (prev - cur).abs() / prev.clamp_min(1e-12), torch.zeros_like(cur)).tolist()
        active = list(range(k, limit))
        cut = float(torch.quantile(torch.tensor([ratio[u] for u in active]), self.engine.config.autofreeze_percentile / 100))
        scores = {u: ratio[u] for u in active}
        first = next((u for u in active if ratio[u] >= cut), limit)
        return max(k, first), scores

    def state_dict(self):
        return {"sums": {str(u): [t.cpu() for t in ts] for u, ts in self.sums.items()},
                "prev": None if self.prev is None else self.prev.cpu()}

    def load_state_dict(self, state):
        dev = self.engine.recorder_device
        self.sums = {int(u): [t.to(dev) for t in ts] for u, ts in (state.get("sums") or {}).items()}
        self.prev = None if state.get("prev") is None else state["prev"].to(torch.float64)


class OraclePolicy(Policy):
    """Hindsight CKA: each unit freezes at the step its representation converged in a reference
    run (``smartfrz.predictor_training.labels``). The best any predictor could do on that run. Checked
    at every step, so each unit freezes at its label's step, not at the next scheduled decision."""

    name = "oracle"
    decides_every_step = True

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
        return SmartFRZPolicy(threshold=config.threshold, path=config.predictor_path, patience=config.patience,
                              decide_from=config.decide_from, freeze_per_decision=config.freeze_per_decision)
    return _REGISTRY[policy]()
