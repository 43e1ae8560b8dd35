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
# # 00 · Train the SmartFRZ predictor
#
# Records training runs without freezing (weight windows + CKA labels in hindsight,
# `smartfrz.predictor_training.freeze_dataset`), then trains and evaluates the attention predictor on them
# (`smartfrz.predictor_training.training`).
#
# **Presets.** `smoke` (default, `make test`): two short runs of the digits CNN recorded into a temp folder,
# a few predictor epochs; writes `reports/predictor_smoke/` and `artifacts/predictor_smoke.safetensors` (never
# the shipped file). `full`: regenerates the shipped predictor from the real data: the `gpu` (CNNs and ViTs on
# CIFAR-10) and `gpu_text` (MiniLM on MRPC/CoLA) run sets into `artifacts/freeze_runs` (runs already there are
# kept), then `smartfrz/weights/smartfrz_predictor.safetensors` and `reports/predictor/`. Run it on a GPU with
# `data_dir` pointing at the data (`papermill ... -p preset full -p data_dir ../shared/data`).

# %% tags=["parameters"]
preset = "smoke"  # smoke | full: see the first cell
# None = the preset's value (smartfrz/lab/presets.py); override any of them with papermill -p NAME VALUE
record_presets = None  # smoke: ['smoke'] | full: ['gpu', 'gpu_text']
runs_dir = None  # smoke: None | full: 'artifacts/freeze_runs'
predictor_out = None  # smoke: 'artifacts/predictor_smoke.safetensors' | full: 'smartfrz/weights/smartfrz_predictor.safetens...
report_dir = None  # smoke: 'reports/predictor_smoke' | full: 'reports/predictor'
epochs = None  # smoke: 5 | full: 25
data_dir = None  # smoke: None | full: None
device = None  # smoke: 'cpu' | full: 'auto'
threads = None  # smoke: 1 | full: None
progress = None  # smoke: False | full: True

# %%
from IPython.display import Image, display

from smartfrz.lab import presets

s = presets.resolve("00_train_predictor", preset, record_presets=record_presets, runs_dir=runs_dir,
                    predictor_out=predictor_out, report_dir=report_dir, epochs=epochs, data_dir=data_dir,
                    device=device, threads=threads, progress=progress)
presets.setup(s)  # working directory = project root; torch threads
s

# %%
import tempfile
from pathlib import Path

from smartfrz.predictor_training import freeze_dataset
from smartfrz.lab.experiment import resolve_device

runs_dir = Path(s.runs_dir or tempfile.mkdtemp(prefix="smartfrz-freeze-runs-"))
for preset_name in s.record_presets:
    for spec in freeze_dataset.preset(preset_name):
        path = runs_dir / f"{spec.name}.safetensors"
        if path.exists():
            print(f"skip {spec.name}: {path} exists")
            continue
        rec = freeze_dataset.record_run(spec, s.data_dir, resolve_device(s.device), progress=s.progress)
        freeze_dataset.save_run(rec, path)
        final = rec["meta"]["final"]
        print(f"{spec.name}: {final.get('metric_name')} {final.get('metric', float('nan')):.2f}, "
              f"{len(rec['steps'])} checkpoints x {len(rec['meta']['units'])} units")

# %%
import pandas as pd

from smartfrz.predictor_training import training

res = training.run(runs_dir, out=s.predictor_out, report=s.report_dir, epochs=s.epochs, progress=s.progress)
print(f"predictor: {s.predictor_out}; report: {s.report_dir}/report.md")
pd.json_normalize(res["runs"])

# %% [markdown]
# Held-out evaluation (leave one model family out; empty when the recorded runs hold one family, as in `smoke`),
# and the shipped predictor's threshold and calibration:

# %%
display(pd.DataFrame({fam: {"trained_on": v["trained_on"], **v["eligible"], "ece": v["ece"]}
                      for fam, v in res["held_out"].items()}).T)
res["shipped"]

# %%
figs = {name: Path(s.report_dir) / f"{name}.png" for name in ("cka_curves", "heldout")}
for path in figs.values():
    display(Image(filename=str(path)))
