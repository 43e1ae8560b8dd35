"""``make demo``: SmartFRZ against full training on sklearn's digits, offline, on a CPU in a minute or two.

    python -m smartfrz.lab.quickstart [--epochs 15] [--seeds 0 1 2] [--out reports/quickstart]

Writes ``summary.md`` (table per method), ``results.json``, ``results.csv``, the run files
(``runs/``) and three figures: the freeze timeline, the accuracy curves and the compute saved; and
one W&B run per training run under ``wandb/`` (offline unless logged in; ``WANDB_MODE=disabled``
turns it off), with the freeze-events table and the timeline chart.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from . import reports
from .experiment import ExperimentConfig, run


def quickstart(out_dir="reports/quickstart", epochs: int = 15, seeds=(0, 1, 2), progress: bool = True,
               policies=("none", "smartfrz"), frz: dict | None = None, device: str = "cpu",
               wandb: bool = True) -> pd.DataFrame:
    """Trains ``digits_cnn`` on sklearn's digits once per policy and seed; returns the per-method table."""
    out = Path(out_dir)
    wandb = wandb and os.getenv("WANDB_MODE", "").lower() != "disabled"
    earlier = set((out / "wandb").glob("*run-*"))  # W&B runs of earlier invocations are not this one's
    runs = []
    for seed in seeds:
        for policy in policies:
            cfg = ExperimentConfig(name="quickstart", task="digits", model="digits_cnn", policy=policy, epochs=epochs,
                                   seed=seed, frz=dict(frz or {}), device=device, out_dir=str(out / "runs"),
                                   progress=False, wandb=wandb, wandb_dir=str(out))
            r = run(cfg).to_dict()
            runs.append(r)
            if progress:
                print(f"{r['run']}: accuracy {r['metric']:.1f}%, training FLOPs saved {r['flops_saved']:.0%}, "
                      f"train time {r['wall_s']:.1f}s, frozen units {len(r['frozen_units'])}/{len(r['units'])}",
                      flush=True)
    df = reports.frame(runs)
    summary = reports.tables(df, out)
    figs = _figures(df, runs, out)
    _write_summary(summary, figs, out, epochs, list(seeds))
    (out / "results.json").write_text(json.dumps(
        {"settings": {"epochs": epochs, "seeds": list(seeds), "policies": list(policies), "frz": frz or {}},
         "summary": summary.to_dict("records"), "runs": df.to_dict("records")}, indent=1, default=str))
    if progress:
        print(f"results: {out / 'summary.md'} (table), {out / 'results.json'}, figures {', '.join(p.name for p in figs.values())}"
              f", run files in {out / 'runs'}")
        if wandb:
            print(wandb_pointer(out / "wandb", earlier))
    return summary


def wandb_pointer(folder: Path, earlier=frozenset()) -> str:
    """Where this invocation's W&B runs are and how to upload them (offline) or see them (online)."""
    offline = sorted(p for p in folder.glob("offline-run-*") if p not in earlier)
    if offline:
        return (f"W&B: {len(offline)} offline runs in {folder}/ (freeze-events table, timeline chart); upload with "
                f"`wandb sync {folder}/offline-run-*` after `wandb login`")
    online = sorted(p for p in folder.glob("run-*") if p not in earlier)
    if online:
        return f"W&B: {len(online)} runs synced online (project smartfrz, group quickstart); local copies in {folder}/"
    return f"W&B: no run was written under {folder}/ (W&B unavailable or disabled; see the warnings above)"


def _figures(df: pd.DataFrame, runs: list[dict], out: Path) -> dict[str, Path]:
    import matplotlib.pyplot as plt
    import seaborn as sns
    from .wandb_logging import timeline_figure

    paths = {}
    frz_runs = [r for r in runs if r["config"]["policy"] != "none"]
    if frz_runs:  # the freeze timeline of the first run that freezes
        r = frz_runs[0]
        fig = timeline_figure(r["timeline"], [u["name"] for u in r["units"]], r["steps"])
        fig.axes[0].set_title(f"{r['run']}: " + fig.axes[0].get_title(), fontsize=9)
        paths["timeline"] = out / "freeze_timeline.png"
        fig.savefig(paths["timeline"], dpi=110)
    curves = reports.curves_frame(runs)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(curves, x="epoch", y="metric", hue="policy", marker="o", ax=ax)
    ax.set(ylabel="test accuracy (%)", title="accuracy over training (mean over seeds, 95% CI)")
    fig.tight_layout()
    paths["accuracy"] = out / "accuracy_curves.png"
    fig.savefig(paths["accuracy"], dpi=110)
    plt.close(fig)
    long = df.melt(id_vars=["policy", "seed"], value_vars=["train_tflops", "wall_s"], var_name="cost")
    long["value"] = long.apply(lambda r: r["value"] * 1e3 if r["cost"] == "train_tflops" else r["value"], axis=1)
    long["cost"] = long["cost"].map({"train_tflops": "training GFLOPs", "wall_s": "training time (s)"})
    g = sns.catplot(long, x="policy", y="value", col="cost", kind="bar", sharey=False, height=3.2, aspect=1.1)
    g.set_titles("{col_name}").set_axis_labels("", "")
    paths["compute"] = out / "compute_saved.png"
    g.savefig(paths["compute"], dpi=110)
    plt.close(g.figure)
    return paths


def _write_summary(summary: pd.DataFrame, figs: dict, out: Path, epochs: int, seeds: list) -> None:
    lines = ["# Quickstart: SmartFRZ against full training", "",
             f"`digits_cnn` on sklearn's digits (8x8 scans, 1347 train / 450 test), {epochs} epochs, seeds {seeds}; "
             "CPU. Mean over seeds; savings are against full training (policy `none`) on the same seed.", "",
             "| method | test accuracy (%) | Δ accuracy | training GFLOPs | FLOPs saved | train time (s) | time saved | frozen units |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        std = "" if pd.isna(r.metric_std) else f" ± {r.metric_std:.1f}"
        lines.append(f"| {r.policy} | {r.metric:.1f}{std} | {r.metric_delta:+.1f} | {r.train_tflops * 1e3:.1f} | "
                     f"{r.flops_saved:.0%} | {r.wall_s:.1f} | {r.time_saved:.0%} | {r.frozen_units:.1f}/{r.units} |")
    lines += [""] + [f"![{k}]({p.name})" for k, p in figs.items()] + [""]
    (out / "summary.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="reports/quickstart")
    ap.add_argument("--no-wandb", action="store_true", help="no W&B runs (same as WANDB_MODE=disabled)")
    a = ap.parse_args(argv)
    summary = quickstart(a.out, a.epochs, a.seeds, wandb=not a.no_wandb)
    print(summary[["policy", "metric", "metric_delta", "flops_saved", "wall_s", "time_saved", "frozen_units"]]
          .to_string(index=False))


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)
