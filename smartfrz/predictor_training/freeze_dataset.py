"""The predictor's training data: real training runs, recorded and labelled in hindsight.

Each run trains a model with no freezing, records every unit's tailored weight window, and at
regular checkpoints stores (a) the predictor features of each window, (b) each unit's probe Gram,
(c) a copy of its weights and (d) the functional veto's share for every prefix, against its weights as
far back as a rule of each cadence would read (``labels.LookbackShares``), so that the engine's whole
rule, veto included, replays on held-out runs. At the end, every (checkpoint, unit) gets its rewind harm
(the share of probe predictions of the final model that change when units 0..k go back to that
checkpoint) and its CKA against the end. One run is one safetensors file;
``python -m smartfrz.predictor_training.freeze_dataset --preset cpu --out DIR`` makes a set.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .labels import (REWIND_CAP, VETO_ROWS, LookbackShares, UnitSnapshots, cka_curves, harm_probe, probe_grams,
                     rewind_harm, veto_lookbacks)
from ..predictor import window_features
from ..recorder import WeightRecorder
from ..lab.train import example_input, fit, to_device
from ..units import find_units

# architecture families: held out together in the predictor's cross-validation
FAMILIES = {"digits_mlp": "mlp", "digits_cnn": "digits_cnn", "resnet20": "resnet", "resnet18_cifar": "resnet",
            "vgg11_bn": "vgg", "mobilenet_v2": "mobilenet", "torchvision:shufflenet_v2_x0_5": "shufflenet",
            "vit_tiny_cifar": "vit", "deit_tiny": "vit", "minilm": "bert", "bert-base-uncased": "bert"}
SCHEDULES = ("onecycle", "cosine", "linear", "step", "constant", "restarts")
RUN_FORMAT = 3  # 2: the veto's shares at each checkpoint (``veto_share``), so a rule with a veto replays held out;
# 3: rewind harms resolved up to labels.REWIND_CAP = 0.2 (``meta["rewind_cap"]``), so looser rewind labels can be read


@dataclass
class RunSpec:
    arch: str
    task: str  # cifar10 | digits | mrpc | cola | any GLUE task
    regime: str = "scratch"  # scratch | finetune
    epochs: int = 10
    lr: float = 0.1
    batch_size: int = 128
    subset: int | None = None
    seed: int = 0
    optimizer: str = "sgd"  # sgd | adamw
    schedule: str = "onecycle"  # one of SCHEDULES
    pretrain_epochs: int = 0  # vision fine-tuning: pretrain on the other half of the classes first
    window: int = 30
    sample_size: int = 1024
    checkpoints_per_epoch: int = 4
    probe_size: int = 256
    record_every: int | None = None  # None: spread a window over one epoch
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        arch = self.arch.replace(":", "_")
        return f"{arch}-{self.task}-{self.regime}-{self.optimizer}{self.lr:g}-{self.schedule}-s{self.seed}"

    @property
    def family(self) -> str:
        return FAMILIES.get(self.arch, self.arch.split(":")[-1].split("_")[0])


def _optimizer(spec: RunSpec, params, steps: int):
    if spec.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=spec.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    elif spec.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.extra.get("weight_decay", 0.05))
    else:
        raise ValueError(f"unknown optimizer {spec.optimizer!r}; allowed: sgd, adamw")
    import math
    warm = max(1, steps // 20)
    if spec.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=max(0.05, 2.5 / steps),
                                                    anneal_strategy="cos", cycle_momentum=False)
    elif spec.schedule == "cosine":  # short warm-up, then cosine to zero
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                                  0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    elif spec.schedule == "linear":  # the BERT fine-tuning recipe
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                                  max(0.0, (steps - s) / max(1, steps - warm)))
    elif spec.schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, 3 * steps // 4], 0.1)
    elif spec.schedule == "restarts":  # SGDR: three cosine cycles
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(1, steps // 3))
    elif spec.schedule == "constant":
        sched = None
    else:
        raise ValueError(f"unknown schedule {spec.schedule!r}; allowed: {', '.join(SCHEDULES)}")
    return opt, sched


def build_task(spec: RunSpec, data_dir, device):
    """(model, train_loader, eval_loader, probe, probe_mask, metric_fn) for a spec, on real data."""
    from ..lab import data as D
    from ..lab.models import build_model, build_tokenizer
    from ..lab.train import accuracy_metric

    torch.manual_seed(spec.seed)
    if spec.task in ("cifar10", "cifar100"):
        train = D.load_cifar(spec.task, data_dir, "train", subset=spec.subset, seed=spec.seed, augment=True)
        test = D.load_cifar(spec.task, data_dir, "test")
        model = build_model(spec.arch, num_classes=train.num_classes)
        if spec.regime == "finetune":  # pretrain on classes 0-4, fine-tune on the unseen classes 5-9
            half = train.num_classes // 2
            pre = D.select_classes(train, range(half))
            model = build_model(spec.arch, num_classes=half)
            opt, sched = _optimizer(spec, model.parameters(), spec.pretrain_epochs * (-(-len(pre) // spec.batch_size)))
            fit(model.to(device), opt, D.ArrayLoader(pre, spec.batch_size, True, spec.seed + 1, device), spec.pretrain_epochs,
                device=device, scheduler=sched, progress=False)
            _reset_head(model, train.num_classes - half)
            train, test = D.select_classes(train, range(half, train.num_classes)), D.select_classes(test, range(half, test.num_classes))
        loader = D.ArrayLoader(train, spec.batch_size, True, spec.seed, device)
        g = torch.Generator().manual_seed(1234)
        probe_idx = torch.randperm(len(test), generator=g)[: spec.probe_size]
        probe = test.get_batch(probe_idx)[0].to(device)
        return model.to(device), loader, D.ArrayLoader(test, 512, False, 0, device), probe, None, accuracy_metric
    if spec.task == "digits":
        train, test = D.load_digits("train", seed=spec.seed), D.load_digits("test", seed=spec.seed)
        model = build_model(spec.arch, num_classes=10)
        if spec.regime == "finetune":  # pretrain on digits 0-4, fine-tune on 5-9
            pre = _digit_classes(train, range(5))
            model = build_model(spec.arch, num_classes=5)
            opt, sched = _optimizer(spec, model.parameters(), spec.pretrain_epochs * (-(-len(pre) // spec.batch_size)))
            fit(model.to(device), opt, D.make_loader(pre, spec.batch_size, shuffle=True, seed=spec.seed + 1),
                spec.pretrain_epochs, device=device, scheduler=sched, progress=False)
            _reset_head(model, 5)
            train, test = _digit_classes(train, range(5, 10)), _digit_classes(test, range(5, 10))
        loader = D.make_loader(train, spec.batch_size, shuffle=True, seed=spec.seed)
        probe = test.tensors[0][: spec.probe_size].to(device)
        return model.to(device), loader, D.make_loader(test, 512), probe, None, accuracy_metric
    # GLUE through a Hugging Face encoder
    tok = build_tokenizer(spec.arch)
    train = D.load_glue(spec.task, tok, data_dir, "train", subset=spec.subset, seed=spec.seed)
    dev = D.load_glue(spec.task, tok, data_dir, "validation")
    model = build_model(spec.arch, num_classes=train.num_labels).float()  # fp32 even from a half-precision copy
    collate = D.glue_collate(tok)
    loader = D.make_loader(train, spec.batch_size, shuffle=True, seed=spec.seed, collate_fn=collate)
    probe = collate([dev[i] for i in range(min(spec.probe_size, len(dev)))])
    mask = probe["attention_mask"].to(device)
    probe = to_device({k: v for k, v in probe.items() if k != "labels"}, device)
    metric = lambda logits, labels: D.glue_metrics(spec.task, logits.numpy(), labels.numpy())
    return model.to(device), loader, D.make_loader(dev, 128, collate_fn=collate), probe, mask, metric


def _digit_classes(ds, classes):
    from torch.utils.data import TensorDataset
    x, y = ds.tensors
    lo = min(classes)
    keep = (y >= lo) & (y <= max(classes))
    return TensorDataset(x[keep], y[keep] - lo)


def _reset_head(model, num_classes: int) -> None:
    """Replaces the classifier for the fine-tuning classes (torchvision `fc`/`classifier`, timm `head`)."""
    from torch import nn
    for name in ("fc", "head", "heads", "classifier"):
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Linear):
            setattr(model, name, nn.Linear(mod.in_features, num_classes).to(mod.weight.device))
            return
        if isinstance(mod, nn.Sequential) and isinstance(mod[-1], nn.Linear):
            mod[-1] = nn.Linear(mod[-1].in_features, num_classes).to(mod[-1].weight.device)
            return
    raise ValueError(f"cannot find the classifier of {type(model).__name__} to replace for fine-tuning")


def record_run(spec: RunSpec, data_dir=None, device="cpu", progress: bool = True) -> dict:
    """Trains one run without freezing; returns features, CKA curves and metadata."""
    model, loader, eval_loader, probe, mask, metric_fn = build_task(spec, data_dir, device)
    units = find_units(model, to_device(example_input(next(iter(loader))), device) if not torch.is_tensor(probe) else probe[:2])
    steps_per_epoch = len(loader)
    total = spec.epochs * steps_per_epoch
    record_every = spec.record_every or max(1, steps_per_epoch // spec.window)
    ckpt_every = max(1, steps_per_epoch // spec.checkpoints_per_epoch)
    rec = WeightRecorder(units, spec.window, spec.sample_size, spec.seed)
    snapshots = UnitSnapshots(units)
    lookbacks = veto_lookbacks(steps_per_epoch, total)
    shares = LookbackShares(units, probe, sorted({*range(ckpt_every, total + 1, ckpt_every), total}), lookbacks, total)
    feats, grams, steps, vetos = [], [], [], []
    everyone = list(range(len(units)))

    def on_step(step: int) -> None:
        if step % record_every == 0:
            rec.record(everyone)
        if (step % ckpt_every == 0 or step == total) and rec.ready(0):
            feats.append(window_features(rec.windows(everyone)).half().cpu())
            grams.append(probe_grams(model, units, probe, mask).float())
            vetos.append(shares.at_checkpoint(model, step))
            snapshots.take(step)
            steps.append(step)
        shares.take(step)

    shares.take(0)

    opt, sched = _optimizer(spec, model.parameters(), total)
    t0 = time.perf_counter()
    res = fit(model, opt, loader, spec.epochs, device=device, scheduler=sched, eval_loader=eval_loader,
              metric_fn=metric_fn, eval_every_epochs=spec.epochs, on_step=on_step,
              progress=progress, desc=spec.name)
    if not steps:
        raise ValueError(f"run {spec.name} ended before any window filled: {total} steps, window {spec.window} "
                         f"x record_every {record_every}; use more epochs or a smaller window")
    cka = cka_curves(torch.stack(grams))
    harm = rewind_harm(model, snapshots, harm_probe(eval_loader, device, spec.probe_size))
    meta = {"spec": asdict(spec), "name": spec.name, "family": spec.family, "units": [u.name for u in units],
            "flop_share": [u.flop_share for u in units], "steps_per_epoch": steps_per_epoch,
            "record_every": record_every, "total_steps": total, "wall_s": time.perf_counter() - t0,
            "format": RUN_FORMAT, "rewind_cap": REWIND_CAP, "veto_lookbacks": lookbacks, "veto_rows": list(VETO_ROWS),
            "final": {k: v for k, v in res.final.items() if isinstance(v, (int, float, str))},
            "evals": [{k: v for k, v in h.items() if isinstance(v, (int, float, str))} for h in res.history if h.get("eval")]}
    return {"features": torch.stack(feats), "cka": cka.float(), "rewind": harm.float(), "steps": torch.tensor(steps),
            "veto_share": torch.stack(vetos).half(), "meta": meta}


def save_run(run: dict, path: Path) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: run[k].contiguous() for k in ("features", "cka", "rewind", "steps", "veto_share") if k in run}, str(path),
              metadata={"meta": json.dumps(run["meta"])})


def load_run(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        out = {k: f.get_tensor(k) for k in f.keys()}
        out["meta"] = json.loads(f.metadata()["meta"])
    return out


def run_format(path: Path) -> int:
    """The format a recorded run was saved in (1: before the veto's shares were recorded)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return int(json.loads(f.metadata()["meta"]).get("format", 1))


def load_runs(folder) -> list[dict]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no recorded runs (*.safetensors) in {folder}; make them with "
                                "`python -m smartfrz.predictor_training.freeze_dataset --preset smoke --out DIR`")
    return [load_run(f) for f in files]


