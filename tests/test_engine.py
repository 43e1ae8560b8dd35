import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smartfrz import SmartFRZ, SmartFRZConfig


def small_cnn():
    torch.manual_seed(0)
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
    return nn.Sequential(block(1, 8), block(8, 8), block(8, 8), block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return x, (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :4].mean((1, 2, 3)) > 0).long()


def run(steps, policy, pred_path=None, state=None, seed=0, return_parts=False, **kw):
    m = small_cnn()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    x, y = data()
    frz = SmartFRZ(m, opt, example_input=x[:2], policy=policy, predictor_path=pred_path, window=6, sample_size=64,
                   record_every=1, decide_every=8, seed=seed, **kw)
    start = 0
    if state is not None:
        m.load_state_dict(state["model"])
        frz.load_state_dict(state["frz"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    for s in range(start, steps):
        b = slice((s * 16) % 64, (s * 16) % 64 + 16)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x[b]), y[b]).backward()
        opt.step()
        frz.step()
    return (m, opt, frz) if return_parts else (m, frz)


def test_smartfrz_policy_decides_deterministically(tiny_predictor):
    m1, f1 = run(40, "smartfrz", tiny_predictor, threshold=0.05)
    m2, f2 = run(40, "smartfrz", tiny_predictor, threshold=0.05)
    assert f1.frozen_units == f2.frozen_units and len(f1.frozen_units) > 0
    assert [(e["step"], e["unit"], e["p_freeze"]) for e in f1.timeline] == \
           [(e["step"], e["unit"], e["p_freeze"]) for e in f2.timeline]
    ev = f1.timeline[0]
    assert set(ev) >= {"step", "epoch", "unit", "params_frozen", "p_freeze"} and ev["p_freeze"] >= 0.05
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_state_round_trip_reproduces_run(tiny_predictor, tmp_path):
    full_m, full_f = run(40, "smartfrz", tiny_predictor, threshold=0.05)
    m, opt, frz = run(20, "smartfrz", tiny_predictor, threshold=0.05, return_parts=True)
    ckpt = {"model": m.state_dict(), "opt": opt.state_dict(), "frz": frz.state_dict(), "step": 20}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # no pickle needed for any of it
    res_m, res_f = run(40, "smartfrz", tiny_predictor, threshold=0.05, state=state)
    assert res_f.frozen_units == full_f.frozen_units
    assert res_f.timeline == full_f.timeline
    assert all(torch.equal(a, b) for a, b in zip(full_m.state_dict().values(), res_m.state_dict().values()))


def test_none_policy_never_freezes_but_can_be_driven_by_hand():
    m, f = run(16, "none")
    assert f.frozen_units == [] and f.recorder is None  # no recording cost without a predictor


def test_epoch_end_drives_decisions_when_length_unknown(tiny_predictor):
    m = small_cnn()
    x, _ = data()
    frz = SmartFRZ(m, None, example_input=x[:2], predictor_path=tiny_predictor, window=3, sample_size=32,
                   record_every=1, threshold=0.01, patience=1)
    assert frz.decide_every is None
    for _ in range(3):
        frz.step()  # no decision mid-epoch
    assert frz.num_frozen == 0
    frz.epoch_end()
    assert frz.num_frozen > 0 and frz.epoch == 1.0


