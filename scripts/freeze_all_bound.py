"""How much can freezing save on a bench task, and at what cost in its metric?

Freezes every unit the engine may freeze (all but the last), or only the first K units (`--first-units`), at
fixed epochs, with or without the prefix cache, on a suite's task and seeds, and compares with that suite's
committed `none` runs (same seed, same data order). No predictor and no labels: an upper bound on what any
front-to-back freezing decision saves by a given epoch, and what freezing that much that early costs.

    python scripts/freeze_all_bound.py --suite cpu --task mrpc_minilm --at-epochs 0.5 1 2 --cache \\
        --data-dir ../shared/data --bench reports/bench/cpu.json --out reports/bench/bound/mrpc_cache.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from smartfrz import find_units
from smartfrz.lab.bench import SUITES, _spawn, _train, _worker_init
from smartfrz.lab.experiment import ExperimentConfig, build, example_input


def configs(suite: str, task: str, at_epochs, seeds, cache: bool, data_dir,
            first_units=(None,)) -> list[tuple[float, int | None, ExperimentConfig]]:
    """(epoch, K, config) for each K of `first_units` (None: every unit), epoch and seed."""
    base = {k: v for k, v in SUITES[suite]["tasks"][task].items() if k != "extra_policies"}
    model, loader, *_ = build(ExperimentConfig(**base, policy="none", data_dir=data_dir, out_dir=None, progress=False), "cpu")
    names, steps_per_epoch = [u.name for u in find_units(model, example_input(next(iter(loader))))], len(loader)
    if bad := [k for k in first_units if k is not None and not 1 <= k < len(names)]:
        raise ValueError(f"--first-units {bad}: {task} has {len(names)} units, so K must be 1..{len(names) - 1}")
    return [(e, k, ExperimentConfig(**base, name=f"bound-{suite}-{task}-at{e:g}" + (f"-first{k}" if k else ""),
                                    policy="oracle", seed=s, data_dir=data_dir, out_dir=None, progress=False, cache=cache,
                                    frz={"decide_every": 1},  # at that very step
                                    oracle_freeze_steps={n: max(1, round(e * steps_per_epoch)) for n in names[:k]}))
            for k in first_units for e in at_epochs for s in seeds]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="cpu", choices=sorted(SUITES))
    ap.add_argument("--task", required=True)
    ap.add_argument("--at-epochs", nargs="+", type=float, required=True, help="epochs at which everything freezes")
    ap.add_argument("--first-units", nargs="+", type=int, default=None,
                    help="freeze only the first K units (in forward order), for each K given; default: all but the last")
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--cache", action="store_true", help="with the prefix cache (frozen forward skipped too)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--bench", required=True, help="the suite's committed JSON, for its `none` runs")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.task not in SUITES[a.suite]["tasks"]:
        ap.error(f"task {a.task!r} is not in suite {a.suite!r}; its tasks: {', '.join(SUITES[a.suite]['tasks'])}")
    seeds = a.seeds or list(SUITES[a.suite]["seeds"])
    none = {r["seed"]: r for r in json.loads(Path(a.bench).read_text())["runs"]
            if r["task"] == a.task and r["policy"] == "none"}
    if missing := sorted(set(seeds) - set(none)):
        ap.error(f"{a.bench} has no `none` run of {a.task} for seeds {missing}")
    try:
        cfgs = configs(a.suite, a.task, a.at_epochs, seeds, a.cache, a.data_dir, a.first_units or (None,))
    except ValueError as e:
        ap.error(str(e))
    with ProcessPoolExecutor(a.jobs, mp_context=_spawn(), initializer=_worker_init, initargs=(1,)) as pool:
        results = list(pool.map(_train, [cfg for *_, cfg in cfgs]))
    rows = []
    for (epoch, k, cfg), res in zip(cfgs, results):
        ref = none[cfg.seed]
        rows.append({"at_epoch": epoch, "first_units": k, "seed": cfg.seed, "cache": cfg.cache,
                     "metric_name": res["final"]["metric_name"], "metric": res["final"]["metric"],
                     "none_metric": ref["metric"], "delta": res["final"]["metric"] - ref["metric"],
                     "flops_saved": res["flops_saved"], "frozen_units": len(res["frozen_units"])})
    groups = {(r["first_units"], r["at_epoch"]): [] for r in rows}
    for r in rows:
        groups[r["first_units"], r["at_epoch"]].append(r)
    summary = [{"at_epoch": e, "first_units": k, "median_delta": statistics.median(r["delta"] for r in g),
                "median_flops_saved": statistics.median(r["flops_saved"] for r in g)} for (k, e), g in groups.items()]
    Path(a.out).write_text(json.dumps({"command": "python scripts/freeze_all_bound.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                                       "suite": a.suite, "task": a.task, "rows": rows, "summary": summary}, indent=1))
    for s in summary:
        what = f"the first {s['first_units']} units" if s["first_units"] else "everything"
        print(f"{what} frozen at epoch {s['at_epoch']:g}: {100 * s['median_flops_saved']:.1f}% FLOPs saved, "
              f"{s['median_delta']:+.4f} {rows[0]['metric_name']} (median of {len(seeds)} seeds)")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
