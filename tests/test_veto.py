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
    assert frz.veto.forwards == 3  # its cost: one reference forward, then one per unit put back


def test_units_that_still_change_predictions_are_held_back():
    _, _, frz = train(lr=0.0, kick=1.0)
    assert frz.num_frozen == 0 and frz.veto.vetoed == 10  # asked at steps 3..12, held back each time
    assert frz.veto.forwards == 2 * 10  # each time: the reference, then the first unit put back, and no further
    _, _, calm = train(lr=0.0, kick=1e-4)  # moving, but not mattering: let through
    assert [e["step"] for e in calm.timeline] == [3, 3]


def test_veto_state_survives_a_weights_only_checkpoint(tmp_path):
    m, opt, frz = train(lr=0.5, steps=6)
    torch.save({"frz": frz.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["frz"]
    m2, _, fresh = train(lr=0.5, steps=0)
    fresh.load_state_dict(state)
    assert fresh.veto.at == frz.veto.at and sorted(fresh.veto.previous) == sorted(frz.veto.previous)
    assert fresh.veto.forwards == frz.veto.forwards > 0
    assert all(torch.equal(a, b) for i in frz.veto.previous
               for sa, sb in zip(frz.veto.previous[i], fresh.veto.previous[i]) for a, b in zip(sa.values(), sb.values()))


def test_bad_veto_threshold_is_refused():
    with pytest.raises(ValueError, match=r"veto_tau must lie in \(0, 1\]"):
        SmartFRZ(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), None, example_input=torch.randn(1, 2), policy="none",
                 veto_tau=1.5)


def test_the_predictor_file_carries_the_veto_and_an_option_overrides_it(tmp_path):
    """The veto is part of the decision rule stored with the predictor, so every run gets the same default."""
    from smartfrz import FreezePredictor
    pred = FreezePredictor.load()
    pred.veto_tau, pred.veto_probe_rows = 0.03, 4
    path = tmp_path / "p.safetensors"
    pred.save(path, extra={k: v for k, v in pred.metadata.items() if k in ("window", "sample_size")})
    assert FreezePredictor.load(path).veto_tau == 0.03 and FreezePredictor.load(path).veto_probe_rows == 4
    m = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    x = torch.randn(8, 2)
    on = SmartFRZ(m, None, example_input=x, predictor_path=str(path), window=2, record_every=1)
    off = SmartFRZ(m, None, example_input=x, predictor_path=str(path), window=2, record_every=1, veto_tau=1.0)
    peer = SmartFRZ(m, None, example_input=x, policy="linear", total_steps=10)
    assert on.veto is not None and on.veto.tau == 0.03 and torch.equal(on.veto.probe, x[:4])  # the rule's rows
    wide = SmartFRZ(m, None, example_input=x, predictor_path=str(path), window=2, record_every=1, veto_probe_rows=6)
    assert torch.equal(wide.veto.probe, x[:6])
    assert off.veto is None and peer.veto is None


def test_the_veto_reads_the_first_rows_of_any_batch_shape():
    from smartfrz.veto import first_rows
    ids, mask = torch.arange(20).view(10, 2), torch.ones(10, 2)
    cut = first_rows({"input_ids": ids, "attention_mask": mask, "return_dict": True}, 3)
    assert torch.equal(cut["input_ids"], ids[:3]) and cut["attention_mask"].shape == (3, 2) and cut["return_dict"]
    a, b = first_rows((ids, [mask, torch.tensor(1.0)]), 2)
    assert torch.equal(a, ids[:2]) and b[0].shape == (2, 2) and b[1] == 1.0
    with pytest.raises(ValueError, match="veto_probe_rows must be a positive integer"):
        SmartFRZ(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), None, example_input=torch.randn(1, 2), policy="none",
                 veto_probe_rows=0)


