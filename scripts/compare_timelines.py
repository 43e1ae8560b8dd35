"""Did a change move any decision? The freeze timelines of one policy in two bench JSONs, run by run.

    python scripts/compare_timelines.py reports/bench/headroom.json reports/bench/diag/no_predictor_headroom.json

Prints, per task and seed of ``--policy`` (default smartfrz), "same" or the units whose freeze step differs, then a
line per task: runs with identical timelines, and the median Δ vs `none` and FLOPs saved on each side (each run
against `none` of its own file and seed). A run missing from either side is listed as such.
"""
from __future__ import annotations

import argparse
import json
import statistics

from smartfrz.lab.bench import seed_deltas


def freezes(run: dict) -> dict[int, int]:
    return {e["index"]: e["step"] for e in run["timeline"] if e["event"] == "freeze"}


def by_key(bench: dict, policy: str) -> dict[tuple[str, int], dict]:
    return {(r["task"], r["seed"]): r for r in bench["runs"] if r["policy"] == policy}


def delta(bench: dict, run: dict) -> float | None:
    return next((d for r, d in seed_deltas(bench["runs"], run["task"], run["policy"]) if r is run), None)


def compare(a: dict, b: dict, policy: str = "smartfrz") -> list[str]:
    ra, rb = by_key(a, policy), by_key(b, policy)
    lines, tasks = [], {}
    for key in sorted(set(ra) | set(rb)):
        task, seed = key
        if key not in ra or key not in rb:
            lines.append(f"{task} seed {seed}: only in {'the first' if key in ra else 'the second'} file")
            continue
        fa, fb = freezes(ra[key]), freezes(rb[key])
        moved = {u: (fa.get(u), fb.get(u)) for u in sorted(set(fa) | set(fb)) if fa.get(u) != fb.get(u)}
        tasks.setdefault(task, []).append((not moved, ra[key], rb[key]))
        lines.append(f"{task} seed {seed}: " + ("same" if not moved else "units moved (first -> second step): " +
                     ", ".join(f"{u}: {x} -> {y}" for u, (x, y) in moved.items())))
    for task, rows in tasks.items():
        def med(bench, runs, f):
            vals = [v for v in (f(bench, r) for r in runs) if v is not None]
            return statistics.median(vals) if vals else float("nan")
        da = med(a, [r for _, r, _ in rows], delta)
        db = med(b, [r for _, _, r in rows], delta)
        sa = med(a, [r for _, r, _ in rows], lambda _, r: r["flops_saved"])
        sb = med(b, [r for _, _, r in rows], lambda _, r: r["flops_saved"])
        lines.append(f"{task}: {sum(s for s, _, _ in rows)} of {len(rows)} runs identical; Δ vs none {da:+.4g} -> "
                     f"{db:+.4g}, FLOPs saved {100 * sa:.1f}% -> {100 * sb:.1f}% (medians of the runs)")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--policy", default="smartfrz")
    a = ap.parse_args(argv)
    with open(a.first) as f, open(a.second) as g:
        print("\n".join(compare(json.load(f), json.load(g), a.policy)))


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
