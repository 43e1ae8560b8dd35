# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (smartfrz)
#     language: python
#     name: smartfrz
# ---

# %% [markdown]
# # 90 · Report: paper-style tables and figures
#
# Collects every run file (`reports/runs/*.json` for `paper`, `reports/smoke/runs/*.json` for `smoke`) into
# one table per experiment and method: accuracy (or the task's metric), training time, training FLOPs
# (measured per frozen prefix), peak memory and GPU energy, with the savings against full training; then the
# freeze timelines, Pareto plots of the metric change against the compute and time saved, and learning curves.
# Writes `results.md`, `results.csv` and the PNGs to `out_dir`.

# %% tags=["parameters"]
preset = "smoke"  # smoke | paper: see the first cell
# None = the preset's value (smartfrz/lab/presets.py); override any of them with papermill -p NAME VALUE
runs_dirs = None  # smoke: ['reports/smoke/runs'] | paper: ['reports/runs']
out_dir = None  # smoke: 'reports/smoke/report' | paper: 'reports/paper'
threads = None  # smoke: 1 | paper: None

# %%
from IPython.display import Image, display

from smartfrz.lab import presets

s = presets.resolve("90_report", preset, runs_dirs=runs_dirs, out_dir=out_dir, threads=threads)
presets.setup(s)  # working directory = project root; torch threads
s

# %%
from smartfrz.lab import reports

df = reports.collect(s.runs_dirs)
print(f"{len(df)} runs from {s.runs_dirs}" if len(df) else f"no run files in {s.runs_dirs}: run the experiment notebooks first")
summary = reports.tables(df, s.out_dir)
summary

# %% [markdown]
# The same, one row per experiment and one column group per method:

# %%
if len(summary):
    display(summary.pivot_table(index=reports.GROUP, columns="policy", values=["metric", "flops_saved", "time_saved"]))

# %%
figs = reports.figures(df, s.out_dir, runs=[r for d in s.runs_dirs for r in reports.load(d)])
for path in figs.values():
    display(Image(filename=str(path)))
