"""What the engine's rule would do on recorded runs: a weights file's predictor and whole rule (start, cadence,
threshold, patience, veto read from each run) replayed by ``training.replay``, against the runs' labels; with
several runs, a summary over them too (runs recorded before the veto's shares are skipped).

    python scripts/replay_run.py artifacts/freeze_runs/minilm-cola-finetune-adamw5e-05-linear-s3.safetensors \
        --labels rewind:0.02 rewind:0.05
    python scripts/replay_run.py artifacts/freeze_runs/*.safetensors --quiet
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from smartfrz.predictor import FreezePredictor
from smartfrz.predictor_training import training as T
from smartfrz.predictor_training.freeze_dataset import load_run
from smartfrz.predictor_training.labels import front_to_back


LOOKBACKS = {  # how far back the veto's weights are, in steps: what a rule reads against what it could read
    "decision": lambda meta, every: every,  # its previous decision (the engine, with decisions >= a quarter epoch apart)
    "quarter": lambda meta, every: max(every, meta["steps_per_epoch"] // 4),  # the engine's least snapshot spacing
    "epoch": lambda meta, every: meta["steps_per_epoch"]}  # a veto with an epoch's memory


def replay_one(run: dict, model: FreezePredictor, rule: dict, label: str, lookback: str | None = None) -> dict:
    meta, steps = run["meta"], run["steps"].numpy()
    with torch.no_grad():
        P = torch.sigmoid(model(run["features"].float().flatten(0, 1))).view(len(steps), -1).numpy()
    every = T.cadence(meta, rule["decisions_per_epoch"], rule["decisions_per_run"])
    veto = None if rule["veto_tau"] is None else T.recorded_veto(
        run, meta, rule["decisions_per_epoch"], rule["decisions_per_run"], rule["veto_tau"], rule["veto_probe_rows"],
        LOOKBACKS[lookback or rule.get("veto_lookback") or "decision"](meta, every))
    Y = front_to_back(T.run_settled(run, label)).numpy()
    return T.replay(P, Y, steps, meta, rule["threshold"], rule["patience"], rule["decisions_per_epoch"],
                    rule["decisions_per_run"], start=rule["decide_from"], veto=veto)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="recorded runs (python -m smartfrz.predictor_training.freeze_dataset)")
    ap.add_argument("--predictor", default=None, help="weights file whose predictor and rule to replay (default: shipped)")
    ap.add_argument("--labels", nargs="+", default=[T.LABEL], help="labels to count early units against (RULE:TAU, terms joined by +, or scratch=...,finetune=...)")
    ap.add_argument("--quiet", action="store_true", help="only the summary")
    ap.add_argument("--veto-lookback", choices=list(LOOKBACKS), default=None,
                    help="how far back the veto puts a prefix: its previous decision, at least a quarter epoch (the "
                         "engine's snapshot spacing, when decisions come more often), or one epoch (default: the rule's)")
    a = ap.parse_args(argv)
    model = FreezePredictor.load(a.predictor)
    rule = T.engine_rule(model)
    print(f"rule {rule}")
    rows = {label: [] for label in a.labels}
    for path in a.runs:
        run = load_run(Path(path))
        meta, total = run["meta"], run["meta"]["total_steps"]
        if rule["veto_tau"] is not None and "veto_share" not in run:
            print(f"skip {meta['name']}: recorded before the veto's shares")
            continue
        if not a.quiet:
            print(f"{meta['name']}: {total} steps, checkpoints at {run['steps'].tolist()}")
        for label in a.labels:
            out = replay_one(run, model, rule, label, a.veto_lookback)
            rows[label].append(out)
            share = lambda d: {u: f"{s / total:.2f}" for u, s in d.items()}
            if not a.quiet:
                print(f"  {label}: frozen at (share of the run) {share(out['pred'])}; labels {share(out['label'])}; "
                      f"{out['early']}/{out['units']} early; saves {out['saved']:.3f} (the oracle {out['oracle_saved']:.3f})")
    for label, r in rows.items():
        if len(r) > 1:
            s = T.summarize(r)
            print(f"{label}, {s['runs']} runs: {s['early']}/{s['units']} units early ({s['early_share']:.0%}), "
                  f"{s['saved_share_of_oracle']:.0%} of the oracle's saving pooled")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
