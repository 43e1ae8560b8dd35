"""Parameter-efficient fine-tuning: only the weights that train are sampled, copied and counted.

In a LoRA fine-tune a unit is mostly fixed pretrained weights around small adapters. A window sampled from all of
them is flat where the adapters still learn, the veto would copy the whole model at each decision, and the timeline
would count fixed weights as frozen by the engine.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smartfrz import SmartFRZ
from smartfrz.veto import load_unit_state, unit_state


class LoRALinear(nn.Module):
    """A fixed linear layer plus a trainable low-rank update, as peft's LoRA layer."""

    def __init__(self, d: int, r: int = 2):
        super().__init__()
        self.base = nn.Linear(d, d).requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(r, d) * 0.3)
        self.lora_B = nn.Parameter(torch.zeros(d, r))

    def forward(self, x):
        return self.base(x) + x @ self.lora_A.t() @ self.lora_B.t()


def lora_mlp():
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Linear(8, 32), nn.ReLU()).requires_grad_(False)  # fixed, as a frozen embedding
    return nn.Sequential(stem, *[nn.Sequential(LoRALinear(32), nn.ReLU()) for _ in range(4)], nn.Linear(32, 3))


def train(model, frz, steps, start=0):
    """SGD on a fixed toy set, steps start..start+steps-1 of its batch order."""
    opt = frz.optimizer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    for s in range(start, start + steps):
        b = slice((s * 16) % 64, (s * 16) % 64 + 16)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[b]), y[b]).backward()
        opt.step()
        frz.step()
    return x


def engine(tiny_predictor, **kw):
    m = lora_mlp()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    options = dict(policy="smartfrz", predictor_path=tiny_predictor, window=4, sample_size=64, record_every=1,
                   decide_every=1000, veto_tau=1.0)
    return m, SmartFRZ(m, opt, example_input=torch.randn(4, 8), **{**options, **kw})


def test_windows_sample_only_the_adapters_and_move_with_them(tiny_predictor):
    m, frz = engine(tiny_predictor)
    assert [u.name for u in frz.units] == ["0.0", "1.0", "2.0", "3.0", "4.0"]
    train(m, frz, 12)
    rec = frz.recorder
    assert [n > 0 for n in frz.trainable_per_unit] == [False, True, True, True, True]
    for u in range(1, frz.max_frozen):  # the last unit is never frozen, so never recorded
        layer = m[u][0]
        assert [id(p) for p in rec.params[u]] == [id(layer.lora_A), id(layer.lora_B)]
        flat = torch.cat([layer.lora_A.detach().flatten(), layer.lora_B.detach().flatten()])
        window = rec.windows([u])[0]
        assert torch.equal(window[-1], flat[rec.indices[u]])  # every sampled coordinate is an adapter's
        # sampled from the whole unit, ~90% of the window would be the fixed weight: flat
        assert (window[-1] != window[0]).float().mean() > 0.5


def test_a_unit_with_nothing_to_train_never_holds_the_prefix_back(tiny_predictor):
    m, frz = engine(tiny_predictor)
    train(m, frz, 6)
    seen = []
    predict = frz.policy.predictor.predict_proba
    frz.policy.predictor.predict_proba = lambda w, *a: seen.append(w.shape[0]) or predict(w, *a)
    _, scores = frz.policy.decide(frz)
    assert scores[0] == 1.0 and seen == [frz.max_frozen - 1]  # the fixed stem is settled by definition and never asks the predictor
    assert all(0.0 <= scores[u] <= 1.0 for u in range(1, frz.max_frozen))


def test_veto_copies_only_what_can_change_and_restores_it():
    m = lora_mlp()
    frz = SmartFRZ(m, None, example_input=torch.randn(4, 8), policy="none")
    unit = frz.units[1]
    state = unit_state(unit)
    assert sorted(state[0]) == ["lora_A", "lora_B"]  # not the fixed base weight and bias
    before = m[1][0].lora_A.detach().clone()
    with torch.no_grad():
        m[1][0].lora_A.add_(1.0)
    load_unit_state(unit, state)
    assert torch.equal(m[1][0].lora_A, before)
    full = [{k: v.clone() for k, v in m[1][0].state_dict().items()}]  # as checkpoints before the change hold it
    load_unit_state(unit, full)
    assert unit_state(frz.units[0]) == [{}]  # the fixed stem: nothing to copy


