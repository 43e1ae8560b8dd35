"""How far a task's metric moves when nothing is frozen and the run is nudged: the noise a policy's delta
against `none` carries on that task.

Trains `none` with the learning rate scaled by each of `--lr-scales` (e.g. 0.999 and 1.001: a 0.1% nudge that no
one would call a different recipe), on every seed of the suite, and reads each against the committed `none` run
of its seed. If those deltas already reach the 0.5-point tolerance, a policy's median delta on 3 seeds cannot tell
a real loss from the trajectory's own chaos there.

    python scripts/noise_floor.py --suite headroom --task sst2_minilm --data-dir ../shared/data \\
        --bench reports/bench/headroom.json --out reports/bench/bound/noise_sst2_minilm.json

``--null-freeze`` trains, instead, the oracle policy freezing from the first step only the front units that carry no
FLOPs (a text model's embeddings): a freeze that saves nothing, so its deltas are what a freeze's perturbation alone
does to the trajectory. On a short fine-tune that can be far more than an LR nudge moves it.

Every run is written at once to `<out>.runs/` under its configuration's key: calling again trains only what
is missing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier import tolerance, train_all  # noqa: E402

from smartfrz.lab.bench import SUITES, _write_json  # noqa: E402
from smartfrz.lab.experiment import ExperimentConfig, learning_rate  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="headroom", choices=sorted(SUITES))
    ap.add_argument("--task", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--bench", required=True, help="the suite's committed JSON, for its `none` runs")
    ap.add_argument("--lr-scales", nargs="+", type=float, default=[0.999, 1.001])
    ap.add_argument("--null-freeze", action="store_true",
                    help="perturb by freezing the front units that carry no FLOPs from step 0 (needs <bench>.runs/)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.task not in SUITES[a.suite]["tasks"]:
        ap.error(f"unknown task {a.task!r} of suite {a.suite!r}; tasks: {', '.join(SUITES[a.suite]['tasks'])}")
    if a.null_freeze:
        return null_freeze(a, argv)
    if bad := [s for s in a.lr_scales if not 0 < s or s == 1]:
        ap.error(f"--lr-scales must be positive and not 1 (1 is the committed none run); got {bad}")
    seeds = list(SUITES[a.suite]["seeds"])
    none = {r["seed"]: r for r in json.loads(Path(a.bench).read_text())["runs"]
            if r["task"] == a.task and r["policy"] == "none"}
    if missing := sorted(set(seeds) - set(none)):
        ap.error(f"{a.bench} has no `none` run of {a.task} for seeds {missing}")
    base = {k: v for k, v in SUITES[a.suite]["tasks"][a.task].items() if k != "extra_policies"}
    lr = learning_rate(ExperimentConfig(**base, policy="none"))
    cfgs = [ExperimentConfig(**{**base, "lr": lr * s}, name=f"noise-{a.suite}-{a.task}-lr{s:g}", policy="none",
                             seed=seed, data_dir=a.data_dir, out_dir=None, progress=False,
                             record_cka=True)  # as the bench trains `none`: only the learning rate differs
            for s in a.lr_scales for seed in seeds]
    results = train_all(cfgs, Path(a.out).with_suffix(".runs"), a.jobs)
    rows = [{"lr_scale": s, "seed": c.seed, "metric": r["metric"], "none_metric": none[c.seed]["metric"],
             "delta": r["metric"] - none[c.seed]["metric"]} for s, c, r in zip([s for s in a.lr_scales for _ in seeds],
                                                                              cfgs, results)]
    tol, deltas = tolerance(none[seeds[0]]["metric"]), [abs(r["delta"]) for r in rows]
    medians = {f"{s:g}": statistics.median(r["delta"] for r in rows if r["lr_scale"] == s) for s in a.lr_scales}
    out = {"command": "python scripts/noise_floor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "suite": a.suite, "task": a.task, "tolerance": tol, "rows": rows, "median_delta_by_scale": medians,
           "median_abs_delta": statistics.median(deltas), "max_abs_delta": max(deltas),
           "runs_past_tolerance": sum(d > tol for d in deltas)}
    _write_json(Path(a.out), out)
    for r in rows:
        print(f"lr x{r['lr_scale']:g} seed {r['seed']}: {r['metric']:.4g} (none {r['none_metric']:.4g}, Δ {r['delta']:+.4g})")
    print(f"{a.task}: |Δ| median {out['median_abs_delta']:.4g}, max {out['max_abs_delta']:.4g}; "
          f"{out['runs_past_tolerance']}/{len(rows)} runs past the tolerance {tol:g}; median Δ by scale {medians}")


def no_flop_front(units: list[dict]) -> list[str]:
    """The names of the front units (a bench run's ``units``) that carry no FLOPs: what a null freeze freezes."""
    return [u["name"] for u in units[:next((i for i, u in enumerate(units) if u["flop_share"] > 0), len(units))]]


def null_freeze(a, argv) -> None:
    """The oracle policy with only the front units that carry no FLOPs frozen, from step 0, on every seed."""
    from smartfrz.lab.bench import run_key, task_config

    seeds, spec = list(SUITES[a.suite]["seeds"]), SUITES[a.suite]["tasks"][a.task]
    runs_dir, none = Path(a.bench).with_suffix(".runs"), {}
    for seed in seeds:
        path = runs_dir / f"{run_key(task_config(a.suite, a.task, spec, seed, 'none', a.data_dir), 1)}.json"
        if not path.is_file():
            raise SystemExit(f"no `none` run of {a.task} seed {seed} at {path}: run the bench first")
        none[seed] = json.loads(path.read_text())
    units = none[seeds[0]]["units"]
    free = no_flop_front(units)
    if not free:
        raise SystemExit(f"{a.task}: its first unit carries FLOPs ({units[0]['name']}), so no freeze saves nothing")
    cfgs = [replace(task_config(a.suite, a.task, spec, seed, "oracle", a.data_dir), name=f"nullfreeze-{a.suite}-{a.task}",
                    oracle_freeze_steps=dict.fromkeys(free, 0)) for seed in seeds]
    results = train_all(cfgs, Path(a.out).with_suffix(".runs"), a.jobs)
    rows = [{"frozen_from_step_0": free, "seed": c.seed, "metric": r["metric"], "none_metric": none[c.seed]["metric"],
             "delta": r["metric"] - none[c.seed]["metric"], "flops_saved": r["flops_saved"]} for c, r in zip(cfgs, results)]
    tol, deltas = tolerance(none[seeds[0]]["metric"]), [abs(r["delta"]) for r in rows]
    out = {"command": "python scripts/noise_floor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "suite": a.suite, "task": a.task, "tolerance": tol, "perturbation": f"{'+'.join(free)} frozen from step 0",
           "rows": rows, "median_delta": statistics.median(r["delta"] for r in rows),
           "median_abs_delta": statistics.median(deltas), "max_abs_delta": max(deltas),
           "runs_past_tolerance": sum(d > tol for d in deltas)}
    _write_json(Path(a.out), out)
    for r in rows:
        print(f"seed {r['seed']}: {r['metric']:.4g} (none {r['none_metric']:.4g}, Δ {r['delta']:+.4g}, "
              f"{100 * r['flops_saved']:.1f}% saved)")
    print(f"{a.task}, {out['perturbation']}: |Δ| median {out['median_abs_delta']:.4g}, max {out['max_abs_delta']:.4g}; "
          f"{out['runs_past_tolerance']}/{len(rows)} runs past the tolerance {tol:g}")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
