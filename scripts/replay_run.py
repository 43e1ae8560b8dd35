"""What the engine's rule would do on one recorded run: a weights file's predictor and whole rule (start, cadence,
threshold, patience, veto read from the run) replayed by ``training.replay``, against the run's labels.

    python scripts/replay_run.py artifacts/freeze_runs/minilm-cola-finetune-adamw5e-05-linear-s3.safetensors \
        --labels rewind:0.02 rewind:0.05
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from smartfrz.predictor import FreezePredictor
from smartfrz.predictor_training import training as T
from smartfrz.predictor_training.freeze_dataset import load_run
from smartfrz.predictor_training.labels import freeze_labels, parse_label


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a recorded run (python -m smartfrz.predictor_training.freeze_dataset)")
    ap.add_argument("--predictor", default=None, help="weights file whose predictor and rule to replay (default: shipped)")
    ap.add_argument("--labels", nargs="+", default=[T.LABEL], help="label rules to count early units against")
    a = ap.parse_args(argv)
    run, model = load_run(Path(a.run)), FreezePredictor.load(a.predictor)
    meta, rule = run["meta"], T.engine_rule(model)
    steps, total = run["steps"].numpy(), meta["total_steps"]
    with torch.no_grad():
        P = torch.sigmoid(model(run["features"].float().flatten(0, 1))).view(len(steps), -1).numpy()
    veto = None if rule["veto_tau"] is None else T.recorded_veto(
        run, meta, rule["decisions_per_epoch"], rule["decisions_per_run"], rule["veto_tau"], rule["veto_probe_rows"])
    print(f"{meta['name']}: {total} steps, checkpoints at {steps.tolist()}; rule {rule}")
    for label in a.labels:
        kind, tau = parse_label(label)
        Y = freeze_labels(T._values(run, kind), tau, kind).numpy()
        out = T.replay(P, Y, steps, meta, rule["threshold"], rule["patience"], rule["decisions_per_epoch"],
                       rule["decisions_per_run"], start=rule["decide_from"], veto=veto)
        share = lambda d: {u: f"{s / total:.2f}" for u, s in d.items()}
        print(f"{label}: frozen at (share of the run) {share(out['pred'])}; labels {share(out['label'])}; "
              f"{out['early']}/{out['units']} early; saves {out['saved']:.3f} (the oracle {out['oracle_saved']:.3f})")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