@pytest.mark.parametrize("kw,match", [
    (dict(decide_every=0), "decide_every must be a positive integer"),
    (dict(window=1), "window must be at least 2"),
    (dict(threshold=1.5), "threshold must lie strictly between 0 and 1"),
    (dict(sample_size=-3), "sample_size must be a positive integer"),
    (dict(windoww=3), "unknown SmartFRZ option"),
])
def test_config_errors(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SmartFRZConfig.from_kwargs(**kw)


def test_unknown_policy():
    m = small_cnn()
    with pytest.raises(ValueError, match="unknown policy 'sgd'.*allowed"):
        SmartFRZ(m, None, example_input=data()[0][:2], policy="sgd")


def test_patience_needs_consecutive_votes(tiny_predictor):
    m = small_cnn()
    x, _ = data()
    frz = SmartFRZ(m, None, example_input=x[:2], predictor_path=tiny_predictor, window=3, sample_size=32,
                   record_every=1, threshold=0.01, patience=2)
    for _ in range(3):
        frz.step()
    frz.epoch_end()
    assert frz.num_frozen == 0  # one vote is not enough
    frz.epoch_end()
    assert frz.num_frozen > 0
    state = frz.state_dict()
    assert state["policy"]["streak"]  # votes survive a checkpoint


def test_freeze_per_decision_grows_the_prefix_a_unit_at_a_time(tiny_predictor, tmp_path):
    """A predictor that scores every unit alike would freeze the whole network at one decision; the limit makes
    the rest of a settled prefix wait for the next decisions. The rule travels in the predictor file."""
    from smartfrz.predictor import FreezePredictor
    x = data()[0]

    def frozen_per_decision(**kw):
        frz = SmartFRZ(small_cnn(), None, example_input=x[:2], window=3, sample_size=32, record_every=1,
                       threshold=0.01, patience=1, veto_tau=1.0, **kw)
        for _ in range(3):
            frz.step()
        counts = []
        for _ in range(5):
            frz.epoch_end()
            counts.append(frz.num_frozen)
        return counts

    assert frozen_per_decision(predictor_path=tiny_predictor)[0] == 3  # every unit but the last at once
    assert frozen_per_decision(predictor_path=tiny_predictor, freeze_per_decision=1) == [1, 2, 3, 3, 3]
    assert frozen_per_decision(predictor_path=tiny_predictor, freeze_per_decision=2) == [2, 3, 3, 3, 3]
    pred = FreezePredictor.load(tiny_predictor)
    pred.freeze_per_decision = 2
    pred.save(tmp_path / "limited.safetensors")
    assert FreezePredictor.load(tmp_path / "limited.safetensors").freeze_per_decision == 2
    assert frozen_per_decision(predictor_path=tmp_path / "limited.safetensors")[:2] == [2, 3]
    assert frozen_per_decision(predictor_path=tmp_path / "limited.safetensors", freeze_per_decision=0)[0] == 3
    with pytest.raises(ValueError, match=r"freeze_per_decision must be an integer >= 0 \(0: no limit\) or None; got -1"):
        SmartFRZConfig(freeze_per_decision=-1)


def test_max_frozen_share_caps_the_prefix_as_linear_counts_its_freeze_level(tiny_predictor, tmp_path):
    """A cap travels in the predictor file: a rule that would freeze every unit but the last stops at
    floor(share * units), and a file written without it has none."""
    from smartfrz.predictor import FreezePredictor
    x = data()[0]

    def frozen(path):
        frz = SmartFRZ(small_cnn(), None, example_input=x[:2], window=3, sample_size=32, record_every=1,
                       threshold=0.01, patience=1, veto_tau=1.0, predictor_path=path)
        for _ in range(3):
            frz.step()
        for _ in range(3):
            frz.epoch_end()
        return frz.num_frozen, len(frz.units)

    assert FreezePredictor.load(tiny_predictor).max_frozen_share == 1.0
    n, units = frozen(tiny_predictor)
    assert n == units - 1 == 3
    pred = FreezePredictor.load(tiny_predictor)
    pred.max_frozen_share = 0.5
    pred.save(tmp_path / "capped.safetensors")
    assert FreezePredictor.load(tmp_path / "capped.safetensors").max_frozen_share == 0.5
    assert frozen(tmp_path / "capped.safetensors")[0] == 2  # floor(0.5 * 4)


def test_windows_take_the_shape_the_predictor_was_trained_on(tmp_path, tiny_predictor):
    """The features are scale-free but not shape-free (path efficiency, step cosines): the engine records
    what the predictor file names unless told otherwise, and what it did before files named it."""
    from smartfrz.predictor import FreezePredictor
    named = tmp_path / "named.safetensors"
    FreezePredictor.load(tiny_predictor).save(named, extra={"window": 7, "sample_size": 48})
    m, x = small_cnn(), data()[0]
    shape = lambda frz: tuple(frz.recorder.buffer.shape[1:])  # noqa: E731
    assert shape(SmartFRZ(m, None, example_input=x[:2], predictor_path=named, steps_per_epoch=70)) == (7, 48)
    frz = SmartFRZ(m, None, example_input=x[:2], predictor_path=named, steps_per_epoch=70)
    assert frz.record_every == 10  # the window spreads over an epoch, as in the recorded runs
    assert shape(SmartFRZ(m, None, example_input=x[:2], predictor_path=named, window=3, sample_size=16)) == (3, 16)
    assert shape(SmartFRZ(m, None, example_input=x[:2], predictor_path=tiny_predictor)) == (30, 1024)
    from smartfrz.predictor import DEFAULT_PATH
    meta = FreezePredictor.load(DEFAULT_PATH).metadata
    assert (meta["window"], meta["sample_size"]) == ("20", "512")  # the shipped file names its training windows


def test_a_compiled_model_is_told_how_many_recompiles_freezing_needs():
    """Each frozen prefix compiles the model again; past dynamo's limit it would run uncompiled, unannounced.
    (dynamo's own config.patch: pytest's monkeypatch deletes a config entry when it undoes its change)"""
    import torch._dynamo

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(12)], nn.Linear(8, 2))
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch._dynamo.config.patch(recompile_limit=8), pytest.warns(UserWarning, match=r"recompile_limit \(8\); set it to 13"):
        SmartFRZ(compiled, opt, example_input=torch.randn(4, 8), policy="linear", total_steps=100)
    with torch._dynamo.config.patch(recompile_limit=13):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            frz = SmartFRZ(compiled, opt, example_input=torch.randn(4, 8), policy="linear", total_steps=100)
        x, y, first = torch.randn(16, 8), torch.randint(0, 2, (16,)), None
        for _ in range(100):  # and freezing a compiled model still freezes it: the front unit stops moving
            loss = nn.functional.cross_entropy(compiled(x), y)
            opt.zero_grad(); loss.backward(); opt.step(); frz.step()
            if frz.num_frozen and first is None:
                first = model[0][0].weight.detach().clone()
    assert frz.num_frozen > 1 and torch.equal(model[0][0].weight, first)


