"""Replay decision rules on decision traces (scripts/trace_decisions.py): when each unit would freeze, and
about how much that saves, for every rule of a grid, without training.

A unit freezes once, at `patience` consecutive decisions, it and every active unit before it scored
P(freeze) >= threshold and (with a veto) passed it: putting the prefix through it back to its earlier weights
changed at most tau of the probe's predictions (the engine's rule, smartfrz.policies.SmartFRZPolicy). Savings are estimated as 2/3 of the frozen prefix's forward
FLOP share (its backward) over the remaining steps: a first-order figure along the unfrozen trajectory, for
choosing which rules to train, never a result.

    python scripts/trace_replay.py reports/bench/trace/cpu_*.json
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


def replay(trace: dict, threshold: float, patience: int, per_epoch: int, tau: float | None) -> dict[int, int]:
    """Unit index -> the step it freezes at under the rule."""
    rows = trace["decisions"]
    traced = max(1, round(trace["steps_per_epoch"] / max(1, rows[1]["step"] - rows[0]["step"]))) if len(rows) > 1 else 1
    stride = max(1, traced // per_epoch)
    n_units = len(trace["units"]) - 1  # the head stays
    streak, frozen, out = [0] * n_units, 0, {}
    for j, r in enumerate(rows):
        if (j + 1) % stride:
            continue
        run = True  # a unit's streak: decisions at which it and every active unit before it looked settled and
        for u in range(frozen, n_units):  # (veto) stopped mattering; the engine checks no further than that run
            run = run and r["p"].get(str(u), 0.0) >= threshold and (tau is None or r["share"].get(str(u), 1.0) <= tau)
            streak[u] = streak[u] + 1 if run else 0
        k = frozen
        while k < n_units and streak[k] >= patience:
            k += 1
        for u in range(frozen, k):
            out[u] = r["step"]
        frozen = k
    return out


def saving(trace: dict, steps: dict[int, int]) -> float:
    shares = [u["flop_share"] for u in trace["units"]]
    total, saved = trace["total_steps"], 0.0
    for u, s in steps.items():
        saved += 2 / 3 * shares[u] * (total - s) / total
    return saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--thresholds", nargs="*", type=float, default=[0.2, 0.3, 0.36, 0.5])
    ap.add_argument("--patience", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--per-epoch", nargs="*", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--taus", nargs="*", type=float, default=[0.0, 0.01, 0.02, 0.05])
    ap.add_argument("--show", nargs="*", default=None, help="rules THR,PAT,PER,TAU to print freeze epochs for")
    ap.add_argument("--earliest", nargs="*", default=[],
                    help="TASK=EPOCH: no unit of a trace whose name starts with TASK may freeze before EPOCH (a "
                         "freeze step measured safe there); with it, the grid's rules are ranked by mean saving")
    a = ap.parse_args(argv)
    traces = {Path(p).stem: json.loads(Path(p).read_text()) for p in a.traces}
    if a.earliest:
        floors = {k: float(v) for k, v in (e.split("=") for e in a.earliest)}
        floor = {n: next((e for k, e in floors.items() if n.startswith(k)), 0.0) for n in traces}
        ranked = []
        for thr, pat, per, tau in itertools.product(a.thresholds, a.patience, a.per_epoch, [None, *a.taus]):
            st = {n: replay(t, thr, pat, per, tau) for n, t in traces.items()}
            if all(min(s.values(), default=1e18) / traces[n]["steps_per_epoch"] >= floor[n] for n, s in st.items()):
                mean = sum(saving(traces[n], s) for n, s in st.items()) / len(st)
                ranked.append((mean, thr, pat, per, tau))
        for mean, thr, pat, per, tau in sorted(ranked, reverse=True)[:15]:
            print(f"mean saving~{mean:6.1%}  threshold {thr} patience {pat} per-epoch {per} tau {tau}")
        return
    if a.show:
        for rule in a.show:
            thr, pat, per, tau = rule.split(",")
            tau = None if tau == "none" else float(tau)
            print(f"rule threshold {thr} patience {pat} per-epoch {per} tau {tau}")
            for name, t in traces.items():
                st = replay(t, float(thr), int(pat), int(per), tau)
                spe = t["steps_per_epoch"]
                print(f"  {name:45s} saved~{saving(t, st):6.1%}  freeze epochs "
                      + " ".join(f"{st[u] / spe:.2f}" for u in sorted(st)))
        return
    print("thr  pat per  tau   " + "  ".join(f"{n[:22]:>22s}" for n in traces))
    for thr, pat, per, tau in itertools.product(a.thresholds, a.patience, a.per_epoch, [None, *a.taus]):
        cells = []
        for t in traces.values():
            st = replay(t, thr, pat, per, tau)
            first = min(st.values()) / t["steps_per_epoch"] if st else float("nan")
            cells.append(f"{saving(t, st):5.1%} {len(st):2d}u @{first:5.2f}")
        print(f"{thr:.2f} {pat:3d} {per:3d} {str(tau):5s} " + "  ".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
