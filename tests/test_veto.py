"""The functional veto lets a freeze through only when the new prefix no longer changes predictions."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smartfrz import SmartFRZ


def train(lr, steps=12, kick=0.0, **kw):
    """An oracle that wants the first two units frozen at step 3; ``kick`` moves the first unit's weights by that
    much noise after every step (a unit still changing what the model predicts)."""
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Sequential(nn.Linear(6, 16), nn.ReLU()) if i == 0 else nn.Sequential(nn.Linear(16, 16), nn.ReLU())
                        for i in range(4)], nn.Linear(16, 3))
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(64, 6, generator=g)
    frz = SmartFRZ(m, opt, example_input=probe[:2], veto_probe=probe, policy="oracle", window=4, record_every=1,
                   total_steps=max(steps, 1), oracle_freeze_steps={"0.0": 3, "1.0": 3}, veto_tau=0.05, **kw)
    for _ in range(steps):
        x = torch.randn(32, 6, generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), (x[:, 0] > 0).long() + (x[:, 1] > 0).long()).backward()
        opt.step()
        with torch.no_grad():
            m[0][0].weight.add_(kick * torch.randn(m[0][0].weight.shape, generator=g))
        frz.step()
    return m, opt, frz


def test_units_that_no_longer_change_predictions_freeze_at_their_step():
    _, _, frz = train(lr=0.0)
    assert [(e["unit"], e["step"]) for e in frz.timeline] == [("0.0", 3), ("1.0", 3)] and frz.veto.vetoed == 0


def test_units_that_still_change_predictions_are_held_back():
    _, _, frz = train(lr=0.0, kick=1.0)
    assert frz.num_frozen == 0 and frz.veto.vetoed == 10  # asked at steps 3..12, held back each time
    _, _, calm = train(lr=0.0, kick=1e-4)  # moving, but not mattering: let through
    assert [e["step"] for e in calm.timeline] == [3, 3]


def test_veto_state_survives_a_weights_only_checkpoint(tmp_path):
    m, opt, frz = train(lr=0.5, steps=6)
    torch.save({"frz": frz.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["frz"]
    m2, _, fresh = train(lr=0.5, steps=0)
    fresh.load_state_dict(state)
    assert fresh.veto.at == frz.veto.at and sorted(fresh.veto.previous) == sorted(frz.veto.previous)
    assert all(torch.equal(a, b) for i in frz.veto.previous
               for sa, sb in zip(frz.veto.previous[i], fresh.veto.previous[i]) for a, b in zip(sa.values(), sb.values()))


def test_bad_veto_threshold_is_refused():
    with pytest.raises(ValueError, match="veto_tau must lie strictly between 0 and 1"):
        SmartFRZ(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), None, example_input=torch.randn(1, 2), policy="none",
                 veto_tau=1.5)
