"""Freezable units: the blocks SmartFRZ freezes front to back.

Units are found structurally from one traced forward pass, so the same rule covers torchvision
CNNs, timm/torchvision ViTs and Hugging Face encoders without a per-family table:

* a *block* is a module whose class occurs at least twice in the model (ResNet's BasicBlock,
  MobileNet's InvertedResidual, BERT's BertLayer, ViT's Block), taken at the shallowest such level, where its class
  must again occur twice (timm's SqueezeExcite, repeated inside blocks, is none where it stands alone); a
  normalisation layer (torch's, or any layer whose parameters are all vectors: T5LayerNorm, RMSNorm) is never
  one. A *stage*, a block holding a chain of at least two blocks of one class (each reading the previous one's
  output, alone or among its inputs: RegNet's AnyStage, timm's ConvNeXtStage, T5's encoder stack, DenseNet's
  _DenseBlock, whose layers each read the list of all earlier outputs), gives way to the blocks of its chain;
* every parameterised module outside blocks becomes its own unit at the shallowest level that
  holds no block (BERT's ``embeddings``, ViT's ``patch_embed``, VGG's conv layers); a block-free model that
  this leaves with one unit, one wrapper module, is split into the wrapper's parts (ALBERT's shared encoder);
* a normalisation-only unit joins the unit before it (ResNet's ``conv1+bn1`` stem, VGG's conv+BN, T5's
  ``encoder.final_layer_norm`` after its last block), except after a block, where it joins the unit after it
  if that reads it (ConvNeXt's downsampling LayerNorm+conv) and is the head's if no block follows;
  parameters owned directly by containers (ViT's ``cls_token``, ``pos_embed``) join the first unit;
* the head is everything that runs after the last block (or, without blocks, the last unit):
  it is never frozen. A unit's parameter that a module outside all units also runs (weight tying with the
  head, as GPT-2's ``lm_head``) is listed in ``Unit.tied``: the engine never freezes it, and says so.
"""
from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)


@dataclass
class Unit:
    """One freezable group of modules. ``name`` joins the member names with '+'."""

    index: int
    members: list[tuple[str, nn.Module]]
    extra_params: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)  # its parameters' names where a module outside all units runs them
    forward_flops: int = 0
    flop_share: float = 0.0

    @property
    def name(self) -> str:
        return "+".join(n for n, _ in self.members)

    @property
    def module(self) -> nn.Module:
        return self.members[0][1] if len(self.members) == 1 else nn.ModuleList(m for _, m in self.members)

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        out = [(f"{n}.{pn}" if pn else n, p) for n, m in self.members for pn, p in m.named_parameters()]
        return out + list(self.extra_params)

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def __repr__(self) -> str:
        return f"Unit({self.index}, {self.name!r}, params={self.num_params}, flop_share={self.flop_share:.3f})"


def call_model(model: nn.Module, example_input: Any):
    """Calls ``model`` the way users feed it: tensor, tuple of args, or dict of kwargs."""
    if isinstance(example_input, dict) or hasattr(example_input, "keys"):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def _trace(model: nn.Module, example_input: Any):
    """One forward pass: execution order of all modules, forward FLOPs spent inside each, and which modules'
    output each module was first fed (weak references: the pass keeps no activation alive)."""
    order: dict[nn.Module, int] = {}
    flops: dict[nn.Module, int] = {}
    counter = FlopCounterMode(display=False)
    start: dict[nn.Module, list[int]] = {}
    fed_by: dict[nn.Module, set] = {}  # module -> the modules whose output it was first fed
    made: dict[int, tuple] = {}  # id of an output -> (a weak reference to it, the modules that returned it)

    def pre(m, args, kwargs):
        order.setdefault(m, len(order))
        start.setdefault(m, []).append(counter.get_total_flops())
        if m not in fed_by and (fed := {w for x in tree_leaves((args, kwargs)) if torch.is_tensor(x)
                                        and (hit := made.get(id(x))) and hit[0]() is x for w in hit[1]}):
            fed_by[m] = fed  # every tensor it reads, in lists too (DenseNet's layers read all earlier outputs)

    def post(m, args, out):
        flops[m] = flops.get(m, 0) + counter.get_total_flops() - start[m].pop()
        y = out[0] if isinstance(out, (tuple, list)) and out else out
        if torch.is_tensor(y):
            if made.get(id(y), (lambda: None,))[0]() is not y:
                made[id(y)] = (weakref.ref(y), set())
            made[id(y)][1].add(m)

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            call_model(model, example_input)
    except Exception as e:  # the model rejected the example: say so plainly
        raise ValueError(f"example_input was rejected by {type(model).__name__}.forward: {type(e).__name__}: {e}. "
                         "Pass a tensor, a tuple of positional args, or a dict of keyword args that the model accepts.") from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order, flops, counter.get_total_flops(), fed_by


def _has_direct_params(m: nn.Module) -> bool:
    """Its own weights, a parametrized weight's originals included (weight_norm, spectral_norm)."""
    return any(True for _ in m.parameters(recurse=False)) or (parametrize.is_parametrized(m) and _has_params(m.parametrizations))


