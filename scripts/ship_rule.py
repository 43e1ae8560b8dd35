"""Write a decision rule into a predictor file, its weights unchanged: the rule ships with the weights, so every
run gets the same default (smartfrz.policies.SmartFRZPolicy reads it back).

    python scripts/ship_rule.py --threshold 0.1 --patience 2 --per-epoch 4 --per-run 16 --tau 0.2 --probe-rows 32 \
        --decide-from 0.6 --per-decision 1 \
        --chosen-on "decision traces of ... (scripts/trace_replay.py)"

Choose the rule first with scripts/trace_replay.py on traces of tasks outside the headroom suite.
"""
from __future__ import annotations

import argparse
import hashlib

from smartfrz.predictor import DEFAULT_PATH, FreezePredictor

RULE_KEYS = ("threshold", "patience", "decisions_per_epoch", "decisions_per_run", "veto_tau", "veto_probe_rows",
             "veto_lookback", "decide_from", "freeze_per_decision", "max_frozen_share", "feature_version", "hparams")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=str(DEFAULT_PATH), help="the predictor file (default: the shipped one)")
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--patience", type=int, required=True)
    ap.add_argument("--per-epoch", type=int, required=True, help="decisions an epoch")
    ap.add_argument("--per-run", type=int, default=0, help="a floor of decisions a run (0: none)")
    ap.add_argument("--tau", type=float, default=None, help="the functional veto's tau (default: no veto)")
    ap.add_argument("--probe-rows", type=int, default=None, help="probe rows the veto reads (default: all)")
    ap.add_argument("--lookback", choices=["decision", "epoch"], default="decision",
                    help="how far back the veto's weights are: the previous decision (default) or an epoch")
    ap.add_argument("--decide-from", type=float, default=0.0, help="share of the planned run before any decision")
    ap.add_argument("--per-decision", type=int, default=0,
                    help="most units newly frozen at one decision (0: no limit)")
    ap.add_argument("--max-frozen-share", type=float, default=1.0,
                    help="most share of the units ever frozen, counted as linear counts freeze_level (1: no cap)")
    ap.add_argument("--chosen-on", required=True, help="what the rule was chosen on, kept in the file")
    a = ap.parse_args(argv)
    if not 0 < a.threshold < 1 or a.patience < 1 or a.per_epoch < 1 or a.per_run < 0:
        ap.error("need 0 < threshold < 1, patience >= 1, per-epoch >= 1, per-run >= 0")
    if a.tau is not None and not 0 < a.tau <= 1 or a.probe_rows is not None and a.probe_rows < 1:
        ap.error("need 0 < tau <= 1 and probe-rows >= 1")
    if not 0 <= a.decide_from < 1 or a.per_decision < 0 or not 0 < a.max_frozen_share <= 1:
        ap.error("need 0 <= decide-from < 1, per-decision >= 0 and 0 < max-frozen-share <= 1")
    pred = FreezePredictor.load(a.path)
    before = hashlib.sha256(open(a.path, "rb").read()).hexdigest()[:12]
    old = {k: pred.metadata.get(k) for k in ("threshold", "patience", "decisions_per_epoch", "decisions_per_run",
                                             "veto_tau", "veto_probe_rows", "veto_lookback", "decide_from",
                                             "freeze_per_decision", "max_frozen_share")}
    pred.threshold, pred.patience, pred.decisions_per_epoch, pred.decisions_per_run = \
        a.threshold, a.patience, a.per_epoch, a.per_run
    pred.veto_tau, pred.veto_probe_rows, pred.decide_from = a.tau, a.probe_rows, a.decide_from
    pred.veto_lookback, pred.freeze_per_decision = a.lookback, a.per_decision
    pred.max_frozen_share = a.max_frozen_share
    extra = {k: v for k, v in pred.metadata.items() if k not in RULE_KEYS}
    extra.update(rule_chosen_on=a.chosen_on, earlier_rule=str(old))
    pred.save(a.path, extra=extra)
    after = hashlib.sha256(open(a.path, "rb").read()).hexdigest()[:12]
    print(f"{a.path}: rule written ({before} -> {after}); earlier rule {old}")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
