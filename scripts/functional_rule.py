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
runs, so the best cell is an optimistic read; the table shows every cell. ``--signals DIR`` reads the finer
signals of `scripts/functional_signal_runs.py` instead (``--measures share tv``: the whole probe's changed share,
its outputs' total-variation distance), on the runs that have them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_check_runs import label_steps, shifted  # noqa: E402
from smartfrz.predictor_training.training import saved_share  # noqa: E402

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


def signal(run: dict, lookback: str, measure: str) -> np.ndarray:
    """(checkpoints, units but the last) of one measure at one lookback: the recorded 32-row share, or a finer one."""
    if measure == "recorded":
        return run["veto_share"][:, LOOKBACKS[lookback], :-1, 0].float().numpy()
    if measure == "remaining":  # no signal: the share of the run still to go, the same for every unit (a baseline)
        left = 1 - run["steps"].float().numpy() / run["meta"]["total_steps"]
        return np.repeat(left[:, None], len(run["meta"]["units"]) - 1, 1)
    sig = run["signals"]
    base, _, rel = measure.partition("/")  # "tv/all": the prefix's change as a share of the whole model's
    values = sig["signal"][:, LOOKBACKS[lookback], :, sig["measures"].index(base)].float().numpy()
    return values[:, :-1] / values[:, -1:] if rel == "all" else values[:, :-1]


def score(runs: list[dict], shifts: dict, tau: float, patience: int, lookback: str, measure: str = "recorded") -> dict:
    saved = oracle = 0.0
    early = units = 0
    for run in runs:
        meta, total = run["meta"], run["meta"]["total_steps"]
        frontier = shifted(label_steps(run, shifts["label"]), shifts["runs"][meta["name"]]["shift"], total)
        got = rule_steps(signal(run, lookback, measure), run["steps"].tolist(), tau, patience)
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
    ap.add_argument("--signals", type=Path, default=None, help="scripts/functional_signal_runs.py's folder")
    ap.add_argument("--measures", nargs="+", default=["recorded"],
                    help="recorded (the runs' 32-row share), remaining (no signal: the share of the run left, a "
                         "baseline) or, with --signals, share32, share, tv, tv32 (NAME/all: as a share of the whole model's)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if any(m not in ("recorded", "remaining") for m in a.measures) and a.signals is None:
        ap.error(f"--measures {a.measures} need --signals (only 'recorded' is in the runs themselves)")
    shifts = json.loads(a.shifts.read_text())
    names = sorted(n for n in shifts["runs"] if a.signals is None or (a.signals / f"{n}.safetensors").exists())
    runs = [load_run(a.runs / f"{n}.safetensors") for n in names]
    if a.signals is not None:
        from functional_signal_runs import load_signal

        for run in runs:
            run["signals"] = load_signal(a.signals / f"{run['meta']['name']}.safetensors")
    groups = {"CIFAR-10": [r for r in runs if r["meta"]["spec"]["task"] == "cifar10"],
              "ResNet-20": [r for r in runs if r["meta"]["spec"]["arch"] == "resnet20"],
              "digits": [r for r in runs if r["meta"]["spec"]["task"] == "digits"]}
    rows = []
    print("| runs | measure | lookback | tau | patience | share of the frontier's saving | early units |")
    print("|---|---|---|---|---|---|---|")
    for name, group in groups.items():
        for measure in a.measures if group else []:
            for lookback in LOOKBACKS:
                for tau in a.taus:
                    for patience in a.patiences:
                        s = score(group, shifts, tau, patience, lookback, measure)
                        rows.append({"runs": name, "n": len(group), "measure": measure, "lookback": lookback, "tau": tau,
                                     "patience": patience, **s})
                        print(f"| {name} ({len(group)}) | {measure} | {lookback} | {tau:g} | {patience} | "
                              f"{s['share_of_frontier']:.0%} | {s['early']}/{s['units']} |")
    if a.out:
        a.out.write_text(json.dumps({"shifts": str(a.shifts), "signals": str(a.signals) if a.signals else None,
                                     "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
