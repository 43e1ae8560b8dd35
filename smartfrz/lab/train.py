"""A plain PyTorch training loop with SmartFRZ wired in: the reference integration.

Batches are either ``(x, y)`` for vision or a dict with ``labels`` for Hugging Face models. The loop
syncs with the host only every ``log_every`` steps, so it never slows the step it measures.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from ..distributed import is_main_process
from ..prefix_cache import INDEX_KEY, PrefixCache


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
        return {k: v[:n] for k, v in batch.items() if k not in ("labels", INDEX_KEY) and torch.is_tensor(v)}
    return batch[0][:n]


def batch_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Batches are ``(x, y)`` or a Hugging Face dict with labels; an example index (``(x, y, index)``
    or ``"index"``, for the prefix cache) is not fed to the model."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        return model(**{k: v for k, v in batch.items() if k != INDEX_KEY}).loss
    x, y = batch[0], batch[1]
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
            outs.append(model(**{k: v for k, v in batch.items() if k not in ("labels", INDEX_KEY)}).logits.float().cpu())
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
    cache: dict | None = None  # the prefix cache's stats (entries, bytes, fill work), when one was used


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _loader_position(loader) -> dict:
    """What fixes an epoch's data order, taken before ``iter(loader)``: ArrayLoader's epoch counter
    (it shuffles with seed + epoch) and a DataLoader's generator (make_loader seeds one)."""
    pos = {}
    if isinstance(getattr(loader, "epoch", None), int):
        pos["epoch"] = loader.epoch
    if isinstance(getattr(loader, "generator", None), torch.Generator):
        pos["generator"] = loader.generator.get_state()
    return pos


def _seek_loader(loader, epoch: int, pos: dict | None) -> None:
    if pos:
        if "epoch" in pos:
            loader.epoch = pos["epoch"]
        if "generator" in pos:
            loader.generator.set_state(pos["generator"])
    elif isinstance(getattr(loader, "epoch", None), int):
        loader.epoch = epoch  # no checkpoint: ArrayLoader's order is still known (seed + epoch)
    elif epoch and isinstance(getattr(loader, "generator", None), torch.Generator):
        warnings.warn("start_step without a checkpoint cannot restore the DataLoader's shuffle generator; "
                      "pass resume_from= for the identical data order")


def _check_finite(running: torch.Tensor, model: nn.Module, step: int) -> None:
    """Before a checkpoint overwrites the last good one: loss and weights must be finite (one sync)."""
    params = [p.detach() for p in model.parameters()]
    ok = torch.stack([torch.isfinite(running)] + [torch.isfinite(p).all() for p in params]).all()
    if not bool(ok):
        what = "loss" if not bool(torch.isfinite(running)) else "weights"
        raise NonFiniteLossError(f"{what} became NaN/inf by step {step}; training stopped and the last "
                                 "checkpoint was kept; lower the learning rate or check the data")


