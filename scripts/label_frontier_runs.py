"""Each recorded run's own frontier along its label: how far its freeze steps can move earlier and stay safe.

`label_check_runs.py` freezes a run at its label's steps and at fixed shifts; this searches the shift per run.
From the label itself (shift 0) it moves earlier a grid step at a time while the freeze stays safe, or later
while it does not, and keeps the earliest safe shift (positive: earlier, as a share of the run; -1: no safe
freeze on the grid). Each freeze is trained on from the recorded recipe's initialisation and data order and
compared with the recorded run's final metric: retraining a recipe without freezing reproduces it (the first
run of each family here is retrained to check that; a family it fails for is left out of the output).

    python scripts/label_frontier_runs.py --runs data/freeze_runs --names NAME ... \\
        --label scratch=rewind:0.05,finetune=rewind:0.02 --data-dir ../shared/data --jobs 2 \\
        --out data/freeze_runs/label_shifts.json

Each run's trainings are kept in `<out>.runs/<name>.json` as they finish: calling again resumes. The output
maps run names to their shift and every freeze trained for it; `smartfrz.predictor_training.training
--label-shifts` reads it (runs absent from it keep the label as it is). Single seeds: a freeze's delta
carries the run's seed noise, which makes the search stop early (conservative) more often than late.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier import tolerance  # noqa: E402
from label_check_runs import label_steps, shifted, train  # noqa: E402
from smartfrz.predictor_training.training import saved_share  # noqa: E402

from smartfrz.predictor_training.freeze_dataset import RunSpec, load_run  # noqa: E402

GRID = (-0.6, -0.4, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4)  # shares of the run; fixed before any search ran
NEVER = -1.0  # no freeze on the grid is safe: the run's label moves past its end


def search(path: Path, label: str, grid, data_dir, cache: Path, check_none: bool) -> dict:
    """The run's earliest safe shift on ``grid``, walking from 0; every training is cached in ``cache``."""
    run = load_run(path)
    meta, spec = run["meta"], RunSpec(**run["meta"]["spec"])
    total, base = meta["total_steps"], float(meta["final"]["metric"])
    done = json.loads(cache.read_text()) if cache.is_file() else {"run": path.stem, "label": label, "trained": {}}
    if done["label"] != label:
        raise ValueError(f"{cache} holds trainings under label {done['label']!r}, not {label!r}; use another --out")
    freeze = label_steps(run, label)

    def safe_at(shift: float) -> bool:
        key = f"{shift:g}"
        if key not in done["trained"]:
            steps = shifted(freeze, shift, total)
            metric = train(spec, steps, meta["units"], data_dir) if steps else base
            done["trained"][key] = {"metric": metric, "delta": metric - base, "freeze_steps": steps,
                                    "saved": saved_share(steps, meta["flop_share"], total)}
            cache.write_text(json.dumps(done, indent=1))
        return done["trained"][key]["delta"] >= -tolerance(base)

    if check_none and "none" not in done:
        done["none"] = train(spec, None, meta["units"], data_dir)
        cache.write_text(json.dumps(done, indent=1))
    grid = sorted(set(grid) | {0.0})
    i = grid.index(0.0)
    if not freeze:
        best = 0.0  # nothing labelled: no shift moves it
    elif safe_at(0.0):
        best = 0.0
        for s in grid[i + 1:]:
            if not safe_at(s):
                break
            best = s
    else:
        best = NEVER
        for s in reversed(grid[:i]):
            if safe_at(s):
                best = s
                break
    done.update(shift=best, base=base, total_steps=total, family=meta["family"], regime=spec.regime,
                epochs=spec.epochs, saved=done["trained"].get(f"{best:g}", {}).get("saved", 0.0))
    cache.write_text(json.dumps(done, indent=1))
    return done


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="a folder of recorded freeze runs")
    ap.add_argument("--names", nargs="+", required=True, help="run names (file stems), searched in this order")
    ap.add_argument("--label", required=True, help="as smartfrz.predictor_training.training --label")
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID),
                    help="shifts tried (shares of the run, positive: earlier), in (-1, 1)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if bad := [s for s in a.grid if not -1.0 < s < 1.0]:
        ap.error(f"--grid shifts are shares of the run in (-1, 1); got {bad}")
    if missing := [n for n in a.names if not (a.runs / f"{n}.safetensors").exists()]:
        ap.error(f"no recorded run {missing} in {a.runs}; names are the files' stems there")
    cache_dir = a.out.with_name(a.out.name + ".runs")
    cache_dir.mkdir(parents=True, exist_ok=True)
    families, jobs = set(), []
    for name in a.names:
        family = load_run(a.runs / f"{name}.safetensors")["meta"]["family"]
        jobs.append((a.runs / f"{name}.safetensors", a.label, a.grid, a.data_dir, cache_dir / f"{name}.json",
                     family not in families))
        families.add(family)
    with ProcessPoolExecutor(a.jobs) as pool:  # jobs 1: in this process (a script loaded by importlib cannot be pickled)
        finished = (search(*j) for j in jobs) if a.jobs == 1 else \
            (f.result() for f in as_completed([pool.submit(search, *j) for j in jobs]))
        for r in finished:
            print(f"{r['run']}: shift {r['shift']:+g}, saves {r['saved']:.1%}", flush=True)
    write(a.out, a.label, a.grid, cache_dir)