def test_recorder_windows_hold_the_sampled_weights_oldest_first():
    """A record is one gather per parameter tensor into one ring slot; each slot holds exactly the sampled weights
    (any dtype, as float32), for the engine's contiguous active units and for any other set, and a window reads
    them back oldest first."""
    from smartfrz.recorder import WeightRecorder
    from smartfrz.units import find_units

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3), nn.Linear(3, 2))
    units = find_units(model, torch.randn(2, 6), names=["0", "1", "2", "3"])
    model[1].to(torch.bfloat16)  # weights of another dtype in one unit
    rec = WeightRecorder(units, window=3, sample_size=16, seed=1)
    sampled = lambda u: torch.cat([p.detach().reshape(-1).float() for p in units[u].parameters()])[rec.indices[u]]  # noqa: E731
    for t, active in enumerate([range(0, 4), range(1, 4), [0, 2], range(1, 3), range(0, 4), range(0, 4)]):
        for p in model.parameters():
            p.data.add_(t + 1)
        slot = rec.ptr
        rec.record(active)
        for u in range(4):
            assert torch.equal(rec.buffer[u, slot], sampled(u)) == (u in active), (t, u)
    assert rec.count == [4, 5, 6, 4]
    history = []
    for t in range(3):
        for p in model.parameters():
            p.data.mul_(1.5)
        rec.record(range(4))
        history.append(torch.stack([sampled(u) for u in range(4)]))
    assert torch.equal(rec.windows(range(4)), torch.stack(history, 1))
