"""Freeze labels: the hindsight targets the predictor learns and the oracle follows."""
import pytest
import torch

from smartfrz.predictor_training.labels import (check_readable, freeze_labels, freeze_steps, labels_under, linear_cka,
                                               remaining_change)


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


def test_a_label_of_several_terms_needs_them_all():
    """"cka:0.995+rewind:0.1": the representation has settled and the final model no longer leans on the
    prefix's later changes; each unit at the later of the two, and front to back."""
    cka = torch.tensor([[0.990, 0.999], [0.996, 0.999], [0.999, 0.999], [1.0, 1.0]])
    harm = torch.tensor([[0.30, 0.40], [0.20, 0.05], [0.08, 0.09], [0.0, 0.0]])
    values = {"cka": cka, "rewind": harm}.__getitem__
    assert labels_under("cka:0.995", values)[:, 1].tolist() == [False, True, True, True]
    both = labels_under("cka:0.995+rewind:0.1", values)
    assert both[:, 0].tolist() == [False, False, True, True]  # cka holds from t=1, rewind only from t=2
    assert both[:, 1].tolist() == [False, False, True, True]  # unit 1's own harm passes at t=1, unit 0's does not
    with pytest.raises(ValueError, match=r"rewind:0.1 is above the cap these harms were recorded with \(0.05\)"):
        check_readable("cka:0.995+rewind:0.1", 0.05)
    with pytest.raises(ValueError, match="a label is RULE:TAU"):
        labels_under("cka:0.995+rewind", values)


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


class _Tagger(torch.nn.Module):
    """Per-token outputs, as a language model or a tagger gives: (rows, tokens, classes)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.mix, self.head = torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.relu(self.mix(self.embed(input_ids))))


def test_rewind_harm_of_per_token_outputs_counts_real_tokens_only():
    """Batches cut to different lengths concatenate, and a change that only moves padding (id 0, masked)
    changes no prediction; one that moves a real token's embedding does."""
    from smartfrz import find_units
    from smartfrz.predictor_training.labels import UnitSnapshots, prefix_shares, rewind_harm
    from smartfrz.veto import unit_state
    ids = torch.tensor([[1, 2, 3, 4, 5], [3, 3, 0, 0, 0], [5, 6, 7, 0, 0]])
    probe = [{"input_ids": ids, "attention_mask": ids.ne(0).long()},
             {"input_ids": torch.tensor([[8, 9], [2, 0]]), "attention_mask": torch.tensor([[1, 1], [1, 0]])}]
    for rows, expect_change in (([0], False), (list(range(1, 10)), True)):
        model = _Tagger()
        units = find_units(model, probe[0])
        snaps = UnitSnapshots(units)
        snaps.take(0)
        old = {i: unit_state(u) for i, u in enumerate(units)}
        with torch.no_grad():
            model.embed.weight[rows] = 50 * torch.randn(len(rows), 8, generator=torch.Generator().manual_seed(1))
        snaps.take(10)
        harm = rewind_harm(model, snaps, probe, cap=1.0)
        assert (harm[0, 0] > 0) == expect_change, (rows, harm)
        shares = prefix_shares(model, units, [0], old, probe[0], (3,))
        assert (shares[0][3] > 0) == expect_change, (rows, shares)


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


def test_prefix_shares_put_units_back_together_and_leave_the_model_as_it_was():
    """The veto's share of each prefix (recorded runs and scripts/trace_decisions.py): units order[0]..i go back to
    the old weights together, each share is read on the probe's first n rows, and the model keeps its weights."""
    from smartfrz.predictor_training.labels import prefix_shares
    from smartfrz.veto import unit_state
    model, units = _chain()
    model.eval()
    probe = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    old = {i: unit_state(u) for i, u in enumerate(units)}
    with torch.no_grad():
        model[0].weight.add_(3 * torch.randn_like(model[0].weight))  # only the first unit moved since
    now = {k: v.clone() for k, v in model.state_dict().items()}
    shares = prefix_shares(model, units, [0, 1], old, probe, (32, 64))
    assert set(shares) == {0, 1} and set(shares[0]) == {32, 64}
    assert shares[0][64] > 0.1 and shares[1] == shares[0]  # the second unit did not move: the same share
    assert all(torch.equal(v, now[k]) for k, v in model.state_dict().items())
    capped = prefix_shares(model, units, [0, 1], old, probe, (32, 64), cap=0.05)
    assert set(capped) == {0}  # above the cap on every size: longer prefixes are not evaluated