def _loss(model: nn.Module, batch: Any, cache: "PrefixCache | None") -> torch.Tensor:
    served = cache.context(batch) if cache else None
    if served is None:
        return batch_loss(model, batch)
    try:
        with served:
            return batch_loss(model, batch)
    except Exception as e:  # noqa: BLE001 - a stubbed forward that fails: go on without the cache
        cache.refuse(f"a cached step failed ({type(e).__name__}: {e})")
        return batch_loss(model, batch)


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: Iterable, epochs: int, *,
        device="cpu", scheduler=None, frz=None, eval_loader=None, final_eval_loader=None,
        metric_fn: Callable[[torch.Tensor, torch.Tensor], dict] = accuracy_metric,
        eval_every_epochs: int = 1, on_step: Callable[[int], None] | None = None, log_every: int = 50,
        on_eval: Callable[[dict], None] | None = None, progress: bool = True, desc: str = "train",
        grad_clip: float | None = None, start_step: int = 0, checkpoint_path=None,
        checkpoint_every: int | None = None, resume_from=None, cache: "bool | PrefixCache" = False) -> FitResult:
    """Trains ``epochs`` epochs; ``frz.step()`` follows each ``optimizer.step()``; evaluates per epoch.

    ``final_eval_loader``: evaluates the last epoch instead of ``eval_loader``, so per-epoch checks can
    run on a cheap fixed subset while the reported metric uses the whole test set.

    ``checkpoint_path``/``checkpoint_every``: an atomic exact-resume checkpoint every that many steps
    (written by rank 0 under DDP). ``resume_from``: a checkpoint to continue from, bitwise as if never
    interrupted (the resumed epoch replays its data order and skips the batches already done).
    ``cache``: True or a ``PrefixCache``: once units freeze, their output is stored per example and
    later steps skip the frozen forward (batches must carry indices; checkpoints never hold the store,
    a resumed run rebuilds it).
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}")
    if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int)
                                         or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive integer (steps) or None; got {checkpoint_every!r}")
    if (checkpoint_every is None) != (checkpoint_path is None):
        raise ValueError("checkpoint_path and checkpoint_every go together: pass both or neither")
    steps_per_epoch = len(train_loader)
    total = epochs * steps_per_epoch
    res = FitResult()
    running = torch.zeros((), device=device)
    n_running, pos, rng = 0, None, None
    if resume_from is not None:
        ck = load_checkpoint(resume_from, model=model, optimizer=optimizer, frz=frz, scheduler=scheduler)
        state = (ck["extra"] or {}).get("fit", {})
        start_step, pos = ck["step"], state.get("loader")
        res.history = list(state.get("history", []))
        running.fill_(state.get("running", 0.0))
        n_running = state.get("n_running", 0)
        rng = get_rng_state()  # as saved; re-applied after replaying the resumed epoch's done batches
    if not 0 <= start_step <= total:
        raise ValueError(f"start_step must lie in [0, {total}] ({epochs} epochs x {steps_per_epoch} steps); "
                         f"got {start_step}")
    if frz is not None and (problem := frz._window_problem(total)) is not None:
        warnings.warn(problem)
    start_epoch, skip = divmod(start_step, steps_per_epoch)
    _seek_loader(train_loader, start_epoch, pos)
    if cache is True:
        cache = PrefixCache()
    if cache and frz is None:
        raise ValueError("cache needs frz (a SmartFRZ engine): it stores the output of the frozen units")
    if cache:
        cache.attach(model, frz, train_loader, batch_loss, to_device, device)
        cache.sync()  # a resumed run with frozen units rebuilds its store here

    def save() -> None:
        _check_finite(running, model, step)
        if is_main_process():
            fit_state = {"loader": pos, "history": res.history, "running": running.item(), "n_running": n_running}
            save_checkpoint(checkpoint_path, model=model, optimizer=optimizer, frz=frz, scheduler=scheduler,
                            step=step, epoch=step // steps_per_epoch, extra={"fit": fit_state})

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start_step, desc=desc, leave=False, dynamic_ncols=True, disable=None)
    step = start_step
    synchronize(device)
    t0 = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        model.train()
        pos = _loader_position(train_loader)  # where this epoch's order starts: what a checkpoint stores
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle per epoch
        if cache:  # a shuffled batch is served only when all its examples are stored: complete the store
            cache.fill()  # with this epoch's examples (the prefix forward the epoch would run anyway)
        batches = iter(train_loader)
        first = skip if epoch == start_epoch else 0
        if first:
            for _ in range(first):  # replay the done batches so the rest of the epoch comes out identical
                next(batches)
            if rng is not None:
                set_rng_state(rng)  # replaying may have drawn random numbers (augmentation)
        for i, batch in enumerate(batches, start=first):
            batch = to_device(batch, device)
            loss = _loss(model, batch, cache)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if frz is not None:
                frz.step()
                if cache:
                    cache.sync()
            step += 1
            running += loss.detach()
            n_running += 1
            if on_step is not None:
                on_step(step)
            if step % log_every == 0 or step == total:
                mean_loss = (running / n_running).item()  # the only host sync, once per log interval
                if not math.isfinite(mean_loss):
                    kept = f"; the last checkpoint ({checkpoint_path}) was kept" if checkpoint_path else ""
                    raise NonFiniteLossError(f"loss became {mean_loss} by step {step} (epoch {epoch + 1}); training "
                                             f"stopped{kept}; lower the learning rate or check the data")
                running.zero_()
                n_running = 0
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", frozen=0 if frz is None else frz.num_frozen)
                res.history.append({"step": step, "epoch": step / steps_per_epoch, "loss": mean_loss,
                                    "frozen_units": 0 if frz is None else frz.num_frozen,
                                    "frozen_flop_share": 0.0 if frz is None else frz.frozen_flop_share})
            if bar is not None:
                bar.update(1)
            if checkpoint_every and step % checkpoint_every == 0 and i + 1 < steps_per_epoch:
                save()  # at an epoch's last step, wait until the epoch-end work below is done
        if frz is not None:
            frz.epoch_end()  # decides here only when no step interval was set
            if cache:
                cache.sync()
        if eval_loader is not None and ((epoch + 1) % eval_every_epochs == 0 or epoch + 1 == epochs):
            synchronize(device)
            t_eval = time.perf_counter()
            last = epoch + 1 == epochs and final_eval_loader is not None
            metrics = metric_fn(*predict(model, final_eval_loader if last else eval_loader, device))
            row = {"step": step, "epoch": epoch + 1, "eval": True, "time_s": t_eval - t0, **metrics}
            if last:
                row["full_eval"] = True
            res.history.append(row)
            if on_eval is not None:
                on_eval(row)
            t0 += time.perf_counter() - t_eval  # evaluation is not training time
        if checkpoint_every and step % checkpoint_every == 0:
            pos = _loader_position(train_loader)  # the next epoch starts from here
            save()
    synchronize(device)
    res.wall_s = time.perf_counter() - t0
    res.steps = step
    if bar is not None:
        bar.close()
    evals = [h for h in res.history if h.get("eval")]
    res.final = evals[-1] if evals else {}
    if cache:
        res.cache = cache.stats()
    return res
