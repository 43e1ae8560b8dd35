"""The freezing engine: records windows, asks the policy, and freezes the front of the network.

Freezing a unit means: its parameters stop requiring grad (so autograd builds no graph for the
frozen prefix: no backward, no saved activations), they leave the optimizer with their state
freed, and its BatchNorm/Dropout run in eval mode from then on, even across ``model.train()``.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .config import SmartFRZConfig
from .policies import Policy, make_policy
from .recorder import WeightRecorder
from .units import OUTSIDE, Unit, find_units, param_owners, uncompiled


def _eval_hook(module: nn.Module, args):
    if module.training:
        module.train(False)


def _boundary_hook(cut: bool, feed: bool):
    """A forward hook on the frozen prefix's last module. ``cut``: its output leaves the graph, so no backward runs
    into a prefix where nothing trains. ``feed``: its output requires grad, so reentrant checkpointing after it still
    trains (a copy, not a leaf: an in-place op after it, such as ReLU(inplace=True), stays legal)."""
    def hook(module, args, out):
        def fix(t):
            if not (isinstance(t, torch.Tensor) and t.is_floating_point()) or (t.requires_grad and not cut):
                return t
            if not feed:
                return t.detach()
            leaf = t.detach().requires_grad_()
            leaf.smartfrz_fed = True  # what the prefix cache may store all the same (prefix_cache._fed)
            return leaf.clone()
        return tree_map(fix, out) if torch.is_grad_enabled() else out
    return hook


def _warn_recompiles(model: nn.Module, freezable: int) -> None:
    """Each frozen prefix (and the veto's eval-mode pass) compiles a compiled model again; past dynamo's limit it
    runs uncompiled from then on, unannounced."""
    limit = torch._dynamo.config.recompile_limit if uncompiled(model) is not model else freezable + 2
    if limit < freezable + 2:
        warnings.warn(f"SmartFRZ: the model is compiled and up to {freezable} freezes each compile it again, past "
                      f"torch._dynamo.config.recompile_limit ({limit}); set it to {freezable + 2} before training.",
                      UserWarning, stacklevel=3)


class SmartFRZ:
    """``frz = SmartFRZ(model, optimizer, example_input=x)``; call ``frz.step()`` after ``optimizer.step()``."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, example_input: Any = None,
                 policy: "str | Policy" = "smartfrz", config: SmartFRZConfig | None = None,
                 units: Sequence[Unit] | None = None, veto_probe: Any = None, **kwargs):
        if config is not None and kwargs:
            raise TypeError(f"pass either config= or keyword options, not both (got {sorted(kwargs)})")
        if units is not None and all(isinstance(u, str) for u in units):  # names: discovery override
            kwargs["units"], units = list(units), None
        self.config = config if config is not None else SmartFRZConfig.from_kwargs(**kwargs)
        cfg = self.config
        self.model, self.optimizer = model, optimizer
        if units is None:
            if example_input is None:
                raise ValueError("example_input is required to discover units (a batch the model accepts)")
            units = find_units(model, example_input, names=cfg.units)
        self.units = list(units)
        self.max_frozen = max(0, len(self.units) - cfg.min_active_units)
        self.num_frozen, self.step_count, self._epochs_ended = 0, 0, 0
        self.timeline: list[dict] = []
        self._hooks: dict[int, list] = {}
        self._home: dict[int, int] = {}  # frozen param id -> optimizer group index (-1: none), to restore on unfreeze
        self._watch: list = []  # gradient hooks on the first active unit for the step after a freeze (_watch_unit)
        self._got_grad, self._feeding, self._boundary = False, False, None  # see _set_boundary
        self._owners = self._param_owners()
        self._grad_inputs, self._grad_off = self._modules_requiring_input_grad(), set()
        self._unit_params = [u.parameters() for u in self.units]  # once: walking the modules at every record costs
        self._trains = [tuple(p.requires_grad for p in ps) for ps in self._unit_params]  # what the user lets train
        self.trainable_per_unit = [sum(p.numel() for p in ps if p.requires_grad) for ps in self._unit_params]
        self.trainable_total = sum(p.numel() for p in model.parameters() if p.requires_grad)  # both before any freeze
        _warn_recompiles(model, self.max_frozen)
        self.policy = make_policy(policy, cfg)  # windows shaped as the predictor's training windows unless set
        self.window, self.sample_size = cfg.window or self.policy.window, cfg.sample_size or self.policy.sample_size
        self.record_every = cfg.record_every or (max(1, cfg.steps_per_epoch // self.window) if cfg.steps_per_epoch else 10)
        self.decide_every = cfg.decide_every or self.policy.cadence(cfg.steps_per_epoch, cfg.total_steps)
        if (problem := self._window_problem(cfg.total_steps)) is not None:
            raise ValueError(problem)
        self.recorder = WeightRecorder(self.units, self.window, self.sample_size, cfg.seed) if self.policy.needs_windows else None
        self.recorder_device = next(model.parameters()).device
        self.veto = None
        tau = cfg.veto_tau if cfg.veto_tau is not None else getattr(self.policy, "veto_tau", None)
        if tau is not None and tau < 1.0:
            from .veto import FunctionalVeto
            probe = veto_probe if veto_probe is not None else example_input
            if probe is None:
                raise ValueError("the functional veto needs a probe batch: pass veto_probe= (or example_input=), "
                                 "or veto_tau=1.0 to turn it off")
            epoch = (cfg.veto_lookback or getattr(self.policy, "veto_lookback", "decision")) == "epoch"
            self.veto = FunctionalVeto(self.units, probe, tau, cfg.veto_probe_rows or getattr(self.policy, "veto_probe_rows", None),
                                       (cfg.steps_per_epoch or self.window * self.record_every) if epoch else None)
            self.veto.check(model)
        self.policy.bind(self)
        self.record_from = self.policy.start - self.window * self.record_every  # full windows from the start on

    def _window_problem(self, total_steps: int | None) -> str | None:
        """Why no unit could ever freeze in ``total_steps`` steps (first full window too late), else None."""
        need = self.window * self.record_every
        if total_steps is None or not self.policy.needs_windows or need <= total_steps:
            return None
        return (f"window={self.window} snapshots taken every record_every={self.record_every} steps need "
                f"{need} steps before the first freeze decision, but training has only {total_steps} steps: nothing "
                f"would ever freeze. Allowed: window * record_every <= total steps; lower window or record_every.")

    # ------------------------------------------------------------------ lifecycle
    @property
    def epoch(self) -> float:
        spe = self.config.steps_per_epoch
        return self.step_count / spe if spe else float(self._epochs_ended)

    @property
    def frozen_units(self) -> list[str]:
        return [u.name for u in self.units[: self.num_frozen]]

    def step(self) -> None:
        """Call once per optimizer step, after ``optimizer.step()``."""
        self.step_count += 1
        if self._watch:
            self._unwatch()
            if not self._got_grad:
                self._feeding = True
                self._set_boundary(self.num_frozen)
                warnings.warn(f"SmartFRZ: unit {self.units[self.num_frozen].name!r} got no gradient in the step after "
                              "the prefix before it froze, as reentrant activation checkpointing (torch.utils."
                              "checkpoint(..., use_reentrant=True)) does to a block none of whose inputs requires grad: "
                              "every unit after the prefix would stop learning. From now on the prefix's output "
                              "requires grad (the first active unit computes its input's gradient); "
                              "use_reentrant=False avoids that cost.", UserWarning, stacklevel=2)
        self.policy.on_step(self)
        if not self.decide_every and not self._epochs_ended and self.step_count == self.window * self.record_every + 1:
            self._warn_no_cadence()
        if self.recorder is not None and self.step_count % self.record_every == 0 and self.step_count >= self.record_from:
            self._follow_trainability()
            self.recorder.record(range(self.num_frozen, self.max_frozen))
        if self.decide_every and self.step_count % self.decide_every == 0:
            self.decide()

    def _warn_no_cadence(self) -> None:
        """A loop that never says how long an epoch is and never calls epoch_end() would train to the end with
        no decision at all: say so once, the step after the first window is full, with the fix."""
        warnings.warn(f"SmartFRZ has made no freeze decision in {self.step_count} steps and never will: it decides "
                      "every `decide_every` steps, every epoch when `steps_per_epoch` is given, or at each "
                      "`epoch_end()` call, and none of these is set. Pass steps_per_epoch=len(train_loader) (or "
                      "decide_every=N), or call frz.epoch_end() after each epoch.", UserWarning, stacklevel=3)

    def epoch_end(self) -> None:
        """Marks an epoch boundary; decides here when the epoch length was not given."""
        self._epochs_ended += 1
        if not self.decide_every:
            self.decide()

    def decide(self) -> int:
        """Asks the policy and freezes the prefix it returns; returns how many units were newly frozen."""
        if (undone := self._undone_freeze()) is not None:
            warnings.warn(f"SmartFRZ: the training loop set weights of frozen unit {self.units[undone].name!r} training "
                          f"again (model.requires_grad_(True) after a warm-up?): unfrozen back to it, so units "
                          f"{undone}.. train and are recorded anew. Set requires_grad only on the units meant to train "
                          "to keep the others frozen.", UserWarning, stacklevel=2)
            self.unfreeze(undone)
        before = self.num_frozen
        self._follow_trainability()
        n, scores = self.policy.decide(self)
        if self.veto is not None:  # before the broadcast: rank 0's answer, veto included, is every rank's
            if not self.policy.reads_veto:
                n = self.veto.allow(self.model, before, min(max(n, before), self.max_frozen), self.step_count)
            every = max(1, self.window * self.record_every // 4)  # copied only where a check from the start on reads it
            keep = not self.decide_every or \
                self.step_count + every + self.decide_every + (self.veto.lookback or 0) >= self.policy.start
            self.veto.snapshot(n, self.max_frozen, self.step_count, every, keep=keep)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from .distributed import broadcast_int
            n = broadcast_int(n)  # rank 0 decides for all: DDP hangs if ranks freeze different prefixes
        self._freeze_prefix(min(max(n, before), self.max_frozen), scores)
        return self.num_frozen - before

    def _follow_trainability(self) -> None:
        """Follows weights the loop set training or fixed after the engine was built (a backbone unfrozen after a
        warm-up, gradual unfreezing): an active unit whose trainable weights changed is counted anew and its window
        starts again over what trains now, so it waits for the predictor instead of passing as fixed."""
        for i in range(self.num_frozen, len(self.units)):
            if (flags := tuple(p.requires_grad for p in self._unit_params[i])) != self._trains[i]:
                self._set_trains(i, flags)
                if self.recorder is not None:
                    self.recorder.retarget(i)

    def _undone_freeze(self) -> int | None:
        """The first frozen unit with a weight the engine holds frozen that requires grad again: the loop undid it."""
        k = self.num_frozen
        return next((i for i in range(k) if any(p.requires_grad and all(o < k for o in self._owners[id(p)])
                                                for p in self._unit_params[i])), None)

    def _set_trains(self, i: int, flags: tuple) -> None:
        self._trains[i] = flags
        self.trainable_per_unit[i] = sum(p.numel() for p, f in zip(self._unit_params[i], flags) if f)
        self.trainable_total = sum(p.numel() for p in self.model.parameters() if p.requires_grad or id(p) in self._home)

    # ------------------------------------------------------------------ freezing
    def freeze_through(self, k: int) -> None:
        """Freezes units 0..k by hand (k may be a unit name)."""
        if isinstance(k, str):
            names = [u.name for u in self.units]
            if k not in names:
                raise KeyError(f"unknown unit {k!r}; units are {names}")
            k = names.index(k)
        if not -1 <= k < len(self.units):
            raise IndexError(f"unit index {k} out of range: this model has units 0..{len(self.units) - 1}")
        self._freeze_prefix(k + 1, {})

    def unfreeze(self, n: int = 0) -> None:
        """Unfreezes back to a prefix of ``n`` frozen units (all by default). Freezing is otherwise permanent."""
        for i in reversed(range(n, self.num_frozen)):
            u = self.units[i]
            for h in self._hooks.pop(i, []):
                h.remove()
            for _, m in u.members:
                m.train(self.model.training)
            for p in u.parameters():
                if id(p) in self._home:  # the engine froze it (the loop may have set it training again already)
                    p.requires_grad_(True)
                    if (group := self._home.pop(id(p))) >= 0 and self.optimizer is not None:
                        self.optimizer.param_groups[group]["params"].append(p)
            if self.recorder is not None:
                self.recorder.count[i] = 0  # its window went stale while frozen
            self.timeline.append(self._event(i, "unfreeze", None))
        self.num_frozen = min(self.num_frozen, n)
        self._set_boundary(n)

    def _freeze_prefix(self, n: int, scores: dict[int, float]) -> None:
        n = min(n, len(self.units))
        for i in range(self.num_frozen, n):
            self._freeze_unit(i, n)
            self.timeline.append(self._event(i, "freeze", scores.get(i)))
        if n > self.num_frozen:
            self._set_boundary(n)
            if not self._feeding:
                self._watch_unit(n)
        self.num_frozen = max(self.num_frozen, n)

    def _watch_unit(self, k: int) -> None:
        """Watches, for one step, that the first active unit that trains still gets gradients (see ``step``)."""
        self._unwatch()
        k = next((j for j in range(k, len(self.units)) if self.trainable_per_unit[j]), None)
        self._got_grad = False
        if k is not None:
            seen = lambda _: setattr(self, "_got_grad", True)
            self._watch = [p.register_post_accumulate_grad_hook(seen) for p in self._unit_params[k] if p.requires_grad]

    def _unwatch(self) -> None:
        for h in self._watch:
            h.remove()
        self._watch = []

    def _set_boundary(self, k: int) -> None:
        """The hook after units 0..k-1 (``_boundary_hook``). Cut only where their output requires grad for Hugging
        Face's ``enable_input_require_grads`` (PEFT with gradient checkpointing) and none of their weights trains;
        else an input gradient may be the user's (adversarial training), or a tied weight's."""
        if self._boundary is not None:
            self._boundary.remove()
        cut = k > 0 and any(getattr(m, "_require_grads_hook", None) is not None for m in self.model.modules()) \
            and not any(p.requires_grad for ps in self._unit_params[:k] for p in ps)
        self._boundary = self.units[k - 1].members[-1][1].register_forward_hook(_boundary_hook(cut, self._feeding)) \
            if k and (cut or self._feeding) else None
        for m, first in self._grad_inputs.items():  # as HF's freeze_feature_encoder() does, while its first unit is frozen
            if first < k and m._requires_grad:
                m._requires_grad = False
                self._grad_off.add(m)
            elif first >= k and m in self._grad_off:  # only what the engine turned off, never a user's choice
                m._requires_grad = True
                self._grad_off.discard(m)

    def _modules_requiring_input_grad(self) -> dict:
        """Hugging Face's audio feature encoders (wav2vec2, HuBERT, WavLM) make their input require grad in training,
        for checkpointing, unless ``_requires_grad`` is off: backward then runs through their frozen conv layers
        for nothing. {module: index of the first unit inside it}."""
        out = {}
        for m in (m for m in self.model.modules() if getattr(m, "_requires_grad", None) is True):
            within = {id(x) for x in m.modules()}
            out[m] = next((i for i, u in enumerate(self.units) if any(id(t) in within for _, t in u.members)), None)
        return {m: i for m, i in out.items() if i is not None}

    def _freeze_unit(self, i: int, prefix: int) -> None:
        u = self.units[i]
        freeze = [p for p in u.parameters() if p.requires_grad and all(o < prefix for o in self._owners[id(p)])]
        ids = {id(p) for p in freeze}
        for p in freeze:
            p.requires_grad_(False)
            p.grad = None
        if self.optimizer is not None:
            for g, group in enumerate(self.optimizer.param_groups):
                kept = []
                for p in group["params"]:
                    if id(p) in ids:
                        self._home[id(p)] = g
                        self.optimizer.state.pop(p, None)
                    else:
                        kept.append(p)
                group["params"] = kept
        for p in freeze:
            self._home.setdefault(id(p), -1)  # in no group of the optimizer: none to go back to
        self._hooks[i] = []
        for _, m in u.members:
            m.train(False)
            self._hooks[i].append(m.register_forward_pre_hook(_eval_hook))

    def _param_owners(self) -> dict[int, set[int]]:
        """``units.param_owners``; parameters with more than one user are named in a warning, once."""
        owners = param_owners(self.model, self.units)
        params = dict(uncompiled(self.model).named_parameters(remove_duplicate=False))  # the names u.tied uses
        outside: dict[int, list[str]] = {}  # the names a module outside the units runs it by (a tied head)
        for n in (n for u in self.units for n in u.tied if n in params):
            outside[id(params[n])] = sorted({*outside.get(id(params[n]), []), n})
        tied: dict[int, str] = {}
        for n, p in ((n, p) for u in self.units for n, p in u.named_parameters() if len(owners[id(p)]) > 1):
            tied.setdefault(id(p), f"{n} (units {[self.units[i].name for i in sorted(owners[id(p)] - {OUTSIDE})]}"
                            + (f" and {outside[id(p)]}, outside them)" if id(p) in outside else ")"))
        if tied:
            warnings.warn(f"SmartFRZ: tied parameters {'; '.join(tied.values())}. One freezes when the last unit using "
                          "it does, never while a module outside the units (the head) uses it; until then the units "
                          "holding it keep changing after they freeze, backward still runs through the frozen units "
                          "after it (a smaller saving), and PrefixCache refuses to cache. Untie the weights (e.g. "
                          "tie_word_embeddings=False) to freeze them with their unit.", UserWarning, stacklevel=4)
        return owners

    def _event(self, i: int, kind: str, score: float | None) -> dict:
        u = self.units[i]
        return {"step": self.step_count, "epoch": round(self.epoch, 4), "unit": u.name, "index": i, "event": kind,
                "params_frozen": self.trainable_per_unit[i], "flop_share": u.flop_share,
                "p_freeze": None if score is None else float(score)}

    # ------------------------------------------------------------------ accounting
    @property
    def frozen_param_fraction(self) -> float:
        """Share of the weights that train (all of them, or a LoRA fine-tune's adapters) now frozen."""
        return sum(self.trainable_per_unit[: self.num_frozen]) / max(self.trainable_total, 1)

    @property
    def frozen_flop_share(self) -> float:
        """Share of forward FLOPs spent in frozen units (their backward is skipped entirely)."""
        return sum(u.flop_share for u in self.units[: self.num_frozen])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"units": [u.name for u in self.units], "num_frozen": self.num_frozen, "step_count": self.step_count,
                "epochs_ended": self._epochs_ended, "timeline": copy.deepcopy(self.timeline),
                "recorder": None if self.recorder is None else self.recorder.state_dict(),
                "policy": self.policy.state_dict(), "config": self.config.to_dict(),
                "veto": None if self.veto is None else self.veto.state_dict(), "feeds_grad": self._feeding,
                "trains": [list(f) for f in self._trains]}

    def load_state_dict(self, state: dict) -> None:
        """Restores onto a fresh model and optimizer: call before ``optimizer.load_state_dict``."""
        names = [u.name for u in self.units]
        if list(state["units"]) != names:
            raise ValueError(f"SmartFRZ state was saved for units {list(state['units'])[:4]}..., "
                             f"but this model has {names[:4]}... ({len(state['units'])} vs {len(names)} units)")
        self.unfreeze(0)
        self._feeding = bool(state.get("feeds_grad"))  # found before the checkpoint: fed at once, as the run stepped
        self._freeze_prefix(int(state["num_frozen"]), {})
        self.step_count, self._epochs_ended = int(state["step_count"]), int(state["epochs_ended"])
        self.timeline = copy.deepcopy(list(state["timeline"]))
        if self.recorder is not None and state.get("recorder") is not None:
            self.recorder.load_state_dict(state["recorder"])
        for i, then in enumerate(state.get("trains") or []):  # what the windows were recorded over
            if i >= self.num_frozen and (then := tuple(map(bool, then))) != self._trains[i]:
                self._set_trains(i, then)
                if self.recorder is not None:
                    self.recorder.retarget(i, keep_window=True)
        self._follow_trainability()  # and a unit that trains otherwise now starts anew
        self.policy.load_state_dict(state.get("policy") or {})
        if self.veto is not None and state.get("veto") is not None:
            self.veto.load_state_dict(state["veto"])

    def __repr__(self) -> str:
        return (f"SmartFRZ(policy={self.policy.name!r}, units={len(self.units)}, frozen={self.num_frozen}, "
                f"step={self.step_count})")


def freeze_through(model: nn.Module, optimizer: torch.optim.Optimizer | None, example_input: Any, k: int,
                   **kwargs) -> SmartFRZ:
    """Functional form: freeze units 0..k of ``model`` now and return the engine that did it."""
    frz = SmartFRZ(model, optimizer, example_input=example_input, policy="none", **kwargs)
    frz.freeze_through(k)
    return frz
