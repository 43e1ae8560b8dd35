"""Exact-resume checkpoints: model, optimizer, SmartFRZ, scheduler, RNG and data position.

A resumed run must continue bitwise like an uninterrupted one, so everything that shapes the next
step is saved: the frozen prefix and recorded weight windows, the optimizer state of the units that
are still training, every RNG stream, and where in the data the run stood. Files hold plain
containers and tensors only and are read with ``torch.load(weights_only=True)``: loading a
checkpoint can never run code. Writes are atomic (temp file, fsync, ``os.replace``), so a crash
mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "smartfrz-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used (corrupt, truncated, unsafe, or for another model); nothing was changed."""


# ----------------------------------------------------------------------------- RNG

def get_rng_state() -> dict:
    """Every global RNG stream, as weights_only-safe tensors, lists and numbers."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [version, list(state), gauss],
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, py, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in py), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


# ----------------------------------------------------------------------------- save

_SAFE_LEAVES = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def _check_safe(obj: Any, where: str = "checkpoint") -> None:
    """Refuses, at save time, anything ``weights_only`` loading would reject at resume time."""
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            _check_safe(k, where)
            _check_safe(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_safe(v, f"{where}[{i}]")
    elif not isinstance(obj, _SAFE_LEAVES):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only "
                        "tensors, numbers, strings, None and lists/tuples/dicts of them (weights_only loading)")


def _unwrap(model):
    """The plain module under DDP and ``torch.compile`` wrappers, in any nesting: a checkpoint holds its keys (no
    'module.' or '_orig_mod.'), so a run saved compiled or under DDP resumes plain, and back."""
    from .distributed import unwrap
    from .units import uncompiled
    while (inner := uncompiled(unwrap(model))) is not model:
        model = inner
    return model


def save_checkpoint(path, *, model, optimizer, frz=None, scheduler=None, step: int, epoch: int,
                    extra: dict | None = None) -> Path:
    """Writes everything a bitwise-exact resume needs to ``path``, atomically; returns the path."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, "step": int(step), "epoch": int(epoch),
             "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "frz": None if frz is None else frz.state_dict(),
             "scheduler": None if scheduler is None else scheduler.state_dict(),
             "rng": get_rng_state(), "extra": extra}
    _check_safe(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every filesystem/OS can fsync a directory
    return path


# ----------------------------------------------------------------------------- load

def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is corrupt or truncated ({why}); nothing was loaded. "
                           "Resume from an earlier checkpoint or start over")


def read_checkpoint(path) -> dict:
    """The checkpoint's contents, read without pickle code execution; ``CheckpointError`` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:  # torch.load does not notice flipped bytes inside tensor data; the zip CRCs do
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    if bad is not None:
        raise _corrupt(path, f"CRC mismatch in {bad!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain containers; "
                                  f"refused to unpickle it, as that could run code (weights_only loading): "
                                  f"{str(e).splitlines()[0]}") from e
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    except Exception as e:
        raise _corrupt(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} was not written by smartfrz.checkpoint.save_checkpoint "
                              f"(no {FORMAT!r} marker)")
    missing = sorted({"step", "epoch", "model", "optimizer", "frz", "scheduler", "rng", "extra"} - set(state))
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    return state


def _check_fits(path: Path, state: dict, model, optimizer, frz, scheduler) -> None:
    """Everything that could fail half-way is checked before anything is changed."""
    own = model.state_dict()
    saved = state["model"]
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} is for another model: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    for k, v in own.items():
        if torch.is_tensor(v) and tuple(saved[k].shape) != tuple(v.shape):
            raise CheckpointError(f"checkpoint {path}: {k!r} has shape {tuple(saved[k].shape)}, "
                                  f"the model has {tuple(v.shape)}")
    if state["frz"] is not None and frz is None and state["frz"]["num_frozen"] > 0:
        raise CheckpointError(f"checkpoint {path} has {state['frz']['num_frozen']} frozen units; pass frz= "
                              "(the optimizer state only fits the unfrozen parameters)")
    if frz is not None:
        if state["frz"] is None:
            raise CheckpointError(f"checkpoint {path} was saved without SmartFRZ state; pass frz=None")
        names = [u.name for u in frz.units]
        if list(state["frz"]["units"]) != names:
            raise CheckpointError(f"checkpoint {path} was saved for units {list(state['frz']['units'])[:4]}..., "
                                  f"this engine has {names[:4]}...")
    if optimizer is not None and len(state["optimizer"]["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(f"checkpoint {path} has {len(state['optimizer']['param_groups'])} optimizer param "
                              f"groups, this optimizer has {len(optimizer.param_groups)}")
    if scheduler is not None and state["scheduler"] is None:
        raise CheckpointError(f"checkpoint {path} holds no scheduler state; pass scheduler=None")


def load_checkpoint(path, *, model, optimizer, frz=None, scheduler=None) -> dict:
    """Restores a ``save_checkpoint`` file in place; returns ``{"step", "epoch", "extra"}``.

    Order matters: SmartFRZ state goes before the optimizer's, because freezing removes parameters
    from the optimizer's groups and the saved optimizer state only covers those still training.
    """
    path = Path(path)
    state = read_checkpoint(path)
    model = _unwrap(model)
    _check_fits(path, state, model, optimizer, frz, scheduler)
    model.load_state_dict(state["model"])
    if frz is not None:
        frz.load_state_dict(state["frz"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return {"step": state["step"], "epoch": state["epoch"], "extra": state["extra"]}
