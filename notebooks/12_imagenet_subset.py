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
# # 12 · ResNet-50 on an ImageNet subset
#
# ResNet-50 (torchvision, from scratch) on an ImageFolder tree: Imagenette (`data/imagenette2-160`, fetch with
# `python -m smartfrz.lab.data fetch imagenette --data-dir data`) or ImageNet-100 (`-p data_dir data/imagenet
# -p classes imagenet100 -p name imagenet100`: the CMC class list on a full ImageNet tree).
#
# **Presets.** `smoke` (the default, and what `make test` runs): CPU, offline, a tiny subset, a minute or two;
# it checks that everything runs, and its numbers mean nothing. `paper`: the paper-scale GPU runs
# (`python -m smartfrz.lab.reproduce --preset paper --gpu 0`, or `papermill NOTEBOOK OUT -p preset paper`).
# Every setting in the next cell can be overridden with `papermill -p NAME VALUE`.
#
# Smoke writes a tiny ImageFolder of real JPEGs of varying sizes (random crops of sklearn's two sample photos,
# two classes) to a temp folder.

# %% tags=["parameters"]
preset = "smoke"  # smoke | paper: see the first cell
# None = the preset's value (smartfrz/lab/presets.py); override any of them with papermill -p NAME VALUE
name = None  # smoke: 'smoke-folder' | paper: 'imagenette'
model = None  # smoke: 'resnet50' | paper: 'resnet50'
data_dir = None  # smoke: 'auto' | paper: 'data/imagenette2-160'
classes = None  # smoke: None | paper: None
image_size = None  # smoke: 64 | paper: 160
epochs = None  # smoke: 2 | paper: 40
lr = None  # smoke: 0.05 | paper: 0.1
batch_size = None  # smoke: 8 | paper: 128
policies = None  # smoke: ['none', 'smartfrz'] | paper: ['none', 'smartfrz', 'linear', 'autofreeze']
seeds = None  # smoke: [0] | paper: [0]
frz = None  # smoke: {'window': 2, 'sample_size': 256} | paper: {}
runs_dir = None  # smoke: 'reports/smoke/runs' | paper: 'reports/runs'
report_dir = None  # smoke: 'reports/smoke/imagenet_subset' | paper: 'reports/imagenet_subset'
device = None  # smoke: 'cpu' | paper: 'auto'
threads = None  # smoke: 1 | paper: None
progress = None  # smoke: False | paper: True
wandb = None  # smoke: False | paper: True
resume = None  # smoke: False | paper: True

# %%
from IPython.display import Image, display

from smartfrz.lab import presets

s = presets.resolve("12_imagenet_subset", preset, name=name, model=model, data_dir=data_dir, classes=classes,
                    image_size=image_size, epochs=epochs, lr=lr, batch_size=batch_size, policies=policies,
                    seeds=seeds, frz=frz, runs_dir=runs_dir, report_dir=report_dir, device=device,
                    threads=threads, progress=progress, wandb=wandb, resume=resume)
presets.setup(s)  # working directory = project root; torch threads
s

# %%
import itertools

from smartfrz.lab import reports
from smartfrz.lab.experiment import ExperimentConfig

runs = []
for seed, policy in itertools.product(s.seeds, s.policies):
    cfg = ExperimentConfig(name=s.name, task="imagefolder", model=s.model, policy=policy, seed=seed, epochs=s.epochs,
                           lr=s.lr, batch_size=s.batch_size, image_size=s.image_size, classes=s.classes,
                           data_dir=s.data_dir, pretrained=False, device=s.device, frz=s.frz, wandb=s.wandb,
                           out_dir=s.runs_dir, progress=s.progress)
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