def reproduced(retrained: float, recorded: float) -> bool:
    """A retrain without freezing gives the recorded metric (to float noise): deltas against the recording hold."""
    return abs(retrained - recorded) <= 1e-6 * max(1.0, abs(recorded))


def write(out: Path, label: str, grid, cache_dir: Path) -> dict:
    """The shifts of every finished search in ``cache_dir`` (an interrupted one is left out)."""
    found = [d for f in sorted(cache_dir.glob("*.json")) if (d := json.loads(f.read_text()))["label"] == label and "shift" in d]
    unreproduced = {d["family"] for d in found if "none" in d and not reproduced(d["none"], d["base"])}
    for family in sorted(unreproduced):
        gaps = ", ".join(f"{d['none']:.4g} against {d['base']:.4g}" for d in found if d["family"] == family and "none" in d)
        print(f"left out: family {family}, whose recorded run a retrain without freezing does not reproduce ({gaps})")
    runs = {}
    for d in found:
        if d["family"] not in unreproduced:
            runs[d["run"]] = {k: d[k] for k in ("shift", "saved", "base", "family", "regime", "epochs", "total_steps")}
            if "none" in d:
                runs[d["run"]]["none_retrained"] = d["none"]
            runs[d["run"]]["trained"] = {k: {**v, "delta": round(v["delta"], 6)} for k, v in
                                         sorted(d["trained"].items(), key=lambda kv: float(kv[0]))}
    table = {"label": label, "grid": sorted(grid), "runs": runs, "left_out_families": sorted(unreproduced)}
    out.write_text(json.dumps(table, indent=1))
    print(markdown(runs))
    print(f"wrote {out}: {len(runs)} runs")
    return table


def markdown(runs: dict) -> str:
    """Per family and kind of run: the shifts found, how often the label itself was unsafe, and its first-order
    saving against the frontier's (the saving at the shift found; 0 where no freeze was safe)."""
    groups = {}
    for r in runs.values():
        groups.setdefault((r["family"], r["regime"], r["epochs"]), []).append(r)
    lines = ["| family | kind | epochs | runs | shifts found | label unsafe | label saves (median) | frontier saves (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for (family, regime, epochs), rs in sorted(groups.items()):
        at_label = [r["trained"].get("0") for r in rs]
        unsafe = sum(t is not None and t["delta"] < -tolerance(r["base"]) for t, r in zip(at_label, rs))
        shifts = " ".join(f"{r['shift']:+g}" for r in rs)
        label = statistics.median(t["saved"] if t else 0.0 for t in at_label)
        lines.append(f"| {family} | {regime} | {epochs} | {len(rs)} | {shifts} | {unsafe} | {label:.1%} | "
                     f"{statistics.median(r['saved'] for r in rs):.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
