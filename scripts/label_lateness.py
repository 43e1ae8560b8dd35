"""How much a label's oracle saves on a predictor's training runs, by kind and length of run (no training).

A predictor learns when its labels freeze: if they freeze long runs only near their end, so will it. This reads the
held-out replay a training report kept (``metrics.json``, each run's oracle saving and the held-out predictor's)
and groups the runs by regime and by how many epochs they lasted.

    python scripts/label_lateness.py reports/predictor/candidates/mixlabel_77/metrics.json --edges 6 13
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def rows(metrics: dict, split: str) -> list[dict]:
    """One row per run of the held-out split: its recipe, the oracle's saving and the held-out predictor's."""
    runs, out = metrics["runs"], []
    for group in metrics["held_out"][split].values():
        for r in group["per_run"]:
            run = runs[r["run"]]
            out.append({"name": run["name"], "regime": run["regime"], "epochs": run["final"]["epoch"],
                        "oracle_saved": r["oracle_saved"], "saved": r["saved"], "early": r["early"], "units": r["units"]})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path, help="a training report's metrics.json")
    ap.add_argument("--split", default="family", choices=["family", "schedule"])
    ap.add_argument("--edges", type=float, nargs="+", default=[6, 13], help="epoch bounds between length groups")
    ap.add_argument("--runs", action="store_true", help="also list every run")
    args = ap.parse_args(argv)
    table = rows(json.loads(args.metrics.read_text()), args.split)
    edges = [0.0, *sorted(args.edges), float("inf")]
    print(f"| regime | epochs | runs | oracle saves (median) | held-out predictor saves (median) | units early |")
    print("|---|---|---|---|---|---|")
    for regime in sorted({r["regime"] for r in table}):
        for lo, hi in zip(edges, edges[1:]):
            sel = [r for r in table if r["regime"] == regime and lo <= r["epochs"] < hi]
            if sel:
                print(f"| {regime} | [{lo:g}, {hi:g}) | {len(sel)} | {statistics.median(r['oracle_saved'] for r in sel):.1%} "
                      f"| {statistics.median(r['saved'] for r in sel):.1%} | {sum(r['early'] for r in sel)}/{sum(r['units'] for r in sel)} |")
    if args.runs:
        for r in sorted(table, key=lambda r: -r["epochs"]):
            print(f"{r['name']}: {r['epochs']:g} epochs, oracle {r['oracle_saved']:.1%}, predictor {r['saved']:.1%}, "
                  f"early {r['early']}/{r['units']}")


if __name__ == "__main__":
    main()
