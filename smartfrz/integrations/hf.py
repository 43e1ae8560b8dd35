"""Hugging Face Trainer adapter: SmartFRZ as a ``TrainerCallback``.

The Trainer builds its optimizer inside ``train()``, so the engine is created in
``on_train_begin`` from the live model, optimizer and a real batch of the train dataloader.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from ..engine import SmartFRZ


class SmartFRZCallback(TrainerCallback):
    """``Trainer(..., callbacks=[SmartFRZCallback(policy="smartfrz", threshold=...)])``."""

    def __init__(self, policy: Any = "smartfrz", **config: Any):
        self.policy, self.options = policy, config
        self.frz: SmartFRZ | None = None
        self._pending_state: dict | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kw):
        with torch.random.fork_rng(devices=[]):  # peeking at a batch must not shift the run's data order
            batch = next(iter(train_dataloader))
        inputs = {k: v.to(model.device) for k, v in batch.items() if k != "labels" and hasattr(v, "to")}
        example = {k: v[:2] for k, v in inputs.items()}
        steps_per_epoch = max(1, state.max_steps // max(1, int(args.num_train_epochs))) if state.max_steps else None
        # the veto's probe: the whole first batch (two rows would make each changed prediction half the probe)
        opts = {"steps_per_epoch": steps_per_epoch, "total_steps": state.max_steps or None, "seed": args.seed,
                "veto_probe": inputs, **self.options}
        self.frz = SmartFRZ(model, optimizer, example_input=example, policy=self.policy, **opts)
        if self._pending_state is not None:
            self.frz.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_step_end(self, args, state, control, **kw):
        if self.frz is not None:
            self.frz.step()

    def on_epoch_end(self, args, state, control, **kw):
        if self.frz is not None:
            self.frz.epoch_end()

    def on_log(self, args, state, control, logs=None, **kw):
        if self.frz is not None and logs is not None:
            logs["smartfrz/frozen_units"] = self.frz.num_frozen
            logs["smartfrz/frozen_flop_share"] = round(self.frz.frozen_flop_share, 4)

    def state_dict(self) -> dict:
        return {} if self.frz is None else self.frz.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Applied when training (re)starts, before the first step."""
        self._pending_state = state
