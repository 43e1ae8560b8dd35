"""Writes the notebooks in this folder (saved without outputs). Edit here, then run:

    .venv/bin/python notebooks/_make.py

Every notebook: a ``parameters`` cell (papermill) listing its settings, all None = the preset's value
(smartfrz/presets.py), then a cell resolving them, calls into the package, and plots.
"""
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from smartfrz.presets import PRESETS

HERE = Path(__file__).resolve().parent
KERNEL = {"name": "smartfrz", "display_name": "Python (smartfrz)", "language": "python"}
SHOW = "for path in figs.values():\n    display(Image(filename=str(path)))"


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 48 else r[:45] + "..."


def parameters(name: str) -> str:
    presets = PRESETS[name]
    first = next(iter(presets))
    lines = [f'preset = "{first}"  # {" | ".join(presets)}: see the first cell',
             "# None = the preset's value (smartfrz/presets.py); override any of them with papermill -p NAME VALUE"]
    for key in presets[first]:
        values = " | ".join(f"{p}: {_short(v[key])}" for p, v in presets.items())
        lines.append(f"{key} = None  # {values}")
    return "\n".join(lines)


def settings(name: str) -> str:
    keys = ", ".join(f"{k}={k}" for k in PRESETS[name][next(iter(PRESETS[name]))])
    call = textwrap.fill(f"s = presets.resolve(\"{name}\", preset, {keys})", 110, subsequent_indent=" " * 20,
                         break_long_words=False, break_on_hyphens=False)
    return (f"from IPython.display import Image, display\n\nfrom smartfrz import presets\n\n{call}\n"
            "presets.setup(s)  # working directory = project root; torch threads\ns")


def notebook(name: str, intro: str, *cells) -> None:
    params = new_code_cell(parameters(name), metadata={"tags": ["parameters"]})
    body = [new_markdown_cell(intro.strip()), params, new_code_cell(settings(name))]
    body += [new_markdown_cell(c[3:].strip()) if c.startswith("md:") else new_code_cell(c.strip()) for c in cells]
    for i, c in enumerate(body):
        c["id"] = f"{name[:2]}-{i:02d}"  # stable ids: regenerating gives no diff
    nb = new_notebook(cells=body, metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})
    nbformat.validate(nb)
    nbformat.write(nb, HERE / f"{name}.ipynb")


EXPERIMENT_LOOP = """
import itertools

from smartfrz import reports
from smartfrz.experiment import ExperimentConfig

runs = []
for task, model, regime, seed, policy in itertools.product(s.datasets, s.models, s.regimes, s.seeds, s.policies):
    cfg = ExperimentConfig(name=f"{FAMILY}-{regime}", task=task, model=model, policy=policy, seed=seed,
                           pretrained=regime == "finetune", epochs=s[f"{regime}_epochs"], lr=s[f"{regime}_lr"],{EXTRA}
                           batch_size=s.batch_size, subset=s.subset, eval_subset=s.eval_subset, data_dir=s.data_dir,
                           device=s.device, frz=s.frz, wandb=s.wandb, out_dir=s.runs_dir, progress=s.progress)
    r = reports.run_once(cfg, resume=s.resume)
    runs.append(r)
    print(f"{r['run']}: {r['metric_name']} {r['metric']:.2f}, FLOPs saved {r['flops_saved']:.0%}, train {r['wall_s']:.0f}s")
"""

TABLES = """
df = reports.frame(runs)
summary = reports.tables(df, s.report_dir)  # also writes results.md and results.csv
summary[["task", "model", "regime", "policy", "metric_name", "metric", "metric_delta", "flops_saved", "time_saved",
         "wall_s", "peak_mem_mb", "energy_kj"]]
"""

FIGURES = f"""
figs = reports.figures(df, s.report_dir, runs=runs)  # freeze timelines, Pareto plots, learning curves
{SHOW}
"""

SMOKE_NOTE = """
**Presets.** `smoke` (the default, and what `make test` runs): CPU, offline, a tiny subset, a minute or two;
it checks that everything runs, and its numbers mean nothing. `paper`: the paper-scale GPU runs
(`python -m smartfrz.reproduce --preset paper --gpu 0`, or `papermill NOTEBOOK OUT -p preset paper`).
Every setting in the next cell can be overridden with `papermill -p NAME VALUE`.
"""


