"""The prefix cache: exact (loss and gradients as uncached), bounded, and refused when it cannot be exact."""
import contextlib
import warnings

import pytest
import torch
from torch import nn

from smartfrz import SmartFRZ
from smartfrz.lab import data as D
from smartfrz.lab.train import batch_loss, example_input, fit, to_device
from smartfrz.prefix_cache import PrefixCache

SENTENCES = [("A man is playing a guitar.", "Someone plays an instrument."), ("It rained all day.", "The sun shone."),
             ("The cat sat on the mat and looked at the door for a long time.", "A cat sat."),
             ("Stocks fell sharply on Monday after the report.", "Markets dropped on Monday."),
             ("He left.", "He departed quickly without saying a word to anyone in the room."),
             ("The committee approved the budget.", "The budget was approved by the committee."),
             ("Birds sing.", "Fish swim in the deep blue sea near the old harbour."), ("Yes.", "No.")]


def _text_loader(tok, batch_size=4, seed=0):
    enc = tok([a for a, _ in SENTENCES], [b for _, b in SENTENCES], truncation=True, max_length=64)
    examples = [{k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids")} | {"labels": i % 2}
                for i in range(len(SENTENCES))]
    return D.make_loader(D.IndexedDataset(examples), batch_size, shuffle=True, seed=seed, collate_fn=D.glue_collate(tok))


def _image_loader(n=48, batch_size=16, augment=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
    ds = D.ImageArrayDataset(x.numpy(), (torch.arange(n) % 10).numpy(), (0.5,) * 3, (0.25,) * 3, augment=augment)
    ds.num_classes = 10
    return D.ArrayLoader(ds, batch_size, shuffle=True, seed=0, with_index=True)


def _engine(model, loader, k):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    frz = SmartFRZ(model, opt, example_input=example_input(next(iter(loader))), policy="none",
                   steps_per_epoch=len(loader))
    if hasattr(loader, "epoch"):
        loader.epoch = 0
    frz.freeze_through(k)
    return frz


def _one_step_both_ways(model, loader, frz, n):
    cache = PrefixCache(dtype=torch.float32)
    cache.attach(model, frz, loader, batch_loss, to_device, "cpu")
    cache.sync()
    assert cache.enabled and cache.level == frz.num_frozen and len(cache.store) == 0  # lazy: nothing run yet
    cache.fill()
    assert len(cache.store) == n and cache.fill_examples == n
    batch = next(iter(loader))
    model.train()
    active = [p for p in model.parameters() if p.requires_grad]
    out = []
    for served in (None, cache.context(batch)):
        torch.manual_seed(1)  # the same dropout masks in the active units
        model.zero_grad(set_to_none=True)
        if served is None:
            loss = batch_loss(model, batch)
        else:
            with served:
                loss = batch_loss(model, batch)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in active]))
    return out, cache


