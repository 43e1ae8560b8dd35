"""How far after (or before) its label a predictor freezes each unit of recorded runs, with its own rule.

Replays the engine's rule stored in the weights file on the runs of one family (in-sample when the weights
were trained on them) and prints the median lag in epochs between a unit's label and its freeze.

    python scripts/replay_lag.py --runs artifacts/freeze_runs --family digits_cnn
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from smartfrz.predictor import FreezePredictor
from smartfrz.predictor_training import training as T


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="folder of runs recorded by smartfrz.predictor_training.freeze_dataset")
    ap.add_argument("--family", required=True)
    ap.add_argument("--weights", default=None, help="default: the shipped predictor")
    a = ap.parse_args(argv)
    runs = T.load_runs(a.runs)
    ids = np.array([i for i, r in enumerate(runs) if r["meta"]["family"] == a.family])
    if not len(ids):
        ap.error(f"no run of family {a.family!r} in {a.runs}; families: {sorted({r['meta']['family'] for r in runs})}")
    model = FreezePredictor.load(a.weights)
    rule = {k: getattr(model, k) for k in T.RULE_KEYS}
    per_run = T.heldout(T.samples(runs, T.LABEL), runs, model, rule, ids)["per_run"]
    lags, never = [], 0
    for r in per_run:
        spe = runs[r["run"]]["meta"]["steps_per_epoch"]
        for unit, label in r["label"].items():
            if unit in r["pred"]:
                lags.append((r["pred"][unit] - label) / spe)
            else:
                never += 1
    print(f"{a.family}: {len(per_run)} runs, {len(lags) + never} labelled units; rule {rule}")
    if lags:
        q1, q3 = np.percentile(lags, [25, 75])
        print(f"frozen {len(lags)}, never {never}; lag after the label: median {statistics.median(lags):.2f} epochs "
              f"(quartiles {q1:.2f}, {q3:.2f}); {sum(x < 0 for x in lags)} frozen early")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
