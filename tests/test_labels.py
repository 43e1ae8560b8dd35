"""CKA labels: the hindsight targets the predictor learns and the oracle follows."""
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
    labels = freeze_labels(cka, 0.95)
    assert labels[:, 0].tolist() == [False, False, False, True, True]  # the dip at t=2 resets "settled"
    assert labels[:, 1].tolist() == labels[:, 0].tolist()  # unit 1 never before unit 0
    assert freeze_steps(cka, [10, 20, 30, 40, 50], ["a", "b"], 0.95) == {"a": 40, "b": 40}


def test_remaining_change_is_scale_free():
    """A fine-tuned unit (CKA 0.990 -> 1) and one trained from scratch (0.2 -> 1) that have covered the
    same share of their change get the same label; a raw CKA threshold calls the first settled at once."""
    fine = torch.tensor([[0.990], [0.995], [0.9995], [1.0]])
    scratch = torch.tensor([[0.2], [0.6], [0.96], [1.0]])
    torch.testing.assert_close(remaining_change(fine), remaining_change(scratch))
    assert freeze_labels(fine, 0.1, "remaining")[:, 0].tolist() == [False, False, True, True]
    assert freeze_labels(fine, 0.95)[:, 0].all()  # raw CKA: "freezable" from the first checkpoint


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown label rule 'magic'; allowed: cka, remaining"):
        freeze_labels(torch.ones(2, 2), 0.1, "magic")
