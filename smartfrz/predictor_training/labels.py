"""Freeze labels from layer representational similarity (linear CKA, Kornblith et al. 2019).

A unit's output on a fixed probe batch is compared, at each checkpoint of a run, with the same
unit's output at the end of that run. Grams (n x n) are stored instead of activations, so a whole
run's probes fit in memory whatever the layer width.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..units import Unit, call_model


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


def _first_tensor(out: Any) -> torch.Tensor:
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    raise TypeError(f"cannot read a tensor from a unit output of type {type(out).__name__}")


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
            t = _first_tensor(out).float()
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


RULES = ("cka", "remaining")


def remaining_change(cka: torch.Tensor) -> torch.Tensor:
    """(checkpoints, units) share of each unit's representational change still to come:
    (1 - CKA(t, end)) / (1 - CKA(first, end)). Scale-free: a fine-tuned layer that moves little in CKA
    and a layer trained from scratch that moves a lot both start at 1 and end at 0."""
    total = (1 - cka[:1]).clamp_min(1e-12)
    return ((1 - cka) / total).clamp(0, 1)


def freeze_labels(cka: torch.Tensor, tau: float, rule: str = "cka") -> torch.Tensor:
    """(checkpoints, units) CKA -> bool labels, true from t onwards and so for every earlier unit.

    ``rule="cka"``: CKA(t, end) >= tau. ``rule="remaining"``: ``remaining_change`` <= tau (tau is then
    the share of the change still allowed to come, e.g. 0.1)."""
    if rule not in RULES:
        raise ValueError(f"unknown label rule {rule!r}; allowed: {', '.join(RULES)}")
    ok = cka >= tau if rule == "cka" else remaining_change(cka) <= tau
    settled = torch.flip(torch.cummin(torch.flip(ok.int(), [0]), 0).values, [0]).bool()  # true from t to the end
    return torch.cummin(settled.int(), 1).values.bool()  # front-to-back: every earlier unit settled too


def freeze_steps(cka: torch.Tensor, steps: Sequence[int], unit_names: Sequence[str], tau: float,
                 rule: str = "cka") -> dict[str, int]:
    """Hindsight freeze step per unit (the oracle's schedule); units that never settle are omitted."""
    labels = freeze_labels(cka, tau, rule)
    out = {}
    for u, name in enumerate(unit_names):
        hits = torch.nonzero(labels[:, u]).flatten()
        if len(hits) and u < labels.shape[1]:
            out[name] = int(steps[int(hits[0])])
    return out
