"""One experiment = one (task, model, policy, seed) training run with every cost accounted.

``run(ExperimentConfig(...))`` is what the notebooks, the benchmark and ``make demo`` call; it
returns an ``ExperimentResult`` and writes ``reports/runs/<run>.json``.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


import torch

from .costs import (EnergyMeter, PeakMemory, Stopwatch, decision_flops, forward_flops, integrate_cached_train_flops,
                    integrate_train_flops, prefix_forward_flops, prefix_step_flops)
from ..engine import SmartFRZ
from .train import batch_loss, example_input, fit, to_device
from ..predictor_training.labels import DEFAULT_LABEL

VISION_TASKS = ("digits", "cifar10", "cifar100", "imagefolder")
CACHE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class ExperimentConfig:
    name: str = "quickstart"  # the experiment: a W&B group and a folder of comparable runs
    task: str = "digits"  # digits | cifar10 | cifar100 | imagefolder | any GLUE task (mrpc, cola, sst2, stsb, ...)
    model: str = "digits_cnn"  # smartfrz.lab.models.MODEL_NAMES, or torchvision:<name>, timm:<name>, hf:<repo id>
    policy: str = "smartfrz"  # smartfrz | none | linear | autofreeze | oracle
    epochs: int = 30
    batch_size: int = 32
    lr: float | None = None  # None: 0.05 (SGD, vision) or 5e-5 (AdamW, text)
    optimizer: str | None = None  # sgd | adamw; None: by task
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float | None = None
    seed: int = 0
    subset: int | None = None  # training examples (class-balanced for CIFAR)
    eval_subset: int | None = None  # test examples used at all (smoke runs); None: the whole test set
    epoch_eval_subset: int | None = None  # per-epoch evaluations use this fixed subset; the final one all
    data_dir: str | None = None  # None: $SMARTFRZ_DATA_DIR or ./data
    device: str = "auto"
    pretrained: bool | None = None  # None: text models pretrained, vision from scratch
    image_size: int = 32
    classes: list | None = None  # imagefolder: a class subset (e.g. ImageNet-100)
    max_length: int = 128
    lora: int = 0  # text: LoRA adapters of this rank on the pretrained model (peft's defaults per model), the rest fixed; 0: all weights train
    group_by_length: bool = False  # text: batches of similar length (less padding), as the HF Trainer option
    augment: bool = True
    frz: dict = field(default_factory=dict)  # SmartFRZ options (threshold, window, decide_every, ...)
    cache: bool = False  # prefix cache: frozen units' outputs stored per example, their forward skipped
    cache_dtype: str = "float16"  # float16 | bfloat16 | float32 (exact)
    cache_max_bytes: int | None = None  # RAM for the store; beyond it, a memory-mapped spill file
    veto_probe: int | None = None  # examples in the functional veto's probe batch; None: 256 images, 128 sentences
    record_cka: bool = False  # record the oracle's reference: probe CKA curves and rewind harms per checkpoint
    oracle_label: str = DEFAULT_LABEL  # the bench's oracle: label RULE:TAU (predictor_training.labels.freeze_labels)
    oracle_freeze_steps: dict | None = None
    wandb: bool = False
    wandb_project: str = "smartfrz"
    wandb_dir: str | None = None  # where W&B writes its run folder; None: ./wandb
    out_dir: str | None = "reports/runs"
    progress: bool = True
    eval_every_epochs: int = 1

    def __post_init__(self):
        from ..config import POLICIES
        from .models import check_model_name
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; allowed: {', '.join(POLICIES)}")
        check_model_name(self.model)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer; got {self.epochs!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {self.batch_size!r}")
        for name in ("subset", "eval_subset", "epoch_eval_subset", "veto_probe"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None; got {v!r}")
        if isinstance(self.lora, bool) or not isinstance(self.lora, int) or self.lora < 0:
            raise ValueError(f"lora must be a LoRA rank (a positive integer) or 0 for full fine-tuning; got {self.lora!r}")
        if self.lora and self.task in VISION_TASKS:
            raise ValueError(f"lora applies to text models (GLUE tasks); task {self.task!r} is a vision task")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {', '.join(CACHE_DTYPES)}; got {self.cache_dtype!r}")
        if self.task not in VISION_TASKS:
            from .data import glue_task
            try:
                glue_task(self.task)
            except (KeyError, ValueError) as e:
                raise ValueError(f"unknown task {self.task!r}; allowed: {', '.join(VISION_TASKS)} or a GLUE task "
                                 "(cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli)") from e

    @property
    def label(self) -> str:
        """The method as tables show it: the policy, and "+cache" with the prefix cache."""
        return f"{self.policy}+cache" if self.cache else self.policy

    @property
    def run_name(self) -> str:
        return f"{self.name}-{self.model}-{self.task}-{self.label}-s{self.seed}"

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise TypeError(f"unknown experiment option(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**d)


@dataclass
class ExperimentResult:
    config: dict
    run: str
    device: str
    metric_name: str
    metric: float
    final: dict
    history: list
    timeline: list
    units: list  # [{name, num_params, flop_share}]
    frozen_units: list
    steps: int
    train_flops: float
    full_train_flops: float  # the same steps with nothing frozen
    prefix_step_flops: list
    flops_check: dict
    wall_s: float
    peak_mem_bytes: int
    energy_j: float | None
    overhead_s: dict
    cka: dict | None = None
    cache: dict | None = None  # prefix cache: entries, RAM/disk bytes, steps served, fill work and FLOPs
    cadence: dict | None = None  # what the engine resolved: window shape (the predictor's unless set), record and decide steps
    decision_flops: float = 0.0  # the decisions' own forwards (the functional veto's probe), not in train_flops

    @property
    def flops_saved(self) -> float:
        return 1.0 - self.train_flops / self.full_train_flops if self.full_train_flops else 0.0

    @property
    def net_flops_saved(self) -> float:
        """What freezing saved once the decisions' own forwards are paid for."""
        return 1.0 - (self.train_flops + self.decision_flops) / self.full_train_flops if self.full_train_flops else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flops_saved"] = self.flops_saved
        d["net_flops_saved"] = self.net_flops_saved
        return d

    def save(self, folder) -> Path:
        path = Path(folder) / f"{self.run}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=_jsonable))
        tmp.replace(path)
        return path