def test_veto_lookbacks_are_the_distances_the_engine_reads_at_each_cadence():
    from smartfrz.predictor_training.labels import veto_lookbacks
    assert veto_lookbacks(16, 96) == [4, 6, 8, 16]  # 1, 2, 4 an epoch; with 16 a run: min(16, 6), min(8, 6), min(4, 6)
    assert veto_lookbacks(115, 345) == [21, 28, 57, 115]  # a 3-epoch fine-tune: the per-run floor is the 21


def test_lookback_shares_read_each_checkpoint_against_the_weights_l_steps_before_and_drop_old_copies():
    """A recorded run's veto shares (smartfrz.predictor_training.freeze_dataset): at a checkpoint, every prefix
    against its weights exactly L steps earlier; nothing before VETO_FROM of the run; copies kept only as long
    as a later checkpoint reads them."""
    from smartfrz.predictor_training.labels import LookbackShares, VETO_ROWS
    model, units = _chain()
    probe = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(3)
    rec = LookbackShares(units, probe, checkpoints=[2, 4, 8, 12, 16], lookbacks=[2, 4], total_steps=16)
    out = {}
    rec.take(0)
    for step in range(1, 17):
        with torch.no_grad():  # the first unit moves until step 10, then nothing does
            if step <= 10:
                model[0].weight.add_(0.5 * torch.randn(model[0].weight.shape, generator=gen))
        if step % 4 == 0 or step == 2:
            out[step] = rec.at_checkpoint(model, step)
        rec.take(step)
        assert len(rec.copies) <= 2
    assert out[2].shape == (2, len(units), len(VETO_ROWS))
    assert torch.isnan(out[2]).all()  # step 2 < VETO_FROM x 16: not recorded
    assert not torch.isnan(out[4][1]).any()  # against the weights at step 0
    assert out[8][1, 0, 0] > 0 and out[12][1, 0, 0] > 0  # the first unit moved over steps 4-8 and 8-10
    assert (out[12][0] == 0).all() and (out[16] == 0).all()  # nothing moved over steps 10-12 or 12-16
    assert model.training


def test_the_oracle_reads_a_label_per_kind_of_run_by_how_the_run_started():
    from smartfrz.lab.experiment import oracle_steps, run_kind

    cka = {"steps": [10, 20, 30], "units": ["a", "b"], "curves": [[0.9, 0.9], [0.999, 0.999], [1.0, 1.0]],
           "rewind": [[0.5, 0.5], [0.1, 0.1], [0.0, 0.0]], "rewind_cap": 0.2}
    label = "scratch=cka:0.995,finetune=rewind:0.02"
    assert run_kind({"task": "cifar10"}) == "scratch" and run_kind({"task": "sst2"}) == "finetune"
    assert run_kind({"task": "cifar10", "pretrained": True}) == "finetune"
    assert oracle_steps({"config": {"task": "cifar10"}, "cka": cka}, label) == {"a": 20, "b": 20}
    assert oracle_steps({"config": {"task": "mrpc"}, "cka": cka}, label) == {"a": 30, "b": 30}
    with pytest.raises(ValueError, match="above the cap"):  # bench runs recorded before the cap was kept: 0.05
        oracle_steps({"config": {"task": "mrpc"}, "cka": {**cka, "rewind_cap": 0.05}}, "rewind:0.1")
