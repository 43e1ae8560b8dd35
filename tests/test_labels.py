"""Freeze labels: the hindsight targets the predictor learns and the oracle follows."""
import pytest
import torch

from smartfrz.predictor_training.labels import freeze_labels, freeze_steps, linear_cka, remaining_change


def test_linear_cka_is_invariant_to_rotation_and_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(64, 16, generator=g)) < 0.6


def test_labels_hold_from_t_on_and_front_to_back():
    cka = torch.tensor([[0.90, 0.99], [0.97, 0.99], [0.94, 0.99], [0.96, 0.97], [1.00, 1.00]])
    labels = freeze_labels(cka, 0.95, "cka")
    assert labels[:, 0].tolist() == [False, False, False, True, True]  # the dip at t=2 resets "settled"
    assert labels[:, 1].tolist() == labels[:, 0].tolist()  # unit 1 never before unit 0
    assert freeze_steps(cka, [10, 20, 30, 40, 50], ["a", "b"], 0.95, "cka") == {"a": 40, "b": 40}


def test_remaining_change_is_scale_free():
    """A fine-tuned unit (CKA 0.990 -> 1) and one trained from scratch (0.2 -> 1) that have covered the
    same share of their change get the same label; a raw CKA threshold calls the first settled at once."""
    fine = torch.tensor([[0.990], [0.995], [0.9995], [1.0]])
    scratch = torch.tensor([[0.2], [0.6], [0.96], [1.0]])
    torch.testing.assert_close(remaining_change(fine), remaining_change(scratch))
    assert freeze_labels(fine, 0.1, "remaining")[:, 0].tolist() == [False, False, True, True]
    assert freeze_labels(fine, 0.95, "cka")[:, 0].all()  # raw CKA: "freezable" from the first checkpoint


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown label rule 'magic'; allowed: rewind, cka, remaining"):
        freeze_labels(torch.ones(2, 2), 0.1, "magic")


def _chain(seed=0):
    from smartfrz.units import find_units
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return model, find_units(model, torch.randn(4, 8))


def test_rewind_harm_counts_changed_predictions_and_restores_the_model():
    """Putting units back to earlier weights changes some predictions of the final model; the model is
    left exactly as it was, BatchNorm statistics included."""
    from smartfrz.predictor_training.labels import UnitSnapshots, rewind_harm
    model, units = _chain()
    snaps = UnitSnapshots(units)
    snaps.take(0)
    with torch.no_grad():  # "training": the first unit moves a lot, the BatchNorm statistics too
        model[0].weight.copy_(3 * torch.randn(16, 8, generator=torch.Generator().manual_seed(2)))
        model[1].running_mean.add_(1.0)
    snaps.take(10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    harm = rewind_harm(model, snaps, [probe[:100], probe[100:]], cap=1.0)
    assert harm[1].tolist() == [0.0] * len(units)  # the last checkpoint is the final model
    assert harm[0, 0] > 0.2  # the flipped first layer changes many predictions
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training


def test_rewind_scan_stops_where_no_label_can_hold():
    """Above the cap, earlier checkpoints and later units are never evaluated (NaN), and labels read NaN as
    above the threshold: the scan saves work without changing any label at tau <= cap."""
    from smartfrz.predictor_training.labels import UnitSnapshots, rewind_harm
    model, units = _chain()
    snaps = UnitSnapshots(units)
    for step in range(4):
        if step == 2:
            with torch.no_grad():
                model[0].weight.copy_(3 * torch.randn(16, 8, generator=torch.Generator().manual_seed(2)))
        snaps.take(step)
    harm = rewind_harm(model, snaps, torch.randn(128, 8), cap=0.05)
    assert torch.isnan(harm[0]).all() and harm[1, 0] > 0.05 and torch.isnan(harm[1, 1:]).all()
    assert (harm[2:] == 0).all()  # the weights of the last two checkpoints are the final ones
    labels = freeze_labels(harm, 0.05, "rewind")
    assert labels[2:].all() and not labels[:2].any()
