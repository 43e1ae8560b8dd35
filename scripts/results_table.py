"""The README's results table, written from the committed bench JSON (never typed by hand).

    python scripts/results_table.py            # rewrites README.md between its results markers
    python scripts/results_table.py --print    # only prints the table

One row per suite, task and policy: the metric's median, Δ against `none` (the median of per-seed deltas,
each run against the `none` run of its own seed), FLOPs saved, the decisions' own FLOPs (the veto's probe
forwards; n/m where the runs predate counting them), the seconds spent recording and deciding as a share of the
run's wall-clock (the issue's "decision overhead"), the wall-clock time saved against `none` where both were
trained by one invocation of the bench (else n/a: different loads do not compare), and on tasks with a measured
frontier (reports/bench/bound/frontier_<task>.json) the share of it a policy reaches within the tolerance, net of
those decision FLOPs where they were counted.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from smartfrz.lab.bench import _delta, _share, summarize

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("smoke", "demo", "cpu", "headroom", "lora")  # tuning has no bound yet: it judges no policy
START, END = "<!-- results:start -->", "<!-- results:end -->"


def frontier(task: str) -> dict | None:
    path = ROOT / "reports" / "bench" / "bound" / f"frontier_{task}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def noise(suite: str, task: str) -> dict | None:
    """The task's noise floor: `none` itself with its learning rate nudged (scripts/noise_floor.py)."""
    for name in (f"noise_{task}.json", f"noise_{suite}_{task}.json"):
        path = ROOT / "reports" / "bench" / "bound" / name
        if path.is_file():
            return json.loads(path.read_text())
    return None


def table() -> str:
    lines = ["| suite | task (`none`'s metric) | policy | Δ vs none | FLOPs saved | decision FLOPs | deciding (time) "
             "| time saved (wall) | of the frontier |", "|---|---|---|---|---|---|---|---|---|"]
    notes, noises, machines = [], [], []
    for suite in SUITES:
        path = ROOT / "reports" / "bench" / f"{suite}.json"
        if not path.is_file():
            continue
        bench = json.loads(path.read_text())
        rows = summarize(bench)
        base = {r["task"]: r for r in rows if r["policy"] == "none"}
        partial = "" if bench.get("complete", True) else " (partial)"
        machines.append(f"`{suite}` {bench.get('started', '?')[:10]} on {bench.get('device')}")
        for r in rows:
            if r["policy"] == "none":
                continue
            f, b = frontier(r["task"]), base[r["task"]]
            share = "n/a"
            if f and f.get("frontier"):  # both as the median of the runs' own savings, as the frontier is measured
                saved = statistics.median(x["flops_saved"] - (x.get("decision_flops") or 0.0) / x["full_train_flops"]
                                          for x in bench["runs"] if (x["task"], x["policy"]) == (r["task"], r["policy"]))
                safe = r["metric_delta_median"] >= -f["tolerance"]
                share = f"{saved / f['frontier']['median_flops_saved']:.0%}" if safe else "lost accuracy"
            wall = "n/a" if r["speedup"] is None else f"{1 - 1 / r['speedup']:.0%}"
            lines.append(f"| {suite}{partial} | {r['task']} ({b['metric_name']} {b['metric']:.4g}) | {r['policy']} | "
                         f"{_delta(r['metric_delta_median'], r['metric'])} | {100 * r['flops_saved']:.1f}% | "
                         f"{_share(r['decision_flops_share'])} | {_share(r['overhead_share'])} | {wall} | {share} |")
        for task in base:
            if (n := noise(suite, task)) is not None:
                m = base[task]["metric"]
                worst = max(abs(v) for v in n["median_delta_by_scale"].values())
                noises.append(f"- {task}: a seed's |Δ| median {_delta(n['median_abs_delta'], m).lstrip('+')}, max "
                              f"{_delta(n['max_abs_delta'], m).lstrip('+')}; the median over seeds up to "
                              f"{_delta(worst, m).lstrip('+')}")
            f = frontier(task)
            if f is not None:
                fr = f["frontier"]
                notes.append(f"- {task}: " + ("no accuracy-safe freeze found" if fr is None else
                             f"**{100 * fr['median_flops_saved']:.1f}%** of FLOPs ({fr['source']}; median Δ "
                             f"{_delta(fr['median_delta'], base[task]['metric'])} over 3 seeds)"))
    if machines:  # a seed reproduces exactly only on the same kind of CPU: suites measured apart are read apart
        lines += ["", "Measured: " + "; ".join(machines) + "."]
    if notes:
        lines += ["", "Frontier (the most any accuracy-safe freeze saves, `reports/bench/bound/frontier_*.json`):", *notes]
    if noises:
        lines += ["", "Noise floor (`none` itself with its learning rate nudged 0.1-1%, against `none`: a Δ inside it "
                  "tells nothing; `reports/bench/bound/noise_*.json`):", *noises]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="print the table instead of rewriting README.md")
    a = ap.parse_args(argv)
    text = table()
    if a.print:
        print(text)
        return
    readme = ROOT / "README.md"
    old = readme.read_text()
    if START not in old or END not in old:
        raise SystemExit(f"README.md has no {START} ... {END} markers to write the table between")
    readme.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{text}\n{END}", old,
                             flags=re.S))
    print(f"wrote the results table into {readme}")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
