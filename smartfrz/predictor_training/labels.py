"""Freeze labels in hindsight, from a run trained without freezing.

Two measurements per (checkpoint, unit):

- ``rewind`` (the default label): put units 0..k of the *final* model back to their weights at
  checkpoint t and count the share of a fixed probe's predictions that change. If the network that
  training produced does not care whether the prefix stopped at t, freezing it at t costs nothing the
  rest of training must make up for (it is conservative: after a real freeze the later units adapt to
  the frozen prefix). Re-initialisation robustness in the sense of Zhang, Bengio & Singer (2019).
- ``cka`` / ``remaining``: linear CKA (Kornblith et al. 2019) of a unit's output on the probe against
  the end of the run. Grams (n x n) are stored instead of activations. Kept for comparison: CKA says
  little in fine-tuning, where a layer barely moves by CKA yet its small moves carry the accuracy.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..units import Unit, call_model, first_tensor
from ..veto import changed_share, first_rows, load_unit_state, logits, token_mask, unit_state


def centered_gram(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) features -> centred linear Gram matrix (n, n), in float64 for a stable CKA."""
    x = x.reshape(x.shape[0], -1).double()
    x = x - x.mean(0, keepdim=True)
    return x @ x.T


def cka_from_grams(k: torch.Tensor, l: torch.Tensor) -> float:
    """Linear CKA of two centred Grams: <K, L> / (|K| |L|)."""
    hsic = (k * l).sum()
    denom = k.norm() * l.norm()
    return float(hsic / denom) if denom > 0 else 0.0


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    return cka_from_grams(centered_gram(x), centered_gram(y))


@torch.no_grad()
def probe_grams(model: torch.nn.Module, units: Sequence[Unit], probe: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(units, n, n) centred Grams of each unit's output on ``probe``, computed in eval mode.

    ``mask`` (n, T) zeroes padded token positions of sequence outputs before the Gram.
    """
    grams: dict[int, torch.Tensor] = {}
    hooks = []
    for i, u in enumerate(units):
        last = u.members[-1][1]  # a unit's output is its last member's output

        def hook(mod, args, out, i=i):
            t = first_tensor(out).float()
            if mask is not None and t.dim() == 3 and t.shape[1] == mask.shape[1]:
                t = t * mask[..., None].to(t)
            grams[i] = centered_gram(t)
        hooks.append(last.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        call_model(model, probe)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return torch.stack([grams[i] for i in range(len(units))])


def cka_curves(grams: torch.Tensor) -> torch.Tensor:
    """(checkpoints, units, n, n) Grams -> (checkpoints, units) CKA against the last checkpoint."""
    final = grams[-1]
    return torch.tensor([[cka_from_grams(g[u], final[u]) for u in range(g.shape[0])] for g in grams])


RULES = ("rewind", "cka", "remaining")
DEFAULT_RULE, DEFAULT_TAU = "rewind", 0.05  # at most 5% of the probe's predictions change (reports/predictor/report.md)
DEFAULT_LABEL = f"{DEFAULT_RULE}:{DEFAULT_TAU:g}"
REWIND_CAP = 0.2  # rewind harms above this are not resolved (the scan stops there); runs recorded before
# 2026-12-05 (night) stopped at 0.05 and say so in their `rewind_cap` (absent: 0.05)


class UnitSnapshots:
    """Every unit's weights at each checkpoint of a run, for ``rewind_harm`` at its end (RAM: one model
    copy per checkpoint)."""

    def __init__(self, units: Sequence[Unit]):
        self.units, self.states, self.steps = list(units), [], []

    def take(self, step: int) -> None:
        self.states.append([unit_state(u) for u in self.units])
        self.steps.append(step)


def _predictions(model: torch.nn.Module, probe) -> torch.Tensor:
    """The probe's predictions, one row each: per-token outputs keep only their unpadded tokens (``token_mask``),
    so batches cut to different lengths concatenate and padding counts for nothing."""
    out = []
    for b in probe if isinstance(probe, list) else [probe]:
        y = logits(model, b)
        kept = token_mask(b, y)
        out.append(y[kept] if kept is not None else y.reshape(-1, y.shape[-1]) if y.dim() > 2 else y)
    return torch.cat(out)


HARM_PROBE = 512  # examples whose predictions the rewind labels compare (1% = 5 examples)


def harm_probe(eval_loader, device, n: int = HARM_PROBE) -> list:
    """The first ``n`` evaluation examples, as the model is called (labels dropped). Padded text is
    re-batched by length and cut to each batch's longest example: the same predictions, less padding
    (padding is masked, so what fills it does not matter)."""
    from ..lab.train import example_input, to_device
    out, seen = [], 0
    for batch in eval_loader:
        x = example_input(to_device(batch, device), n - seen)
        out.append(x)
        seen += (next(iter(x.values())) if isinstance(x, dict) else x).shape[0]
        if seen >= n:
            break
    if not out or not isinstance(out[0], dict) or "attention_mask" not in out[0]:
        return out
    rows = [{k: v[i] for k, v in b.items()} for b in out for i in range(len(b["attention_mask"]))]
    rows.sort(key=lambda r: int(r["attention_mask"].sum()))
    batches = []
    for i in range(0, len(rows), 64):
        chunk = rows[i:i + 64]
        longest = max(int(r["attention_mask"].sum()) for r in chunk)
        fit = lambda v: torch.nn.functional.pad(v[:longest], (0, max(0, longest - len(v)))) if v.dim() else v
        batches.append({k: torch.stack([fit(r[k]) for r in chunk]) for k in chunk[0]})  # masked positions: 0
    return batches


@torch.no_grad()
def rewind_harm(model: torch.nn.Module, snapshots: UnitSnapshots, probe, cap: float = REWIND_CAP) -> torch.Tensor:
    """(checkpoints, units) share of the final model's probe predictions that change when units 0..k are
    put back to checkpoint t. ``probe``: one batch or a list of batches, as the model is called.

    Scans from the end backwards and stops where no label at threshold <= ``cap`` can be true any more:
    a unit is labelled at t only if its prefix stays under the threshold at every later checkpoint and
    every earlier unit's does too. Unresolved entries are NaN (read: above ``cap``)."""
    units, states = snapshots.units, snapshots.states
    final = [unit_state(u) for u in units]
    harm = torch.full((len(states), len(units)), float("nan"))
    was = model.training
    model.eval()
    try:
        ref = _predictions(model, probe)
        reach = len(units)
        for t in range(len(states) - 1, -1, -1):
            ok = 0
            for k in range(reach):
                load_unit_state(units[k], states[t][k])
                harm[t, k] = changed_share(ref, _predictions(model, probe))
                if harm[t, k] > cap:
                    break
                ok = k + 1
            for k in range(reach):
                load_unit_state(units[k], final[k])
            reach = ok
            if reach == 0:
                break
    finally:
        for u, s in zip(units, final):
            load_unit_state(u, s)
        model.train(was)
    return harm