def main() -> None:
    notebook("00_train_predictor", """
# 00 · Train the SmartFRZ predictor

Records training runs without freezing (weight windows + CKA labels in hindsight,
`smartfrz.freeze_dataset`), then trains and evaluates the attention predictor on them
(`smartfrz.predictor_training`).

**Presets.** `smoke` (default, `make test`): two short runs of the digits CNN recorded into a temp folder,
a few predictor epochs; writes `reports/predictor_smoke/` and `artifacts/predictor_smoke.safetensors` (never
the shipped file). `full`: regenerates the shipped predictor from the real data: the `gpu` (CNNs and ViTs on
CIFAR-10) and `gpu_text` (MiniLM on MRPC/CoLA) run sets into `artifacts/freeze_runs` (runs already there are
kept), then `smartfrz/weights/smartfrz_predictor.safetensors` and `reports/predictor/`. Run it on a GPU with
`data_dir` pointing at the data (`papermill ... -p preset full -p data_dir ../shared/data`).
""", """
import tempfile
from pathlib import Path

from smartfrz import freeze_dataset
from smartfrz.experiment import resolve_device

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
""", """
import pandas as pd

from smartfrz import predictor_training

res = predictor_training.run(runs_dir, out=s.predictor_out, report=s.report_dir, epochs=s.epochs, progress=s.progress)
print(f"predictor: {s.predictor_out}; report: {s.report_dir}/report.md")
pd.json_normalize(res["runs"])
""", """md:
Held-out evaluation (leave one model family out; empty when the recorded runs hold one family, as in `smoke`),
and the shipped predictor's threshold and calibration:
""", """
display(pd.DataFrame({fam: {"trained_on": v["trained_on"], **v["eligible"], "ece": v["ece"]}
                      for fam, v in res["held_out"].items()}).T)
res["shipped"]
""", f"""
figs = {{name: Path(s.report_dir) / f"{{name}}.png" for name in ("cka_curves", "heldout")}}
{SHOW}
""")

    notebook("01_quickstart", f"""
# 01 · Quickstart: SmartFRZ against full training

The main job of `make demo`: a small CNN on sklearn's bundled digits (offline, CPU, about a minute), trained
with SmartFRZ and without freezing (`none`), over a few seeds. It shows the freeze timeline, the accuracy
curves and the compute saved, and writes `reports/quickstart/` (`summary.md`, `results.json`, PNG figures,
run files). The same without Jupyter: `python -m smartfrz.quickstart`.
{SMOKE_NOTE}
""", """
from smartfrz.quickstart import quickstart

summary = quickstart(s.out_dir, epochs=s.epochs, seeds=s.seeds, policies=s.policies, frz=s.frz, device=s.device)
summary[["policy", "seeds", "metric", "metric_std", "metric_delta", "train_tflops", "flops_saved", "wall_s",
         "time_saved", "frozen_units", "units"]]
""", """md:
Freeze timeline (first SmartFRZ run: each bar is a unit frozen from that step on), accuracy over training,
and training compute and time per method:
""", f"""
from pathlib import Path

figs = {{name: Path(s.out_dir) / f"{{name}}.png" for name in ("freeze_timeline", "accuracy_curves", "compute_saved")}}
{SHOW}
""")

    notebook("10_cnn_cifar", f"""
# 10 · CNNs on CIFAR: ResNet-50, VGG-11, MobileNetV2

Each model on CIFAR-10/100, trained from scratch and fine-tuned from ImageNet weights (`finetune`,
torchvision's weights), with every freezing method of `policies`. One run file per run in `runs_dir`;
the tables and figures of this notebook go to `report_dir`; `90_report` collects all runs.
{SMOKE_NOTE}
Smoke uses a few CIFAR-10 images from `../shared/data` when present, else a stand-in in CIFAR's format
(sklearn digits, upsampled), and trains from scratch only (ImageNet weights need a download).
""", EXPERIMENT_LOOP.replace("{FAMILY}", "cnn").replace("{EXTRA}", ""), TABLES, FIGURES)

    notebook("11_vit_cifar", f"""
# 11 · DeiT-Tiny on CIFAR

DeiT-Tiny (timm `deit_tiny_patch16_224`, at CIFAR's 32x32 with 4x4 patches) on CIFAR-10/100, fine-tuned
from the ImageNet weights and trained from scratch, with AdamW, for every freezing method of `policies`.
{SMOKE_NOTE}
Smoke uses a few CIFAR-10 images from `../shared/data` when present, else a stand-in in CIFAR's format
(sklearn digits, upsampled), and trains from scratch only (ImageNet weights need a download).
""", EXPERIMENT_LOOP.replace("{FAMILY}", "vit").replace(
        "{EXTRA}", '\n                           optimizer="adamw", weight_decay=s.weight_decay,'), TABLES, FIGURES)

    notebook("12_imagenet_subset", f"""
# 12 · ResNet-50 on an ImageNet subset

ResNet-50 (torchvision, from scratch) on an ImageFolder tree: Imagenette (`data/imagenette2-160`, fetch with
`python -m smartfrz.data fetch imagenette --data-dir data`) or ImageNet-100 (`-p data_dir data/imagenet
-p classes imagenet100 -p name imagenet100`: the CMC class list on a full ImageNet tree).
{SMOKE_NOTE}
Smoke writes a tiny ImageFolder of real JPEGs of varying sizes (random crops of sklearn's two sample photos,
two classes) to a temp folder.
""", """
import itertools

from smartfrz import reports
from smartfrz.experiment import ExperimentConfig

runs = []
for seed, policy in itertools.product(s.seeds, s.policies):
    cfg = ExperimentConfig(name=s.name, task="imagefolder", model=s.model, policy=policy, seed=seed, epochs=s.epochs,
                           lr=s.lr, batch_size=s.batch_size, image_size=s.image_size, classes=s.classes,
                           data_dir=s.data_dir, pretrained=False, device=s.device, frz=s.frz, wandb=s.wandb,
                           out_dir=s.runs_dir, progress=s.progress)
    r = reports.run_once(cfg, resume=s.resume)
    runs.append(r)
    print(f"{r['run']}: {r['metric_name']} {r['metric']:.2f}, FLOPs saved {r['flops_saved']:.0%}, train {r['wall_s']:.0f}s")
""", TABLES, FIGURES)

    notebook("20_bert_glue", f"""
# 20 · BERT on GLUE (Hugging Face Trainer)

Fine-tuning through the Hugging Face `Trainer` with `SmartFRZCallback` (`smartfrz.hf_glue.run_glue`):
MRPC and CoLA as in the paper, or any GLUE task by name (`-p tasks '["sst2", "rte"]'`), each scored with
its official metric (F1 for MRPC, Matthews correlation for CoLA, ...).
{SMOKE_NOTE}
Smoke fine-tunes MiniLM-L6 (bundled, offline) on a few MRPC pairs from `../shared/data` when present,
else on a few hand-written pairs in GLUE's TSV format; paper: `bert-base-uncased` (downloaded once).
""", """
import itertools

from smartfrz import reports
from smartfrz.hf_glue import run_glue

runs = []
for task, seed, policy in itertools.product(s.tasks, s.seeds, s.policies):
    r = run_glue(task, s.model, policy, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=seed, subset=s.subset,
                 eval_subset=s.eval_subset, max_length=s.max_length, data_dir=s.data_dir, out_dir=s.runs_dir,
                 frz=s.frz, device=s.device, wandb=s.wandb, progress=s.progress, resume=s.resume)
    runs.append(r)
    print(f"{r['run']}: {r['metric_name']} {r['metric']:.3f}, FLOPs saved {r['flops_saved']:.0%}, train {r['wall_s']:.0f}s")
""", TABLES, FIGURES)

    notebook("30_ablations", f"""
# 30 · Ablations: window, sample size, decision interval, threshold

SmartFRZ with one option changed at a time from `base_frz`: the window of recorded weight snapshots
(`window`), the tailored weights sampled per unit (`sample_size`), the steps between freezing decisions
(`decide_every`) and the P(freeze) threshold (`threshold`), against full training (`none`).
{SMOKE_NOTE}
""", """
from pathlib import Path

import pandas as pd

from smartfrz import reports
from smartfrz.experiment import ExperimentConfig

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
""", """
import seaborn as sns

long = table.melt(id_vars=["knob", "value"], value_vars=["metric_delta", "flops_saved"], var_name="measure",
                  value_name="score")
g = sns.catplot(long, x="value", y="score", col="knob", row="measure", kind="point", sharex=False, sharey="row",
                height=2.6, aspect=1.1)
g.savefig(Path(s.report_dir) / "ablations.png", dpi=110)
""")

    notebook("90_report", """
# 90 · Report: paper-style tables and figures

Collects every run file (`reports/runs/*.json` for `paper`, `reports/smoke/runs/*.json` for `smoke`) into
one table per experiment and method: accuracy (or the task's metric), training time, training FLOPs
(measured per frozen prefix), peak memory and GPU energy, with the savings against full training; then the
freeze timelines, Pareto plots of the metric change against the compute and time saved, and learning curves.
Writes `results.md`, `results.csv` and the PNGs to `out_dir`.
""", """
from smartfrz import reports

df = reports.collect(s.runs_dirs)
print(f"{len(df)} runs from {s.runs_dirs}" if len(df) else f"no run files in {s.runs_dirs}: run the experiment notebooks first")
summary = reports.tables(df, s.out_dir)
summary
""", """md:
The same, one row per experiment and one column group per method:
""", """
if len(summary):
    display(summary.pivot_table(index=reports.GROUP, columns="policy", values=["metric", "flops_saved", "time_saved"]))
""", f"""
figs = reports.figures(df, s.out_dir, runs=[r for d in s.runs_dirs for r in reports.load(d)])
{SHOW}
""")


if __name__ == "__main__":
    main()
