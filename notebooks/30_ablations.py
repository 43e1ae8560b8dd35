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
# # 30 · Ablations: window, sample size, decision interval, threshold
#
# SmartFRZ with one option changed at a time from `base_frz`: the window of recorded weight snapshots
# (`window`), the tailored weights sampled per unit (`sample_size`), the steps between freezing decisions
# (`decide_every`) and the P(freeze) threshold (`threshold`), against full training (`none`).
#
# **Presets.** `smoke` (the default, and what `make test` runs): CPU, offline, a tiny subset, a minute or two;
# it checks that everything runs, and its numbers mean nothing. `paper`: the paper-scale GPU runs
# (`python -m smartfrz.lab.reproduce --preset paper --gpu 0`, or `papermill NOTEBOOK OUT -p preset paper`).
# Every setting in the next cell can be overridden with `papermill -p NAME VALUE`.

# %% tags=["parameters"]
preset = "smoke"  # smoke | paper: see the first cell
# None = the preset's value (smartfrz/lab/presets.py); override any of them with papermill -p NAME VALUE
task = None  # smoke: 'digits' | paper: 'cifar10'
model = None  # smoke: 'digits_cnn' | paper: 'resnet50_cifar'
epochs = None  # smoke: 6 | paper: 100
batch_size = None  # smoke: 32 | paper: 128
lr = None  # smoke: None | paper: 0.1
seed = None  # smoke: 0 | paper: 0
subset = None  # smoke: None | paper: None
base_frz = None  # smoke: {'window': 8, 'sample_size': 256} | paper: {}
ablations = None  # smoke: {'window': [4, 8], 'sample_size': [64, 256], ... | paper: {'window': [10, 20, 30, 50], 'sample_size': [...
data_dir = None  # smoke: None | paper: None
runs_dir = None  # smoke: 'reports/smoke/runs/ablations' | paper: 'reports/runs/ablations'
report_dir = None  # smoke: 'reports/smoke/ablations' | paper: 'reports/ablations'
device = None  # smoke: 'cpu' | paper: 'auto'
threads = None  # smoke: 1 | paper: None
progress = None  # smoke: False | paper: True
wandb = None  # smoke: False | paper: True
resume = None  # smoke: False | paper: True

# %%
from IPython.display import Image, display

from smartfrz.lab import presets

s = presets.resolve("30_ablations", preset, task=task, model=model, epochs=epochs, batch_size=batch_size,
                    lr=lr, seed=seed, subset=subset, base_frz=base_frz, ablations=ablations,
                    data_dir=data_dir, runs_dir=runs_dir, report_dir=report_dir, device=device,
                    threads=threads, progress=progress, wandb=wandb, resume=resume)
presets.setup(s)  # working directory = project root; torch threads
s

# %%
from pathlib import Path

import pandas as pd

from smartfrz.lab import reports
from smartfrz.lab.experiment import ExperimentConfig

common = dict(task=s.task, model=s.model, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=s.seed,
              subset=s.subset, data_dir=s.data_dir, device=s.device, wandb=s.wandb, out_dir=s.runs_dir,
              progress=s.progress)
ref = reports.run_once(ExperimentConfig(name="ablation-baseline", policy="none", **common), resume=s.resume)
rows = []
for knob, values in s.ablations.items():
    for value in values:
        cfg = ExperimentConfig(name=f"ablation-{knob}-{value}", policy="smartfrz", frz={**s.base_frz, knob: value}, **common)
        r = reports.run_once(cfg, resume=s.resume)
        rows.append({"knob": knob, "value": str(value), "metric": r["metric"], "metric_delta": r["metric"] - ref["metric"],
                     "flops_saved": r["flops_saved"], "time_saved": 1 - r["wall_s"] / ref["wall_s"],
                     "frozen_units": len(r["frozen_units"]), "overhead_s": r["overhead_s"]["total"]})
table = pd.DataFrame(rows)
Path(s.report_dir).mkdir(parents=True, exist_ok=True)
table.to_csv(Path(s.report_dir) / "ablations.csv", index=False)
table

# %%
import seaborn as sns

long = table.melt(id_vars=["knob", "value"], value_vars=["metric_delta", "flops_saved"], var_name="measure",
                  value_name="score")
g = sns.catplot(long, x="value", y="score", col="knob", row="measure", kind="point", sharex=False, sharey="row",
                height=2.6, aspect=1.1)
g.savefig(Path(s.report_dir) / "ablations.png", dpi=110)