def _jsonable(o):
    return str(o) if isinstance(o, Path) else float(o)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    # the kernels' instruction set: runs on CPUs of different ones follow different float paths, so a seed
    # reproduces a run exactly only on the same kind of CPU (docs/results.md, "How much of a delta is noise")
    isa = torch.backends.cpu.get_cpu_capability()
    return f"cpu ({platform.processor() or platform.machine()}, {isa}, {torch.get_num_threads()} threads)"


def build(cfg: ExperimentConfig, device: str):
    """(model, train_loader, eval_loader, metric_fn, probe, probe_mask) for a config, on real data."""
    from . import data as D
    from .models import build_model, build_tokenizer
    from .train import accuracy_metric

    torch.manual_seed(cfg.seed)
    if cfg.task in ("cifar10", "cifar100"):
        train = D.load_cifar(cfg.task, cfg.data_dir, "train", subset=cfg.subset, seed=cfg.seed, augment=cfg.augment)
        test = D.load_cifar(cfg.task, cfg.data_dir, "test", subset=cfg.eval_subset, seed=0)
        model = build_model(cfg.model, num_classes=train.num_classes, pretrained=cfg.pretrained, image_size=cfg.image_size)
        train_loader = D.ArrayLoader(train, cfg.batch_size, True, cfg.seed, device, with_index=cfg.cache)
        eval_loader = D.ArrayLoader(test, 500, False, 0, device)
        probe = test.get_batch(torch.arange(min(cfg.veto_probe or 256, len(test))))[0].to(device)
        return model, train_loader, eval_loader, accuracy_metric, probe, None
    if cfg.task == "digits":
        train, test = D.load_digits("train", seed=cfg.seed), D.load_digits("test", seed=cfg.seed)
        model = build_model(cfg.model, num_classes=10, pretrained=cfg.pretrained)
        train = D.IndexedDataset(train) if cfg.cache else train
        return (model, D.make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed), D.make_loader(test, 512),
                accuracy_metric, test.tensors[0][:cfg.veto_probe or 256].to(device), None)
    if cfg.task == "imagefolder":
        if not cfg.data_dir:
            raise ValueError("task 'imagefolder' needs data_dir: a folder with train/ and val/ in ImageFolder layout")
        train = D.load_imagefolder(cfg.data_dir, "train", cfg.image_size, cfg.classes)
        val = D.load_imagefolder(cfg.data_dir, "val", cfg.image_size, cfg.classes)
        model = build_model(cfg.model, num_classes=len(train.classes), pretrained=cfg.pretrained, image_size=cfg.image_size)
        kw = dict(num_workers=min(8, torch.get_num_threads()), pin_memory=device != "cpu")
        val_loader = D.make_loader(val, 128, **kw)
        probe = next(iter(D.make_loader(val, cfg.veto_probe or 128)))[0].to(device)
        train = D.IndexedDataset(train) if cfg.cache else train
        return model, D.make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True, **kw), \
            val_loader, accuracy_metric, probe, None
    tok = build_tokenizer(cfg.model)
    train = D.load_glue(cfg.task, tok, cfg.data_dir, "train", cfg.max_length, subset=cfg.subset, seed=cfg.seed)
    dev = D.load_glue(cfg.task, tok, cfg.data_dir, "validation", cfg.max_length, subset=cfg.eval_subset)
    model = build_model(cfg.model, num_classes=train.num_labels, pretrained=cfg.pretrained).float()
    if cfg.lora:
        import peft  # parameter-efficient fine-tuning: adapters train, the pretrained weights stay as loaded
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=cfg.lora, lora_alpha=2 * cfg.lora))
    collate = D.glue_collate(tok)
    metric = lambda logits, labels: D.glue_metrics(cfg.task, logits.numpy(), labels.numpy())
    probe_batch = collate([dev[i] for i in range(min(cfg.veto_probe or 128, len(dev)))])
    mask = probe_batch["attention_mask"].to(device)
    probe = to_device({k: v for k, v in probe_batch.items() if k != "labels"}, device)
    lengths = [len(ex["input_ids"]) for ex in train] if cfg.group_by_length else None
    train = D.IndexedDataset(train) if cfg.cache else train
    return (model, D.make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed, collate_fn=collate, lengths=lengths),
            D.make_loader(dev, 128, collate_fn=collate), metric, probe, mask)