class TinyEncoder(nn.Module):
    """A masked mean of token embeddings: its logits do not depend on a row's padding, as in any encoder."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(50, 8), nn.Linear(8, 3)
        self.widths = []  # the sequence width of every forward

    def forward(self, input_ids, attention_mask):
        self.widths.append(input_ids.shape[1])
        m = attention_mask.unsqueeze(-1).float()
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))


def text_probe(rows=40, width=30, left=False):
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(2, width + 1, (rows,), generator=g)
    mask = (torch.arange(width) < lengths[:, None]).long()
    mask = mask.flip(1) if left else mask
    return {"input_ids": torch.randint(1, 50, (rows, width), generator=g) * mask, "attention_mask": mask}


def test_the_probe_runs_in_parts_cut_to_their_own_longest_sequence():
    """Right-padded text is ordered by length and each part cut to its longest row: the same logits for far
    fewer tokens. Left padding and plain tensors are cut into parts in order, columns untouched."""
    from smartfrz.veto import logits, probe_parts
    model, probe = TinyEncoder(), text_probe()
    parts = probe_parts(probe, rows=16)
    lengths = probe["attention_mask"].sum(1)
    order = torch.argsort(lengths, stable=True)
    assert [p["input_ids"].shape[0] for p in parts] == [16, 16, 8]
    assert [p["input_ids"].shape[1] for p in parts] == [int(lengths[i].max()) for i in order.split(16)]
    assert sum(p["input_ids"].numel() for p in parts) < 0.8 * probe["input_ids"].numel()
    assert torch.allclose(torch.cat([logits(model, p) for p in parts]), logits(model, probe)[order], atol=1e-6)
    left = text_probe(left=True)
    assert [p["input_ids"].shape for p in probe_parts(left, rows=16)] == [(16, 30), (16, 30), (8, 30)]
    assert torch.equal(torch.cat([p["input_ids"] for p in probe_parts(left, rows=16)]), left["input_ids"])
    x = torch.randn(40, 6)
    assert torch.equal(torch.cat([p for p in probe_parts(x, rows=16)]), x)
    assert torch.equal(probe_parts((x, 3), rows=64)[0][0], x)


def test_a_check_stops_at_the_part_that_settles_it_with_the_whole_probes_answer():
    """The veto's answer is changed_share on the whole probe against tau; a check that has already changed more
    than tau of all rows runs no further part, and the cost counts only the parts run."""
    from smartfrz.units import find_units
    from smartfrz.veto import FunctionalVeto, changed_share, logits
    model, probe = TinyEncoder(), text_probe(rows=64)
    units = find_units(model, example_input=probe)
    veto = FunctionalVeto(units, probe, tau=0.1)
    assert len(veto.parts) == 4
    before = logits(model, probe)
    veto.snapshot(0, len(units), step=0)
    with torch.no_grad():
        model.emb.weight.copy_(5 * torch.randn(50, 8, generator=torch.Generator().manual_seed(2)))  # moved, and it matters
    share = changed_share(logits(model, probe), before)
    assert share > 0.1
    assert veto.allow(model, 0, 1) == 0 and veto.forwards == 2
    ran = veto.part_forwards
    assert ran[0] == 2 and sum(ran) < 2 * len(veto.parts)  # the reference in full, the check stopped early
    with torch.no_grad():
        model.emb.weight.copy_(veto.previous[0][0]["weight"])  # back where it was: nothing changes
    veto.part_forwards = [0] * 4
    assert veto.allow(model, 0, 1) == 1 and veto.part_forwards == [2, 2, 2, 2]


class Confident(torch.nn.Module):
    """A predictor that calls every window settled: what is left to decide is the veto's and patience's."""
    threshold, patience, decisions_per_epoch, decisions_per_run, veto_tau, veto_probe_rows = 0.5, 2, 1, 0, 0.05, None
    metadata = {"window": "2", "sample_size": "8"}

    def predict_proba(self, windows):
        return torch.full((windows.shape[0],), 0.9)


def test_smartfrz_counts_a_units_patience_only_while_the_veto_lets_it_through():
    """Settled = P(freeze) >= threshold and the veto passed, at `patience` consecutive decisions: a unit kicked
    at the decision before (still changing predictions) starts its count again."""
    from smartfrz.policies import SmartFRZPolicy

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    probe = torch.randn(64, 6)
    frz = SmartFRZ(m, None, example_input=probe, policy=SmartFRZPolicy(predictor=Confident()), decide_every=1,
                   record_every=1, units=["0", "2", "4"])
    assert frz.veto is not None and frz.veto.tau == 0.05  # the predictor's rule brings its veto
    kicks = {3: 1.0}  # the first unit changes what the model predicts once, between decisions 2 and 3
    for step in range(1, 9):
        with torch.no_grad():
            m[0].weight.add_(kicks.get(step, 0.0) * torch.randn(m[0].weight.shape))
        frz.step()
        if step == 3:
            assert frz.num_frozen == 0 and frz.policy.streak == {0: 0, 1: 0} and frz.veto.vetoed == 1
    # windows full at step 2 (veto snapshot from step 1): passes at 2, vetoed at 3, passes at 4 and 5
    assert [(e["unit"], e["step"]) for e in frz.timeline] == [("0", 5), ("2", 5)]


def test_the_veto_is_not_run_when_no_freeze_could_complete_before_the_planned_end():
    """A streak that cannot reach patience by total_steps freezes nothing whatever the veto says: its forwards
    are skipped, and the freeze timeline is the one the veto would have given."""
    from smartfrz.policies import SmartFRZPolicy

    def run(total, steps=8):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        frz = SmartFRZ(m, None, example_input=torch.randn(64, 6), policy=SmartFRZPolicy(predictor=Confident()),
                       decide_every=1, record_every=1, units=["0", "2", "4"], total_steps=total)
        for _ in range(steps):
            frz.step()
        return [(e["unit"], e["step"]) for e in frz.timeline], frz.veto.forwards

    unplanned, planned = run(None), run(8)
    assert planned[0] == unplanned[0] == [("0", 3), ("2", 3)] and planned[1] == unplanned[1]
    assert run(2, steps=2) == ([], 0)  # windows full at step 2, the last: patience 2 cannot be met
    late, _ = run(3, steps=3)
    assert late == [("0", 3), ("2", 3)]  # at step 2 one decision is left, enough for a streak of 2


def test_no_freeze_is_decided_before_the_rules_start():
    """decide_from: before that share of total_steps nothing is scored and no count starts;
    the first freeze comes `patience` decisions after it. Without total_steps it cannot apply, and says so."""
    from smartfrz.policies import SmartFRZPolicy

    def run(decide_from, total=8, steps=8):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        policy = SmartFRZPolicy(predictor=Confident(), decide_from=decide_from)
        frz = SmartFRZ(m, None, example_input=torch.randn(64, 6), policy=policy, decide_every=1, record_every=1,
                       units=["0", "2", "4"], total_steps=total)
        for _ in range(steps):
            frz.step()
        return [(e["unit"], e["step"]) for e in frz.timeline], frz.veto.forwards

    assert run(None)[0] == [("0", 3), ("2", 3)]  # the predictor's own start: 0 for Confident
    late, forwards = run(0.5)
    assert late == [("0", 5), ("2", 5)] and forwards > 0  # counts from step 4
    assert run(0.5, steps=3) == ([], 0)  # no veto forward before it either
    with pytest.warns(UserWarning, match="total_steps is not given"):
        assert run(0.5, total=None)[0] == [("0", 3), ("2", 3)]
    with pytest.raises(ValueError, match="decide_from must lie in"):
        SmartFRZ(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), None, example_input=torch.randn(1, 2), policy="none",
                 decide_from=1.0)


def test_the_veto_checks_the_front_unit_then_the_whole_prefix_and_searches_only_a_failing_whole():
    """Front unit first (the usual failure), then the prefix that would freeze: two checks when both pass. A
    failing whole is searched front first for how far the prefix may go."""
    from smartfrz.units import find_units
    from smartfrz.veto import FunctionalVeto
    torch.manual_seed(0)
    m = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)], nn.Linear(4, 2))
    x = torch.randn(8, 4)
    units = find_units(m, example_input=x)
    veto = FunctionalVeto(units, x, tau=0.1)
    veto.snapshot(0, len(units), step=0)
    with torch.no_grad():
        for layer in m:
            layer.weight.add_(1.0)

    def put_back() -> int:  # how many front units are at their earlier weights now
        return next((i for i, u in enumerate(units) if not torch.equal(u.members[0][1].weight, veto.previous[i][0]["weight"])), len(units))

    def allow(failing: set, start=0, stop=4):
        veto.forwards = 0
        veto._exceeds = lambda model, ref: put_back() in failing  # which prefixes (by length) change too much
        out = veto.allow(m, start, stop)
        assert put_back() == 0 and torch.equal(m[0].weight, veto.previous[0][0]["weight"] + 1.0)  # all restored
        return out, veto.forwards

    assert allow(set()) == (4, 3)  # the reference, unit 0, units 0-3: passed
    assert allow({1}) == (0, 2)  # the front unit fails: nothing more is run
    assert allow({3, 4}) == (2, 5)  # whole fails: then units 0-1 pass, 0-2 fail
    assert allow({2}) == (4, 3)  # the prefix that freezes passes: a smaller one is not asked
    assert allow(set(), start=2, stop=3) == (3, 2)


class WindowReader(torch.nn.Module):
    """P(freeze) from the window itself (its newest step against its span), so a different window changes it."""
    threshold, patience, decisions_per_epoch, decisions_per_run, veto_tau, veto_probe_rows = 0.1, 2, 1, 0, 0.2, None
    metadata = {"window": "3", "sample_size": "8"}

    def predict_proba(self, windows):
        last, span = (windows[:, -1] - windows[:, -2]).norm(dim=-1), (windows[:, -1] - windows[:, 0]).norm(dim=-1)
        return (1 - last / span.clamp_min(1e-12)).clamp(0, 1)


def test_nothing_is_scored_recorded_or_copied_before_the_start_and_the_decisions_stay_the_same(monkeypatch):
    """The rule's overhead starts one window before its start: windows, veto snapshots and scores that only a
    decision before decide_from could read are skipped, and every freeze (and veto check) is as when they ran."""
    import smartfrz.veto as veto_mod
    from smartfrz.policies import SmartFRZPolicy
    copies = []
    unit_state = veto_mod.unit_state
    monkeypatch.setattr(veto_mod, "unit_state", lambda u: copies.append(1) or unit_state(u))

    def run(skip: bool, steps=40):
        torch.manual_seed(0)
        m = nn.Sequential(*[nn.Sequential(nn.Linear(6, 16), nn.ReLU())] + [nn.Sequential(nn.Linear(16, 16), nn.ReLU())
                                                                           for _ in range(3)], nn.Linear(16, 3))
        opt = torch.optim.SGD(m.parameters(), lr=0.3)
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(64, 6, generator=g)
        reader, scored = WindowReader(), []
        predict = reader.predict_proba
        reader.predict_proba = lambda w: scored.append(frz.step_count) or predict(w)
        frz = SmartFRZ(m, opt, example_input=probe[:2], veto_probe=probe, total_steps=steps, decide_every=2,
                       record_every=2, policy=SmartFRZPolicy(predictor=reader, decide_from=0.6))
        if not skip:  # as before: record from the first step, copy at every snapshot
            snapshot, frz.record_from = frz.veto.snapshot, 0
            frz.veto.snapshot = lambda *args, keep: snapshot(*args)
        copies[:], records = [], []
        record = frz.recorder.record
        frz.recorder.record = lambda active: records.append(frz.step_count) or record(active)
        for _ in range(steps):
            x = torch.randn(32, 6, generator=g)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), (x[:, 0] > 0).long() + (x[:, 1] > 0).long()).backward()
            opt.step()
            frz.step()
        return [(e["unit"], e["step"]) for e in frz.timeline], frz.veto.forwards, records, len(copies), scored

    lean, full = run(skip=True), run(skip=False)
    assert lean[0] and lean[1] > 0 and lean[:2] == full[:2]  # the same freezes at the same steps, the same veto checks
    assert min(lean[2]) == 24 - 3 * 2 and min(full[2]) == 2  # recording starts one window before step 24
    assert lean[3] < full[3] and min(lean[4]) == 24  # fewer weight copies; nothing scored before the start


def test_an_epoch_lookback_puts_back_weights_at_least_an_epoch_old(tmp_path):
    """With ``veto_lookback="epoch"`` a check compares with the newest copy an epoch old or older, not the last one:
    with no such copy yet nothing is let through, and only a few copies are ever kept."""
    _, _, near = train(lr=0.0, steps_per_epoch=4)
    _, _, far = train(lr=0.0, steps_per_epoch=4, veto_lookback="epoch")
    assert [e["step"] for e in near.timeline] == [3, 3] and near.veto.lookback is None
    assert far.veto.lookback == 4 and [e["step"] for e in far.timeline] == [5, 5]  # step 1's copy, read at step 5
    assert [s for s, _ in far.veto.history] == [8, 9, 10, 11, 12] and far.veto.earlier(12) is far.veto.history[0][1]
    torch.save({"frz": far.state_dict()}, tmp_path / "c.pt")
    _, _, fresh = train(lr=0.0, steps=0, steps_per_epoch=4, veto_lookback="epoch")
    fresh.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["frz"])
    assert [s for s, _ in fresh.veto.history] == [8, 9, 10, 11, 12]
    assert all(torch.equal(a, b) for (_, wa), (_, wb) in zip(far.veto.history, fresh.veto.history) for i in wa
               for sa, sb in zip(wa[i], wb[i]) for a, b in zip(sa.values(), sb.values()))
    with pytest.raises(ValueError, match="veto_lookback must be 'decision', 'epoch' or None"):
        train(lr=0.0, steps=0, veto_lookback="week")


def test_the_predictor_file_carries_the_veto_lookback(tmp_path):
    from smartfrz import FreezePredictor
    pred = FreezePredictor.load()
    assert pred.veto_lookback == "decision"  # written before the lookback was part of the rule
    pred.veto_tau, pred.veto_lookback = 0.05, "epoch"
    path = tmp_path / "p.safetensors"
    pred.save(path, extra={k: v for k, v in pred.metadata.items() if k in ("window", "sample_size")})
    assert FreezePredictor.load(path).veto_lookback == "epoch"
    m = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    x = torch.randn(8, 2)
    assert SmartFRZ(m, None, example_input=x, predictor_path=str(path), window=2, record_every=3,
                    total_steps=100).veto.lookback == 6
    assert SmartFRZ(m, None, example_input=x, predictor_path=str(path), window=2, steps_per_epoch=10,
                    total_steps=100).veto.lookback == 10
    assert SmartFRZ(m, None, example_input=x, predictor_path=str(path), window=2, record_every=3,
                    total_steps=100, veto_lookback="decision").veto.lookback is None


def test_a_token_models_share_counts_its_tokens_predictions_and_no_padding():
    """A language model or tagger predicts per token: one changed token of six kept is a share of 1/6 (not 1/2, one
    of two rows), and a change at a padded position counts for nothing."""
    from smartfrz.veto import FunctionalVeto

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 3)

        def forward(self, input_ids, attention_mask):
            return self.emb(input_ids)  # (rows, tokens, classes)

    m = Tagger()
    probe = {"input_ids": torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])}
    veto = FunctionalVeto([], probe, tau=0.2)
    ref = [veto._outputs(m, j) for j in range(len(veto.parts))]
    with torch.no_grad():
        m.emb.weight[0] = -m.emb.weight[0]  # token 0 is padding only
        assert not veto._exceeds(m, ref) and veto.tau == 0.2
        m.emb.weight[4] = torch.eye(3)[(m.emb.weight[4].argmax() + 1) % 3] * 10  # one kept token's prediction
    assert not veto._exceeds(m, ref)  # 1/6 <= 0.2
    veto.tau = 0.1
    assert veto._exceeds(m, ref)  # 1/6 > 0.1


def test_a_dense_prediction_counts_changed_pixels_over_its_class_dimension():
    """A segmentation model's (N, C, H, W) logits: the veto and the labels read each pixel's class at dim 1."""
    from smartfrz.veto import changed_share, logits
    a = torch.zeros(2, 3, 4, 4)
    a[:, 0] = 1.0  # class 0 at every pixel
    b = a.clone()
    b[0, 2, 1, 3] = 5.0  # one pixel of 32 turns to class 2
    ref, new = logits(lambda x: {"out": a}, None), logits(lambda x: {"out": b}, None)
    assert ref.shape == (2, 4, 4, 3) and changed_share(ref, new) == 1 / 32


class _Detector(torch.nn.Module):
    """Eval output as torchvision's detectors give it: a list of {boxes, labels, scores} per image, not logits."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU())
        self.box = torch.nn.Linear(8, 4)

    def forward(self, x):
        boxes = self.box(self.body(x))
        return [{"boxes": boxes[i].view(1, 4).repeat(100, 1), "labels": torch.zeros(100, dtype=torch.long)}
                for i in range(len(x))]