def test_minilm_cached_step_matches_uncached_with_dynamic_padding():
    from smartfrz.lab.models import build_model, build_tokenizer
    tok = build_tokenizer("minilm")
    torch.manual_seed(0)
    model = build_model("minilm", num_classes=2).float()
    loader = _text_loader(tok)
    assert len({b["input_ids"].shape[1] for b in loader}) > 1  # each batch padded to its own longest example
    frz = _engine(model, loader, 3)  # embeddings + layers 0-2 frozen
    (plain, cached), cache = _one_step_both_ways(model, loader, frz, len(SENTENCES))
    torch.testing.assert_close(cached[0], plain[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(cached[1], plain[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert cache.hits == 1 and cache.store.ram_bytes > 0
    stored = [cache.store.get(i).shape[0] for i in range(len(SENTENCES))]
    assert len(set(stored)) > 1  # rows are stored without their padding, each at its own length
    # a store part-filled by a training step (as after a mid-epoch freeze) is completed with the missing rows only
    before, filled = {i: cache.store.get(i).clone() for i in range(len(SENTENCES))}, cache.fill_examples
    cache.store.clear()
    batch = next(iter(loader))
    with cache.context(batch):
        batch_loss(model, batch)
    cache.fill()
    assert cache.fill_examples - filled == len(SENTENCES) - len(batch["index"]) and len(cache.store) == len(SENTENCES)
    for i, t in before.items():
        torch.testing.assert_close(cache.store.get(i), t, atol=1e-5, rtol=1e-4)


def test_cnn_cached_step_matches_uncached():
    from smartfrz.lab.models import build_model
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10)
    loader = _image_loader()
    frz = _engine(model, loader, 4)
    (plain, cached), cache = _one_step_both_ways(model, loader, frz, 48)
    torch.testing.assert_close(cached[0], plain[0], atol=0, rtol=0)  # bitwise: served in the live layout
    for a, b in zip(cached[1], plain[1]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_same_decisions_same_metric_and_fewer_flops():
    """The linear schedule's freezes move the boundary unit by unit; the run is unchanged."""
    from smartfrz.lab.experiment import ExperimentConfig, run
    kw = dict(policy="linear", epochs=4, out_dir=None, progress=False, frz={"freeze_start": 0.25, "freeze_level": 0.8})
    plain = run(ExperimentConfig(**kw))
    cached = run(ExperimentConfig(cache=True, cache_dtype="float32", **kw))
    assert cached.timeline == plain.timeline and cached.metric == pytest.approx(plain.metric, abs=0.25)
    c = cached.cache
    steps = [(a["from"], a["to"]) for a in c["advances"] if a.get("verify")]
    assert c["enabled"] and steps[0][0] == 0 and all(b[0] == a[1] > a[0] for a, b in zip(steps, steps[1:]))
    assert steps[-1][1] == len(cached.frozen_units)
    fills = [a for a in c["advances"] if not a.get("verify")]  # completing part-filled stores at epoch starts
    assert fills and all(a["to"] in {s[1] for s in steps} and a["from"] < a["to"] for a in fills)
    assert c["hits"] > 0 and c["fill_examples"] > 0
    # the integral: uncached FLOPs, minus the skipped forward of served steps, plus the fill and verification
    skipped = plain.train_flops + c["fill_flops"] - cached.train_flops
    assert 0 < c["fill_flops"] < 0.05 * plain.train_flops and skipped > 0
    assert c["ram_bytes"] > 0 and cached.peak_mem_bytes > 0


def test_filling_runs_only_the_newly_frozen_units():
    """After the prefix grows from 2 to 4 units, steps start from the stored input of unit 2 (running
    units 2-3 only) and keep unit 4's input; the next epoch's start completes the store the same way,
    and every step of that epoch is served at unit 4."""
    from smartfrz.lab.models import build_model
    torch.manual_seed(0)
    loader = _image_loader()
    model = build_model("resnet20", num_classes=10)
    frz = _engine(model, loader, 1)  # units 0-1
    cache = PrefixCache(dtype=torch.float32)
    fit(model, frz.optimizer, loader, 1, frz=frz, progress=False, cache=cache)
    assert cache.served == [2, 2, 2] and cache.level == 2 and cache.fill_examples == 48  # filled at the epoch's start
    frz.freeze_through(3)  # units 0-3
    cache.sync()  # the verification batch runs here, from the input
    convs = {i: [m for _, top in u.members for m in top.modules() if isinstance(m, nn.Conv2d)]
             for i, u in enumerate(frz.units)}
    ran = []
    for i, ms in convs.items():
        for m in ms:
            m.register_forward_hook(lambda mod, a, out, i=i: ran.append(i) if out.any() else None)  # stubs give zeros
    batch = next(iter(loader))
    with cache.context(batch):  # a training step right after the freeze: lazy capture
        batch_loss(model, batch).backward()
    assert cache.served[-1] == 2 and cache.captured == 16 and len(cache.store) == 16
    assert ran and min(ran) == 2  # units 0-1 never ran: the step started from unit 2's stored input
    ran.clear()
    fit(model, frz.optimizer, loader, 1, frz=frz, progress=False, cache=cache)  # fills the other 32, from unit 2
    assert min(ran) == 2 and cache.level == 4 and len(cache.store) == 48 and not cache._older
    assert cache.fill_examples == 48 + 32  # only the missing examples ran
    assert cache.served[-3:] == [4, 4, 4]
    ran.clear()
    filled = cache.fill_examples
    fit(model, frz.optimizer, loader, 1, frz=frz, progress=False, cache=cache)
    assert min(ran) == 4 and cache.served[-3:] == [4, 4, 4] and cache.fill_examples == filled  # complete: no pass


def test_store_spills_to_disk_beyond_its_cap():
    from smartfrz.lab.models import build_model
    loaders = [_image_loader(), _image_loader()]
    losses = []
    for loader, cap in zip(loaders, (None, 200_000)):
        torch.manual_seed(0)
        model = build_model("resnet20", num_classes=10)
        frz = _engine(model, loader, 2)
        cache = PrefixCache(dtype=torch.float16, max_bytes=cap)
        res = fit(model, frz.optimizer, loader, 2, frz=frz, progress=False, cache=cache, log_every=1)
        losses.append([h["loss"] for h in res.history])
        if cap:
            assert cache.store.ram_bytes <= cap and cache.store.disk_bytes > 0 and res.cache["disk_bytes"] > 0
    assert losses[0] == losses[1]  # RAM or disk, the same stored values


def _refusal(loader, model, k=2, **fit_kw):
    frz = _engine(model, loader, k)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = fit(model, frz.optimizer, loader, 1, frz=frz, progress=False, cache=True, **fit_kw)
    msgs = [str(x.message) for x in w if "prefix cache off" in str(x.message)]
    assert res.steps == len(loader) and res.cache["enabled"] is False  # trained on, without the cache
    return msgs[0] if msgs else ""


def test_refused_for_random_augmentation():
    from smartfrz.lab.models import build_model
    assert "randomly augmented" in _refusal(_image_loader(augment=True), build_model("resnet20"))


def test_refused_without_indices():
    from smartfrz.lab.models import build_model
    loader = _image_loader()
    loader.with_index = False
    assert "no example indices" in _refusal(loader, build_model("resnet20"))


class SkipNet(nn.Module):
    """Unit 0's output reaches past unit 1 directly: with unit 0 frozen, not a chain (with units 0-2
    frozen it is one again: everything after them depends on unit 3's input alone)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h0 = self.blocks[0](x)
        h = self.blocks[2](self.blocks[1](h0) + h0)
        return self.head(self.blocks[3](h))


def test_refused_for_a_prefix_that_is_not_a_chain():
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    loader = D.make_loader(D.IndexedDataset(ds), 8, shuffle=True)
    msg = _refusal(loader, SkipNet(), k=0)  # blocks.0 frozen: its output also skips past blocks.1
    assert "not a chain" in msg and "blocks.1" in msg


def test_refused_when_a_frozen_unit_shares_trainable_weights():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
            self.head = nn.Linear(8, 8)
            self.head.weight = self.blocks[0].weight  # tied to the head, which never freezes

        def forward(self, x):
            h = x
            for b in self.blocks:
                h = b(h)
            return self.head(h)

    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 8, (32,), generator=g))
    loader = D.make_loader(D.IndexedDataset(ds), 8, shuffle=True)
    assert "tied" in _refusal(loader, Tied(), k=1)


def test_resumed_run_rebuilds_the_store(tmp_path):
    from smartfrz.lab.models import build_model

    def train(resume=None, stop_after=None):
        torch.manual_seed(0)
        loader = _image_loader()
        model = build_model("resnet20", num_classes=10)
        frz = _engine(model, loader, 3)
        kw = dict(checkpoint_path=tmp_path / "ck.pt", checkpoint_every=2) if resume is None else dict(resume_from=resume)
        cache = PrefixCache(dtype=torch.float32)  # exact: a step fed from the store equals one computed
        res = fit(model, frz.optimizer, loader, stop_after or 3, frz=frz, progress=False, cache=cache, **kw)
        return model, res

    whole, _ = train()
    (tmp_path / "ck.pt").unlink()
    train(stop_after=2)  # writes the checkpoint at the end of epoch 2, store not included
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert not any("cache" in k for k in state.get("extra", {}).get("fit", {}))
    resumed, res = train(resume=tmp_path / "ck.pt")
    assert res.cache["enabled"] and res.cache["entries"] == 48 and res.cache["fill_examples"] == 48  # rebuilt
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_cache_needs_an_engine():
    with pytest.raises(ValueError, match="cache needs frz"):
        fit(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), [(torch.zeros(1, 2),
            torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))], 1, progress=False, cache=True)


def test_advancing_replaces_the_store_rather_than_growing_it():
    from smartfrz.lab.models import build_model
    torch.manual_seed(0)
    loader = _image_loader()
    model = build_model("resnet20", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    frz = SmartFRZ(model, opt, example_input=example_input(next(iter(loader))), policy="linear",
                   steps_per_epoch=len(loader), total_steps=4 * len(loader), freeze_start=0.25, freeze_level=0.6)
    loader.epoch = 0
    cache = PrefixCache()
    fit(model, opt, loader, 4, frz=frz, progress=False, cache=cache)
    cache.fill()  # the last boundary may not have seen an epoch yet
    assert len(cache.advances) >= 2 and len(cache.store) == 48 and not cache._older
    held = sum(t.numel() * t.element_size() for t in cache.store.ram.values())
    assert cache.store.ram_bytes == held and all(t.dtype == torch.float16 for t in cache.store.ram.values())


def test_refused_when_dropout_runs_before_the_boundary_outside_frozen_units():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
            self.drop = nn.Dropout(0.1)  # between blocks 0 and 1, in no unit
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.drop(self.blocks[0](x))
            for b in self.blocks[1:]:
                h = b(h)
            return self.head(h)

    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
    loader = D.make_loader(D.IndexedDataset(ds), 8, shuffle=True)
    assert "drop draws random numbers" in _refusal(loader, Noisy(), k=0)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_after_the_boundary_gets_the_stored_input_and_its_gradients(reentrant):
    """Activation checkpointing runs the first active unit again in backward, from the input it was called with: a
    served step must feed it the stored input then too, or that unit's gradients come from the stubs' zeros (wrong,
    silently). Under reentrant checkpointing the engine also makes the prefix's output require grad
    (test_freezing): a served input must too, or every later unit stops learning, and a training step's capture must
    not read that as a prefix depending on trainable weights."""
    from test_freezing import _CheckpointedNet
    torch.manual_seed(0)
    model = _CheckpointedNet(reentrant=reentrant)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 16, generator=g), torch.randint(0, 3, (32,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, torch.arange(32)), batch_size=8)
    batches = list(loader)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    frz = SmartFRZ(model, opt, example_input=x[:4], policy="none")
    frz.freeze_through(0)
    with pytest.warns(UserWarning, match="got no gradient") if reentrant else contextlib.nullcontext():
        batch_loss(model, batches[0]).backward()
        frz.step()  # the step after the freeze: under reentrant checkpointing the engine feeds from now on
    assert frz._feeding == reentrant
    cache = PrefixCache(dtype=torch.float32)
    cache.attach(model, frz, loader, batch_loss, to_device, "cpu")
    cache.sync()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no refusal
        with cache.context(batches[1]):  # a training step fills part of the store as it computes
            batch_loss(model, batches[1])
        cache.fill()
    assert cache.enabled and len(cache.store) == 32
    active = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for served in (None, cache.context(batches[2])):
        model.zero_grad(set_to_none=True)
        with served or contextlib.nullcontext():
            loss = batch_loss(model, batches[2])
        loss.backward()
        grads.append([p.grad for p in active])
    assert cache.hits == 1 and all(g is not None for g in grads[1])  # every active unit learns on a served step
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert cache._lingering  # until the next step, unit k is fed again for that step's input alone:
    with torch.no_grad():
        other = model(batches[3][0])  # not for another forward (an evaluation between steps)
        cache.context(batches[3])
        assert not cache._lingering
        torch.testing.assert_close(other, model(batches[3][0]), atol=0, rtol=0)


@pytest.mark.parametrize("reentrant", [True, False])
def test_minilm_with_gradient_checkpointing_cached_step_matches_uncached(reentrant):
    """Hugging Face's gradient_checkpointing_enable(): each layer runs under checkpointing. Before the cache fed the
    engine's reentrant feed, a served step left every active layer without gradients."""
    from smartfrz.lab.models import build_model, build_tokenizer
    tok = build_tokenizer("minilm")
    torch.manual_seed(0)
    model = build_model("minilm", num_classes=2).float()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    loader = _text_loader(tok)
    frz = _engine(model, loader, 3)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch_loss(model, next(iter(loader))).backward()
        frz.step()  # reentrant: the step after the freeze finds the starved layers, and the engine feeds them
    model.zero_grad(set_to_none=True)
    assert frz._feeding == reentrant
    (plain, cached), cache = _one_step_both_ways(model, loader, frz, len(SENTENCES))
    assert cache.hits == 1
    torch.testing.assert_close(cached[0], plain[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(cached[1], plain[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
