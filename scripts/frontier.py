"""A bench task's frontier: the largest FLOP saving that any accuracy-safe freeze reaches on it.

Policies are judged against it, so it is measured from `none` and `oracle` runs alone, before any other
policy's result on the task is read. Candidates: the oracle (hindsight labels, with and without the prefix
cache where the suite offers it) and fixed front-to-back freezes, the first K units at epoch E, on a grid fixed
in `GRIDS` below before any run of the task was seen. The grid runs on one seed; the candidates within the
tolerance there, largest saving first, are confirmed on the suite's other seeds until one is safe by the median
of its per-seed deltas against `none` of the same seed. Safe: within 0.5 points (accuracy in %), or 0.005 for
scores in [0, 1]. `--labels` adds the oracles of other label rules measured by `smartfrz.lab.label_study` on the
same `none` runs (every seed): a safe freeze found there raises the frontier, never lowers it.

    python scripts/frontier.py --suite headroom --task sst2_minilm --data-dir ../shared/data \\
        --bench reports/bench/headroom.json --out reports/bench/bound/frontier_sst2_minilm.json

`--every-seed` runs the whole grid on every seed and takes the safe point (by its median) that saves most: where
the search seed loses at every point, as `tuning_sst2`'s seed 10 does, the search alone finds nothing.

Every run is written at once to `<out>.runs/` under its configuration's key: calling again trains only what
is missing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from freeze_all_bound import configs  # noqa: E402

from smartfrz.lab.bench import SUITES, _spawn, _train, _worker_init, _write_json, run_key  # noqa: E402

# (first K units, epoch), fixed from unit FLOP shares and the run's length alone (headroom: before any of its runs)
GRIDS = {
    # sst2: the first three points all lost more than 0.5 points on seed 0; (4, 1.5) and (2, 0.5) were added then
    ("headroom", "sst2_minilm"): dict(cache=True, points=[(6, 1.5), (4, 1.0), (3, 0.5), (4, 1.5), (2, 0.5)]),
    ("headroom", "cifar10_resnet20_long"): dict(cache=False, points=[(9, 24), (7, 21), (4, 15)]),
    # the same model and run length as headroom's SST-2, so its grid (as it ended, added points included); no cache,
    # as none of this suite's policies runs with one (2026-12-07, after its smartfrz, linear and oracle runs)
    ("tuning_sst2", "sst2_minilm_6k"): dict(cache=False, points=[(6, 1.5), (4, 1.0), (3, 0.5), (4, 1.5), (2, 0.5)]),
    # the same model with LoRA adapters over 3 epochs: headroom SST-2's grid at the same shares of the run (3/4, 1/2,
    # 1/4), fixed by that grid, not by this suite's runs (2026-12-07, after its policies had run, as tuning_sst2's)
    ("lora", "sst2_minilm_lora"): dict(cache=False, points=[(6, 2.25), (4, 1.5), (3, 0.75), (4, 2.25), (2, 0.75)]),
}


def tolerance(metric: float) -> float:
    return 0.5 if abs(metric) > 1 else 0.005


def train_all(cfgs, runs_dir: Path, jobs: int) -> list[dict]:
    """Each config's result, read back from ``runs_dir`` or trained (``jobs`` side by side) and written there."""
    keys = [run_key(c, 1) for c in cfgs]
    results = [json.loads((runs_dir / f"{k}.json").read_text()) if (runs_dir / f"{k}.json").is_file() else None
               for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        with ProcessPoolExecutor(jobs, mp_context=_spawn(), initializer=_worker_init, initargs=(1,)) as pool:
            futures = {pool.submit(_train, cfgs[i]): i for i in todo}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                _write_json(runs_dir / f"{keys[i]}.json", results[i])
                print(f"  trained {cfgs[i].name} seed {cfgs[i].seed}: {results[i]['metric']:.4g}, "
                      f"{100 * results[i]['flops_saved']:.1f}% saved", flush=True)
    return results


def summarize(rows: list[dict], tol: float) -> dict:
    deltas = [r["delta"] for r in sorted(rows, key=lambda r: r["seed"])]
    med = statistics.median(deltas)
    return {"seeds": [r["seed"] for r in sorted(rows, key=lambda r: r["seed"])], "delta_per_seed": deltas,
            "median_delta": med, "median_flops_saved": statistics.median(r["flops_saved"] for r in rows),
            "safe": med >= -tol}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="headroom", choices=sorted(SUITES))
    ap.add_argument("--task", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--bench", required=True, help="the suite's JSON, for its `none` and `oracle` runs")
    ap.add_argument("--search-seed", type=int, default=0, help="the seed the grid runs on")
    ap.add_argument("--confirm", type=int, default=1, help="candidates confirmed on the other seeds, at most")
    ap.add_argument("--every-seed", action="store_true",
                    help="run the whole grid on every seed and judge each point by its median (where one seed "
                         "loses at every point, a search on it finds nothing the median would call safe)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--labels", nargs="*", default=[],
                    help="label_study JSONs: their oracles on this task (on every seed) are candidates too")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if (a.suite, a.task) not in GRIDS:
        ap.error(f"no grid for task {a.task!r} of suite {a.suite!r}; grids: {', '.join(t for _, t in GRIDS)}")
    grid, seeds = GRIDS[a.suite, a.task], list(SUITES[a.suite]["seeds"])
    runs = [r for r in json.loads(Path(a.bench).read_text())["runs"] if r["task"] == a.task]
    none = {r["seed"]: r for r in runs if r["policy"] == "none"}
    if missing := sorted(set(seeds) - set(none)):
        ap.error(f"{a.bench} has no `none` run of {a.task} for seeds {missing}: run the suite's none and oracle first")
    tol = tolerance(none[seeds[0]]["metric"])
    runs_dir = Path(a.out).with_suffix(".runs")

    def point_rows(points, point_seeds):
        cfgs = [(k, e, cfg) for k, e in points
                for _, _, cfg in configs(a.suite, a.task, [e], point_seeds, grid["cache"], a.data_dir, [k])]
        results = train_all([c for *_, c in cfgs], runs_dir, a.jobs)
        return [{"first_units": k, "at_epoch": e, "seed": c.seed, "cache": c.cache, "metric": r["metric"],
                 "none_metric": none[c.seed]["metric"], "delta": r["metric"] - none[c.seed]["metric"],
                 "flops_saved": r["flops_saved"], "frozen_units": len(r["frozen_units"])}
                for (k, e, c), r in zip(cfgs, results)]

    print(f"{a.task}: grid {grid['points']} on " + ("every seed" if a.every_seed else f"seed {a.search_seed}")
          + (" with the prefix cache" if grid["cache"] else ""))
    rows = point_rows(grid["points"], [a.search_seed])
    others = [s for s in seeds if s != a.search_seed]
    confirmed, chosen = [], None
    if a.every_seed:
        rows += point_rows(grid["points"], others)
        for k, e in grid["points"]:
            s = summarize([r for r in rows if (r["first_units"], r["at_epoch"]) == (k, e)], tol)
            confirmed.append({"first_units": k, "at_epoch": e, **s})
        chosen = max((c for c in confirmed if c["safe"]), key=lambda c: c["median_flops_saved"], default=None)
    candidates = [] if a.every_seed else sorted((r for r in rows if r["delta"] >= -tol), key=lambda r: -r["flops_saved"])
    for cand in candidates[:a.confirm]:
        more = point_rows([(cand["first_units"], cand["at_epoch"])], others)
        rows += more
        s = summarize([cand, *more], tol)
        confirmed.append({"first_units": cand["first_units"], "at_epoch": cand["at_epoch"], **s})
        if s["safe"]:
            chosen = confirmed[-1]
            break
    oracles = {}
    for label in ("oracle", "oracle+cache"):
        rs = [{"seed": r["seed"], "delta": r["metric"] - none[r["seed"]]["metric"], "flops_saved": r["flops_saved"]}
              for r in runs if r["policy"] == label and r["seed"] in none]
        if rs:
            oracles[label] = summarize(rs, tol)
    for path in a.labels:
        study = json.loads(Path(path).read_text())
        if Path(study["bench"]).resolve() != Path(a.bench).resolve():
            ap.error(f"{path} was measured on {study['bench']}, not on {a.bench}: its none runs may differ")
        for rule in dict.fromkeys(r["rule"] for r in study["rows"] if r["task"] == a.task):
            rs = [{"seed": r["seed"], "delta": r["metric"] - none[r["seed"]]["metric"], "flops_saved": r["flops_saved"]}
                  for r in study["rows"] if (r["task"], r["rule"]) == (a.task, rule) and r["seed"] in none]
            if sorted(r["seed"] for r in rs) == sorted(seeds):
                oracles[f"oracle with label {rule}"] = summarize(rs, tol)
    safe = [(f"first {chosen['first_units']} units at epoch {chosen['at_epoch']:g}"
             + (" with the prefix cache" if grid["cache"] else ""), chosen)] if chosen else []
    safe += [(label, s) for label, s in oracles.items() if s["safe"]]
    best = max(safe, key=lambda x: x[1]["median_flops_saved"], default=None)
    frontier = None if best is None else {"source": best[0], **best[1]}
    out = {"command": "python scripts/frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "suite": a.suite, "task": a.task, "tolerance": tol, "grid": grid, "search_seed": a.search_seed,
           "rows": rows, "confirmed": confirmed, "oracles": oracles, "frontier": frontier}
    _write_json(Path(a.out), out)
    for label, s in oracles.items():
        print(f"{label}: {100 * s['median_flops_saved']:.1f}% saved, median Δ {s['median_delta']:+.4g} "
              f"({'safe' if s['safe'] else 'NOT safe'})")
    for c in confirmed:
        print(f"first {c['first_units']} at epoch {c['at_epoch']:g}: {100 * c['median_flops_saved']:.1f}% saved, "
              f"median Δ {c['median_delta']:+.4g} over seeds {c['seeds']} ({'safe' if c['safe'] else 'NOT safe'})")
    print("frontier: " + ("none found safe" if frontier is None else
                          f"{100 * frontier['median_flops_saved']:.1f}% FLOPs saved ({frontier['source']}), "
                          f"median Δ {frontier['median_delta']:+.4g}"))


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
