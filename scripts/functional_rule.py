"""Does the functional signal alone say when a unit can stop? A rule on the recorded veto shares, replayed
against the runs' measured frontiers.

Each recorded run keeps, per checkpoint from a quarter of the run on, the share of a fixed probe's predictions
that change when units 0..k are put back to their weights a lookback ago (`veto_share`). This rule freezes units
0..k at the first checkpoint where that share has been <= tau for ``patience`` checkpoints in a row (front to
back), with no predictor at all. It is replayed on the runs listed in a `scripts/label_frontier_runs.py` output
and scored against each run's frontier (its label moved by the run's shift): the first-order saving as a
share of the frontier's, and the units frozen before their frontier step (early).

    python scripts/functional_rule.py --runs data/freeze_runs --shifts reports/predictor/candidates/frontier_52/label_shifts.json

No training: it reads what the runs recorded. The grid is small (tau, patience, lookback) and scored on the same
runs, so the best cell is an optimistic read; the table shows every cell.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_check_runs import label_steps, saved_share, shifted  # noqa: E402

from smartfrz.predictor_training.freeze_dataset import load_run  # noqa: E402

LOOKBACKS = {"shortest": 0, "longest": -1}  # of the run's recorded lookbacks: a quarter of an epoch or so, and an epoch


def rule_steps(share: np.ndarray, steps: list[int], tau: float, patience: int) -> dict[int, int]:
    """Unit index -> freeze step: units 0..k freeze once the prefix's share stayed <= tau ``patience`` checkpoints
    in a row (NaN: not recorded there, never passes); never before the unit in front of it."""
    out, earliest = {}, 0
    for k in range(share.shape[1]):
        ok = np.nan_to_num(share[:, k], nan=1.0) <= tau
        run = np.convolve(ok.astype(int), np.ones(patience, int), "valid") == patience
        hits = [i + patience - 1 for i in np.flatnonzero(run) if i + patience - 1 >= earliest]
        if not hits:
            break
        earliest = hits[0]
        out[k] = steps[earliest]
    return out


def score(runs: list[dict], shifts: dict, tau: float, patience: int, lookback: int) -> dict:
    saved = oracle = 0.0
    early = units = 0
    for run in runs:
        meta, total = run["meta"], run["meta"]["total_steps"]
        frontier = shifted(label_steps(run, shifts["label"]), shifts["runs"][meta["name"]]["shift"], total)
        share = run["veto_share"][:, LOOKBACKS[lookback], :-1, 0].float().numpy()
        got = rule_steps(share, run["steps"].tolist(), tau, patience)
        saved += saved_share(got, meta["flop_share"], total)
        oracle += saved_share(frontier, meta["flop_share"], total)
        early += sum(1 for u, s in got.items() if u not in frontier or s < frontier[u])
        units += len(meta["units"]) - 1
    return {"share_of_frontier": saved / max(oracle, 1e-12), "early": early, "units": units}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--shifts", type=Path, required=True, help="scripts/label_frontier_runs.py's output")
    ap.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.04, 0.07, 0.1])
    ap.add_argument("--patiences", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    shifts = json.loads(a.shifts.read_text())
    runs = [load_run(a.runs / f"{n}.safetensors") for n in sorted(shifts["runs"])]
    groups = {"CIFAR-10": [r for r in runs if r["meta"]["spec"]["task"] != "digits"],
              "digits": [r for r in runs if r["meta"]["spec"]["task"] == "digits"]}
    rows = []
    print("| runs | lookback | tau | patience | share of the frontier's saving | early units |")
    print("|---|---|---|---|---|---|")
    for name, group in groups.items():
        for lookback in LOOKBACKS:
            for tau in a.taus:
                for patience in a.patiences:
                    s = score(group, shifts, tau, patience, lookback)
                    rows.append({"runs": name, "n": len(group), "lookback": lookback, "tau": tau, "patience": patience, **s})
                    print(f"| {name} ({len(group)}) | {lookback} | {tau:g} | {patience} | {s['share_of_frontier']:.0%} | "
                          f"{s['early']}/{s['units']} |")
    if a.out:
        a.out.write_text(json.dumps({"shifts": str(a.shifts), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
