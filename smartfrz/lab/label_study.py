"""Which freeze labels can an oracle stand on? Replays the oracle under other label rules on a bench's
own `none` runs (their probe CKA curves) and measures what each rule costs in accuracy and saves in FLOPs.

    python -m smartfrz.lab.label_study --bench reports/bench/cpu.json \\
        --rules cka:0.95 remaining:0.1 remaining:0.2 --jobs 2 --out reports/bench/labels.json

A rule is a label (``RULE:TAU``, terms joined by ``+``, or one per kind of run: ``scratch=...,finetune=...``; see
``smartfrz.predictor_training.labels``), or ``TASK=LABEL`` to try it on that bench task only. Runs resume like the bench's.
"""
from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields, replace
from pathlib import Path

from ..predictor_training.labels import KINDS
from .bench import _median, _spawn, _train, _worker_init, _write_json, run_key
from .experiment import ExperimentConfig, oracle_steps


def references(bench_path: Path) -> dict[tuple[str, int], dict]:
    """The bench's `none` results, with their CKA curves, by (task, seed)."""
    bench = json.loads(bench_path.read_text())
    runs_dir = bench_path.with_suffix(".runs")
    out = {}
    for r in bench["runs"]:
        if r["policy"] == "none":
            found = sorted(runs_dir.glob(f"{r['run']}-*.json"), key=lambda f: f.stat().st_mtime)
            path = found[-1] if found else None  # the newest: the run this bench JSON was made from
            if path is None:
                raise FileNotFoundError(f"{r['run']}: its run file is not in {runs_dir}; run the bench there first")
            out[(r["task"], r["seed"])] = json.loads(path.read_text())
    return out


def study(bench_path, rules, jobs: int = 1, threads: int = 1, out_dir=None, tasks=None) -> list[dict]:
    refs = {k: v for k, v in references(Path(bench_path)).items() if tasks is None or k[0] in tasks}
    out_dir, bench_runs = Path(out_dir), Path(bench_path).with_suffix(".runs")
    allowed = {f.name for f in fields(ExperimentConfig)}
    known = sorted({task for task, _ in refs})
    scoped = []  # (the one task a rule is for, or None for all; the rule)
    for entry in rules:
        only, _, rule = entry.partition("=")
        if only in KINDS or not rule:  # a label per kind of run, or one for every task
            only, rule = "", entry
        if only and only not in known:
            raise ValueError(f"{entry!r}: no task {only!r} among the bench's none runs; tasks: {', '.join(known)}")
        scoped.append((only or None, rule))
    todo = []
    for only, rule in scoped:  # rule by rule: the first rule's results come first
        for (task, seed), ref in refs.items():
            if only is not None and task != only:
                continue
            base = ExperimentConfig(**{k: v for k, v in ref["config"].items() if k in allowed})
            steps = oracle_steps(ref, rule)
            cfg = replace(base, policy="oracle", record_cka=False, oracle_freeze_steps=steps, out_dir=None,
                          progress=False, oracle_label=rule)
            todo.append((task, seed, rule, cfg, ref))
    results = []
    pending = []
    with ProcessPoolExecutor(jobs, mp_context=_spawn(), initializer=_worker_init, initargs=(threads,)) as pool:
        for task, seed, rule, cfg, ref in todo:
            key = run_key(cfg, threads)
            path, done = out_dir / f"{key}.json", bench_runs / f"{key}.json"  # the bench's own oracle counts
            if path.is_file() or done.is_file():
                results.append((task, seed, rule, json.loads((path if path.is_file() else done).read_text()), ref))
            else:
                pending.append((task, seed, rule, pool.submit(_train, cfg), ref, path))
        for task, seed, rule, fut, ref, path in pending:
            res = fut.result()
            _write_json(path, res)
            results.append((task, seed, rule, res, ref))
    return [{"task": task, "seed": seed, "rule": rule, "metric": res["metric"], "none_metric": ref["metric"],
             "flops_saved": 1 - res["train_flops"] / ref["train_flops"], "frozen_units": len(res["frozen_units"]),
             "first_freeze_epoch": min((e["epoch"] for e in res["timeline"]), default=None)}
            for task, seed, rule, res, ref in results]


def table(rows: list[dict]) -> str:
    lines = ["| task | label rule | seeds | metric (none) | Δ vs none | Δ per seed | FLOPs saved | first freeze (epoch) |",
             "|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["task"], r["rule"]) for r in rows):
        rs = sorted((r for r in rows if (r["task"], r["rule"]) == key), key=lambda r: r["seed"])
        first = _median([r["first_freeze_epoch"] for r in rs])
        lines.append(f"| {key[0]} | `{key[1]}` | {len(rs)} | {_median([r['metric'] for r in rs]):.4g} "
                     f"({_median([r['none_metric'] for r in rs]):.4g}) | "
                     f"{_median([r['metric'] - r['none_metric'] for r in rs]):+.3g} | "
                     + " / ".join(f"{r['metric'] - r['none_metric']:+.3g}" for r in rs) + " | "
                     f"{100 * _median([r['flops_saved'] for r in rs]):.1f}% | "
                     f"{'never' if first is None else f'{first:.2f}'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", required=True, help="a bench JSON whose <name>.runs/ holds its none runs")
    ap.add_argument("--rules", nargs="+", default=["rewind:0.05", "rewind:0.02", "cka:0.95"],
                    help="RULE:TAU, or TASK=RULE:TAU for one task only")
    ap.add_argument("--tasks", nargs="*", default=None, help="only these bench tasks")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", required=True, help="JSON path; the Markdown table goes beside it")
    a = ap.parse_args(argv)
    out = Path(a.out)
    rows = study(a.bench, a.rules, a.jobs, out_dir=out.with_suffix(".runs"), tasks=a.tasks)
    import sys
    command = "python -m smartfrz.lab.label_study " + " ".join(sys.argv[1:] if argv is None else argv)
    _write_json(out, {"bench": a.bench, "rules": a.rules, "command": command, "rows": rows})
    md = f"# Oracle label rules on `{a.bench}`\n\nMedians over seeds; Δ against that seed's `none` run.\n\n" + table(rows)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)