# ----------------------------------------------------------------------------- presets

def cpu_preset() -> list[RunSpec]:
    """77 runs that break the shortcuts a predictor could learn instead of convergence: 9 architectures in
    8 families, 6 schedules, SGD and AdamW over a decade of learning rates each, from scratch and
    fine-tuned, digits / CIFAR-10 / MRPC / CoLA (four on the full training sets), several seeds. About
    5 hours of one CPU core; ``--shard I/N`` splits it over N processes (CIFAR-100 is not in the team's
    offline data, so it is left to `gpu`)."""
    sgd, adamw = "sgd", "adamw"
    small = dict(window=20, sample_size=512, probe_size=256)
    runs = []
    # (optimizer, lr, schedule) grid for the digits models: every schedule, both optimizers, a decade of lr each
    grid = [(sgd, 0.02, "constant"), (sgd, 0.2, "step"), (sgd, 0.05, "cosine"), (sgd, 0.1, "onecycle"),
            (sgd, 0.05, "restarts"), (sgd, 0.02, "linear"), (adamw, 3e-4, "cosine"), (adamw, 3e-3, "constant"),
            (adamw, 1e-3, "linear"), (adamw, 1e-3, "step"), (adamw, 3e-3, "onecycle"), (adamw, 3e-4, "restarts")]
    for arch in ("digits_mlp", "digits_cnn"):
        for i, (opt, lr, sched) in enumerate(grid):
            runs.append(RunSpec(arch, "digits", epochs=12, lr=lr, optimizer=opt, schedule=sched, batch_size=32,
                                seed=i % 3, **small))
        for i, (opt, lr, sched) in enumerate([(sgd, 0.01, "cosine"), (adamw, 3e-4, "linear")]):  # digits 0-4, then 5-9
            runs.append(RunSpec(arch, "digits", regime="finetune", pretrain_epochs=8, epochs=10, lr=lr, optimizer=opt,
                                schedule=sched, batch_size=32, seed=i, **small))
    cifar = dict(task="cifar10", subset=2000, batch_size=64, **small)
    for i, (opt, lr, sched, regime) in enumerate([(sgd, 0.1, "onecycle", "scratch"), (sgd, 0.05, "step", "scratch"),
                                                  (sgd, 0.02, "constant", "scratch"), (adamw, 2e-3, "cosine", "scratch"),
                                                  (sgd, 0.2, "restarts", "scratch"), (adamw, 5e-4, "linear", "scratch"),
                                                  (sgd, 0.02, "cosine", "finetune"), (adamw, 3e-4, "constant", "finetune"),
                                                  (sgd, 0.05, "linear", "finetune"), (adamw, 1e-3, "onecycle", "scratch")]):
        runs.append(RunSpec("resnet20", epochs=8, lr=lr, optimizer=opt, schedule=sched, regime=regime, seed=i % 3,
                            pretrain_epochs=6 if regime == "finetune" else 0, **cifar))
    for i, (opt, lr, sched, regime) in enumerate([(sgd, 0.1, "cosine", "scratch"), (adamw, 1e-3, "step", "scratch"),
                                                  (sgd, 0.03, "linear", "scratch"), (adamw, 3e-3, "restarts", "scratch"),
                                                  (sgd, 0.01, "constant", "finetune")]):
        runs.append(RunSpec("torchvision:shufflenet_v2_x0_5", epochs=8, lr=lr, optimizer=opt, schedule=sched, regime=regime,
                            seed=i % 2, pretrain_epochs=6 if regime == "finetune" else 0, **cifar))
    few = dict(cifar, subset=1000)
    for arch in ("vgg11_bn", "mobilenet_v2"):
        for i, (opt, lr, sched, regime) in enumerate([(sgd, 0.05, "onecycle", "scratch"), (adamw, 1e-3, "constant", "scratch"),
                                                      (sgd, 0.01, "step", "scratch"), (sgd, 0.01, "cosine", "finetune")]):
            runs.append(RunSpec(arch, epochs=6, lr=lr, optimizer=opt, schedule=sched, regime=regime, seed=i % 2,
                                pretrain_epochs=4 if regime == "finetune" else 0, **few))
    runs += [RunSpec("resnet18_cifar", epochs=4, lr=0.05, schedule="cosine", **few),
             RunSpec("resnet18_cifar", epochs=4, lr=1e-3, optimizer=adamw, schedule="linear", seed=1, **few)]
    vit = dict(few, optimizer=adamw, extra={"weight_decay": 0.05})
    runs += [RunSpec("vit_tiny_cifar", epochs=6, lr=1e-3, schedule="onecycle", **vit),
             RunSpec("vit_tiny_cifar", epochs=6, lr=3e-4, schedule="constant", seed=1, **vit),
             RunSpec("vit_tiny_cifar", epochs=6, lr=1e-4, schedule="linear", regime="finetune", pretrain_epochs=4, seed=2, **vit),
             RunSpec("vit_tiny_cifar", epochs=6, lr=3e-3, schedule="restarts", seed=0, **{**vit, "optimizer": sgd, "extra": {}}),
             RunSpec("deit_tiny", epochs=4, lr=5e-4, schedule="cosine", **vit),
             RunSpec("deit_tiny", epochs=4, lr=1e-3, schedule="step", seed=1, **vit)]
    glue = dict(regime="finetune", optimizer=adamw, batch_size=32, probe_size=256, window=20, sample_size=512,
                extra={"weight_decay": 0.01})
    runs += [RunSpec("minilm", "mrpc", epochs=3, lr=5e-5, schedule="linear", subset=600, **glue),
             RunSpec("minilm", "mrpc", epochs=3, lr=2e-5, schedule="constant", subset=600, seed=1, **glue),
             RunSpec("minilm", "cola", epochs=3, lr=1e-4, schedule="cosine", subset=1200, **glue),
             RunSpec("minilm", "cola", epochs=3, lr=3e-5, schedule="step", subset=1200, seed=1, **glue),
             RunSpec("minilm", "cola", epochs=3, lr=2e-4, schedule="linear", subset=1200, seed=2, **glue),
             RunSpec("minilm", "mrpc", epochs=3, lr=1e-2, schedule="linear", subset=600, seed=2,
                     **{**glue, "optimizer": sgd, "extra": {}})]
    # full training sets: a 600-example fine-tune settles within an epoch, a full one does not, and a
    # predictor that saw only the small ones froze every MiniLM layer at once on full MRPC (-2 F1)
    runs += [RunSpec("minilm", "mrpc", epochs=3, lr=3e-5, schedule="cosine", seed=3, **glue),
             RunSpec("minilm", "cola", epochs=3, lr=5e-5, schedule="linear", seed=3, **glue),
             RunSpec("minilm", "mrpc", epochs=3, lr=5e-5, schedule="linear", seed=4, **glue),
             RunSpec("minilm", "mrpc", epochs=3, lr=2e-5, schedule="constant", seed=5, **glue)]
    # CNNs trained until their training data is fit: the short runs above stop at 20-65% accuracy, where
    # the labels say nothing is settled, so without these a CNN's freezable regime is never seen
    fitted = [("resnet20", cifar, 24, [(sgd, 0.05, "cosine"), (adamw, 1e-3, "step"), (sgd, 0.1, "onecycle")]),
              ("torchvision:shufflenet_v2_x0_5", cifar, 24, [(sgd, 0.1, "cosine"), (adamw, 1e-3, "linear")]),
              ("mobilenet_v2", few, 20, [(sgd, 0.05, "cosine"), (adamw, 1e-3, "step")]),
              ("vgg11_bn", few, 20, [(sgd, 0.05, "step")])]
    for arch, data, epochs, recipes in fitted:
        runs += [RunSpec(arch, epochs=epochs, lr=lr, optimizer=opt, schedule=sched, seed=4 + i, **data)
                 for i, (opt, lr, sched) in enumerate(recipes)]
    return runs


