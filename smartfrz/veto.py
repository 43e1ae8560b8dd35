"""The functional veto: a unit freezes only once it has stopped mattering, not only once it looks settled.

At a high learning rate a unit's weights keep moving in ways that no longer change what the model predicts,
and a weight-window predictor reads that as "still learning"; the reverse error, a window that looks settled
while the unit still matters, costs accuracy. At each decision the veto puts the units about to freeze back
to their weights at the previous decision and counts how many of the model's predictions on a fixed probe
batch change: the online twin of the rewind label (``smartfrz.predictor_training.labels``), and free of the
learning rate. Above ``tau`` the frozen prefix stops short of that unit.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils._pytree import tree_flatten

from .units import Unit, call_model, first_tensor


def unit_state(unit: Unit) -> list:
    """Copies of what can change in a unit, on the CPU: its buffers and the parameters that train (not the fixed
    pretrained weights around a LoRA adapter: a copy of the whole model each decision, for nothing)."""
    return [{k: v.detach().to("cpu", copy=True) for k, v in m.state_dict(keep_vars=True).items()
             if not isinstance(v, torch.nn.Parameter) or v.requires_grad} for _, m in unit.members] + \
        [p.detach().to("cpu", copy=True) if p.requires_grad else None for _, p in unit.extra_params]


def load_unit_state(unit: Unit, state: list) -> None:
    for (_, m), s in zip(unit.members, state):
        m.load_state_dict(s, strict=False)  # what unit_state left out never changed
    for (_, p), v in zip(unit.extra_params, state[len(unit.members):]):
        if v is not None:
            p.data.copy_(v)


def logits(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The model's predictions, classes last: a dense prediction's (N, C, H, W[, D]) has them at dim 1 (a
    segmentation model's per-pixel logits), a token model's (N, T, C) and a classifier's (N, C) last. Of an output
    without ``.logits`` (a tuple such as (loss, logits)), the first tensor with a row per example of the batch."""
    out = getattr(out := call_model(model, batch), "logits", out)
    if not isinstance(out, torch.Tensor) and (rows := _rows(batch)) is not None:
        out = next((t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == rows),
                   out)
    out = first_tensor(out).float()
    return out.movedim(1, -1) if out.dim() >= 4 else out


def _rows(batch: Any) -> int | None:
    """Examples in a batch: the leading size of its first tensor with one."""
    return next((t.shape[0] for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor) and t.dim()), None)


def first_rows(batch: Any, n: int) -> Any:
    """The first n examples of a batch: a tensor, or a dict, list or tuple of them (other values as they are)."""
    return take_rows(batch, slice(0, n))


def changed_share(ref: torch.Tensor, new: torch.Tensor, kept: torch.Tensor | None = None) -> float:
    """Share of changed predictions (classification; ``kept``: which of them count, e.g. a per-token output's
    unpadded tokens); regression: mean |change| over the outputs' std."""
    if ref.shape[-1] > 1:
        diff = ref.argmax(-1) != new.argmax(-1)
        return float(diff.float().mean() if kept is None else (diff & kept).sum() / kept.sum().clamp_min(1))
    return float((ref - new).abs().mean() / ref.std().clamp_min(1e-12))