VETO_ROWS = (32,)  # probe rows the recorded veto shares are read on: the shipped rule's (each row costs forwards)
VETO_FROM = 0.25  # share of a run before which no veto share is recorded (no rule decides that early)
VETO_CAP = 0.5  # a prefix scan stops above this share (larger prefixes: NaN, read as above it)


@torch.no_grad()
def prefix_shares(model: torch.nn.Module, units: Sequence[Unit], order: Sequence[int], old: dict, probe: Any,
                  sizes: Sequence[int | None] = VETO_ROWS, cap: float | None = None) -> dict[int, dict]:
    """Each prefix's changed share on the probe's first n rows (n in ``sizes``; None: all of them) when units
    ``order[0]..i`` are put back to ``old`` together: what the engine's veto reads. The model is left as it was;
    with ``cap``, the scan stops after the first prefix whose share on every size exceeds it."""
    current = {i: unit_state(units[i]) for i in order}
    ref, out = logits(model, probe), {}
    kept = token_mask(probe, ref)  # changed_share reads it for classes only
    try:
        for i in order:
            load_unit_state(units[i], old[i])
            new = logits(model, probe)
            out[i] = {n: changed_share(ref[:n], new[:n], None if kept is None else kept[:n]) for n in sizes}
            if cap is not None and min(out[i].values()) > cap:
                break
    finally:
        for i, s in current.items():
            load_unit_state(units[i], s)
    return out


