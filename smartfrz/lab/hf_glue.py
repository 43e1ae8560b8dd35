"""GLUE fine-tuning through the Hugging Face ``Trainer`` with ``SmartFRZCallback``.

``run_glue(task, model_name, policy, ...)`` trains one run and writes ``<out_dir>/<run>.json`` with
the keys of ``experiment.ExperimentResult`` (metric, history, freeze timeline, measured training
FLOPs, wall time without evaluation, peak memory, energy), so ``smartfrz.lab.reports`` reads both alike.
Any GLUE task works by name; its official metric comes from ``smartfrz.lab.data.glue_metrics``.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from . import data as D
from .costs import EnergyMeter, PeakMemory, Stopwatch, decision_flops, integrate_train_flops, prefix_step_flops
from .experiment import ExperimentResult, _check_flops, device_name, resolve_device
from .train import batch_loss, synchronize


def run_glue(task: str = "mrpc", model_name: str = "minilm", policy: str = "smartfrz", epochs: int = 3,
             batch_size: int = 32, lr: float = 2e-5, seed: int = 0, subset: int | None = None,
             eval_subset: int | None = None, max_length: int = 128, data_dir=None, out_dir="reports/runs",
             name: str = "glue", frz: dict | None = None, device: str = "auto", weight_decay: float = 0.01,
             warmup: float = 0.1, wandb: bool = False, progress: bool = True, resume: bool = False) -> dict:
    """Fine-tunes ``model_name`` on GLUE ``task`` with the freezing ``policy``; returns the run dict."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from ..integrations.hf import SmartFRZCallback
    from .models import build_model, build_tokenizer

    info = D.glue_task(task)
    run_name = f"{name}-{model_name}-{info['name']}-{policy}-s{seed}"
    path = Path(out_dir) / f"{run_name}.json" if out_dir else None
    if resume and path is not None and path.is_file():
        print(f"resume: {run_name} already done ({path})")
        return json.loads(path.read_text())
    device = resolve_device(device)
    config = dict(name=name, task=info["name"], model=model_name, policy=policy, epochs=epochs, batch_size=batch_size,
                  lr=lr, seed=seed, subset=subset, eval_subset=eval_subset, max_length=max_length,
                  data_dir=None if data_dir is None else str(data_dir), device=device, pretrained=True,
                  frz=dict(frz or {}), weight_decay=weight_decay, warmup=warmup, trainer="hf")
    tok = build_tokenizer(model_name)
    train = D.load_glue(task, tok, data_dir, "train", max_length, subset=subset, seed=seed)
    dev = D.load_glue(task, tok, data_dir, "validation", max_length, subset=eval_subset)
    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=train.num_labels).float()
    total = epochs * math.ceil(len(train) / batch_size)

    def metrics(pred):
        m = D.glue_metrics(task, pred.predictions, pred.label_ids)
        return {k: v for k, v in m.items() if k != "metric_name"}

    class Costs(TrainerCallback):
        """Measures the step FLOPs of every frozen prefix once the engine exists, and the training time."""

        def __init__(self):
            self.batch, self.prefix, self.t0, self.train_s = None, [], 0.0, 0.0
            self.record, self.decide = Stopwatch(), Stopwatch()

        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kw):
            engine = frz_cb.frz
            self.batch = {k: v.to(model.device) for k, v in next(iter(train_dataloader)).items()}
            self.prefix = prefix_step_flops(model, engine.units, self.batch, batch_loss, engine.max_frozen)
            if engine.recorder is not None:
                engine.recorder.record = self.record.wrap(engine.recorder.record)
            engine.decide = self.decide.wrap(engine.decide)
            synchronize(model.device)
            self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, model=None, **kw):
            synchronize(model.device)
            self.train_s = time.perf_counter() - self.t0

    class TapTrainer(Trainer):
        """Counts the tokens of each training batch (dynamic padding scales the step cost) and times evaluation."""

        def compute_loss(self, model, inputs, *a, **kw):
            if model.training:
                self.tokens.append(int(inputs["input_ids"].numel()))
            return super().compute_loss(model, inputs, *a, **kw)

        def evaluate(self, *a, **kw):
            t = time.perf_counter()
            try:
                return super().evaluate(*a, **kw)
            finally:
                self.eval_s += time.perf_counter() - t

    frz_cb, costs = SmartFRZCallback(policy=policy, **(frz or {})), Costs()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, num_train_epochs=epochs, per_device_train_batch_size=batch_size,
                                 per_device_eval_batch_size=128, learning_rate=lr, weight_decay=weight_decay,
                                 warmup_steps=int(warmup * total), lr_scheduler_type="linear", eval_strategy="epoch",
                                 logging_strategy="steps", logging_steps=max(1, total // (4 * epochs)),
                                 save_strategy="no", report_to=[], seed=seed, data_seed=seed,
                                 use_cpu=device == "cpu", disable_tqdm=not progress, dataloader_num_workers=0)
        trainer = TapTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                             data_collator=D.glue_collate(tok), compute_metrics=metrics, callbacks=[frz_cb, costs])
        trainer.tokens, trainer.eval_s = [], 0.0
        if not progress:
            trainer.remove_callback(PrinterCallback)
        with PeakMemory(device) as mem, EnergyMeter(device) as energy:
            trainer.train()
    engine, steps = frz_cb.frz, trainer.state.global_step
    history = _history(trainer.state.log_history, info["main"])
    evals = [h for h in history if h.get("eval")]
    ref = costs.batch["input_ids"].numel()
    scales = [t / ref for t in trainer.tokens] if len(trainer.tokens) == steps else None
    train_flops = integrate_train_flops(engine.timeline, steps, costs.prefix, scales)
    full_flops = float(sum(costs.prefix[0] * s for s in scales) if scales else costs.prefix[0] * steps)
    result = ExperimentResult(
        config=config, run=run_name, device=device_name(device), metric_name=info["main"],
        metric=float(evals[-1]["metric"]) if evals else float("nan"), final=evals[-1] if evals else {},
        history=history, timeline=engine.timeline,
        units=[{"name": u.name, "num_params": u.num_params, "flop_share": u.flop_share} for u in engine.units],
        frozen_units=engine.frozen_units, steps=steps, train_flops=train_flops, full_train_flops=full_flops,
        prefix_step_flops=costs.prefix, flops_check=_check_flops(model, engine, costs.prefix, costs.batch),
        wall_s=costs.train_s - trainer.eval_s, peak_mem_bytes=int(mem.peak), energy_j=energy.joules,
        overhead_s={"record": costs.record.seconds, "decide": costs.decide.seconds,
                    "total": costs.record.seconds + costs.decide.seconds},
        decision_flops=decision_flops(model, engine.veto))
    if wandb:
        from .wandb_logging import WandbLogger
        logger = WandbLogger(project="smartfrz", group=name, name=run_name, method=policy, config=config)
        logger.log_fit(SimpleNamespace(history=history, final=result.final, wall_s=result.wall_s, steps=steps),
                       frz=engine, total_steps=steps)
        logger.log_summary({"final/metric": result.metric, "train_flops": train_flops,
                            "flops_saved": result.flops_saved, "wall_s": result.wall_s})
        logger.finish()
    if path is not None:
        result.save(out_dir)
    return result.to_dict()


def _history(log_history: list[dict], main: str) -> list[dict]:
    """Trainer logs as ``fit()`` history rows: train rows (loss, frozen units) and eval rows (metrics)."""
    rows = []
    for h in log_history:
        if "loss" in h:
            rows.append({"step": h["step"], "epoch": h["epoch"], "loss": h["loss"],
                         "frozen_units": h.get("smartfrz/frozen_units", 0),
                         "frozen_flop_share": h.get("smartfrz/frozen_flop_share", 0.0)})
        elif "eval_metric" in h:
            m = {k[5:]: v for k, v in h.items() if k.startswith("eval_") and isinstance(v, (int, float))}
            rows.append({"step": h["step"], "epoch": round(h["epoch"]), "eval": True, **m, "metric_name": main})
    return rows