def learning_rate(cfg: ExperimentConfig) -> float:
    """The config's learning rate, or the default of its optimizer: 0.05 (SGD, vision) or 5e-5 (AdamW, text)."""
    return cfg.lr if cfg.lr is not None else (0.05 if cfg.task in VISION_TASKS else 5e-5)


def make_optimizer(cfg: ExperimentConfig, model, total_steps: int):
    text = cfg.task not in VISION_TASKS
    kind = cfg.optimizer or ("adamw" if text else "sgd")
    lr = learning_rate(cfg)
    wd = cfg.weight_decay if cfg.weight_decay is not None else (0.01 if kind == "adamw" else 5e-4)
    params = [p for p in model.parameters() if p.requires_grad]  # all of them but with LoRA
    if kind == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    elif kind == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    else:
        raise ValueError(f"unknown optimizer {kind!r}; allowed: sgd, adamw")
    if cfg.schedule == "cosine":
        warm = max(1, total_steps // 20)
        lam = lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total_steps - warm)))
    elif cfg.schedule == "linear":
        warm = max(1, total_steps // 10)
        lam = lambda s: (s + 1) / warm if s < warm else max(0.0, (total_steps - s) / max(1, total_steps - warm))
    elif cfg.schedule == "constant":
        lam = lambda s: 1.0
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; allowed: cosine, linear, constant")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lam)


def _batch_size_of(batch) -> tuple[int, int]:
    """(rows, tokens-or-rows) of a batch, to scale measured step FLOPs to other batches."""
    if isinstance(batch, dict):
        ids = batch["input_ids"]
        return ids.shape[0], int(ids.numel())
    return batch[0].shape[0], batch[0].shape[0]


def run(cfg: ExperimentConfig | dict) -> ExperimentResult:
    """Trains one run and accounts its costs; see ExperimentConfig for every knob."""
    if isinstance(cfg, dict):
        cfg = ExperimentConfig.from_dict(cfg)
    device = resolve_device(cfg.device)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model, train_loader, eval_loader, metric_fn, probe, mask = build(cfg, device)
    model.to(device)
    steps_per_epoch = len(train_loader)
    total = cfg.epochs * steps_per_epoch
    first = to_device(next(iter(train_loader)), device)
    if hasattr(train_loader, "epoch"):
        train_loader.epoch = 0  # peeking must not shift the shuffle order
    opt, sched = make_optimizer(cfg, model, total)
    # the run's length: the linear schedule's end, and the smartfrz cadence's floor of decisions per run
    options = {"steps_per_epoch": steps_per_epoch, "total_steps": total, "seed": cfg.seed, **cfg.frz}
    if cfg.policy == "oracle":
        if not cfg.oracle_freeze_steps:
            raise ValueError("policy 'oracle' needs oracle_freeze_steps from a reference run "
                             "(run the 'none' policy with record_cka=True, then smartfrz.lab.experiment.oracle_steps)")
        options["oracle_freeze_steps"] = cfg.oracle_freeze_steps
    frz = SmartFRZ(model, opt, example_input=example_input(first), policy=cfg.policy, veto_probe=probe, **options)
    prefix_flops = prefix_step_flops(model, frz.units, first, batch_loss, frz.max_frozen)
    cache = None
    if cfg.cache:
        from ..prefix_cache import PrefixCache
        cache = PrefixCache(getattr(torch, cfg.cache_dtype), cfg.cache_max_bytes)
        boundary_flops = prefix_forward_flops(model, frz.units, first, batch_loss, frz.max_frozen)
        full_forward = forward_flops(model, first, batch_loss)
    ref_rows, ref_tokens = _batch_size_of(first)

    # per-step FLOP scaling for batches unlike the measured one (last partial batch, dynamic padding)
    scales: list[float] = []
    record_watch, decide_watch, probe_watch = Stopwatch(), Stopwatch(), Stopwatch()
    if frz.recorder is not None:
        frz.recorder.record = record_watch.wrap(frz.recorder.record)
    frz.decide = decide_watch.wrap(frz.decide)
    grams, cka_steps = [], []
    ckpt_every = max(1, steps_per_epoch // 4)
    snapshots = None
    if cfg.record_cka:
        from ..predictor_training.labels import UnitSnapshots
        snapshots = UnitSnapshots(frz.units)

    def scale_hook(batch):
        scales.append(_batch_size_of(batch)[1] / ref_tokens)

    def on_step(step):
        if cfg.record_cka and (step % ckpt_every == 0 or step == total):
            with torch.no_grad():
                t = time.perf_counter()
                from ..predictor_training.labels import probe_grams
                grams.append(probe_grams(model, frz.units, probe, mask).float().cpu())
                snapshots.take(step)
                cka_steps.append(step)
                probe_watch.seconds += time.perf_counter() - t

    on_step(0)  # the reference starts where training starts (a fine-tuned model's pretrained state)

    loader = _Tap(train_loader, scale_hook)
    logger = None
    if cfg.wandb:
        from .wandb_logging import WandbLogger
        logger = WandbLogger(project=cfg.wandb_project, group=cfg.name, name=cfg.run_name, method=cfg.policy,
                             config=asdict(cfg), dir=cfg.wandb_dir)
    final_loader = None
    if cfg.epoch_eval_subset is not None:
        from .data import subset_loader
        if (sub := subset_loader(eval_loader, cfg.epoch_eval_subset)) is not None:
            eval_loader, final_loader = sub, eval_loader
    with PeakMemory(device) as mem, EnergyMeter(device) as energy:
        res = fit(model, opt, loader, cfg.epochs, device=device, scheduler=sched, frz=frz, eval_loader=eval_loader,
                  final_eval_loader=final_loader,
                  metric_fn=metric_fn, eval_every_epochs=cfg.eval_every_epochs, on_step=on_step,
                  progress=cfg.progress, desc=cfg.run_name, cache=cache or False)
    train_flops = integrate_train_flops(frz.timeline, res.steps, prefix_flops, scales)
    if cache is not None:
        train_flops, fill_flops = integrate_cached_train_flops(frz.timeline, res.steps, prefix_flops, boundary_flops,
                                                               cache.served, scales, cache.advances, ref_tokens, full_forward)
        res.cache.update(fill_flops=fill_flops, forward_flops=boundary_flops, full_forward_flops=full_forward)
    full_flops = float(sum(prefix_flops[0] * s for s in scales))
    check = _check_flops(model, frz, prefix_flops, first)
    cka = None
    if cfg.record_cka and grams:
        from ..predictor_training.labels import REWIND_CAP, cka_curves, harm_probe, rewind_harm
        curves = cka_curves(torch.stack(grams))
        t = time.perf_counter()
        harm = rewind_harm(model, snapshots, harm_probe(final_loader or eval_loader, device))
        cka = {"steps": cka_steps, "curves": curves.tolist(), "units": [u.name for u in frz.units],
               "rewind": [[None if math.isnan(v) else v for v in row] for row in harm.tolist()],
               "rewind_s": time.perf_counter() - t, "rewind_cap": REWIND_CAP}
    result = ExperimentResult(
        config=asdict(cfg), run=cfg.run_name, device=device_name(device),
        metric_name=res.final.get("metric_name", ""), metric=float(res.final.get("metric", float("nan"))),
        final={k: v for k, v in res.final.items() if isinstance(v, (int, float, str))},
        history=res.history, timeline=frz.timeline,
        units=[{"name": u.name, "num_params": u.num_params, "flop_share": u.flop_share} for u in frz.units],
        frozen_units=frz.frozen_units, steps=res.steps, train_flops=train_flops, full_train_flops=full_flops,
        prefix_step_flops=prefix_flops, flops_check=check,
        wall_s=res.wall_s - probe_watch.seconds, peak_mem_bytes=int(mem.peak), energy_j=energy.joules,
        overhead_s={"record": record_watch.seconds, "decide": decide_watch.seconds,
                    "total": record_watch.seconds + decide_watch.seconds}, cka=cka, cache=res.cache,
        cadence={"window": frz.window, "sample_size": frz.sample_size, "record_every": frz.record_every,
                 "decide_every": frz.decide_every, "windows_recorded": frz.recorder is not None},
        decision_flops=decision_flops(model, frz.veto))
    if logger is not None:
        logger.log_fit(res, frz=frz, total_steps=res.steps)
        logger.log_summary({"final/metric": result.metric, "train_flops": train_flops, "flops_saved": result.flops_saved,
                            "wall_s": result.wall_s})
        logger.finish()
    if cfg.out_dir:
        result.save(cfg.out_dir)
    return result


def _check_flops(model, frz: SmartFRZ, prefix_flops, batch) -> dict:
    """Counts the real step at the final frozen prefix and compares with the table used above."""
    from .costs import count_step_flops
    was = model.training
    model.eval()  # same FLOPs as a training step, and no BatchNorm statistics move
    measured = count_step_flops(model, batch, batch_loss)
    model.train(was)
    expected = prefix_flops[min(frz.num_frozen, len(prefix_flops) - 1)]
    return {"frozen": frz.num_frozen, "measured": measured, "expected": expected,
            "rel_error": abs(measured - expected) / max(expected, 1)}


class _Tap:
    """Wraps a loader to observe each batch (for FLOP scaling) without touching the hot path."""

    def __init__(self, loader, hook):
        self.loader, self.hook = loader, hook

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for b in self.loader:
            self.hook(b)
            yield b

    def __getattr__(self, name):
        return getattr(self.loader, name)


VISION_TASKS = ("cifar10", "cifar100", "digits", "imagefolder")


def run_kind(config: dict) -> str:
    """"finetune" or "scratch": how a run started, for a label per kind of run (``labels.label_for``)."""
    pretrained = config.get("pretrained")
    if pretrained is None:  # the lab's default: text models pretrained, vision from scratch
        pretrained = config.get("task") not in VISION_TASKS
    return "finetune" if pretrained else "scratch"


def oracle_steps(reference: ExperimentResult | dict, label: str = DEFAULT_LABEL) -> dict[str, int]:
    """Hindsight freeze steps from a reference run recorded with ``record_cka=True`` (``label`` = RULE:TAU or
    terms joined by "+", see ``smartfrz.predictor_training.labels.label_terms``)."""
    from ..predictor_training.labels import check_readable, first_steps, label_for, label_terms, labels_under
    cka = reference.cka if isinstance(reference, ExperimentResult) else reference["cka"]
    label = label_for(label, run_kind(reference.config if isinstance(reference, ExperimentResult) else reference["config"]))
    if not cka:
        raise ValueError("the reference run has no CKA curves: run it with record_cka=True")
    if any(rule == "rewind" for rule, _ in label_terms(label)):
        if "rewind" not in cka:
            raise ValueError("the reference run has no rewind harms (recorded before they existed): run it again")
        check_readable(label, cka.get("rewind_cap", 0.05))

    def values_of(rule: str) -> torch.Tensor:
        if rule == "rewind":
            return torch.tensor([[float("nan") if v is None else v for v in row] for row in cka["rewind"]])
        return torch.tensor(cka["curves"])
    return first_steps(labels_under(label, values_of), cka["steps"], cka["units"])