def decision_cadence(steps_per_epoch: int, total_steps: int, per_epoch: int, per_run: int = 0) -> int:
    """Steps between the engine's decisions (``Policy.cadence``) at ``per_epoch`` an epoch and at least ``per_run``
    a run (0: no floor)."""
    return max(1, min([steps_per_epoch // per_epoch] + ([total_steps // per_run] if per_run else [])))


def veto_lookbacks(steps_per_epoch: int, total_steps: int, per_epoch=(1, 2, 4), per_run=(0, 16)) -> list[int]:
    """The distances (steps) at which rules of these cadences read the veto: each compares with its previous
    decision, ``min(steps_per_epoch // per_epoch, total_steps // per_run)`` steps back (the engine's cadence)."""
    return sorted({decision_cadence(steps_per_epoch, total_steps, e, r) for e in per_epoch for r in per_run})


class LookbackShares:
    """The veto's shares at each checkpoint, as a rule of each cadence would read them: every prefix put back to
    its weights ``L`` steps earlier, for each L of ``veto_lookbacks``, on the probe's first ``VETO_ROWS`` rows.
    Copies are taken only at the steps some later checkpoint will read, and dropped once read."""

    def __init__(self, units: Sequence[Unit], probe: Any, checkpoints: Sequence[int], lookbacks: Sequence[int],
                 total_steps: int):
        self.units, self.probe, self.lookbacks = list(units), first_rows(probe, max(VETO_ROWS)), list(lookbacks)
        self.first = math.ceil(VETO_FROM * total_steps)
        self.wanted: dict[int, int] = {}  # step -> how many later reads its copy serves
        for c in checkpoints:
            for L in self.lookbacks:
                if c >= self.first and c - L >= 0:
                    self.wanted[c - L] = self.wanted.get(c - L, 0) + 1
        self.copies: dict[int, list] = {}

    def take(self, step: int) -> None:
        """Called after every optimizer step (and with 0 before the first)."""
        if self.wanted.get(step):
            self.copies[step] = [unit_state(u) for u in self.units]

    def at_checkpoint(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        """(lookbacks, units, rows) shares at this checkpoint; NaN where not recorded (too early, above the cap)."""
        U = len(self.units)
        out = torch.full((len(self.lookbacks), U, len(VETO_ROWS)), float("nan"))
        if step < self.first:
            return out
        was = model.training
        model.eval()
        try:
            for j, L in enumerate(self.lookbacks):
                old = self.copies.get(step - L)
                if old is None:
                    continue
                sh = prefix_shares(model, self.units, range(U), dict(enumerate(old)), self.probe, VETO_ROWS, VETO_CAP)
                for i, v in sh.items():
                    out[j, i] = torch.tensor([v[n] for n in VETO_ROWS])
                self.wanted[step - L] -= 1
        finally:
            model.train(was)
        last = step - max(self.lookbacks)  # no later checkpoint reads a copy this old (or one read for the last time)
        self.copies = {s: c for s, c in self.copies.items() if s > last and self.wanted[s] > 0}
        return out


def remaining_change(cka: torch.Tensor) -> torch.Tensor:
    """(checkpoints, units) share of each unit's representational change still to come:
    (1 - CKA(t, end)) / (1 - CKA(first, end)). Scale-free: a fine-tuned layer that moves little in CKA
    and a layer trained from scratch that moves a lot both start at 1 and end at 0."""
    total = (1 - cka[:1]).clamp_min(1e-12)
    return ((1 - cka) / total).clamp(0, 1)


def parse_label(label: str) -> tuple[str, float]:
    """"RULE:TAU" -> (rule, tau), e.g. "rewind:0.05"."""
    rule, _, tau = label.partition(":")
    try:
        value = float(tau)
    except ValueError:
        value = None
    if rule not in RULES or value is None:
        raise ValueError(f"a label is RULE:TAU with RULE one of {', '.join(RULES)} and TAU a number; got {label!r}")
    return rule, value


def unit_settled(values: torch.Tensor, tau: float, rule: str = DEFAULT_RULE) -> torch.Tensor:
    """Each unit's own label, without the front-to-back condition: under the threshold from t to the end.

    ``rule="rewind"``: ``rewind_harm`` <= tau (NaN counts as above). ``rule="cka"``: CKA(t, end) >= tau.
    ``rule="remaining"``: ``remaining_change`` of the CKA curves <= tau (the share of the change still
    allowed to come, e.g. 0.1)."""
    if rule not in RULES:
        raise ValueError(f"unknown label rule {rule!r}; allowed: {', '.join(RULES)}")
    if rule == "rewind":
        ok = values <= tau  # NaN compares False
    else:
        ok = values >= tau if rule == "cka" else remaining_change(values) <= tau
    return torch.flip(torch.cummin(torch.flip(ok.int(), [0]), 0).values, [0]).bool()


def front_to_back(settled: torch.Tensor) -> torch.Tensor:
    """(checkpoints, units) own labels -> labels: a unit is freezable only with every earlier unit."""
    return torch.cummin(settled.int(), 1).values.bool()


def freeze_labels(values: torch.Tensor, tau: float, rule: str = DEFAULT_RULE) -> torch.Tensor:
    """(checkpoints, units) measurements -> bool labels: ``unit_settled``, and every earlier unit too."""
    return front_to_back(unit_settled(values, tau, rule))


KINDS = ("scratch", "finetune")  # the kinds of run a label may differ by (freeze_dataset.RunSpec.regime)


def labels_by_kind(label: str) -> dict[str, str]:
    """A label per kind of run, "scratch=LABEL,finetune=LABEL", as {kind: label}; any other label is every kind's.
    (A fine-tuned layer's CKA stays near 1 from step 0, so the two kinds may need different measurements.)"""
    if "=" not in label:
        return dict.fromkeys(KINDS, label)
    pairs = [p.split("=", 1) for p in label.split(",")]
    parts = dict(p for p in pairs if len(p) == 2)
    if len(parts) != len(pairs) or set(parts) - set(KINDS):
        raise ValueError(f"label {label!r}: a label is RULE:TAU (RULE one of {', '.join(RULES)}), terms joined by +, or "
                         f"one per kind of run, KIND=LABEL joined by commas with KIND in {', '.join(KINDS)}")
    return parts


def label_for(label: str, kind: str) -> str:
    """The label a run of this kind is read with (``labels_by_kind``)."""
    parts = labels_by_kind(label)
    if kind not in parts:
        raise ValueError(f"label {label!r} has no part for runs of kind {kind!r}")
    return parts[kind]


def label_terms(label: str) -> list[tuple[str, float]]:
    """"RULE:TAU", or several joined by "+" that must all hold (e.g. "cka:0.995+rewind:0.1": the
    representation has settled *and* the final model no longer leans on the prefix's later changes)."""
    return [parse_label(term) for term in label.split("+")]


def check_readable(label: str, rewind_cap: float) -> None:
    """A rewind term above the cap the run was recorded with cannot be read: harms above it are not resolved."""
    for rule, tau in (t for part in labels_by_kind(label).values() for t in label_terms(part)):
        if rule == "rewind" and tau > rewind_cap + 1e-12:
            raise ValueError(f"label {label!r}: rewind:{tau:g} is above the cap these harms were recorded with "
                             f"({rewind_cap:g}); record the runs again (labels.REWIND_CAP is {REWIND_CAP:g})")


def settled_under(label: str, values_of) -> torch.Tensor:
    """Each unit's own label (``unit_settled``) under every term of ``label``; ``values_of(rule)`` gives that
    rule's (checkpoints, units) measurements."""
    out = None
    for rule, tau in label_terms(label):
        ok = unit_settled(values_of(rule), tau, rule)
        out = ok if out is None else out & ok
    return out


def labels_under(label: str, values_of) -> torch.Tensor:
    """``settled_under``, and every earlier unit too (the front-to-back labels)."""
    return front_to_back(settled_under(label, values_of))


def describe_label(label: str) -> str:
    """The label in words, for reports."""
    if "=" in label:
        return "; ".join(f"for runs {'from scratch' if k == 'scratch' else 'fine-tuned'}, "
                         + describe_label(label_for(label, k)) for k in KINDS if f"{k}=" in label)
    words = {"rewind": "putting units 0..k of the run's final model back to their weights at t changes at most "
                       "{p:g}% of the predictions on a fixed probe of held-out examples",
             "cka": "the unit's output on the probe has linear CKA >= {tau:g} with its output at the end",
             "remaining": "at most {p:g}% of the unit's representational change (1 - CKA against the end) is still to come"}
    parts = [words[rule].format(p=100 * tau, tau=tau) for rule, tau in label_terms(label)]
    return ("; and ".join(parts) + ", at t and at every later checkpoint (and every earlier unit is freezable too)")


def shift_settled(settled: torch.Tensor, steps: Sequence[int], total: int, shift: float) -> torch.Tensor:
    """Own labels with each unit's settling step moved earlier by ``shift`` of the run (later when negative; never
    before step 1, and past the run's end: never settled). A run's measured frontier along its label
    (``scripts/label_frontier_runs.py``) is such a shift."""
    at = torch.as_tensor(list(steps))
    out = torch.zeros_like(settled)
    for u in range(settled.shape[1]):
        hits = torch.nonzero(settled[:, u]).flatten()
        if len(hits) and (step := max(1, int(at[hits[0]]) - round(shift * total))) < total:
            out[:, u] = at >= step
    return out


def first_steps(labels: torch.Tensor, steps: Sequence[int], unit_names: Sequence[str]) -> dict[str, int]:
    """Hindsight freeze step per unit from (checkpoints, units) labels; units never labelled are omitted."""
    out = {}
    for u, name in enumerate(unit_names):
        hits = torch.nonzero(labels[:, u]).flatten()
        if len(hits) and u < labels.shape[1]:
            out[name] = int(steps[int(hits[0])])
    return out


def freeze_steps(values: torch.Tensor, steps: Sequence[int], unit_names: Sequence[str], tau: float,
                 rule: str = DEFAULT_RULE) -> dict[str, int]:
    """Hindsight freeze step per unit (the oracle's schedule); units that never settle are omitted."""
    return first_steps(freeze_labels(values, tau, rule), steps, unit_names)