def test_timeline_and_frozen_share_count_the_weights_that_train():
    m = lora_mlp()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    frz = SmartFRZ(m, opt, example_input=torch.randn(4, 8), policy="none")
    frz.freeze_through(1)
    adapter = 2 * 32 * 2
    assert [e["params_frozen"] for e in frz.timeline] == [0, adapter]
    assert frz.frozen_param_fraction == pytest.approx(adapter / (4 * adapter + 32 * 3 + 3))
    assert not any(p.requires_grad for p in m[1].parameters())
    frz.unfreeze()  # and back: the adapters train again, the fixed weights stay fixed
    assert m[1][0].lora_A.requires_grad and not m[1][0].base.weight.requires_grad


def test_peft_lora_model_trains_with_the_shipped_rule_and_freezes_only_adapters():
    peft = pytest.importorskip("peft")
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = peft.get_peft_model(BertForSequenceClassification(cfg), peft.LoraConfig(task_type="SEQ_CLS", r=4))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1, 64, (16, 12), generator=g), "attention_mask": torch.ones(16, 12, dtype=torch.long)}
    labels = (batch["input_ids"][:, 0] > 32).long()
    frz = SmartFRZ(model, opt, example_input=batch, steps_per_epoch=8, total_steps=80, window=4, sample_size=64)
    rec = frz.recorder
    assert frz.trainable_per_unit[0] == 0 and all(frz.trainable_per_unit[1:])  # the embeddings are fixed, each layer has adapters
    sampled = {id(p) for ps in rec.params[1:] for p in ps}
    assert sampled and all("lora_" in n for u in frz.units for n, p in u.named_parameters() if id(p) in sampled)
    fixed = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for _ in range(80):
        loss = F.cross_entropy(model(**batch).logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        frz.step()
    assert all(torch.equal(p, fixed[n]) for n, p in model.named_parameters() if n in fixed)
    assert frz.veto is not None and frz.veto.forwards > 0  # the shipped rule's veto ran on it
    frz.freeze_through(1)
    assert [e["params_frozen"] for e in frz.timeline[:2]] == [0, sum(p.numel() for p in rec.params[1])]


def _peft_bert(checkpointing: bool):
    peft = pytest.importorskip("peft")
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
                     max_position_embeddings=32, num_labels=2)
    model = peft.get_peft_model(BertForSequenceClassification(cfg), peft.LoraConfig(task_type="SEQ_CLS", r=4))
    if checkpointing:  # the PEFT recipe: checkpointing, and the embeddings' output made to require grad for it
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model.train()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_no_backward_into_a_frozen_prefix_under_peft_gradient_checkpointing(checkpointing):
    """enable_input_require_grads makes the embeddings' output require grad, so backward (and checkpointing's
    recomputation) would run through a prefix where nothing trains: the engine cuts the graph at its end."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _peft_bert(checkpointing)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1, 64, (8, 16), generator=g), "attention_mask": torch.ones(8, 16, dtype=torch.long)}
    y = torch.randint(0, 2, (8,), generator=g)
    frz = SmartFRZ(model, None, example_input=batch, policy="none")

    def step_flops():
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(**batch).logits, y).backward()
        starved = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops(), starved

    full, _ = step_flops()
    frz.freeze_through(3)  # the embeddings and three of four layers
    frozen, starved = step_flops()
    assert starved == [] and (frz._boundary is not None) == checkpointing
    assert 1 - frozen / full > (0.5 if checkpointing else 0.4)  # with checkpointing: 55%, and 29% before the cut
    frz.unfreeze()
    assert frz._boundary is None and step_flops()[0] == full


# ---------------------------------------------------------------- weights the user's loop sets training or fixes later

def backbone_mlp():
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(8 if i == 0 else 32, 32), nn.ReLU()) for i in range(4)], nn.Linear(32, 3))


def warmup_engine(tiny_predictor, **kw):
    m = backbone_mlp()
    m[:3].requires_grad_(False)  # only the last layers train at first
    opt = torch.optim.SGD(m.parameters(), lr=0.05)  # over every weight: a fixed one has no gradient and is skipped
    options = dict(policy="smartfrz", predictor_path=tiny_predictor, window=4, sample_size=64, record_every=1,
                   decide_every=4, veto_tau=1.0, decide_from=0.0)
    return m, opt, SmartFRZ(m, opt, example_input=torch.randn(4, 8), **{**options, **kw})


def test_a_unit_the_user_sets_training_waits_for_the_predictor(tiny_predictor):
    m, _, frz = warmup_engine(tiny_predictor)
    assert frz.trainable_per_unit[:3] == [0, 0, 0]
    frz.policy.predictor.predict_proba = lambda w, *a: torch.zeros(w.shape[0])  # nothing that trains looks settled
    train(m, frz, 6)
    m[:3].requires_grad_(True)  # the warm-up ends: the backbone trains
    train(m, frz, 18, start=6)
    # read as fixed, the backbone would score 1.0 and freeze at the second decision, however it still learns
    assert frz.num_frozen == 0 and frz.trainable_per_unit[:3] == [32 * 8 + 32, 32 * 32 + 32, 32 * 32 + 32]
    assert frz.trainable_total == sum(p.numel() for p in m.parameters())
    rec = frz.recorder
    assert rec.count[0] == 24 - 6  # its window began again when it started training: no flat snapshots in it
    assert (rec.windows([0])[0].diff(dim=0).abs().sum(1) > 0).all()


def test_a_unit_the_user_fixes_is_read_as_fixed(tiny_predictor):
    m, _, frz = warmup_engine(tiny_predictor)
    m[:3].requires_grad_(True)
    frz.policy.predictor.predict_proba = lambda w, *a: torch.zeros(w.shape[0])
    train(m, frz, 8)
    assert frz.num_frozen == 0
    m[0].requires_grad_(False)  # the loop fixes the first layer itself
    train(m, frz, 16, start=8)
    assert frz.num_frozen == 1 and frz.timeline[0]["params_frozen"] == 0  # settled by definition, after a new window


def test_resume_keeps_the_windows_recorded_after_the_user_set_a_unit_training(tiny_predictor):
    import copy
    m, opt, frz = warmup_engine(tiny_predictor)
    train(m, frz, 6)
    m[:3].requires_grad_(True)
    train(m, frz, 6, start=6)
    saved = copy.deepcopy((m.state_dict(), opt.state_dict(), frz.state_dict()))
    train(m, frz, 12, start=12)

    m2, opt2, frz2 = warmup_engine(tiny_predictor)  # the script builds everything as at its start
    m2[:3].requires_grad_(True)  # and its schedule, resumed past step 6, sets the backbone training
    m2.load_state_dict(saved[0])
    frz2.load_state_dict(saved[2])
    opt2.load_state_dict(saved[1])
    assert frz2.recorder.count[:3] == [6, 6, 6] and frz2.trainable_per_unit == frz.trainable_per_unit
    train(m2, frz2, 12, start=12)
    assert torch.equal(frz2.recorder.buffer, frz.recorder.buffer) and frz2.recorder.count == frz.recorder.count
    assert frz2.timeline == frz.timeline and frz2.num_frozen == frz.num_frozen


def test_a_frozen_unit_the_loop_sets_training_again_is_unfrozen_with_a_warning():
    m = backbone_mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    frz = SmartFRZ(m, opt, example_input=torch.randn(4, 8), policy="none")
    frz.freeze_through(1)
    in_opt = lambda p: any(p is q for g in opt.param_groups for q in g["params"])
    assert not in_opt(m[0][0].weight)
    m.requires_grad_(True)  # a warm-up's end, written for the whole model: it undoes the engine's freezes
    with pytest.warns(UserWarning, match="set weights of frozen unit '0.0' training again"):
        frz.decide()
    assert frz.num_frozen == 0 and in_opt(m[0][0].weight) and in_opt(m[1][0].weight)  # trained again, for real
    assert [e["event"] for e in frz.timeline] == ["freeze", "freeze", "unfreeze", "unfreeze"]
    m[1].requires_grad_(True)
    frz.freeze_through(1)
    m[1].requires_grad_(True)  # a layer set training by hand: the prefix goes back to it, the units before stay frozen
    with pytest.warns(UserWarning, match="frozen unit '1.0'"):
        frz.decide()
    assert frz.num_frozen == 1 and not m[0][0].weight.requires_grad and in_opt(m[1][0].weight)


def test_unfreezing_gives_the_optimizer_back_only_what_it_held():
    m = backbone_mlp()
    opt = torch.optim.SGD(m[1:].parameters(), lr=0.05)  # the loop trains the first layer with no optimizer of its own
    frz = SmartFRZ(m, opt, example_input=torch.randn(4, 8), policy="none")
    frz.freeze_through(1)
    frz.unfreeze()
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in m[1:].parameters())  # before, the first layer's joined group 0