def preset(name: str) -> list[RunSpec]:
    """Run sets: `smoke` (CPU, a minute), `cpu` (77 runs, ~5 h of one core: `cpu_preset`),
    `gpu` (larger CNNs and ViTs on CIFAR-10), `gpu_text` (MiniLM on MRPC/CoLA)."""
    if name == "smoke":
        return [RunSpec("digits_cnn", "digits", epochs=8, lr=0.05, batch_size=32, window=8, sample_size=256,
                        probe_size=128, seed=s) for s in (0, 1)]
    if name == "cpu":
        return cpu_preset()
    if name == "gpu":
        cnn = dict(task="cifar10", subset=16000, batch_size=128, optimizer="sgd")
        vit = dict(task="cifar10", subset=16000, batch_size=128, optimizer="adamw", extra={"weight_decay": 0.05})
        return [RunSpec("resnet20", epochs=30, lr=0.1, **cnn),
                RunSpec("vit_tiny_cifar", epochs=30, lr=1e-3, **vit),
                RunSpec("resnet18_cifar", epochs=20, lr=0.05, **cnn),
                RunSpec("vit_tiny_cifar", epochs=15, lr=2e-4, regime="finetune", pretrain_epochs=20, seed=1, **vit),
                RunSpec("vgg11_bn", epochs=12, lr=0.01, regime="finetune", pretrain_epochs=12, seed=1, **cnn),
                RunSpec("deit_tiny", epochs=15, lr=5e-4, **vit),
                RunSpec("mobilenet_v2", epochs=20, lr=0.05, **cnn),
                RunSpec("vgg11_bn", epochs=20, lr=0.05, schedule="step", **cnn),
                RunSpec("resnet20", epochs=15, lr=0.02, regime="finetune", pretrain_epochs=15, seed=1, **cnn)]
    if name == "gpu_text":  # the cpu preset's MiniLM fine-tuning, with more seeds and learning rates
        glue = dict(regime="finetune", optimizer="adamw", schedule="linear", batch_size=32, probe_size=128,
                    extra={"weight_decay": 0.01}, arch="minilm", epochs=3)
        return [RunSpec(task="mrpc", lr=5e-5, seed=0, record_every=2, **glue),
                RunSpec(task="cola", lr=5e-5, seed=0, record_every=4, **glue),
                RunSpec(task="mrpc", lr=3e-5, seed=1, record_every=2, **glue),
                RunSpec(task="cola", lr=2e-5, seed=1, record_every=4, **glue),
                RunSpec(task="mrpc", lr=1e-4, seed=2, record_every=1, epochs=4, **{k: v for k, v in glue.items() if k != "epochs"}),
                RunSpec(task="cola", lr=1e-4, seed=2, record_every=8, **glue)]
    raise ValueError(f"unknown preset {name!r}; allowed: smoke, cpu, gpu, gpu_text")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="smoke", choices=["smoke", "cpu", "gpu", "gpu_text"])
    ap.add_argument("--out", required=True, help="folder for one <run>.safetensors per run")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default=None, help="substring of run names to keep")
    ap.add_argument("--budget-s", type=float, default=None, help="skip runs once this much time has passed")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--shard", default=None, help="I/N: record only runs I, I+N, ... (N processes side by side)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    t0 = time.perf_counter()
    shard, shards = map(int, args.shard.split("/")) if args.shard else (0, 1)
    if not 0 <= shard < shards:
        raise ValueError(f"--shard is I/N with 0 <= I < N; got {args.shard!r}")
    for i, spec in enumerate(preset(args.preset)):
        if i % shards != shard:
            continue
        if args.only and args.only not in spec.name:
            continue
        path = out / f"{spec.name}.safetensors"
        if path.exists() and run_format(path) >= RUN_FORMAT:
            print(f"skip {spec.name}: {path} exists")
            continue
        if path.exists():
            print(f"record {spec.name} again: {path} is in format {run_format(path)}, older than "
                  f"format {RUN_FORMAT}; it is replaced once the new recording is done")
        if args.budget_s and time.perf_counter() - t0 > args.budget_s:
            print(f"skip {spec.name}: time budget of {args.budget_s:.0f}s spent")
            continue
        run = record_run(spec, args.data_dir, args.device)
        save_run(run, path)
        m = run["meta"]
        print(f"{spec.name}: {m['final'].get('metric_name')}={m['final'].get('metric', float('nan')):.3f} "
              f"checkpoints={len(run['steps'])} units={len(m['units'])} wall={m['wall_s']:.0f}s", flush=True)


if __name__ == "__main__":
    from ..lab.cli import run_cli
    run_cli(main)
