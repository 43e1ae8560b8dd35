"""What each decision rule could save with a perfect predictor, one that says "freeze" from each unit's label on.

The engine freezes a unit once it scored P(freeze) >= threshold at `patience` consecutive decisions, taken
`decisions per epoch` times an epoch, after a full window and after every unit before it. Given the labels of
a bench task's `none` run (the oracle's freeze steps), this replays that rule with a predictor that is right
at every decision, trains those freeze steps for real and compares with the `none` run of the same seed. So
it separates what the rule costs from what the predictor costs. Rule (1, 1) is the oracle itself.

    python scripts/rule_ceiling.py --suite smoke --task digits_cnn --out reports/bench/bound/rule_ceiling_smoke.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from smartfrz import FreezePredictor
from smartfrz.lab.bench import SUITES, _spawn, _train, _worker_init
from smartfrz.lab.experiment import ExperimentConfig, oracle_steps


def rule_steps(labels: dict[str, int | None], per_epoch: int, patience: int, steps_per_epoch: int, total: int,
               ready: int) -> dict[str, int]:
    """Freeze step of each unit (in forward order) under the rule, for a predictor right from each label on."""
    every = max(1, steps_per_epoch // per_epoch)
    out, prev = {}, 0
    for name, label in labels.items():
        if label is None:
            break  # never labelled: it and every unit after it stay active
        first = -(-max(label, ready, 1) // every) * every  # first decision at or after the label, with a full window
        step = max(prev, first + (patience - 1) * every)
        if step > total:
            break
        out[name] = prev = step
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="smoke", choices=sorted(SUITES))
    ap.add_argument("--task", required=True)
    ap.add_argument("--per-epoch", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--patience", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.task not in SUITES[a.suite]["tasks"]:
        ap.error(f"task {a.task!r} is not in suite {a.suite!r}; its tasks: {', '.join(SUITES[a.suite]['tasks'])}")
    if min(a.per_epoch + a.patience) < 1:
        ap.error("--per-epoch and --patience take positive integers")
    seeds = a.seeds or list(SUITES[a.suite]["seeds"])
    base = {k: v for k, v in SUITES[a.suite]["tasks"][a.task].items() if k != "extra_policies"}
    shipped = FreezePredictor.load()
    window = int(shipped.metadata["window"])
    rule_now = (int(shipped.decisions_per_epoch), int(shipped.patience))
    none_cfgs = [ExperimentConfig(**base, name=f"ceiling-{a.task}", policy="none", seed=s, data_dir=a.data_dir,
                                  out_dir=None, progress=False, record_cka=True) for s in seeds]
    with ProcessPoolExecutor(a.jobs, mp_context=_spawn(), initializer=_worker_init, initargs=(1,)) as pool:
        refs = dict(zip(seeds, pool.map(_train, none_cfgs)))
        jobs = []
        for s, ref in refs.items():
            total, units = ref["steps"], ref["cka"]["units"]
            spe = total // base["epochs"]
            labelled = oracle_steps(ref, none_cfgs[0].oracle_label)
            labels = {u: labelled.get(u) for u in units}
            ready = window * max(1, spe // window)
            for c in a.per_epoch:
                for p in a.patience:
                    steps = rule_steps(labels, c, p, spe, total, ready)
                    cfg = replace(none_cfgs[0], name=f"ceiling-{a.task}-c{c}p{p}", seed=s, policy="oracle",
                                  record_cka=False, frz={"decide_every": 1},  # the oracle needs a step: past the end
                                  oracle_freeze_steps=steps or {units[0]: total + 1})
                    jobs.append((s, c, p, steps, cfg))
        results = list(pool.map(_train, [j[-1] for j in jobs]))
    rows = [{"seed": s, "per_epoch": c, "patience": p, "freeze_steps": steps, "metric_name": res["final"]["metric_name"],
             "metric": res["final"]["metric"], "none_metric": refs[s]["final"]["metric"],
             "delta": res["final"]["metric"] - refs[s]["final"]["metric"], "flops_saved": res["flops_saved"]}
            for (s, c, p, steps, _), res in zip(jobs, results)]
    summary = []
    for c in a.per_epoch:
        for p in a.patience:
            g = [r for r in rows if (r["per_epoch"], r["patience"]) == (c, p)]
            summary.append({"per_epoch": c, "patience": p, "shipped_rule": (c, p) == rule_now,
                            "median_flops_saved": statistics.median(r["flops_saved"] for r in g),
                            "median_delta": statistics.median(r["delta"] for r in g)})
    oracle = next(x["median_flops_saved"] for x in summary if (x["per_epoch"], x["patience"]) == (1, 1)) \
        if 1 in a.per_epoch and 1 in a.patience else None
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"command": "python scripts/rule_ceiling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                                       "suite": a.suite, "task": a.task, "window": window, "seeds": seeds,
                                       "rows": rows, "summary": summary}, indent=1))
    print(f"{a.suite}/{a.task}, {len(seeds)} seeds, medians; the shipped rule is {rule_now[0]} per epoch, patience {rule_now[1]}")
    for x in summary:
        share = f" ({x['median_flops_saved'] / oracle:.0%} of the oracle's)" if oracle else ""
        print(f"{x['per_epoch']} per epoch, patience {x['patience']}: {100 * x['median_flops_saved']:.1f}% saved{share}, "
              f"{x['median_delta']:+.4g} {rows[0]['metric_name']}" + ("   <- shipped rule" if x["shipped_rule"] else ""))


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
