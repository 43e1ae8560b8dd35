"""Saving against accuracy, one panel a bench task: what the README's results table says, as a picture.

Each policy's seeds are small markers and their median a large one: x is the FLOPs saved net of the decisions'
own forwards (the veto's probes), y the change in the metric against `none` of the same seed, in points (GLUE
scores x100). The dashed line is the 0.5-point tolerance, the grey band the task's noise floor (the median over
seeds of `none` itself with its learning rate nudged, reports/bench/bound/noise_*.json: a median inside it tells
nothing), the dotted line the task's frontier where it was measured (reports/bench/bound/frontier_*.json).

    python scripts/bench_figure.py                      # reports/bench/tradeoff.png from the committed JSON
    python scripts/bench_figure.py --extra "smartfrz, no predictor=artifacts/ablation/{suite}.json" --out F.png

``--extra LABEL=PATH`` adds the `smartfrz` runs of another bench JSON under LABEL (``{suite}`` in PATH is each
suite's name), each against the `none` runs of its own file.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_table import ROOT, SUITES, frontier, noise  # noqa: E402

from smartfrz.lab.bench import seed_deltas  # noqa: E402

POLICIES = ("oracle", "smartfrz", "linear", "autofreeze")  # the +cache runs repeat their policy's decisions
COLORS = {"oracle": "#555555", "smartfrz": "#d62728", "linear": "#1f77b4", "autofreeze": "#2ca02c"}
EXTRA_COLORS = ("#ff7f0e", "#9467bd", "#8c564b")


def points(bench: dict, policy: str, task: str) -> list[tuple[float, float]]:
    """(net FLOPs saved %, Δ in points) per seed of ``policy`` on ``task``, each against `none` of its own seed."""
    runs = [r for r in bench["runs"] if r["task"] == task]
    base = {r["seed"]: r["metric"] for r in runs if r["policy"] == "none"}
    scale = 100.0 if base and max(abs(v) for v in base.values()) <= 1.0 else 1.0  # GLUE in [0, 1]; the rest in %
    return [(100.0 * (r["flops_saved"] - (r.get("decision_flops") or 0.0) / r["full_train_flops"]), scale * d)
            for r, d in seed_deltas(runs, task, policy)]  # net of the decisions' own forwards


def panels(extras: dict[str, str]) -> list[dict]:
    """One entry a task of the committed suites: its points per label, noise band and frontier (all in %)."""
    out = []
    for suite in SUITES:
        path = ROOT / "reports" / "bench" / f"{suite}.json"
        if not path.is_file():
            continue
        bench = json.loads(path.read_text())
        others = {}
        for label, pattern in extras.items():
            p = Path(pattern.format(suite=suite))
            if p.is_file():
                others[label] = json.loads(p.read_text())
        for task in dict.fromkeys(r["task"] for r in bench["runs"]):
            series = {p: points(bench, p, task) for p in POLICIES}
            series.update({label: points(b, "smartfrz", task) for label, b in others.items()})
            metric = next(r for r in bench["runs"] if r["task"] == task and r["policy"] == "none")
            scale = 100.0 if abs(metric["metric"]) <= 1.0 else 1.0
            n, f = noise(suite, task), frontier(task)
            out.append({"suite": suite, "task": task, "series": {k: v for k, v in series.items() if v},
                        "noise": None if n is None else scale * max(abs(v) for v in n["median_delta_by_scale"].values()),
                        "frontier": 100 * f["frontier"]["median_flops_saved"] if f and f.get("frontier") else None,
                        "tolerance": 0.5})
    return out


def draw(entries: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = (len(entries) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    extra_colors = iter(EXTRA_COLORS)
    colors = dict(COLORS)
    for ax, e in zip(axes.flat, entries):
        if e["noise"] is not None:
            ax.axhspan(-e["noise"], e["noise"], color="0.9", zorder=0, label="noise floor")
        ax.axhline(-e["tolerance"], color="0.4", ls="--", lw=0.8, label="-0.5 points")
        ax.axhline(0, color="0.6", lw=0.5)
        if e["frontier"] is not None:
            ax.axvline(e["frontier"], color="k", ls=":", lw=1, label="frontier")
        for label, pts in e["series"].items():
            if label not in colors:
                colors[label] = next(extra_colors, "#17becf")
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=12, color=colors[label], alpha=0.45, zorder=2)
            extra = label not in COLORS  # hollow, so a policy it coincides with shows through
            ax.scatter([statistics.median(xs)], [statistics.median(ys)], s=110 if extra else 70,
                       zorder=4 if extra else 3, facecolor="none" if extra else colors[label],
                       edgecolor=colors[label] if extra else "k", linewidth=2 if extra else 1, label=label,
                       marker="D" if extra else "o")
        ax.set_title(f"{e['suite']}: {e['task']}", fontsize=9)
        ax.set_xlabel("FLOPs saved, net (%)", fontsize=8)
        ax.set_ylabel("Δ vs none (points)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(entries):]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 8), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "tradeoff.png"))
    ap.add_argument("--extra", nargs="*", default=[], metavar="LABEL=PATH",
                    help="another bench JSON's smartfrz runs under LABEL; {suite} in PATH is each suite")
    a = ap.parse_args(argv)
    extras = {}
    for item in a.extra:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            ap.error(f"--extra takes LABEL=PATH, got {item!r}")
        extras[label] = path
    entries = panels(extras)
    if not entries:
        raise SystemExit(f"no bench JSON under {ROOT / 'reports' / 'bench'}: run the suites first (docs/results.md)")
    draw(entries, Path(a.out))
    print(f"wrote {a.out} ({len(entries)} tasks)")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
