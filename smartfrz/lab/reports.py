"""Paper-style tables and figures from the run files that ``experiment.run`` and ``hf_glue.run_glue``
write (``reports/runs/<run>.json``).

    df = collect("reports/runs")           # one row per run
    summary = tables(df, "reports/paper")  # per method: metric, time, FLOPs, memory, energy (+ .md/.csv)
    figures(df, "reports/paper")           # freeze timelines, Pareto plots, learning curves (PNG)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

GROUP = ["experiment", "task", "model", "regime"]  # runs comparable to each other, apart from the method
POLICY_ORDER = ["none", "smartfrz", "linear", "autofreeze", "oracle"]


def load(runs_dir) -> list[dict]:
    """The run files of a folder (not its subfolders), oldest first; none yields []."""
    files = sorted(Path(runs_dir).glob("*.json"), key=lambda p: p.stat().st_mtime)
    return [json.loads(p.read_text()) for p in files]


def _regime(cfg: dict) -> str:
    from .models import is_text_model
    pretrained = cfg.get("pretrained")
    if pretrained is None:
        pretrained = is_text_model(cfg.get("model", ""))
    return "finetune" if pretrained else "scratch"


def frame(runs: list[dict]) -> pd.DataFrame:
    """One row per run, with savings relative to the ``none`` run of the same group and seed."""
    rows = []
    for r in runs:
        c = r["config"]
        rows.append({"run": r["run"], "experiment": c.get("name", ""), "task": c.get("task"), "model": c.get("model"),
                     "regime": _regime(c), "policy": c.get("policy"), "seed": c.get("seed", 0),
                     "epochs": c.get("epochs"), "metric_name": r.get("metric_name", ""), "metric": r.get("metric"),
                     "train_tflops": r["train_flops"] / 1e12, "flops_saved": r.get("flops_saved", 0.0),
                     "wall_s": r["wall_s"], "peak_mem_mb": r["peak_mem_bytes"] / 2**20,
                     "energy_kj": None if r.get("energy_j") is None else r["energy_j"] / 1e3,
                     "overhead_s": (r.get("overhead_s") or {}).get("total", 0.0), "steps": r["steps"],
                     "frozen_units": len(r.get("frozen_units", [])), "units": len(r.get("units", [])),
                     "device": r.get("device", "")})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["energy_kj"] = df["energy_kj"].astype(float)
    base = df[df.policy == "none"].set_index(GROUP + ["seed"])[["metric", "wall_s", "energy_kj"]]
    base = base[~base.index.duplicated(keep="last")]
    joined = df.join(base, on=GROUP + ["seed"], rsuffix="_base")
    df["metric_delta"] = joined["metric"] - joined["metric_base"]
    df["time_saved"] = 1 - joined["wall_s"] / joined["wall_s_base"]
    df["energy_saved"] = 1 - joined["energy_kj"] / joined["energy_kj_base"]
    return df


def collect(runs_dir) -> pd.DataFrame:
    """``frame`` of every run file in ``runs_dir`` (or in each folder of a list)."""
    dirs = [runs_dir] if isinstance(runs_dir, (str, Path)) else list(runs_dir)
    return frame([r for d in dirs for r in load(d)])


def _markdown(df: pd.DataFrame) -> str:
    fmt = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.3g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def tables(df: pd.DataFrame, out_dir=None) -> pd.DataFrame:
    """Per experiment and method (mean over seeds): metric, time, FLOPs, memory, energy and the savings
    against full training. Writes ``results.md`` and ``results.csv`` into ``out_dir`` when given."""
    if df.empty:
        return df
    agg = dict(seeds=("seed", "nunique"), metric_name=("metric_name", "first"), metric=("metric", "mean"),
               metric_std=("metric", "std"), metric_delta=("metric_delta", "mean"), wall_s=("wall_s", "mean"),
               time_saved=("time_saved", "mean"), train_tflops=("train_tflops", "mean"),
               flops_saved=("flops_saved", "mean"), peak_mem_mb=("peak_mem_mb", "mean"),
               energy_kj=("energy_kj", "mean"), energy_saved=("energy_saved", "mean"),
               frozen_units=("frozen_units", "mean"), units=("units", "first"))
    out = df.groupby(GROUP + ["policy"], sort=False).agg(**agg).reset_index()
    out["policy"] = pd.Categorical(out["policy"], [p for p in POLICY_ORDER if p in set(out["policy"])]
                                   + sorted(set(out["policy"]) - set(POLICY_ORDER)))
    out = out.sort_values(GROUP + ["policy"], kind="stable").reset_index(drop=True)
    out["policy"] = out["policy"].astype(str)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        out.to_csv(out_dir / "results.csv", index=False)
        note = ("Mean over seeds. metric_delta: metric minus full training (policy none) on the same seed; "
                "time_saved / flops_saved / energy_saved: share of full training's wall time, training FLOPs "
                "(measured per frozen prefix) and GPU energy saved.\n\n")
        (out_dir / "results.md").write_text("# Results\n\n" + note + _markdown(out))
    return out


def timeline_frame(runs: list[dict]) -> pd.DataFrame:
    """The frozen share of forward FLOPs over training, as a step function per run."""
    rows = []
    for r in runs:
        c, total = r["config"], max(r["steps"], 1)
        key = {"run": r["run"], "experiment": c.get("name", ""), "model": c.get("model"), "task": c.get("task"),
               "regime": _regime(c), "policy": c.get("policy"), "seed": c.get("seed", 0)}
        share = 0.0
        rows.append({**key, "progress": 0.0, "frozen_flop_share": 0.0})
        for e in r.get("timeline", []):
            share += e["flop_share"] if e["event"] == "freeze" else -e["flop_share"]
            rows.append({**key, "progress": e["step"] / total, "frozen_flop_share": share})
        rows.append({**key, "progress": 1.0, "frozen_flop_share": share})
    return pd.DataFrame(rows)


def curves_frame(runs: list[dict]) -> pd.DataFrame:
    """Eval metric against epoch, one row per evaluation."""
    rows = []
    for r in runs:
        c = r["config"]
        for h in r.get("history", []):
            if h.get("eval") and h.get("metric") is not None:
                rows.append({"run": r["run"], "experiment": c.get("name", ""), "model": c.get("model"),
                             "task": c.get("task"), "regime": _regime(c), "policy": c.get("policy"),
                             "seed": c.get("seed", 0), "epoch": h["epoch"], "metric": h["metric"],
                             "metric_name": r.get("metric_name", "")})
    return pd.DataFrame(rows)


def _panel(df: pd.DataFrame) -> pd.Series:
    return df["task"] + " " + df["model"] + " (" + df["regime"] + ")"


def figures(df: pd.DataFrame, out_dir, runs: list[dict] | None = None, runs_dir=None) -> dict[str, Path]:
    """Freeze timelines, Pareto plots (metric change against FLOPs and time saved) and learning
    curves as PNGs in ``out_dir``; ``runs`` (or ``runs_dir``) gives the timelines and curves."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if runs is None:
        runs = load(runs_dir) if runs_dir is not None else []
    wanted = set(df["run"]) if not df.empty else set()
    runs = [r for r in runs if r["run"] in wanted]
    paths: dict[str, Path] = {}
    if df.empty:
        return paths
    order = [p for p in POLICY_ORDER if p in set(df.policy)]
    col_wrap = min(3, df.assign(panel=_panel(df))["panel"].nunique())

    tl = timeline_frame([r for r in runs if r["config"].get("policy") != "none"])
    if not tl.empty:
        tl["panel"] = _panel(tl)
        g = sns.relplot(tl, x="progress", y="frozen_flop_share", hue="policy", units="run", estimator=None,
                        col="panel", col_wrap=min(3, tl.panel.nunique()), kind="line", drawstyle="steps-post",
                        hue_order=[p for p in order if p != "none"], height=2.6, aspect=1.4)
        g.set_axis_labels("share of training", "frozen share of forward FLOPs").set_titles("{col_name}", size=8)
        paths["timelines"] = out_dir / "freeze_timelines.png"
        g.savefig(paths["timelines"], dpi=110)
        plt.close(g.figure)

    long = df.melt(id_vars=["run", "policy", "model", "metric_delta"], value_vars=["flops_saved", "time_saved"],
                   var_name="saving", value_name="saved")
    long = long.dropna(subset=["saved", "metric_delta"])
    if not long.empty:
        g = sns.relplot(long, x="saved", y="metric_delta", hue="policy", style="model", col="saving",
                        hue_order=order, s=60, height=3.2, aspect=1.2, facet_kws={"sharex": False})
        for ax in g.axes.flat:
            ax.axhline(0, color="grey", lw=0.8, ls=":")
        g.set_axis_labels("share saved vs full training", "metric change vs full training").set_titles("{col_name}")
        paths["pareto"] = out_dir / "pareto.png"
        g.savefig(paths["pareto"], dpi=110)
        plt.close(g.figure)

    cv = curves_frame(runs)
    if not cv.empty:
        cv["panel"] = _panel(cv)
        g = sns.relplot(cv, x="epoch", y="metric", hue="policy", col="panel", col_wrap=col_wrap, kind="line",
                        hue_order=order, marker="o", height=2.6, aspect=1.4, facet_kws={"sharey": False})
        g.set_titles("{col_name}", size=8)
        paths["curves"] = out_dir / "learning_curves.png"
        g.savefig(paths["curves"], dpi=110)
        plt.close(g.figure)
    return paths


def run_once(cfg, resume: bool = False) -> dict:
    """``experiment.run(cfg)`` as a result dict; with ``resume``, a run whose file already exists is
    read back instead of trained again (so a long notebook picks up where it stopped)."""
    from .experiment import run
    path = Path(cfg.out_dir or "") / f"{cfg.run_name}.json"
    if resume and cfg.out_dir and path.is_file():
        print(f"resume: {cfg.run_name} already done ({path})")
        return json.loads(path.read_text())
    return run(cfg).to_dict()
