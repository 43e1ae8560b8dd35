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
# # 11 · DeiT-Tiny on CIFAR
#
# DeiT-Tiny (timm `deit_tiny_patch16_224`, at CIFAR's 32x32 with 4x4 patches) on CIFAR-10/100, fine-tuned
# from the ImageNet weights and trained from scratch, with AdamW, for every freezing method of `policies`.
#
# **Presets.** `smoke` (the default, and what `make test` runs): CPU, offline, a tiny subset, a minute or two;
# it checks that everything runs, and its numbers mean nothing. `paper`: the paper-scale GPU runs
# (`python -m smartfrz.lab.reproduce --preset paper --gpu 0`, or `papermill NOTEBOOK OUT -p preset paper`).
# Every setting in the next cell can be overridden with `papermill -p NAME VALUE`.
#
# Smoke uses a few CIFAR-10 images from `../shared/data` when present, else a stand-in in CIFAR's format
# (sklearn digits, upsampled), and trains from scratch only (ImageNet weights need a download).

# %% tags=["parameters"]
preset = "smoke"  # smoke | paper: see the first cell
# None = the preset's value (smartfrz/lab/presets.py); override any of them with papermill -p NAME VALUE
models = None  # smoke: ['deit_tiny'] | paper: ['deit_tiny']
datasets = None  # smoke: ['cifar10'] | paper: ['cifar10', 'cifar100']
regimes = None  # smoke: ['scratch'] | paper: ['finetune', 'scratch']
policies = None  # smoke: ['none', 'smartfrz'] | paper: ['none', 'smartfrz', 'linear', 'autofreeze']
seeds = None  # smoke: [0] | paper: [0]
scratch_epochs = None  # smoke: 2 | paper: 100
finetune_epochs = None  # smoke: 2 | paper: 30
scratch_lr = None  # smoke: 0.0005 | paper: 0.001
finetune_lr = None  # smoke: 0.0001 | paper: 0.0001
weight_decay = None  # smoke: 0.05 | paper: 0.05
batch_size = None  # smoke: 8 | paper: 128
subset = None  # smoke: 32 | paper: None
eval_subset = None  # smoke: 64 | paper: None
frz = None  # smoke: {'window': 2, 'sample_size': 256} | paper: {}
data_dir = None  # smoke: 'auto' | paper: None
runs_dir = None  # smoke: 'reports/smoke/runs' | paper: 'reports/runs'
report_dir = None  # smoke: 'reports/smoke/vit_cifar' | paper: 'reports/vit_cifar'
device = None  # smoke: 'cpu' | paper: 'auto'
threads = None  # smoke: 1 | paper: None
progress = None  # smoke: False | paper: True
wandb = None  # smoke: False | paper: True
resume = None  # smoke: False | paper: True

# %%
from IPython.display import Image, display

from smartfrz.lab import presets

s = presets.resolve("11_vit_cifar", preset, models=models, datasets=datasets, regimes=regimes,
                    policies=policies, seeds=seeds, scratch_epochs=scratch_epochs,
                    finetune_epochs=finetune_epochs, scratch_lr=scratch_lr, finetune_lr=finetune_lr,
                    weight_decay=weight_decay, batch_size=batch_size, subset=subset, eval_subset=eval_subset,
                    frz=frz, data_dir=data_dir, runs_dir=runs_dir, report_dir=report_dir, device=device,
                    threads=threads, progress=progress, wandb=wandb, resume=resume)
presets.setup(s)  # working directory = project root; torch threads
s

# %%
import itertools

from smartfrz.lab import reports
from smartfrz.lab.experiment import ExperimentConfig

runs = []
for task, model, regime, seed, policy in itertools.product(s.datasets, s.models, s.regimes, s.seeds, s.policies):
    cfg = ExperimentConfig(name=f"vit-{regime}", task=task, model=model, policy=policy, seed=seed,
                           pretrained=regime == "finetune", epochs=s[f"{regime}_epochs"], lr=s[f"{regime}_lr"],
                           optimizer="adamw", weight_decay=s.weight_decay,
                           batch_size=s.batch_size, subset=s.subset, eval_subset=s.eval_subset, data_dir=s.data_dir,
                           device=s.device, frz=s.frz, wandb=s.wandb, out_dir=s.runs_dir, progress=s.progress)
    r = reports.run_once(cfg, resume=s.resume)
    runs.append(r)
    print(f"{r['run']}: {r['metric_name']} {r['metric']:.2f}, FLOPs saved {r['flops_saved']:.0%}, train {r['wall_s']:.0f}s")

# %%
df = reports.frame(runs)
summary = reports.tables(df, s.report_dir)  # also writes results.md and results.csv
summary[["task", "model", "regime", "policy", "metric_name", "metric", "metric_delta", "flops_saved", "time_saved",
         "wall_s", "peak_mem_mb", "energy_kj"]]

# %%
figs = reports.figures(df, s.report_dir, runs=runs)  # freeze timelines, Pareto plots, learning curves
for path in figs.values():
    display(Image(filename=str(path)))
