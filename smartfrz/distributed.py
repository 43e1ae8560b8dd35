"""SmartFRZ under PyTorch DDP (``torchrun --nproc_per_node=N train.py``).

Two things go wrong when layers freeze under DistributedDataParallel:

1. Ranks must freeze the same prefix at the same step, or their gradient buckets stop matching and
   the next all-reduce hangs. ``SmartFRZ.decide()`` therefore broadcasts rank 0's decision
   (``broadcast_int``) whenever ``torch.distributed`` is initialised.
2. DDP fixes its gradient buckets when it is constructed. A parameter frozen later never produces a
   gradient, so the reducer waits for it forever (or, with ``find_unused_parameters=True``, still
   all-reduces its zeros every step). ``DDPFreezer`` rebuilds the DDP wrapper over the same module
   after each freeze: DDP only buckets parameters that require grad, so frozen ones are neither
   waited for nor communicated. A rebuild costs one broadcast of the module state, once per freeze
   event (a handful per run).

Usage::

    dist.init_process_group("nccl")  # "gloo" on CPU
    frz = SmartFRZ(model, opt, example_input=x, steps_per_epoch=len(loader))
    ddp = DDPFreezer(model, frz, device_ids=[local_rank])
    fit(ddp, opt, loader, epochs, frz=frz, checkpoint_path="ckpt.pt", checkpoint_every=500)
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def broadcast_int(value: int, src: int = 0) -> int:
    """``src``'s value on every rank (a one-element tensor on the backend's device)."""
    device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(dist.get_backend()) else "cpu"
    t = torch.tensor([int(value)], dtype=torch.long, device=device)
    dist.broadcast(t, src)
    return int(t.item())


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP/DDPFreezer wrapper (checkpoints hold its state, without 'module.')."""
    while isinstance(model, (DDP, DDPFreezer)):
        model = model.module
    return model


class DDPFreezer(nn.Module):
    """A DDP wrapper that rebuilds itself after SmartFRZ freezes more units.

    Call it like the model. Before each training forward it compares ``frz.num_frozen`` with the
    prefix its DDP was built for (a Python int: no host sync) and, when more units froze, builds a
    new DDP over the same module. Every rank reaches that check at the same step with the same
    (broadcast) decision, so the collective inside DDP's constructor lines up. Forwards without
    grad (evaluation) call the module directly, so ranks may evaluate different amounts of data.
    ``on_wrap(ddp)`` runs after each (re)build: register comm hooks there, as they die with the
    old wrapper. ``ddp_kwargs`` go to ``DistributedDataParallel`` (``device_ids``, ...).
    """

    def __init__(self, module: nn.Module, frz=None, on_wrap: Callable[[DDP], None] | None = None, **ddp_kwargs: Any):
        super().__init__()
        self.module, self.frz, self.on_wrap, self.ddp_kwargs = module, frz, on_wrap, ddp_kwargs
        self.rebuilds, self._built_for = 0, None
        object.__setattr__(self, "ddp", None)  # not a registered child: state_dict stays 'module.*'
        self.refresh()

    def refresh(self) -> bool:
        """(Re)builds the DDP wrapper if the frozen prefix grew; returns whether it did."""
        n = 0 if self.frz is None else self.frz.num_frozen
        if self.ddp is not None and n == self._built_for:
            return False
        remove_hooks = getattr(getattr(self.ddp, "reducer", None), "_remove_autograd_hooks", None)
        if remove_hooks is not None:
            remove_hooks()  # the old buckets must never fire again, whenever the old wrapper is collected
        object.__setattr__(self, "ddp", None)
        object.__setattr__(self, "ddp", DDP(self.module, **self.ddp_kwargs))
        self._built_for, self.rebuilds = n, self.rebuilds + (self._built_for is not None)
        if self.on_wrap is not None:
            self.on_wrap(self.ddp)
        return True

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.module(*args, **kwargs)
        self.refresh()
        return self.ddp(*args, **kwargs)

    @torch.no_grad()
    def sync_buffers(self, src: int = 0) -> None:
        """Copies ``src``'s buffers (BatchNorm running stats) to every rank. DDP broadcasts them at the
        start of each forward, so after the last one they differ: call before evaluating or saving."""
        for b in self.module.buffers():
            dist.broadcast(b, src)

    def no_sync(self):
        """Gradient accumulation: skip the all-reduce for this backward (DDP's ``no_sync``)."""
        self.refresh()
        return self.ddp.no_sync()
