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
# Records training runs without freezing (weight windows + labels in hindsight: rewind harm and CKA,
# `smartfrz.predictor_training.freeze_dataset`), then trains the attention predictor on them, chooses its
# decision rule by replaying the engine on out-of-fold runs, and evaluates it on held-out families and
# schedules (`smartfrz.predictor_training.training`).
#
# **Presets.** `smoke` (default, `make test`): two short runs of the digits CNN recorded into a temp folder,
# a few predictor epochs; writes `reports/predictor_smoke/` and `artifacts/predictor_smoke.safetensors` (never
# the shipped file). `full`: regenerates the shipped predictor from the real data: the `cpu` run set (77 runs, 9
# architectures in 8 families, 6 schedules, digits / CIFAR-10 / MRPC / CoLA; about 5 hours of one core) into
# `data/freeze_runs` (runs already there in the current format are kept), then `smartfrz/weights/smartfrz_predictor.safetensors`
# and `reports/predictor/` (`papermill ... -p preset full -p data_dir ../shared/data`; `record_presets` can add
# `gpu` and `gpu_text` on a GPU).

# %% tags=["parameters"]
preset = "smoke"  # smoke | full: see the first cell
# None = the preset's value (smartfrz/lab/presets.py); override any of them with papermill -p NAME VALUE
record_presets = None  # smoke: ['smoke'] | full: ['cpu']
runs_dir = None  # smoke: None | full: 'data/freeze_runs'
predictor_out = None  # smoke: 'artifacts/predictor_smoke.safetensors' | full: 'smartfrz/weights/smartfrz_predictor.safetens...
report_dir = None  # smoke: 'reports/predictor_smoke' | full: 'reports/predictor'
epochs = None  # smoke: 5 | full: 6
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
        if path.exists() and freeze_dataset.run_format(path) >= freeze_dataset.RUN_FORMAT:
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
# Held out (one architecture family, then one learning-rate schedule at a time; empty when the recorded runs hold
# one family and one schedule, as in `smoke`): the engine's rule replayed on runs the predictor never saw, the share
# of the oracle's saving it reached and the units it froze before their label. Then the shipped decision rule.

# %%
display(pd.DataFrame([{"held out": f"{kind}: {g}", **v["rule"],
                       **{k: v[k] for k in ("runs", "oracle_saved", "saved", "saved_share_of_oracle", "early", "units")}}
                      for kind, block in res["held_out"].items() for g, v in block.items()]))
res["shipped"]

# %%
display(Image(filename=str(Path(s.report_dir) / "heldout.png")))
