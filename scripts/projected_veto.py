"""Would the functional veto time freezes better if it projected its window to the end of the run?

The rewind label asks how many of the *final* model's predictions change when a prefix is put back to its
weights at step t: the prefix's whole future contribution. The engine's veto counts the predictions its last
window changed and compares that with a fixed tau (0.1), whatever is left of the run. A projected veto
multiplies the window's share by the windows still to come, weighted by learning rate (the schedule's future
is unknown to the engine, so it assumes the current rate holds: an over-estimate under any decaying
schedule), and compares it with the label's own tau.

The shipped predictor and rule are replayed on every recorded run (`data/freeze_runs`) with each veto, against
each run's label (`--label`, shifted to its measured frontier with `--shifts`): the first-order saving as a
share of the label's, and the units frozen before their label (early). The predictor saw most of these runs,
so the saving is optimistic alike for every veto; the comparison between vetoes is the point.

    python scripts/projected_veto.py --runs data/freeze_runs --shifts data/freeze_runs/label_shifts.json
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from smartfrz.predictor import FreezePredictor
from smartfrz.predictor_training import training as T
from smartfrz.predictor_training.freeze_dataset import load_runs


def lr_trace(spec: dict, total: int) -> np.ndarray:
    """The run's learning rate at each step 0..total, from the optimizer and schedule that trained it."""
    from smartfrz.predictor_training.freeze_dataset import RunSpec, _optimizer

    known = {f: spec[f] for f in RunSpec.__dataclass_fields__ if f in spec}
    opt, sched = _optimizer(RunSpec(**known), [torch.nn.Parameter(torch.zeros(1))], total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return np.asarray(out + out[-1:])


def projection(run: dict, lookback: int, mode: str) -> np.ndarray:
    """Per checkpoint: how many times the last ``lookback`` steps' movement the rest of the run holds."""
    meta, steps = run["meta"], run["steps"].numpy().astype(float)
    total = meta["total_steps"]
    left = np.clip(total - steps, 0, None)
    if mode == "steps":
        return left / lookback
    lr = lr_trace(meta["spec"], total)
    cum = np.concatenate([[0.0], np.cumsum(lr)])
    s = steps.astype(int)
    window = cum[s] - cum[np.clip(s - lookback, 0, None)]
    now = lr[np.clip(s, 0, total)]
    return np.where(window > 0, now * left / np.maximum(window, 1e-12), 0.0)


def replay_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a replay of a predictor's rule on the recorded runs (this script, veto_gate.py)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("data/freeze_runs"))
    ap.add_argument("--shifts", type=Path, default=None, help="scripts/label_frontier_runs.py's output")
    ap.add_argument("--label", default="scratch=rewind:0.05,finetune=rewind:0.02")
    ap.add_argument("--predictor", default=None, help="weights (default: the shipped ones)")
    ap.add_argument("--taus", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--out", type=Path, default=None)
    return ap


def replay_inputs(a) -> tuple[dict, list, dict, np.ndarray]:
    """(the predictor file's rule, the recorded runs with their labels shifted, their samples, P(freeze) of each)."""
    pred = FreezePredictor.load(a.predictor)
    runs = load_runs(a.runs)
    if a.shifts is not None:
        T.attach_label_shifts(runs, a.shifts, a.label)
    d = T.samples(runs, a.label)
    with torch.no_grad():
        return T.engine_rule(pred), runs, d, torch.sigmoid(pred(d["x"])).numpy()


def main(argv=None) -> None:
    a = replay_parser(__doc__).parse_args(argv)
    rule, runs, d, p = replay_inputs(a)
    per_epoch, per_run = rule["decisions_per_epoch"], rule["decisions_per_run"]
    kinds = {"from scratch": lambda m: m["spec"]["regime"] == "scratch",
             "fine-tunes": lambda m: m["spec"]["regime"] == "finetune", "all": lambda m: True}
    vetoes = [(f"the window's share <= {tau:g}", None, tau) for tau in sorted({rule["veto_tau"], *a.taus})] + \
        [(f"projected ({mode}) <= {tau:g}", mode, tau) for mode in ("steps", "lr") for tau in a.taus]
    rows = []
    for name, mode, tau in vetoes:
        per_run_rows = []
        for r, run in enumerate(runs):
            meta = run["meta"]
            P, Y, steps = T._grid(d, r, p)
            shares, _ = T.recorded_veto(run, meta, per_epoch, per_run, rule["veto_tau"], rule["veto_probe_rows"],
                                        rule["veto_lookback"])
            if mode is not None:
                L = T.cadence(meta, per_epoch, per_run)
                shares = shares * projection(run, L, mode)[:, None]
            res = T.replay(P, Y, steps, meta, rule["threshold"], rule["patience"], per_epoch, per_run,
                           start=rule["decide_from"], veto=(shares, tau), per_decision=rule["freeze_per_decision"])
            per_run_rows.append({"run": meta["name"], "regime": meta["spec"]["regime"], **res})
        for kind, keep in kinds.items():
            sel = [x for x, run in zip(per_run_rows, runs) if keep(run["meta"])]
            s = T.summarize(sel)
            rows.append({"veto": name, "runs": kind, **s})
            print(f"| {name} | {kind} ({s['runs']}) | {s['saved_share_of_oracle']:.0%} | {s['early']}/{s['units']} |")
    if a.out:
        a.out.write_text(json.dumps({"label": a.label, "shifts": str(a.shifts), "rule": rule, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
