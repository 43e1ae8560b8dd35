import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import cifar_resnet18, minilm
from smartfrz import SmartFRZ, find_units, freeze_through


def train_flops(model, loss_fn):
    with FlopCounterMode(display=False) as c:
        loss_fn(model).backward()
    model.zero_grad(set_to_none=True)
    return c.get_total_flops()


def saved_activation_bytes(model, loss_fn):
    """Bytes autograd keeps for backward: the activation memory a frozen prefix must not use."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total


@pytest.fixture
def resnet_setup():
    torch.manual_seed(0)
    m = cifar_resnet18()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    loss_fn = lambda model: F.cross_entropy(model(x), y)
    return m, opt, x, loss_fn


def step(m, opt, loss_fn, frz=None):
    opt.zero_grad(set_to_none=True)
    loss_fn(m).backward()
    opt.step()
    if frz:
        frz.step()


def test_frozen_prefix_gets_no_grad_and_leaves_optimizer(resnet_setup):
    m, opt, x, loss_fn = resnet_setup
    frz = SmartFRZ(m, opt, example_input=x, policy="none")
    step(m, opt, loss_fn, frz)  # momentum state exists for every parameter now
    frz.freeze_through(4)
    frozen = [p for u in frz.units[:5] for p in u.parameters()]
    frozen_ids = {id(p) for p in frozen}
    opt_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert frozen_ids.isdisjoint(opt_ids)
    assert frozen_ids.isdisjoint({id(p) for p in opt.state})
    assert len(opt_ids) + len(frozen_ids) == len(list(m.parameters()))
    before = [p.detach().clone() for p in frozen]
    m.train()
    step(m, opt, loss_fn, frz)
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    assert all(torch.equal(a, p) for a, p in zip(before, frozen))
    assert any(p.grad is not None for p in m.layer4.parameters())
    assert frz.frozen_units == ["conv1+bn1", "layer1.0", "layer1.1", "layer2.0", "layer2.1"]


def test_batchnorm_statistics_stop_moving(resnet_setup):
    m, opt, x, loss_fn = resnet_setup
    frz = freeze_through(m, opt, x, 2)
    stats = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}
    for _ in range(2):
        m.train()  # a user's loop re-enters train mode every epoch
        step(m, opt, loss_fn, frz)
    after = m.state_dict()
    frozen_prefixes = ("bn1.", "layer1.0.", "layer1.1.")
    for k, v in stats.items():
        moved = not torch.equal(v, after[k])
        assert moved != k.startswith(frozen_prefixes), k
    assert not m.layer1[0].bn1.training and m.layer2[0].bn1.training


def test_resnet18_front_half_cuts_flops_and_activations(resnet_setup):
    m, opt, x, loss_fn = resnet_setup
    frz = SmartFRZ(m, opt, example_input=x, policy="none")
    full, full_mem = train_flops(m, loss_fn), saved_activation_bytes(m, loss_fn)
    half = len(frz.units) // 2
    frz.freeze_through(half - 1)
    m.train()
    cut, cut_mem = train_flops(m, loss_fn), saved_activation_bytes(m, loss_fn)
    saving = 1 - cut / full
    backward_share = 2 * frz.frozen_flop_share / 3  # backward is ~2x forward and is skipped entirely
    assert saving >= 0.25, saving
    assert saving >= backward_share - 0.01, (saving, backward_share)
    assert cut_mem < 0.75 * full_mem, (cut_mem, full_mem)


def test_minilm_front_half_cuts_flops():
    model, tok = minilm()
    batch = dict(tok(["the cat sat on the mat"] * 4, ["a cat was sitting on a mat"] * 4, padding="max_length",
                     max_length=64, return_tensors="pt"))
    labels = torch.tensor([1, 0, 1, 0])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    loss_fn = lambda m: m(**batch, labels=labels).loss
    model.train()
    frz = SmartFRZ(model, opt, example_input=batch, policy="none")
    full, full_mem = train_flops(model, loss_fn), saved_activation_bytes(model, loss_fn)
    frz.freeze_through(len(frz.units) // 2 - 1)  # embeddings + 2 of 6 layers ... the front half of 7 units
    cut, cut_mem = train_flops(model, loss_fn), saved_activation_bytes(model, loss_fn)
    assert 1 - cut / full >= 0.20, 1 - cut / full
    assert cut_mem < full_mem
    assert not model.bert.encoder.layer[0].training  # dropout off in the frozen prefix
    emb = model.bert.embeddings.word_embeddings.weight
    assert id(emb) not in {id(p) for g in opt.param_groups for p in g["params"]}


def test_unfreeze_restores_training(resnet_setup):
    m, opt, x, loss_fn = resnet_setup
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    frz = freeze_through(m, opt, x, 3)
    frz.unfreeze()
    assert frz.num_frozen == 0 and sum(len(g["params"]) for g in opt.param_groups) == n_params
    m.train()
    step(m, opt, loss_fn, frz)
    assert all(p.grad is not None for p in m.parameters())
    assert m.layer1[0].bn1.training
    assert [e["event"] for e in frz.timeline].count("unfreeze") == 4


def test_head_and_min_active_never_frozen(resnet_setup):
    m, opt, x, loss_fn = resnet_setup
    from smartfrz.policies import Policy

    class Greedy(Policy):
        def decide(self, engine):
            return 100, {}

    frz = SmartFRZ(m, opt, example_input=x, policy=Greedy(), min_active_units=2)
    frz.decide()  # whatever a policy asks for, the engine caps it
    assert frz.num_frozen == len(frz.units) - 2
    assert m.fc.weight.requires_grad and m.layer4[1].conv1.weight.requires_grad


def test_tied_parameters_stay_trainable():
    emb = torch.nn.Embedding(10, 8)

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.mid = emb, torch.nn.Linear(8, 8)
            self.out = torch.nn.Linear(8, 10, bias=False)
            self.out.weight = emb.weight  # tied with the head

        def forward(self, t):
            return self.out(self.mid(self.emb(t)))

    m = Tied()
    with pytest.warns(UserWarning, match=r"tied parameters emb\.weight .*'out\.weight'"):  # named at setup
        frz = freeze_through(m, None, torch.tensor([[1, 2, 3]]), 0, units=["emb", "mid"])
    assert frz.frozen_units == ["emb"] and m.emb.weight.requires_grad  # still used by the trainable head


def test_lab_counts_a_tied_prefix_as_the_engine_freezes_it():
    """The lab's per-prefix FLOPs (smartfrz.lab.costs.prefix_step_flops) keep a weight the head shares trainable, as
    the engine does: counting it frozen would credit a tied model with backward work it still does."""
    from smartfrz.lab.costs import count_step_flops, prefix_step_flops

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.mid, self.out = torch.nn.Embedding(50, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 50)
            self.out.weight = self.emb.weight

        def forward(self, t):
            return self.out(self.mid(self.emb(t)))

    m, batch = Tied(), (torch.randint(0, 50, (4, 6)), torch.randint(0, 50, (4, 6)))

    def loss(model, b):
        return torch.nn.functional.cross_entropy(model(b[0]).flatten(0, 1), b[1].flatten())
    counted = prefix_step_flops(m, find_units(m, batch[0], names=["emb", "mid"]), batch, loss)
    with pytest.warns(UserWarning, match="tied parameters"):
        freeze_through(m, None, batch[0], 1, units=["emb", "mid"])
    assert m.emb.weight.requires_grad and not m.mid.weight.requires_grad  # the engine's frozen state
    assert counted[2] == count_step_flops(m, batch, loss) < counted[0]  # the lab counts that state


@pytest.mark.parametrize("setup", ["accumulation", "autocast", "grad_scaler", "bf16_weights"])
def test_a_frozen_unit_stays_bit_identical_under_common_training_setups(setup):
    """Gradient accumulation, bf16 autocast, a GradScaler and bf16 weights: the frozen unit's weights and BatchNorm
    statistics must not move after it freezes, whatever the loop does around the optimizer."""
    from torch import nn

    torch.manual_seed(0)
    block = lambda c_in: nn.Sequential(nn.Conv2d(c_in, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())  # noqa: E731
    model = nn.Sequential(block(3), block(8), block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    dtype = torch.bfloat16 if setup == "bf16_weights" else torch.float32
    model = model.to(dtype)
    x, y = torch.randn(32, 3, 8, 8, dtype=dtype), torch.randint(0, 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    frz = SmartFRZ(model, opt, example_input=x[:4], policy="linear", total_steps=30)
    scaler = torch.amp.GradScaler("cpu") if setup == "grad_scaler" else None
    accum, frozen_state = 2 if setup == "accumulation" else 1, None
    for _ in range(30):
        for xb, yb in zip(x.chunk(accum), y.chunk(accum)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup == "autocast"):
                loss = F.cross_entropy(model(xb).float(), yb) / accum
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt), scaler.update()
        else:
            opt.step()
        opt.zero_grad()
        frz.step()
        if frz.num_frozen and frozen_state is None:
            frozen_state = {k: v.clone() for k, v in model[0].state_dict().items()}
    assert frz.num_frozen >= 2 and frozen_state is not None
    assert all(torch.equal(v, frozen_state[k]) for k, v in model[0].state_dict().items())
    assert not model[1][0].weight.requires_grad


class _CheckpointedNet(torch.nn.Module):
    """A stem, then blocks run under activation checkpointing, as memory-bound training loops do."""

    def __init__(self, reentrant: bool):
        super().__init__()
        nn = torch.nn
        self.reentrant = reentrant
        self.stem = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(4))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = torch.utils.checkpoint.checkpoint(b, x, use_reentrant=self.reentrant) if self.training else b(x)
        return self.head(x)


def _checkpointed_steps(reentrant: bool, steps: int, state=None):
    torch.manual_seed(0)
    m = _CheckpointedNet(reentrant)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    frz = SmartFRZ(m, opt, example_input=torch.randn(4, 16), policy="none")
    if state is None:
        frz.freeze_through(0)
    else:
        frz.load_state_dict(state)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 16, generator=g), torch.randint(0, 3, (8,), generator=g)
    missing = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        missing.append([n for n, p in m.named_parameters() if p.requires_grad and p.grad is None])
        opt.step()
        frz.step()
    return m, frz, missing


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_reentrant_checkpointing_after_a_frozen_prefix_is_found_and_fed():
    """Reentrant checkpointing gives a block no gradient when none of its inputs requires grad, and after a freeze
    the prefix's output no longer does: every later unit would stop learning. One step shows it; from the next on
    the prefix's output requires grad, and the frozen prefix itself still gets no gradient."""
    with pytest.warns(UserWarning, match="got no gradient in the step after the prefix"):
        m, frz, missing = _checkpointed_steps(True, 3)
    assert len(missing[0]) == 8 and missing[1:] == [[], []]  # the four blocks' weights and biases, then none
    assert all(p.grad is None and not p.requires_grad for p in m.stem.parameters())
    state = frz.state_dict()
    assert state["feeds_grad"]
    _, resumed, missing = _checkpointed_steps(True, 1, state)  # a resumed run feeds at once: no step is lost
    assert missing == [[]] and resumed._feeding and resumed._boundary is not None


def test_no_feeding_without_reentrant_checkpointing(recwarn):
    _, frz, missing = _checkpointed_steps(False, 3)
    assert missing == [[], [], []] and frz._boundary is None and not frz._watch
    assert not [w for w in recwarn if "SmartFRZ" in str(w.message)]
