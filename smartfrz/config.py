"""One dataclass with every knob, so a run is described by a single serialisable object."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

POLICIES = ("smartfrz", "none", "linear", "autofreeze", "oracle")


@dataclass
class SmartFRZConfig:
    # layer tailoring: a fixed random sample of each unit's weights, over the last `window` records.
    # None: the windows the predictor was trained on (its file says; the shipped one: 20 snapshots of 512 weights)
    window: int | None = None
    sample_size: int | None = None
    record_every: int | None = None  # None: spread the window over one epoch (steps_per_epoch // window), else 10
    # decisions
    decide_every: int | None = None  # None: the policy's cadence per epoch (smartfrz: the predictor's; others: 1)
    steps_per_epoch: int | None = None
    threshold: float | None = None  # P(freeze) needed; None: the one chosen with the predictor (stored in its file)
    patience: int | None = None  # consecutive decisions a unit must score >= threshold; None: the predictor's
    min_active_units: int = 1  # units (besides the head) that are never frozen
    # functional veto (smartfrz.veto): a freeze goes ahead only if putting the new prefix back to its earlier weights
    # changes at most this share of the predictions on a probe batch. None: the predictor's rule (its file says;
    # other policies: off); 1.0 vetoes nothing and turns it off
    veto_tau: float | None = None
    # the veto reads at most this many rows of its probe: each decision runs it a few times, so this is its cost.
    # None: the predictor's rule (its file says), else the whole probe
    veto_probe_rows: int | None = None
    # how far back the weights the veto puts back are: "decision" (the rule's previous one) or "epoch" (one
    # window's span: steps_per_epoch, else window * record_every). None: the predictor's rule
    veto_lookback: str | None = None
    # no freeze is decided before this share of the planned run (total_steps; unknown: from the first full window):
    # no accuracy-safe freeze came earlier on the tasks the rule was chosen on. None: the predictor's rule
    decide_from: float | None = None
    # most units the smartfrz policy newly freezes at one decision (the rest of a settled prefix waits for the next
    # ones): a predictor that scores every unit alike would otherwise freeze the whole network at once.
    # 0: no limit. None: the predictor's rule (its file says; 0 there: no limit)
    freeze_per_decision: int | None = None
    predictor_path: str | None = None  # None: the shipped predictor
    units: Sequence[str] | None = None  # explicit unit names; None: structural discovery
    seed: int = 0
    # linear (FreezeOut-style): unit i freezes at freeze_start + (1 - freeze_start) * i / n of training
    total_steps: int | None = None
    freeze_start: float = 0.5
    freeze_level: float = 1.0  # fraction of units the schedule eventually freezes
    # autofreeze (Liu et al. 2021)
    autofreeze_percentile: float = 50.0
    # oracle: per-unit freeze steps from a CKA-labelled reference run
    oracle_freeze_steps: dict[str, int] | None = None

    def __post_init__(self):
        for name in ("window", "sample_size", "patience", "record_every", "decide_every", "steps_per_epoch", "total_steps",
                     "veto_probe_rows", "freeze_per_decision"):
            v, least = getattr(self, name), 0 if name == "freeze_per_decision" else 1
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise ValueError(f"{name} must be " + ("a positive integer" if least else "an integer >= 0 (0: no limit)")
                                 + f" or None; got {v!r}")
        if self.window is not None and self.window < 2:
            raise ValueError(f"window must be at least 2 snapshots; got {self.window}")
        if self.veto_tau is not None and not 0.0 < self.veto_tau <= 1.0:
            raise ValueError(f"veto_tau must lie in (0, 1] (1.0: off), or be None; got {self.veto_tau}")
        if self.veto_lookback not in (None, "decision", "epoch"):
            raise ValueError(f"veto_lookback must be 'decision', 'epoch' or None; got {self.veto_lookback!r}")
        if self.decide_from is not None and not 0.0 <= self.decide_from < 1.0:
            raise ValueError(f"decide_from must lie in [0, 1) (a share of total_steps), or be None; got {self.decide_from}")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1; got {self.threshold}")
        if isinstance(self.min_active_units, bool) or not isinstance(self.min_active_units, int) or self.min_active_units < 0:
            raise ValueError(f"min_active_units must be an integer >= 0; got {self.min_active_units!r}")
        if not 0.0 <= self.freeze_start <= 1.0 or not 0.0 <= self.freeze_level <= 1.0:
            raise ValueError(f"freeze_start and freeze_level must lie in [0, 1]; got {self.freeze_start}, {self.freeze_level}")
        if not 0.0 < self.autofreeze_percentile <= 100.0:
            raise ValueError(f"autofreeze_percentile must lie in (0, 100]; got {self.autofreeze_percentile}")
        if self.units is not None:
            self.units = list(self.units)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "SmartFRZConfig":
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise TypeError(f"unknown SmartFRZ option(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so checkpoints load with ``torch.load(weights_only=True)``."""
        d = asdict(self)
        if d["predictor_path"] is not None:
            d["predictor_path"] = str(d["predictor_path"])
        return d