def token_mask(batch: Any, outputs: torch.Tensor) -> torch.Tensor | None:
    """The batch's attention mask where the outputs are per token (rows, tokens, classes: a language model's, a
    tagger's) and match it, so padding counts for nothing; else None (every prediction counts)."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if outputs.dim() == 3 and isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(outputs.shape[:2]):
        return mask.ne(0).to(outputs.device)
    return None


LOOKBACKS = ("decision", "epoch")  # the weights put back: the rule's previous decision's, or an epoch old (a window's span)
PART_ROWS = 16  # rows per probe part: small enough that a check stops early, large enough to batch well


def take_rows(batch: Any, index: torch.Tensor | slice, columns: int | None = None, full: tuple | None = None) -> Any:
    """Rows ``index`` of a batch; tensors whose leading shape is ``full`` (rows, columns) are also cut to their
    first ``columns`` columns (the padding past a part's longest sequence)."""
    if isinstance(batch, dict):
        return {k: take_rows(v, index, columns, full) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(take_rows(v, index, columns, full) for v in batch)
    if not (isinstance(batch, torch.Tensor) and batch.dim()):
        return batch
    if columns is not None and batch.dim() >= 2 and tuple(batch.shape[:2]) == full:
        batch = batch[:, :columns]
    return batch[index if isinstance(index, slice) else index.to(batch.device)]


def probe_parts(probe: Any, rows: int = PART_ROWS) -> list:
    """The probe as parts of at most ``rows`` rows. A right-padded text batch (a dict with a 2-D
    ``attention_mask``) is ordered by length and each part cut to its own longest sequence, so the veto pays for
    tokens rather than padding; any other batch is cut in order. Masked padding does not change a row's logits."""
    mask = probe.get("attention_mask") if isinstance(probe, dict) else None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        lengths = mask.ne(0).sum(1)
        right_padded = bool(mask.ne(0).eq(torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]).all())
        if right_padded:
            lengths = lengths.cpu()
            return [take_rows(probe, idx, int(lengths[idx].max().clamp_min(1)), tuple(mask.shape))
                    for idx in torch.argsort(lengths, stable=True).split(rows)]
    n = _rows(probe)
    if n is None:
        return [probe]
    return [take_rows(probe, slice(a, a + rows)) for a in range(0, n, rows)]


def longest_passing(passes, start: int, stop: int) -> int:
    """The veto's search: ``passes(upto)`` says whether units start..upto-1 put back stay within tau. The front
    unit first (it usually fails), then the whole prefix; only a failing whole is searched unit by unit."""
    if not passes(start + 1):
        return start
    if stop == start + 1 or passes(stop):
        return stop
    return next((ok for ok in range(start + 1, stop - 1) if not passes(ok + 1)), stop - 1)  # the first that fails


class FunctionalVeto:
    """``allow(model, start, stop, step)``: how far the frozen prefix may grow, given the units' weights at the
    previous decision (``snapshot``) or, with ``lookback``, the newest kept at least that many steps before
    ``step``, units start..i put back together as the label rewinds a prefix. A unit with no earlier weights yet
    is never allowed.

    A check runs the probe part by part (``probe_parts``) and stops as soon as the changed predictions exceed tau:
    the answer is the whole probe's, the cost only what settles it."""

    def __init__(self, units: Sequence[Unit], probe: Any, tau: float, rows: int | None = None,
                 lookback: int | None = None):
        self.units, self.probe, self.tau = list(units), probe if rows is None else first_rows(probe, rows), tau
        self.lookback = lookback
        self.history: list[tuple[int, dict]] = []  # (step, weights) kept for the lookback, oldest first
        self.parts = probe_parts(self.probe)
        self.previous: dict[int, list] = {}  # unit index -> its weights at the previous decision
        self.at: int | None = None  # the step they were taken at
        self.vetoed = 0  # decisions the veto cut short
        self.forwards = 0  # probe checks run (the reference, then one per prefix put back)
        self.part_forwards = [0] * len(self.parts)  # forwards of each part: the veto's cost, priced per part

    @torch.no_grad()
    def check(self, model: torch.nn.Module) -> None:
        """Fails when the engine is built, not at the rule's start mid-run, where the model's eval output on the probe
        holds no per-example predictions (a detection model's boxes, a list of images taken for a batch)."""
        part, was = self.parts[0], model.training
        rows = _rows(part)
        device = next(model.parameters()).device
        try:
            model.eval()
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                out = logits(model, part)
            problem = None if out.dim() and out.shape[0] == rows else \
                f"its output {tuple(out.shape)} has no row per probe example ({rows})"
        except Exception as e:  # noqa: BLE001 - any failure here means the same: the veto cannot read this model
            problem = f"{type(e).__name__}: {e}"
        finally:
            model.train(was)
        if problem:
            raise ValueError(f"the functional veto compares the model's per-example predictions on a probe batch (a "
                             f"tensor of logits, or an output with .logits, in eval mode), and cannot read this model: "
                             f"{problem}. Pass veto_tau=1.0 to decide without the veto, or veto_probe= a batch whose "
                             "eval output has one row per example.")

    def _outputs(self, model: torch.nn.Module, j: int) -> torch.Tensor:
        self.part_forwards[j] += 1
        return logits(model, self.parts[j])

    def _exceeds(self, model: torch.nn.Module, ref: list) -> bool:
        """Whether the model's predictions differ from ``ref`` by more than tau (``changed_share`` on the whole
        probe), stopping at the first part past which no later part could bring it back under."""
        classes = ref[0].shape[-1] > 1
        kept = [token_mask(self.parts[j], r) if classes else None for j, r in enumerate(ref)]
        total = sum(r.numel() if not classes else r.shape[:-1].numel() if k is None else float(k.sum())
                    for k, r in zip(kept, ref))
        scale = 1.0 if classes else float(torch.cat([r.flatten() for r in ref]).std().clamp_min(1e-12))
        changed = 0.0
        for j, r in enumerate(ref):
            new = self._outputs(model, j)
            diff = r.argmax(-1) != new.argmax(-1) if classes else (r - new).abs()
            changed += float((diff if kept[j] is None else diff & kept[j]).sum())
            if changed / total / scale > self.tau:
                return True
        return False

    def snapshot(self, start: int, stop: int, step: int, every: int = 1, keep: bool = True) -> None:
        """Keeps units start..stop-1 as they are now, at most once every ``every`` steps (a policy that decides
        at every step compares with weights at least that old, and copies them that seldom). ``keep=False``
        (no check can read this snapshot) marks the step without copying anything."""
        if self.lookback is not None:  # keep a few, and none older than the newest the lookback reaches
            if keep and (not self.history or step - self.history[-1][0] >= every):
                self.history.append((step, {i: unit_state(self.units[i]) for i in range(start, stop)}))
            while len(self.history) > 1 and self.history[1][0] <= step - self.lookback:
                self.history.pop(0)
        elif self.at is None or step - self.at >= every:
            self.previous, self.at = {i: unit_state(self.units[i]) for i in range(start, stop)} if keep else {}, step

    def earlier(self, step: int | None) -> dict:
        """The weights a check at ``step`` puts back: {unit index: weights}."""
        if self.lookback is None or step is None:
            return self.previous
        return next((w for s, w in reversed(self.history) if s <= step - self.lookback), {})

    @torch.no_grad()
    def allow(self, model: torch.nn.Module, start: int, stop: int, step: int | None = None) -> int:
        previous = self.earlier(step)
        known = start  # units with earlier weights to put back
        while known < stop and known in previous:
            known += 1
        ok = start
        if known > start:
            was = model.training
            model.eval()
            saved: dict[int, list] = {}  # copied only for the units actually put back
            try:
                ref = [self._outputs(model, j) for j in range(len(self.parts))]
                self.forwards += 1
                ok = self._search(model, ref, start, known, saved, previous)
            finally:
                for i, s in saved.items():
                    load_unit_state(self.units[i], s)
                model.train(was)
        self.vetoed += ok < stop
        return ok

    def _search(self, model: torch.nn.Module, ref: list, start: int, stop: int, saved: dict, previous: dict) -> int:
        """The longest prefix start..ok-1 that, put back together, stays within tau (``longest_passing``)."""
        back: set[int] = set()

        def passes(upto: int) -> bool:  # units start..upto-1 at their earlier weights, the rest as they are now
            for i in range(start, stop):
                if i < upto and i not in back:
                    if i not in saved:
                        saved[i] = unit_state(self.units[i])
                    load_unit_state(self.units[i], previous[i])
                    back.add(i)
                elif i >= upto and i in back:
                    load_unit_state(self.units[i], saved[i])
                    back.discard(i)
            self.forwards += 1
            return not self._exceeds(model, ref)

        return longest_passing(passes, start, stop)

    def state_dict(self) -> dict:
        return {"previous": {str(i): s for i, s in self.previous.items()}, "vetoed": self.vetoed, "at": self.at,
                "forwards": self.forwards, "part_forwards": list(self.part_forwards),
                "history": [[s, {str(i): w for i, w in ws.items()}] for s, ws in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.previous = {int(i): s for i, s in state.get("previous", {}).items()}
        self.vetoed = int(state.get("vetoed", 0))
        self.forwards = int(state.get("forwards", 0))
        parts = [int(n) for n in state.get("part_forwards", [])]  # before parts, every forward ran the whole probe
        self.part_forwards = parts if len(parts) == len(self.parts) else [self.forwards] * len(self.parts)
        self.at = None if state.get("at") is None else int(state["at"])
        self.history = [(int(s), {int(i): w for i, w in ws.items()}) for s, ws in state.get("history", [])]
