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
# # 20 · BERT on GLUE (Hugging Face Trainer)
#
# Fine-tuning through the Hugging Face `Trainer` with `SmartFRZCallback` (`smartfrz.lab.hf_glue.run_glue`):
# MRPC and CoLA as in the paper, or any GLUE task by name (`-p tasks '["sst2", "rte"]'`), each scored with
# its official metric (F1 for MRPC, Matthews correlation for CoLA, ...).
#
# **Presets.** `smoke` (the default, and what `make test` runs): CPU, offline, a tiny subset, a minute or two;
# it checks that everything runs, and its numbers mean nothing. `paper`: the paper-scale GPU runs
# (`python -m smartfrz.lab.reproduce --preset paper --gpu 0`, or `papermill NOTEBOOK OUT -p preset paper`).
# Every setting in the next cell can be overridden with `papermill -p NAME VALUE`.
#
# Smoke fine-tunes MiniLM-L6 (bundled, offline) on a few MRPC pairs from `../shared/data` when present,
# else on a few hand-written pairs in GLUE's TSV format; paper: `bert-base-uncased` (downloaded once).

# %% tags=["parameters"]
preset = "smoke"  # smoke | paper: see the first cell
# None = the preset's value (smartfrz/lab/presets.py); override any of them with papermill -p NAME VALUE
model = None  # smoke: 'minilm' | paper: 'bert-base-uncased'
tasks = None  # smoke: ['mrpc'] | paper: ['mrpc', 'cola']
policies = None  # smoke: ['none', 'smartfrz'] | paper: ['none', 'smartfrz', 'linear', 'autofreeze']
cache_policies = None  # smoke: ['smartfrz+cache'] | paper: ['smartfrz+cache', 'oracle+cache']
seeds = None  # smoke: [0] | paper: [0, 1, 2]
epochs = None  # smoke: 2 | paper: 3
batch_size = None  # smoke: 16 | paper: 32
lr = None  # smoke: 5e-05 | paper: 2e-05
max_length = None  # smoke: 64 | paper: 128
subset = None  # smoke: 64 | paper: None
eval_subset = None  # smoke: 64 | paper: None
frz = None  # smoke: {'window': 2, 'sample_size': 256} | paper: {}
data_dir = None  # smoke: 'auto' | paper: None
runs_dir = None  # smoke: 'reports/smoke/runs' | paper: 'reports/runs'
report_dir = None  # smoke: 'reports/smoke/bert_glue' | paper: 'reports/bert_glue'
device = None  # smoke: 'cpu' | paper: 'auto'
threads = None  # smoke: 1 | paper: None
progress = None  # smoke: False | paper: True
wandb = None  # smoke: False | paper: True
resume = None  # smoke: False | paper: True

# %%
from IPython.display import Image, display

from smartfrz.lab import presets

s = presets.resolve("20_bert_glue", preset, model=model, tasks=tasks, policies=policies,
                    cache_policies=cache_policies, seeds=seeds,
                    epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length, subset=subset,
                    eval_subset=eval_subset, frz=frz, data_dir=data_dir, runs_dir=runs_dir,
                    report_dir=report_dir, device=device, threads=threads, progress=progress, wandb=wandb,
                    resume=resume)
presets.setup(s)  # working directory = project root; torch threads
s

# %%
import itertools

from smartfrz.lab import reports
from smartfrz.lab.hf_glue import run_glue

runs = []
for task, seed, policy in itertools.product(s.tasks, s.seeds, s.policies):
    r = run_glue(task, s.model, policy, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=seed, subset=s.subset,
                 eval_subset=s.eval_subset, max_length=s.max_length, data_dir=s.data_dir, out_dir=s.runs_dir,
                 frz=s.frz, device=s.device, wandb=s.wandb, progress=s.progress, resume=s.resume)
    runs.append(r)
    print(f"{r['run']}: {r['metric_name']} {r['metric']:.3f}, FLOPs saved {r['flops_saved']:.0%}, train {r['wall_s']:.0f}s")

# %%
df = reports.frame(runs)
summary = reports.tables(df, s.report_dir)  # also writes results.md and results.csv
summary[["task", "model", "regime", "policy", "metric_name", "metric", "metric_delta", "flops_saved", "time_saved",
         "wall_s", "peak_mem_mb", "energy_kj"]]

# %%
figs = reports.figures(df, s.report_dir, runs=runs)  # freeze timelines, Pareto plots, learning curves
for path in figs.values():
    display(Image(filename=str(path)))

# %% [markdown]
# ## Prefix cache
#
# With the front units frozen, their output for an example never changes: the `+cache` policies store it
# per example and skip the frozen forward (`smartfrz.prefix_cache`). The Trainer owns its training step and
# drops the example index the store is keyed by, so these runs use the package's plain loop
# (`smartfrz.lab.train.fit`), beside `none` and the same policy uncached on that loop: compare within this
# table, not with the Trainer runs above.

# %%
from pathlib import Path

from IPython.display import Markdown

from smartfrz.lab.bench import markdown, run_tasks

if s.cache_policies:
    spec = {task: dict(task=task, model=s.model, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, schedule="linear",
                       max_length=s.max_length, subset=s.subset, eval_subset=s.eval_subset, frz=s.frz,
                       extra_policies=s.cache_policies) for task in s.tasks}
    uncached = [p.removesuffix("+cache") for p in s.cache_policies]
    cache_bench = run_tasks(spec, s.seeds, ["none", *uncached, *s.cache_policies], name="bert_glue_cache",
                            data_dir=s.data_dir, device=s.device, runs_dir=Path(s.runs_dir) / "prefix_cache", jobs=1,
                            progress=s.progress)
    Path(s.report_dir).mkdir(parents=True, exist_ok=True)
    (Path(s.report_dir) / "prefix_cache.md").write_text(markdown(cache_bench))
    display(Markdown(markdown(cache_bench)))