def _kind(m: nn.Module) -> type:
    """The module's class, as written: torch.nn.utils.parametrize gives each parametrized module a class of its own."""
    return type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)


def _visible(name: str) -> bool:
    """Modules inside a parametrization (its originals, the weight_norm computing the weight) are their owner's."""
    return "parametrizations" not in name.split(".")


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _is_norm(m: nn.Module) -> bool:
    """A normalisation layer: torch's, or any layer (no parameterised children) whose parameters are all vectors, a
    per-feature scale and shift (T5LayerNorm, LlamaRMSNorm and other re-implementations)."""
    return isinstance(m, _NORMS) or (_has_direct_params(m) and not any(_has_params(c) for c in m.children())
                                     and all(p.dim() <= 1 for p in m.parameters(recurse=False)))


def _norm_only(m: nn.Module) -> bool:
    return _is_norm(m) or all(_is_norm(c) for c in m.modules() if _has_direct_params(c))


def _shallowest(names: set[str]) -> set[str]:
    return {n for n in names if not any(n.startswith(b + ".") for b in names)}


def _chain(m: nn.Module, order: dict, fed_by: dict, blocks: set) -> bool:
    """Whether ``m`` holds two or more blocks of one class, each with two or more weight layers (not Inception's
    conv+BN branches), run one after another on each other's output (not side by side, as experts or branches)."""
    for c in m.modules():
        kids = sorted((k for k in c.children() if k in order and _has_params(k)), key=order.get)
        if len(kids) >= 2 and len({_kind(k) for k in kids}) == 1 and kids[0] in blocks \
                and sum(_has_direct_params(x) and not _norm_only(x) for x in kids[0].modules()) >= 2 \
                and all(a in fed_by.get(b, ()) for a, b in zip(kids, kids[1:])):
            return True
    return False


def _structural_units(model: nn.Module, order: dict, fed_by: dict, opened: frozenset = frozenset()) -> tuple[list, list]:
    """Returns (unit member-name groups in execution order, head module names). ``opened``: modules split into their
    parts, as containers are (a block-free model whose only unit would be one wrapper, as ALBERT's shared encoder)."""
    named = {n: m for n, m in model.named_modules() if _visible(n)}
    executed = {n for n, m in named.items() if m in order and n}

    def eligible(m: nn.Module) -> bool:
        return type(m) not in _CONTAINERS and any(n != "parametrizations" for n, _ in m.named_children()) \
            and _has_params(m) and not _norm_only(m)

    class_count = Counter(_kind(m) for n, m in named.items() if n and eligible(m))
    is_block = {n for n, m in named.items() if n and class_count[_kind(m)] >= 2 and eligible(m)} & executed
    blocks = _shallowest(is_block)
    while lone := {b for b in blocks if sum(type(named[c]) is type(named[b]) for c in blocks) < 2}:
        is_block -= lone  # its class repeats only inside blocks (timm's SqueezeExcite): no block where it is alone
        blocks = _shallowest(is_block)
    block_modules = {named[n] for n in is_block}
    while stages := {b for b in blocks if _chain(named[b], order, fed_by, block_modules)}:  # a stage: its blocks
        blocks = (blocks - stages) | _shallowest({n for n in is_block if any(n.startswith(s + ".") for s in stages)})

    def contains_block(n: str) -> bool:
        return any(b == n or b.startswith(n + ".") for b in blocks)

    chosen: dict[str, int] = {}
    for name, m in named.items():
        if not name or name not in executed or not _has_direct_params(m):
            continue
        parts = name.split(".")
        owner = None
        for i in range(1, len(parts) + 1):  # shallowest ancestor that is a block, or holds none
            cand = ".".join(parts[:i])
            if cand in blocks:
                owner = cand
                break
            if not contains_block(cand) and type(named[cand]) not in _CONTAINERS and cand not in opened:
                owner = cand
                break
        if owner is None:  # parameters living on a container that also holds blocks (e.g. pos_embedding)
            continue
        chosen[owner] = min(chosen.get(owner, 1 << 30), order[named[owner]])
    seq, groups, ahead = sorted(chosen, key=chosen.get), [], []  # ahead: norms that join the unit after them
    for i, name in enumerate(seq):
        if _norm_only(named[name]) and name not in blocks:  # joins the unit before it, unless that is a block and
            reads = i + 1 < len(seq) and named[name] in fed_by.get(named[seq[i + 1]], ())  # the next unit reads it
            after_block = bool(groups) and any(n in blocks for n in groups[-1])  # or no block follows (the head's)
            if groups and not ahead and not (after_block and (reads or not any(n in blocks for n in seq[i + 1:]))):
                groups[-1].append(name)  # conv+BN; a stack's output norm (T5's encoder.final_layer_norm)
                continue
            if reads:
                ahead.append(name)  # a pre-norm: ConvNeXt's downsampling LayerNorm+conv
                continue
        groups, ahead = groups + [ahead + [name]], []
    groups += [ahead] if ahead else []
    if blocks:
        last_block = max((i for i, g in enumerate(groups) if any(n in blocks for n in g)))
        head = [n for g in groups[last_block + 1:] for n in g]
        units = groups[: last_block + 1]
    else:
        head = groups[-1] if groups else []
        units = groups[:-1]
        if len(units) == 1 and len(units[0]) == 1 and sum(_has_params(c) for c in named[units[0][0]].children()) > 1:
            return _structural_units(model, order, fed_by, opened | {units[0][0]})
    return units, head


