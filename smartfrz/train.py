"""A plain PyTorch training loop with SmartFRZ wired in: the reference integration.

Batches are either ``(x, y)`` for vision or a dict with ``labels`` for Hugging Face models. The loop
syncs with the host only every ``log_every`` steps, so it never slows the step it measures.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss: stop rather than train (or freeze) on garbage."""


def to_device(batch: Any, device) -> Any:
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch.to(device, non_blocking=True) if torch.is_tensor(batch) else batch


def example_input(batch: Any, n: int = 2) -> Any:
    """The model's input part of a batch, cut to ``n`` rows, for unit discovery."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        return {k: v[:n] for k, v in batch.items() if k != "labels" and torch.is_tensor(v)}
    return batch[0][:n]


def batch_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        return model(**batch).loss
    x, y = batch
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over a loader, in eval mode, restoring the previous mode after."""
    was = model.training
    model.eval()
    outs, labels = [], []
    for batch in loader:
        batch = to_device(batch, device)
        if isinstance(batch, dict):
            outs.append(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float().cpu())
            labels.append(batch["labels"].cpu())
        else:
            outs.append(model(batch[0]).float().cpu())
            labels.append(batch[1].cpu())
    model.train(was)
    return torch.cat(outs), torch.cat(labels)


def accuracy_metric(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    acc = (logits.argmax(-1) == labels).float().mean().item() * 100
    return {"accuracy": acc, "metric": acc, "metric_name": "accuracy"}


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # per evaluation: step, epoch, loss, metrics
    wall_s: float = 0.0
    steps: int = 0
    final: dict = field(default_factory=dict)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: Iterable, epochs: int, *,
        device="cpu", scheduler=None, frz=None, eval_loader=None,
        metric_fn: Callable[[torch.Tensor, torch.Tensor], dict] = accuracy_metric,
        eval_every_epochs: int = 1, on_step: Callable[[int], None] | None = None, log_every: int = 50,
        on_eval: Callable[[dict], None] | None = None, progress: bool = True, desc: str = "train",
        grad_clip: float | None = None, start_step: int = 0) -> FitResult:
    """Trains ``epochs`` epochs; ``frz.step()`` follows each ``optimizer.step()``; evaluates per epoch."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}")
    steps_per_epoch = len(train_loader)
    total = epochs * steps_per_epoch
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start_step, desc=desc, leave=False, dynamic_ncols=True, disable=None)
    res = FitResult()
    step = start_step
    running = torch.zeros((), device=device)
    n_running = 0
    synchronize(device)
    t0 = time.perf_counter()
    for epoch in range(start_step // steps_per_epoch, epochs):
        model.train()
        skip = start_step - epoch * steps_per_epoch if step == start_step else 0
        for i, batch in enumerate(train_loader):
            if i < skip:
                continue
            batch = to_device(batch, device)
            loss = batch_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if frz is not None:
                frz.step()
            step += 1
            running += loss.detach()
            n_running += 1
            if on_step is not None:
                on_step(step)
            if step % log_every == 0 or step == total:
                mean_loss = (running / n_running).item()  # the only host sync, once per log interval
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(f"loss became {mean_loss} by step {step} (epoch {epoch + 1}); "
                                             "training stopped; lower the learning rate or check the data")
                running.zero_()
                n_running = 0
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", frozen=0 if frz is None else frz.num_frozen)
                res.history.append({"step": step, "epoch": step / steps_per_epoch, "loss": mean_loss,
                                    "frozen_units": 0 if frz is None else frz.num_frozen,
                                    "frozen_flop_share": 0.0 if frz is None else frz.frozen_flop_share})
            if bar is not None:
                bar.update(1)
        if frz is not None:
            frz.epoch_end()  # decides here only when no step interval was set
        if eval_loader is not None and ((epoch + 1) % eval_every_epochs == 0 or epoch + 1 == epochs):
            synchronize(device)
            t_eval = time.perf_counter()
            metrics = metric_fn(*predict(model, eval_loader, device))
            row = {"step": step, "epoch": epoch + 1, "eval": True, **metrics}
            res.history.append(row)
            if on_eval is not None:
                on_eval(row)
            t0 += time.perf_counter() - t_eval  # evaluation is not training time
    synchronize(device)
    res.wall_s = time.perf_counter() - t0
    res.steps = step
    if bar is not None:
        bar.close()
    evals = [h for h in res.history if h.get("eval")]
    res.final = evals[-1] if evals else {}
    return res