def test_a_model_whose_output_the_veto_cannot_read_fails_when_the_engine_is_built():
    """Not at the rule's start, mid-run: the error names the problem and the two ways out."""
    from smartfrz import SmartFRZ
    with pytest.raises(ValueError, match=r"cannot read this model: its output \(100, 4\) has no row per probe "
                                         r"example \(2\).*veto_tau=1.0"):
        SmartFRZ(_Detector(), None, example_input=torch.randn(2, 4), total_steps=1000)
    frz = SmartFRZ(_Detector(), None, example_input=torch.randn(2, 4), total_steps=1000, veto_tau=1.0)
    assert frz.veto is None


class _LossFirst(torch.nn.Module):
    """Returns (loss, logits) when given labels, as many research codebases do."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()) for _ in range(3)])
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x, y):
        out = self.head(self.body(x))
        return torch.nn.functional.cross_entropy(out, y), out


def test_the_veto_reads_the_logits_of_a_loss_first_tuple():
    from smartfrz import SmartFRZ
    from smartfrz.veto import logits
    model, batch = _LossFirst(), (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    assert logits(model, batch).shape == (8, 3)  # not the loss, the first tensor of the tuple
    frz = SmartFRZ(model, None, example_input=batch, total_steps=1000)
    assert frz.veto is not None
