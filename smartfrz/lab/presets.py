"""The notebooks' settings: per notebook, a ``smoke`` preset (CPU, offline, a minute or two: it checks
the plumbing, its numbers mean nothing) and a ``paper`` preset (the paper-scale GPU runs).

    s = resolve("10_cnn_cifar", "paper", scratch_epochs=None, models=["vgg11_bn"])  # None: the preset's value
    setup(s)  # project root as working directory, torch threads

The paper presets are this repository's paper-scale settings (full datasets, full epoch budgets,
every method); the epoch counts and learning rates are standard recipes for each model, chosen here.
``data_dir="auto"`` (smoke only) means the team's copy at ``../shared/data`` when present, otherwise a
tiny stand-in in the same on-disk format, written to a temp folder and labelled as smoke data.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

SMOKE = dict(device="cpu", threads=1, progress=False, wandb=False, resume=False)
PAPER = dict(device="auto", threads=None, progress=True, wandb=True, resume=True)  # resume: skip runs already on disk
SMOKE_FRZ = {"window": 2, "sample_size": 256}  # a window that fills within the first epoch of a tiny run
PAPER_POLICIES = ["none", "smartfrz", "linear", "autofreeze"]

# https://github.com/HobbitLong/CMC/blob/master/imagenet100.txt (Tian et al., CMC): the usual ImageNet-100
IMAGENET100 = """
n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622
""".split()

PRESETS: dict[str, dict[str, dict]] = {
    "00_train_predictor": {
        "smoke": dict(record_presets=["smoke"], runs_dir=None, predictor_out="artifacts/predictor_smoke.safetensors",
                      report_dir="reports/predictor_smoke", epochs=5, data_dir=None, device="cpu", threads=1,
                      progress=False),
        "full": dict(record_presets=["cpu"], runs_dir="data/freeze_runs",
                     predictor_out="smartfrz/weights/smartfrz_predictor.safetensors", report_dir="reports/predictor",
                     epochs=6, data_dir=None, device="auto", threads=None, progress=True),
    },
    "01_quickstart": {
        "smoke": dict(epochs=15, seeds=[0, 1, 2], policies=["none", "smartfrz"], frz={}, out_dir="reports/quickstart",
                      device="cpu", threads=1, wandb=True),
        "paper": dict(epochs=30, seeds=[0, 1, 2, 3, 4], policies=PAPER_POLICIES, frz={}, out_dir="reports/quickstart_paper",
                      device="auto", threads=None, wandb=True),
    },
    "10_cnn_cifar": {
        "smoke": dict(models=["resnet50_cifar", "vgg11_bn", "mobilenet_v2"], datasets=["cifar10"], regimes=["scratch"],
                      policies=["none", "smartfrz"], seeds=[0], scratch_epochs=2, finetune_epochs=2, scratch_lr=0.05,
                      finetune_lr=0.01, batch_size=8, subset=32, eval_subset=64, frz=SMOKE_FRZ, data_dir="auto",
                      runs_dir="reports/smoke/runs", report_dir="reports/smoke/cnn_cifar", **SMOKE),
        "paper": dict(models=["resnet50_cifar", "vgg11_bn", "mobilenet_v2"], datasets=["cifar10", "cifar100"],
                      regimes=["scratch", "finetune"], policies=PAPER_POLICIES, seeds=[0], scratch_epochs=100,
                      finetune_epochs=30, scratch_lr=0.1, finetune_lr=0.01, batch_size=128, subset=None,
                      eval_subset=None, frz={}, data_dir=None, runs_dir="reports/runs", report_dir="reports/cnn_cifar",
                      **PAPER),
    },
    "11_vit_cifar": {
        "smoke": dict(models=["deit_tiny"], datasets=["cifar10"], regimes=["scratch"], policies=["none", "smartfrz"],
                      seeds=[0], scratch_epochs=2, finetune_epochs=2, scratch_lr=5e-4, finetune_lr=1e-4,
                      weight_decay=0.05, batch_size=8, subset=32, eval_subset=64, frz=SMOKE_FRZ, data_dir="auto",
                      runs_dir="reports/smoke/runs", report_dir="reports/smoke/vit_cifar", **SMOKE),
        "paper": dict(models=["deit_tiny"], datasets=["cifar10", "cifar100"], regimes=["finetune", "scratch"],
                      policies=PAPER_POLICIES, seeds=[0], scratch_epochs=100, finetune_epochs=30, scratch_lr=1e-3,
                      finetune_lr=1e-4, weight_decay=0.05, batch_size=128, subset=None, eval_subset=None, frz={},
                      data_dir=None, runs_dir="reports/runs", report_dir="reports/vit_cifar", **PAPER),
    },
    "12_imagenet_subset": {
        "smoke": dict(name="smoke-folder", model="resnet50", data_dir="auto", classes=None, image_size=64, epochs=2,
                      lr=0.05, batch_size=8, policies=["none", "smartfrz"], seeds=[0], frz=SMOKE_FRZ,
                      runs_dir="reports/smoke/runs", report_dir="reports/smoke/imagenet_subset", **SMOKE),
        "paper": dict(name="imagenette", model="resnet50", data_dir="data/imagenette2-160", classes=None,
                      image_size=160, epochs=40, lr=0.1, batch_size=128, policies=PAPER_POLICIES, seeds=[0], frz={},
                      runs_dir="reports/runs", report_dir="reports/imagenet_subset", **PAPER),
    },
    "20_bert_glue": {
        "smoke": dict(model="minilm", tasks=["mrpc"], policies=["none", "smartfrz"], cache_policies=["smartfrz+cache"],
                      seeds=[0], epochs=2, batch_size=16, lr=5e-5, max_length=64, subset=64, eval_subset=64, frz=SMOKE_FRZ,
                      data_dir="auto", runs_dir="reports/smoke/runs", report_dir="reports/smoke/bert_glue", **SMOKE),
        "paper": dict(model="bert-base-uncased", tasks=["mrpc", "cola"], policies=PAPER_POLICIES,
                      cache_policies=["smartfrz+cache", "oracle+cache"], seeds=[0, 1, 2],
                      epochs=3, batch_size=32, lr=2e-5, max_length=128, subset=None, eval_subset=None, frz={},
                      data_dir=None, runs_dir="reports/runs", report_dir="reports/bert_glue", **PAPER),
    },
    "30_ablations": {
        "smoke": dict(task="digits", model="digits_cnn", epochs=6, batch_size=32, lr=None, seed=0, subset=None,
                      base_frz={"window": 8, "sample_size": 256},
                      ablations={"window": [4, 8], "sample_size": [64, 256], "decide_every": [22, 43],
                                 "threshold": [0.5, 0.9]},
                      data_dir=None, runs_dir="reports/smoke/runs/ablations", report_dir="reports/smoke/ablations",
                      **SMOKE),
        "paper": dict(task="cifar10", model="resnet50_cifar", epochs=100, batch_size=128, lr=0.1, seed=0, subset=None,
                      base_frz={},
                      ablations={"window": [10, 20, 30, 50], "sample_size": [256, 512, 1024, 4096],
                                 "decide_every": [196, 391, 782], "threshold": [0.3, 0.5, 0.7, 0.9]},
                      data_dir=None, runs_dir="reports/runs/ablations", report_dir="reports/ablations", **PAPER),
    },
    "90_report": {
        "smoke": dict(runs_dirs=["reports/smoke/runs"], out_dir="reports/smoke/report", threads=1),
        "paper": dict(runs_dirs=["reports/runs"], out_dir="reports/paper", threads=None),
    },
}
SMOKE_DATA = {"10_cnn_cifar": "cifar", "11_vit_cifar": "cifar", "12_imagenet_subset": "imagefolder",
              "20_bert_glue": "glue"}


class Settings(dict):
    """A dict whose keys read as attributes: ``s.epochs``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def resolve(notebook: str, preset: str = "smoke", **overrides) -> Settings:
    """The preset's settings with ``overrides`` applied (None keeps the preset's value)."""
    if notebook not in PRESETS:
        raise ValueError(f"unknown notebook {notebook!r}; allowed: {', '.join(PRESETS)}")
    if preset not in PRESETS[notebook]:
        raise ValueError(f"unknown preset {preset!r} for {notebook}; allowed: {', '.join(PRESETS[notebook])}")
    s = Settings(copy.deepcopy(PRESETS[notebook][preset]), preset=preset)
    unknown = sorted(set(overrides) - set(s))
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown} for {notebook}; allowed: {sorted(s)}")
    s.update({k: v for k, v in overrides.items() if v is not None})
    if s.get("data_dir") == "auto":
        s["data_dir"] = str(smoke_data_dir(SMOKE_DATA[notebook]))
    if s.get("classes") == "imagenet100":
        s["classes"] = list(IMAGENET100)
    return s