def find_units(model: nn.Module, example_input: Any, names: Sequence[str] | None = None) -> list[Unit]:
    """Ordered freezable units of ``model``; ``names`` overrides discovery with explicit module names.

    Each override entry may join several modules with '+', e.g. ``["conv1+bn1", "layer1", "layer2"]``.
    """
    model = uncompiled(model)
    if not _has_params(model):
        raise ValueError(f"{type(model).__name__} has no parameters: there is nothing to train or freeze.")
    named = dict(model.named_modules())
    order, flops, total, fed_by = _trace(model, example_input)
    if names is not None:
        groups = [str(n).split("+") for n in names]
        unknown = [n for g in groups for n in g if n not in named or n == ""]
        if unknown:
            sample = ", ".join(list(n for n in named if n)[:12])
            raise KeyError(f"unknown unit name(s) {unknown}: names must come from model.named_modules(), e.g. {sample}, ...")
        never_run = [n for g in groups for n in g if named[n] not in order]
        if never_run:
            raise ValueError(f"unit(s) {never_run} never ran in the forward pass of example_input, so they cannot be ordered")
        groups.sort(key=lambda g: min(order[named[n]] for n in g))
    else:
        groups, _ = _structural_units(model, order, fed_by)
    if not groups:
        raise ValueError(f"found no freezable unit in {type(model).__name__} besides its head; "
                         "pass units=[...] with module names to choose them by hand")
    units = [Unit(i, [(n, named[n]) for n in g]) for i, g in enumerate(groups)]
    # parameters held directly by a container of units (ViT's cls_token and pos_embed, an encoder's
    # position table) ride with the first unit: they feed it and nothing before it.
    owned = {id(p) for u in units for p in u.parameters()}
    for mname, m in named.items():
        if _is_container_owned(mname, units):
            for pname, p in m.named_parameters(recurse=False):
                if id(p) not in owned:
                    units[0].extra_params.append((f"{mname}.{pname}" if mname else pname, p))
                    owned.add(id(p))
    inside = {id(m) for u in units for _, top in u.members for m in top.modules()}
    elsewhere: dict[int, list[str]] = {}  # weight tying: a unit's parameter run by a module outside all units (a head)
    for mname, m in model.named_modules(remove_duplicate=False):
        if m in order and id(m) not in inside:
            for pname, p in m.named_parameters(recurse=False):
                elsewhere.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    extra = {id(p) for u in units for _, p in u.extra_params}
    for u in units:
        u.tied = [n for p in u.parameters() if id(p) not in extra for n in elsewhere.get(id(p), [])]
        u.forward_flops = sum(flops[m] for _, m in u.members)
        u.flop_share = u.forward_flops / total if total else 0.0
    return units


OUTSIDE = 1 << 30  # owner index of a parameter's use by a module outside all units (a tied head)


def uncompiled(model: nn.Module) -> nn.Module:
    """The module torch.compile wrapped (traced eagerly, named as the user named it), else the model itself."""
    return model._orig_mod if type(model).__name__ == "OptimizedModule" else model


def param_owners(model: nn.Module, units: Sequence[Unit]) -> dict[int, set[int]]:
    """Unit indices using each unit parameter, and OUTSIDE where a module outside the units runs it too
    (``Unit.tied``). A parameter freezes once all its owners lie in the frozen prefix: the engine's rule, and the
    lab's FLOP count of each prefix."""
    owners: dict[int, set[int]] = {}
    for i, u in enumerate(units):
        for p in u.parameters():
            owners.setdefault(id(p), set()).add(i)
    params = dict(uncompiled(model).named_parameters(remove_duplicate=False))
    for n in (n for u in units for n in u.tied if n in params):
        owners[id(params[n])].add(OUTSIDE)
    return owners


def _is_container_owned(mname: str, units: list[Unit]) -> bool:
    """A parameter-holding module that is an ancestor of some unit (root, ViT encoder)."""
    prefix = mname + "." if mname else ""
    return any(n.startswith(prefix) and n != mname for u in units for n, _ in u.members)


def first_tensor(out: Any) -> torch.Tensor:
    """A model's or module's output as one tensor: the first of tuples and dicts, a hidden state's."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)):
        return first_tensor(out[0])
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, dict):
        return first_tensor(next(iter(out.values())))
    raise TypeError(f"cannot read a tensor from a unit output of type {type(out).__name__}")
