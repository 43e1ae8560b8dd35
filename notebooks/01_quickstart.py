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
# # 01 · Quickstart: SmartFRZ against full training
#
# The main job of `make demo`: a small CNN on sklearn's bundled digits (offline, CPU, about a minute), trained
# with SmartFRZ and without freezing (`none`), over a few seeds. It shows the freeze timeline, the accuracy
# curves and the compute saved, and writes `reports/quickstart/` (`summary.md`, `results.json`, PNG figures,
# run files). The same without Jupyter: `python -m smartfrz.lab.quickstart`.
#
# **Presets.** `smoke` (the default, and what `make test` runs): CPU, offline, a tiny subset, a minute or two;
# it checks that everything runs, and its numbers mean nothing. `paper`: the paper-scale GPU runs
# (`python -m smartfrz.lab.reproduce --preset paper --gpu 0`, or `papermill NOTEBOOK OUT -p preset paper`).
# Every setting in the next cell can be overridden with `papermill -p NAME VALUE`.

# %% tags=["parameters"]
preset = "smoke"  # smoke | paper: see the first cell
# None = the preset's value (smartfrz/lab/presets.py); override any of them with papermill -p NAME VALUE
epochs = None  # smoke: 15 | paper: 30
seeds = None  # smoke: [0, 1, 2] | paper: [0, 1, 2, 3, 4]
policies = None  # smoke: ['none', 'smartfrz'] | paper: ['none', 'smartfrz', 'linear', 'autofreeze']
frz = None  # smoke: {} | paper: {}
out_dir = None  # smoke: 'reports/quickstart' | paper: 'reports/quickstart_paper'
device = None  # smoke: 'cpu' | paper: 'auto'
threads = None  # smoke: 1 | paper: None
wandb = None  # smoke: True | paper: True (W&B runs under out_dir/wandb, offline unless logged in)

# %%
from IPython.display import Image, display

from smartfrz.lab import presets

s = presets.resolve("01_quickstart", preset, epochs=epochs, seeds=seeds, policies=policies, frz=frz,
                    out_dir=out_dir, device=device, threads=threads, wandb=wandb)
presets.setup(s)  # working directory = project root; torch threads
s

# %%
from smartfrz.lab.quickstart import quickstart

summary = quickstart(s.out_dir, epochs=s.epochs, seeds=s.seeds, policies=s.policies, frz=s.frz, device=s.device,
                     wandb=s.wandb)
summary[["policy", "seeds", "metric", "metric_std", "metric_delta", "train_tflops", "flops_saved", "wall_s",
         "time_saved", "frozen_units", "units"]]

# %% [markdown]
# Freeze timeline (first SmartFRZ run: each bar is a unit frozen from that step on), accuracy over training,
# and training compute and time per method:

# %%
from pathlib import Path

figs = {name: Path(s.out_dir) / f"{name}.png" for name in ("freeze_timeline", "accuracy_curves", "compute_saved")}
for path in figs.values():
    display(Image(filename=str(path)))