def project_root() -> Path:
    """The checkout: upwards from the working directory, else the one this package lives in (an
    editable install), else the working directory."""
    for d in (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[2]):
        if (d / "pyproject.toml").is_file() and (d / "smartfrz").is_dir():
            return d
    return Path.cwd()


def setup(s: dict) -> Path:
    """Working directory = project root (relative paths in the presets mean the same from anywhere),
    and torch threads (1 for smoke: on a busy shared CPU, more threads only wait on each other)."""
    import torch
    root = project_root()
    os.chdir(root)
    if s.get("threads"):
        torch.set_num_threads(s["threads"])
    return root


# ----------------------------------------------------------------------------- smoke data

def smoke_data_dir(kind: str) -> Path:
    """``../shared/data`` when it holds ``kind`` (cifar | glue | imagefolder), else a tiny stand-in
    written once to a temp folder in the loaders' on-disk format."""
    from .data import shared_data_dir
    shared = shared_data_dir()
    need = {"cifar": "cifar10/train.npz", "glue": "glue/MRPC/train.tsv", "imagefolder": "imagenette2-160/train"}[kind]
    if shared is not None and (shared / need).exists():
        print(f"smoke data: a small subset of the real data in {shared}")
        return shared / "imagenette2-160" if kind == "imagefolder" else shared
    root = Path(tempfile.gettempdir()) / f"smartfrz-smoke-{kind}"
    if not root.is_dir():  # written once per machine: into a fresh folder, then renamed into place
        tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}-", dir=root.parent))
        {"cifar": _write_cifar, "glue": _write_glue, "imagefolder": _write_imagefolder}[kind](tmp)
        try:
            tmp.rename(root)
        except OSError:  # another process put it there first
            shutil.rmtree(tmp)
    what = {"cifar": "sklearn digits upsampled to 32x32x3, in CIFAR's npz format",
            "glue": "a few hand-written sentence pairs, in GLUE's TSV format",
            "imagefolder": "random crops of sklearn's two sample photos, as an ImageFolder"}[kind]
    print(f"SMOKE DATA (not the real dataset): {what}, in {root}")
    return root


