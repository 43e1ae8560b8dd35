"""Trace what a SmartFRZ rule would see, without freezing: the predictor's P(freeze) and the functional
veto's changed share for every unit prefix, at many decisions a run (on the whole probe, and on its first 32
and 64 examples: what a smaller probe, the lab's `veto_probe` option, would have read).

A trace lets any decision rule (threshold, patience, decisions per epoch, veto tau) be replayed offline
against a task's frontier (scripts/frontier.py) instead of training one run per rule. Nothing is frozen
while tracing, so the trace is the `none` run's trajectory.

The engine's veto puts units back to their weights at the rule's *previous decision*, so a rule that decides
every k-th traced decision compares weights k traced decisions old. `--lookbacks` records the shares at those
distances too (on the probe's first 64 and 32 examples, from `--lookback-from` of the run on), so that
scripts/trace_replay.py reads each rule's veto at the distance the engine would use.

    python scripts/trace_decisions.py --suite cpu --task cifar10_resnet20 --seed 0 --data-dir ../shared/data \
        --per-epoch 8 --out reports/bench/trace/cpu_cifar10_resnet20_s0.json
"""
from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path

import torch

from smartfrz.lab.bench import SUITES
from smartfrz.lab.costs import probe_forward_flops
from smartfrz.lab.experiment import ExperimentConfig, run
from smartfrz.policies import SmartFRZPolicy
from smartfrz.predictor_training.labels import prefix_shares
from smartfrz.veto import first_rows, probe_parts, unit_state


SMALL_PROBES = (32, 64)  # the lab's probe batches start with the same examples, so these are their shares


def check_flops(model, probe) -> int:
    """What one veto check that passes costs: a forward on each of the probe's parts (a failing check stops
    earlier, so this prices it from above)."""
    return sum(probe_forward_flops(model, part) for part in probe_parts(probe))


def trace_policy(rows: list, units: list, per_epoch: int, probe_flops: dict, lookbacks=(), lookback_from=0.0):
    """SmartFRZPolicy.decide, patched to log every score and every prefix's rewind share, and freeze nothing;
    with ``lookbacks``, also every prefix's share against the weights of k traced decisions earlier."""
    original = SmartFRZPolicy.decide
    history = deque(maxlen=max(lookbacks, default=1))  # each traced decision's weights, newest last
    SmartFRZPolicy.cadence = lambda self, spe, total: max(1, spe // per_epoch)

    @torch.no_grad()
    def decide(self, engine):
        _, scores = original(self, engine)
        veto, shares, small, far = engine.veto, {}, {n: {} for n in SMALL_PROBES}, {}
        if not units:
            units.extend({"name": u.name, "flop_share": u.flop_share, "params": u.num_params} for u in engine.units)
            if veto is not None:  # what one veto forward costs, on the whole probe and on its first n examples
                probe_flops.update({str(n): check_flops(engine.model, first_rows(veto.probe, n)) for n in SMALL_PROBES},
                                   all=check_flops(engine.model, veto.probe))
        if veto is not None and veto.previous:
            model, was = engine.model, engine.model.training
            model.eval()
            order = sorted(veto.previous)
            near = prefix_shares(model, engine.units, order, veto.previous, veto.probe, (None, *SMALL_PROBES))
            shares = {i: v[None] for i, v in near.items()}
            small = {n: {i: v[n] for i, v in near.items()} for n in SMALL_PROBES}
            total = engine.config.total_steps
            late = total is None or engine.step_count >= lookback_from * total
            if lookbacks and late:
                probe = first_rows(veto.probe, max(SMALL_PROBES))
                for k in lookbacks:
                    if k <= len(history):
                        step, old = history[-k]
                        sh = prefix_shares(model, engine.units, order, old, probe, SMALL_PROBES)
                        far[str(k)] = {"from": step, **{str(n): {str(i): round(v[n], 5) for i, v in sh.items()}
                                                       for n in SMALL_PROBES}}
            if lookbacks:
                history.append((engine.step_count, {i: unit_state(engine.units[i]) for i in order}))
            model.train(was)
        rows.append({"step": engine.step_count, "epoch": round(engine.epoch, 4), "veto_from": veto.at if veto else None,
                     "p": {str(u): round(float(v), 5) for u, v in scores.items()},
                     "share": {str(u): round(v, 5) for u, v in shares.items()},
                     "share_n": {str(n): {str(u): round(v, 5) for u, v in sh.items()} for n, sh in small.items()},
                     **({"share_k": far} if lookbacks else {})})
        return engine.num_frozen, scores

    SmartFRZPolicy.decide = decide


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", required=True, choices=sorted(SUITES))
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--per-epoch", type=int, default=8, help="decisions traced per epoch")
    ap.add_argument("--lookbacks", nargs="*", type=int, default=[],
                    help="also record shares against the weights of k traced decisions earlier, for each k (a rule "
                         "deciding every k-th traced decision compares that far back)")
    ap.add_argument("--lookback-from", type=float, default=0.0,
                    help="share of the run from which the --lookbacks shares are recorded (they cost forwards)")
    ap.add_argument("--predictor", default=None, help="a weights file to trace instead of the shipped predictor")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if any(k < 1 for k in a.lookbacks):
        ap.error(f"--lookbacks are counts of traced decisions, 1 or more; got {a.lookbacks}")
    tasks = SUITES[a.suite]["tasks"]
    if a.task not in tasks:
        ap.error(f"unknown task {a.task!r} in suite {a.suite!r}; tasks: {sorted(tasks)}")
    spec = {k: v for k, v in tasks[a.task].items() if k != "extra_policies"}
    rows, units, probe_flops = [], [], {}
    trace_policy(rows, units, a.per_epoch, probe_flops, tuple(sorted(set(a.lookbacks))), a.lookback_from)
    torch.set_num_threads(1)
    # the veto's tau is irrelevant: nothing is frozen, its snapshots are what the trace reads (on the whole probe);
    # decide_from 0: every decision is scored, so that rules with any start can be replayed
    cfg = ExperimentConfig(name="trace", policy="smartfrz", seed=a.seed, data_dir=a.data_dir, out_dir=None,
                           progress=False, frz={"veto_tau": 0.5, "patience": 10 ** 6, "veto_probe_rows": 10 ** 6,
                                                "decide_from": 0.0, "predictor_path": a.predictor}, **spec)
    res = run(cfg)
    steps_per_epoch = res.steps // cfg.epochs
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"suite": a.suite, "task": a.task, "seed": a.seed, "steps_per_epoch": steps_per_epoch,
                               "total_steps": res.steps, "metric": res.metric, "units": units,
                               "step_flops": res.full_train_flops / res.steps, "probe_flops": probe_flops,
                               "decisions": rows}, indent=0))
    print(f"{out}: {len(rows)} decisions, metric {res.metric}")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
