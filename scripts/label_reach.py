"""When each label would freeze each unit, read from the `none` runs a bench recorded (no training).

Every `none` run of a bench records its rewind harms and CKA curves (``record_cka``), so a label's freeze schedule
on a task is known before any oracle is trained: this sets it beside the schedules measured safe there (the
frontier, `reports/bench/bound/frontier_*.json`) to show which labels could reach them. Harms above the cap a run
was recorded with (its `rewind_cap`: 0.05 before 2026-12-05 night, `labels.REWIND_CAP` since) are not resolved, so no
rewind threshold above it can be read.

    python scripts/label_reach.py reports/bench/headroom.runs reports/bench/cpu_resnet20_rule.runs \\
        reports/bench/cpu_mrpc_rule.runs --taus 0.01 0.02 0.05 --labels cka:0.995
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from smartfrz.lab.experiment import oracle_steps
from smartfrz.predictor_training.labels import check_readable


def none_runs(folder: Path) -> dict[str, list[dict]]:
    """A runs folder's `none` runs that recorded rewind harms, by task."""
    tasks = defaultdict(list)
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        if run.get("config", {}).get("policy") == "none" and "rewind" in (run.get("cka") or {}):
            tasks[run["config"]["name"].removeprefix("bench-")].append(run)
    return tasks


def schedule(runs: list[dict], label: float | str) -> list[float | None]:
    """Each unit's freeze epoch under ``label`` (RULE:TAU; a number is `rewind:` that), the median over runs
    (None: not labelled in most runs)."""
    per_epoch = runs[0]["steps"] / runs[0]["config"]["epochs"]
    names = runs[0]["cka"]["units"]
    label = f"rewind:{label:g}" if isinstance(label, (int, float)) else label
    steps = [oracle_steps(r, label) for r in runs]
    out = []
    for name in names:
        seen = [s[name] / per_epoch for s in steps if s.get(name) is not None]
        out.append(statistics.median(seen) if 2 * len(seen) > len(runs) else None)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="bench runs folders (<out>.runs)")
    ap.add_argument("--taus", nargs="*", type=float, default=[0.01, 0.02, 0.05], help="rewind thresholds")
    ap.add_argument("--labels", nargs="*", default=[], help="other labels, RULE:TAU or terms joined by + (e.g. cka:0.995 cka:0.995+rewind:0.1)")
    a = ap.parse_args(argv)
    labels = [f"rewind:{t:g}" for t in a.taus] + a.labels
    for label in labels:
        check_readable(label, 1.0)  # a malformed label raises, naming what is allowed
    found = {folder: none_runs(Path(folder)) for folder in a.runs}
    for label in labels:  # each run's harms are resolved up to the cap it was recorded with
        for runs in (r for tasks in found.values() for r in tasks.values()):
            try:
                check_readable(label, min(r["cka"].get("rewind_cap", 0.05) for r in runs))
            except ValueError as e:
                raise SystemExit(str(e))
    print("| task | runs | epochs | label | each unit's freeze epoch, front to back (median over runs; - never) |")
    print("|---|---|---|---|---|")
    for folder in a.runs:
        for task, runs in found[folder].items():
            for label in labels:
                epochs = " ".join("-" if e is None else f"{e:.1f}" for e in schedule(runs, label))
                print(f"| {task} | {len(runs)} | {runs[0]['config']['epochs']} | `{label}` | {epochs} |")


if __name__ == "__main__":
    main()