def _write_cifar(root: Path) -> None:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.kron((d.images * 255 / 16).astype(np.uint8), np.ones((4, 4), np.uint8))  # 8x8 -> 32x32
    x = np.repeat(x[..., None], 3, axis=-1)
    idx = np.random.default_rng(0).permutation(len(x))
    for name in ("cifar10", "cifar100"):
        (root / name).mkdir(parents=True)
        np.savez_compressed(root / name / "train.npz", x=x[idx[:1500]], y=d.target[idx[:1500]].astype(np.int64))
        np.savez_compressed(root / name / "test.npz", x=x[idx[1500:]], y=d.target[idx[1500:]].astype(np.int64))


def _write_imagefolder(root: Path, train_per_class: int = 12, val_per_class: int = 6) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images
    rng = np.random.default_rng(0)
    photos = load_sample_images()
    for name, img in zip(("china", "flower"), photos.images):
        h, w, _ = img.shape
        for split, n in (("train", train_per_class), ("val", val_per_class)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ch, cw = rng.integers(48, min(h, 240), 2)  # crops of varying size and aspect
                y, x = rng.integers(0, h - ch), rng.integers(0, w - cw)
                Image.fromarray(img[y:y + ch, x:x + cw]).save(root / split / name / f"{name}_{i:03d}.jpg", quality=85)


_SENTENCES = [
    "The company reported higher profits in the third quarter.", "The new bridge will open to traffic next spring.",
    "Heavy rain forced the organisers to cancel the match.", "The museum added three paintings to its collection.",
    "Scientists found water ice near the moon's south pole.", "The city council approved the budget on Tuesday.",
    "Shares of the airline fell sharply after the announcement.", "The author signed copies of her latest novel.",
    "A small fire broke out in the kitchen of the restaurant.", "The team won the championship for the second year.",
    "Officials expect the new law to take effect in January.", "The train was delayed by almost two hours.",
    "Farmers are worried about the long dry summer.", "The hospital opened a new wing for children.",
    "Two students won national prizes for their research.", "The orchestra will tour Europe in the autumn.",
]
_SWAPS = [("higher", "larger"), ("open", "be opened"), ("forced", "caused"), ("added", "acquired"),
          ("found", "discovered"), ("approved", "passed"), ("fell", "dropped"), ("signed", "autographed"),
          ("broke out", "started"), ("won", "took"), ("expect", "believe"), ("delayed", "held up"),
          ("worried", "concerned"), ("opened", "unveiled"), ("won", "received"), ("tour", "travel around")]


def _write_glue(root: Path, train_rows: int = 96, dev_rows: int = 48) -> None:
    """MRPC-style pairs (paraphrase = one word swapped for a synonym) and CoLA-style sentences
    (unacceptable = words shuffled), in the column layout of data/README.md."""
    import pandas as pd
    rng = np.random.default_rng(0)
    n = len(_SENTENCES)

    def mrpc(rows):
        out = []
        for i in range(rows):
            a = int(rng.integers(n))
            if i % 2 == 0:
                old, new = _SWAPS[a]
                out.append((i, _SENTENCES[a], _SENTENCES[a].replace(old, new, 1), 1))
            else:
                out.append((i, _SENTENCES[a], _SENTENCES[(a + 1 + int(rng.integers(n - 1))) % n], 0))
        return pd.DataFrame(out, columns=["idx", "sentence1", "sentence2", "label"])

    def cola(rows):
        out = []
        for i in range(rows):
            words = _SENTENCES[int(rng.integers(n))].rstrip(".").split()
            if i % 2:
                words = list(rng.permutation(words))
            out.append((i, " ".join(words) + ".", 1 - i % 2))
        return pd.DataFrame(out, columns=["idx", "sentence", "label"])

    for task, make in (("MRPC", mrpc), ("CoLA", cola)):
        (root / "glue" / task).mkdir(parents=True)
        for split, rows in (("train", train_rows), ("dev", dev_rows)):
            make(rows).to_csv(root / "glue" / task / f"{split}.tsv", sep="\t", index=False)
