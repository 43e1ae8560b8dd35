"""Each policy decides at the cadence its paper defines, not at one engine-wide cadence: FreezeOut's schedule
and the oracle's labels act at their exact step, AutoFreeze at its 20 intervals a run, SmartFRZ at its
predictor's rule; and a loop that gives the engine no way to decide is told so."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smartfrz import SmartFRZ


def train(policy, steps, epoch_end_every=None, **kw):
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.ReLU()) for _ in range(5)], nn.Linear(6, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    frz = SmartFRZ(m, opt, example_input=torch.randn(2, 6), policy=policy, **kw)
    calls = []
    decide = frz.decide
    frz.decide = lambda: (calls.append(frz.step_count), decide())[1]
    g = torch.Generator().manual_seed(0)
    for s in range(1, steps + 1):
        x = torch.randn(8, 6, generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), (x.sum(1) > 0).long()).backward()
        opt.step()
        frz.step()
        if epoch_end_every and s % epoch_end_every == 0:
            frz.epoch_end()
    return frz, calls


def freeze_steps(frz):
    return [e["step"] for e in frz.timeline if e["event"] == "freeze"]


def test_linear_freezes_each_unit_at_its_step_of_the_schedule():
    # 5 units (the head is no unit), 4 may freeze: the n-th freezes at 0.5 + 0.5 * n / 5 of 60 steps
    frz, calls = train("linear", 60, steps_per_epoch=20, total_steps=60, freeze_start=0.5, freeze_level=1.0)
    assert len(frz.units) == 5 and frz.decide_every == 1 and len(calls) == 60
    assert freeze_steps(frz) == [36, 42, 48, 54]  # deciding once an epoch, they would have come at 40 and 60


def test_oracle_freezes_at_each_label_step():
    frz, _ = train("oracle", 30, steps_per_epoch=20, total_steps=30, oracle_freeze_steps={"0.0": 7, "1.0": 13, "2.0": 13})
    assert [u.name for u in frz.units[:3]] == ["0.0", "1.0", "2.0"]
    assert freeze_steps(frz) == [7, 13, 13]


def test_autofreeze_decides_at_its_twenty_intervals_a_run():
    frz, calls = train("autofreeze", 80, steps_per_epoch=40, total_steps=80)
    assert frz.decide_every == 4 and calls == list(range(4, 81, 4))  # 80 / num_intervals=20, whatever the epoch
    assert all(s % 4 == 0 for s in freeze_steps(frz))


def test_autofreeze_compares_l1_norms_of_gradients_summed_over_each_interval():
    frz, _ = train("autofreeze", 2, total_steps=60)  # no decision yet: the interval is 3 steps long
    pol = frz.policy
    summed = [t.clone() for t in pol.sums[0]]
    norms = pol._interval_norms(frz)
    assert norms[0].item() == pytest.approx(sum(t.abs().sum().item() for t in summed))
    assert pol.sums == {}


def test_smartfrz_keeps_its_predictors_rule(tiny_predictor):
    from smartfrz.predictor import FreezePredictor
    pred = FreezePredictor.load(tiny_predictor)
    frz, calls = train("smartfrz", 40, steps_per_epoch=20, total_steps=40, predictor_path=tiny_predictor,
                       window=3, sample_size=16)
    assert frz.decide_every == 20 // pred.decisions_per_epoch and calls == [20, 40]


def test_a_loop_that_can_never_decide_is_warned_once():
    with pytest.warns(UserWarning, match="no freeze decision in 31 steps") as record:
        frz, calls = train("autofreeze", 80, window=3, record_every=10)  # no epoch length, no run length
    assert calls == [] and sum("no freeze decision" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train("autofreeze", 80, steps_per_epoch=20, window=3, record_every=10)[1] == list(range(4, 81, 4))
        assert train("autofreeze", 80, epoch_end_every=20, window=3, record_every=10)[1] == [20, 40, 60, 80]
