"""Does the run's progress help the predictor tell when a held-out family's units can freeze? The classifier alone,
before any rule: one network trained without the family, with and without `--progress-input`, scored on the family's
runs (ROC AUC of P(freeze) against the labels, and P beside the labelled share over the last half of the run).

    python scripts/progress_input_check.py --family resnet --label-shifts data/freeze_runs/label_shifts.json
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from smartfrz.predictor_training.freeze_dataset import load_runs
from smartfrz.predictor_training.training import attach_label_shifts, samples, train_predictor


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """The probability that a random freezable sample scores above a random unfreezable one (ties count half)."""
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based ranks, ties at their average
    pos = y.sum()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="data/freeze_runs")
    ap.add_argument("--family", required=True, help="the family held out (a run's meta family, e.g. resnet)")
    ap.add_argument("--label", default="scratch=rewind:0.05,finetune=rewind:0.02")
    ap.add_argument("--label-shifts", default=None)
    ap.add_argument("--epochs", type=int, default=6)
    a = ap.parse_args(argv)
    runs = load_runs(a.runs)
    families = sorted({r["meta"]["family"] for r in runs})
    if a.family not in families:
        ap.error(f"no family {a.family!r} in {a.runs}; there are {families}")
    if a.label_shifts:
        attach_label_shifts(runs, a.label_shifts, a.label)
    held = np.array([r["meta"]["family"] == a.family for r in runs])
    for progress in (False, True):
        d = samples(runs, a.label, progress=progress)
        test = torch.from_numpy(held[d["run"].numpy()])
        net = train_predictor(d["x"][~test], d["y_train"][~test], epochs=a.epochs, seed=0, weights=d["weight"][~test]).eval()
        with torch.no_grad():
            p = torch.sigmoid(torch.cat([net(x) for x in d["x"][test].split(4096)])).numpy()
        y = d["y_eval"][test].numpy().astype(bool)
        done = np.concatenate([(r["steps"].float() / r["meta"]["total_steps"]).repeat_interleave(len(r["meta"]["units"])).numpy()
                               for r, h in zip(runs, held) if h])
        print(f"{'with' if progress else 'without'} progress: AUC {auc(y, p):.3f} on {int(held.sum())} runs, "
              f"{y.mean():.0%} of samples freezable")
        for lo in (0.5, 0.6, 0.7, 0.8, 0.9):
            sel = (done >= lo) & (done < lo + 0.1 + (lo == 0.9))
            print(f"  {lo:.0%}-{lo + 0.1:.0%} of the run: labelled freezable {y[sel].mean():.2f}, median P {np.median(p[sel]):.2f}")


if __name__ == "__main__":
    main()
