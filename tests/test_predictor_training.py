"""Choosing the predictor by end result: the replay of the engine's rule that scores it."""
import numpy as np
import pytest

from smartfrz.predictor_training.training import replay


META = {"steps_per_epoch": 8, "total_steps": 40, "flop_share": [0.5, 0.3, 0.2], "spec": {"checkpoints_per_epoch": 4}}
STEPS = np.arange(2, 42, 2)  # a checkpoint every 2 steps (4 per epoch) from step 2 to 40


def test_replay_freezes_front_to_back_with_patience_and_cadence():
    P = np.zeros((len(STEPS), 3))
    P[5:, 0] = 0.9  # unit 0 scores high from step 12, unit 1 from step 20; the last unit is never frozen
    P[9:, 1] = 0.9
    P[3, 1] = 0.9  # an isolated spike before unit 0 is ready: never a freeze
    Y = np.zeros_like(P, dtype=bool)
    Y[6:, 0] = Y[12:, 1] = True  # labels: unit 0 from step 14, unit 1 from step 26
    r = replay(P, Y, STEPS, META, threshold=0.5, patience=2, per_epoch=4)
    assert r["pred"] == {0: 14, 1: 22} and r["label"] == {0: 14, 1: 26}
    assert r["early"] == 1 and r["units"] == 2  # unit 1 froze before its label
    assert np.isclose(r["saved"], 0.5 * 26 / 40 + 0.3 * 18 / 40)
    assert np.isclose(r["oracle_saved"], 0.5 * 26 / 40 + 0.3 * 14 / 40)
    slow = replay(P, Y, STEPS, META, threshold=0.5, patience=2, per_epoch=1)  # decisions at steps 8, 16, 24, ...
    assert slow["pred"] == {0: 24, 1: 32} and slow["early"] == 0


def test_replay_counts_a_freeze_of_a_never_labelled_unit_as_early():
    P = np.ones((len(STEPS), 3))
    Y = np.zeros_like(P, dtype=bool)
    r = replay(P, Y, STEPS, META, threshold=0.5, patience=1, per_epoch=4)
    assert r["early"] == 2 and r["oracle_saved"] == 0.0 and r["saved"] > 0


def test_replay_freezes_at_most_per_decision_units_a_decision():
    """The engine's freeze_per_decision, replayed: a whole settled prefix waits a decision a unit."""
    P = np.ones((len(STEPS), 3))
    Y = np.ones_like(P, dtype=bool)
    at_once = replay(P, Y, STEPS, META, threshold=0.5, patience=1, per_epoch=4)
    one = replay(P, Y, STEPS, META, threshold=0.5, patience=1, per_epoch=4, per_decision=1)
    first = at_once["pred"][0]
    assert at_once["pred"] == {0: first, 1: first} and one["pred"] == {0: first, 1: first + 2}  # decisions 2 steps apart
    assert one["saved"] < at_once["saved"]


def test_replay_caps_the_rule_at_max_share_of_the_units_and_not_the_oracle():
    P = np.ones((len(STEPS), 3))
    Y = np.ones_like(P, dtype=bool)
    capped = replay(P, Y, STEPS, META, threshold=0.5, patience=1, per_epoch=4, max_share=0.34)  # floor(1.02) = 1 unit
    uncapped = replay(P, Y, STEPS, META, threshold=0.5, patience=1, per_epoch=4)
    assert list(capped["pred"]) == [0] and list(uncapped["pred"]) == [0, 1]
    assert capped["label"] == uncapped["label"] and capped["oracle_saved"] == uncapped["oracle_saved"]


def test_replay_per_run_floor_gives_a_short_run_more_decisions():
    P = np.zeros((len(STEPS), 3))
    P[5:, 0] = 0.9  # unit 0 scores high from step 12
    Y = np.zeros_like(P, dtype=bool)
    Y[5:, 0] = True
    once = replay(P, Y, STEPS, META, threshold=0.5, patience=2, per_epoch=1)  # decisions at steps 8, 16, 24
    floor = replay(P, Y, STEPS, META, threshold=0.5, patience=2, per_epoch=1, per_run=10)  # every 40 // 10 = 4 steps
    assert once["pred"] == {0: 24} and floor["pred"] == {0: 16}


def test_runs_settled_from_their_first_checkpoint_weigh_what_they_are_told():
    import torch
    from smartfrz.predictor_training.training import samples

    def run(rewind):
        C, U = rewind.shape
        return {"rewind": rewind, "features": torch.zeros(C, U, 4, 9), "steps": torch.arange(1, C + 1)}
    settled = run(torch.zeros(3, 2))  # every unit under the threshold from the first checkpoint on
    staggered = run(torch.tensor([[0.5, 0.5], [0.0, 0.5], [0.0, 0.0]]))
    d = samples([settled, staggered], "rewind:0.01", settled_run_weight=0.25)
    assert d["weight"][d["run"] == 0].eq(0.25).all() and d["weight"][d["run"] == 1].eq(1.0).all()
    assert samples([settled], "rewind:0.01")["weight"].eq(1.0).all()  # the default keeps every run whole


def test_a_label_per_kind_of_run_reads_each_run_with_its_own_part():
    import pytest
    import torch
    from smartfrz.predictor_training.training import samples

    def run(regime, cka, rewind, cap=0.2):
        C, U = cka.shape
        return {"cka": cka, "rewind": rewind, "features": torch.zeros(C, U, 4, 9), "steps": torch.arange(1, C + 1),
                "meta": {"spec": {"regime": regime}, "rewind_cap": cap}}
    cka = torch.tensor([[0.9], [0.999], [1.0]])  # settled by CKA from checkpoint 1
    harm = torch.tensor([[0.3], [0.1], [0.0]])  # by rewind:0.02 only at checkpoint 2
    label = "scratch=cka:0.995,finetune=rewind:0.02"
    d = samples([run("scratch", cka, harm), run("finetune", cka, harm)], label)
    assert d["y_eval"][d["run"] == 0].tolist() == [False, True, True]
    assert d["y_eval"][d["run"] == 1].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="above the cap these harms were recorded with"):
        samples([run("scratch", cka, harm, cap=0.05)], "scratch=cka:0.995+rewind:0.1,finetune=rewind:0.02")


def test_distil_gives_one_network_that_follows_its_teachers():
    """--distil: an ensemble's P(freeze) from one network, whose scoring fits the cost bound (test_predictor)."""
    import torch
    from conftest import synthetic_windows
    from smartfrz.predictor import FreezePredictor, window_features
    from smartfrz.predictor_training.training import distil_one

    x = window_features(synthetic_windows(1024, seed=2)[0])
    torch.manual_seed(0)
    teachers = FreezePredictor(d_model=16, heads=2, layers=1, hidden=32, members=2)
    teachers.calibration.copy_(torch.tensor([8.0, 0.0]))  # spread their untrained P(freeze) over a wide range
    student = distil_one(teachers, x, epochs=5, seed=1)
    with torch.no_grad():
        p_teachers, p_student = torch.sigmoid(teachers(x)), torch.sigmoid(student(x))
    assert len(student.members) == 1 and student.hparams["d_model"] == 16
    assert (p_student - p_teachers).abs().mean() < 0.2 * p_teachers.std(), "the student does not follow its teachers"


def test_the_card_command_names_the_flags_the_weights_were_trained_with():
    from dataclasses import asdict
    from smartfrz.predictor_training.training import RuleSearch, _flags
    res = {"search": asdict(RuleSearch()), "settled_run_weight": 0.2, "teachers": 3, "shipped": {"hparams": {"members": 1}}}
    assert _flags(res) == " --settled-run-weight 0.2 --distil"
    res = {"search": asdict(RuleSearch(patiences=(2,))), "settled_run_weight": 1.0, "shipped": {"hparams": {"members": 1}}}
    assert _flags(res) == " --patiences 2 --members 1"
    assert _flags({**res, "folds": 5}) == " --patiences 2 --members 1 --folds 5"
    shifts = {"file": "data/freeze_runs/label_shifts.json", "runs": 40}
    assert _flags({**res, "label_shifts": shifts}) == " --patiences 2 --members 1 --label-shifts data/freeze_runs/label_shifts.json"
    assert _flags({**res, "label": "scratch=rewind:0.05,finetune=rewind:0.02"}).startswith(
        " --label scratch=rewind:0.05,finetune=rewind:0.02 --patiences 2")


def test_inner_splits_hold_out_whole_groups_or_random_runs():
    import pytest
    from smartfrz.predictor_training.training import inner_splits
    runs = [{"meta": {"family": f, "spec": {"schedule": s}}} for f, s in
            [("cnn", "cosine"), ("mlp", "step"), ("cnn", "step"), ("vit", "cosine"), ("mlp", "cosine")]]
    ids = np.arange(5)
    assert [list(x) for x in inner_splits(runs, ids, "family", 0)] == [[0, 2], [1, 4], [3]]
    assert [list(x) for x in inner_splits(runs, ids, "schedule", 0)] == [[0, 3, 4], [1, 2]]
    with pytest.raises(ValueError, match="at least two groups"):
        inner_splits(runs, ids[[0, 3, 4]], "schedule", 0)
    with pytest.raises(ValueError, match="one of family, schedule"):
        inner_splits(runs, ids, "optimizer", 0)
    random = inner_splits(runs, ids, 2, seed=3)
    assert sorted(np.concatenate(random).tolist()) == list(range(5)) and len(random) == 2
    assert [list(x) for x in random] == [list(x) for x in inner_splits(runs, ids, 2, seed=3)]  # the seed fixes them


def test_replay_follows_the_engine_start_prefix_streak_and_decisions_between_checkpoints():
    """The replay is SmartFRZPolicy.decide: nothing before the start; a unit's streak counts only decisions at which
    it and every active unit before it settled; a cadence finer than the checkpoints decides several times on one."""
    P = np.zeros((len(STEPS), 3))
    P[:, 1] = 0.9  # unit 1 scores high throughout, unit 0 only from step 20
    P[9:, 0] = 0.9
    Y = np.ones_like(P, dtype=bool)
    r = replay(P, Y, STEPS, META, threshold=0.5, patience=2, per_epoch=4)  # every 2 steps: one decision a checkpoint
    assert r["pred"] == {0: 22, 1: 22}  # unit 1's own streak before step 20 does not count
    late = replay(P, Y, STEPS, META, threshold=0.5, patience=2, per_epoch=4, start=0.75)  # from step 30
    assert late["pred"] == {0: 32, 1: 32}
    fine = dict(META, steps_per_epoch=16, total_steps=40)  # every 16 // 4 = 4 steps... and 16 a run: every 2
    coarse_steps = STEPS[1::2]  # a checkpoint every 4 steps
    both = replay(P[1::2], Y[1::2], coarse_steps, fine, threshold=0.5, patience=2, per_epoch=4, per_run=20)
    assert both["pred"] == {0: 20, 1: 20}  # two decisions (steps 18 and 20) read the checkpoint at step 20


def test_replay_with_the_recorded_veto_cuts_the_prefix_as_the_engine_does():
    from smartfrz.predictor_training.training import veto_pass
    assert veto_pass(np.array([0.0, 0.3, 0.3]), 0, 3, 0.1) == 1  # the whole prefix fails: unit by unit from the front
    assert veto_pass(np.array([0.0, 0.3, 0.0]), 0, 3, 0.1) == 3  # the front and the whole pass: the engine stops there
    assert veto_pass(np.array([0.3, 0.0, 0.0]), 0, 3, 0.1) == 0  # the front unit fails: nothing settles
    assert veto_pass(np.array([np.nan, 0.0, 0.0]), 0, 3, 0.1) == 0  # not recorded: fails
    assert veto_pass(np.array([0.2, 0.0, 0.05]), 1, 3, 0.1) == 3  # from unit 1: prefixes 0..1 and 0..2 pass
    P = np.full((len(STEPS), 3), 0.9)
    Y = np.ones_like(P, dtype=bool)
    veto = np.zeros((len(STEPS), 3))
    veto[:10, 1] = 0.5  # putting units 0..1 back changes half the predictions until step 20
    r = replay(P, Y, STEPS, META, threshold=0.5, patience=2, per_epoch=4, veto=(veto, 0.1))
    assert r["pred"] == {0: 4, 1: 24}  # unit 1 settles from step 22, twice in a row at 24


def test_a_gated_veto_checks_only_where_a_freeze_would_follow():
    """scripts/veto_gate.py: the shipped rule runs the veto at every decision where the predictor settles a unit, and
    counts it in the streak; gated, the streak is the predictor's and one passing check at the freezing decision
    will do. Each check is a reference forward plus one per prefix tried."""
    P = np.full((len(STEPS), 3), 0.9)
    Y = np.ones_like(P, dtype=bool)
    veto = np.zeros((len(STEPS), 3))
    veto[:3, 0] = 0.5  # putting unit 0 back changes half the predictions until step 6
    shipped = replay(P, Y, STEPS, META, threshold=0.5, patience=2, per_epoch=4, veto=(veto, 0.1))
    gated = replay(P, Y, STEPS, META, threshold=0.5, patience=2, per_epoch=4, veto=(veto, 0.1), gate=True)
    assert shipped["pred"] == {0: 10, 1: 10} and gated["pred"] == {0: 8, 1: 8}  # decisions every 2 steps from step 2
    assert shipped["veto_checks"] == 5 and shipped["veto_forwards"] == 5 + 3 + 2 * 2  # fails alone; then front, whole
    assert gated["veto_checks"] == 3 and gated["veto_forwards"] == 3 + 2 + 2  # steps 4, 6 fail at the front; 8 passes


def test_the_rule_search_takes_the_veto_when_only_the_veto_keeps_freezes_after_their_labels():
    """With recorded veto shares, the search tries starts and veto taus too: here the predictor says "freeze" from
    the first checkpoint, the label only from step 22, and the veto's share falls exactly then."""
    import torch
    from smartfrz.predictor_training.training import RuleSearch, samples, select_rule
    C, U = len(STEPS), 2
    rewind = torch.ones(C, U)
    rewind[10:] = 0.0  # both units freezable from step 22
    share = torch.zeros(C, 3, U, 1)
    share[:10] = 0.5  # putting the first unit back changes half the predictions until step 20
    meta = dict(META, flop_share=[0.6, 0.4], veto_lookbacks=[2, 4, 8], veto_rows=[32], name="toy")
    runs = [{"rewind": rewind, "features": torch.zeros(C, U, 4, 9), "steps": torch.as_tensor(STEPS), "veto_share": share,
             "meta": meta}]
    d = samples(runs, "rewind:0.05")
    p = np.full(len(d["run"]), 0.9)
    blind = select_rule(d, runs, np.array([0]), p, RuleSearch(patiences=(1,)))
    assert blind["saved"] == 0.0 and blind["veto_tau"] is None  # no veto: only a rule that never freezes stays in
    rule = select_rule(d, runs, np.array([0]), p, RuleSearch(patiences=(1,), taus=(None, 0.1), starts=(0.0, 0.75)))
    assert rule["veto_tau"] == 0.1 and rule["veto_probe_rows"] == 32 and rule["early"] == 0
    assert rule["saved_share_of_oracle"] == 1.0 and rule["decide_from"] == 0.0  # a start at 0.75 (step 30) would lose saving
    from smartfrz.predictor_training.training import ENGINE_KEYS, RULE_KEYS
    assert set(RULE_KEYS + ENGINE_KEYS) <= set(rule)  # the whole rule a weights file ships (training's "shipped")


def test_the_rule_search_tries_a_veto_an_epoch_back():
    """Recorded shares an epoch back (lookback 8 = steps_per_epoch) flag a unit the shares at the previous decision
    miss: only the search that may read an epoch back keeps the freezes after their labels, and says so."""
    import pytest
    import torch
    from smartfrz.predictor_training.training import RuleSearch, lookback_steps, recorded_veto, samples, select_rule
    C, U = len(STEPS), 2
    rewind = torch.ones(C, U)
    rewind[10:] = 0.0  # both units freezable from step 22
    share = torch.zeros(C, 3, U, 1)  # lookbacks 2, 4 and 8 steps
    share[:10, 2] = 0.5  # put back an epoch, the first unit changes half the predictions until step 20
    meta = dict(META, flop_share=[0.6, 0.4], veto_lookbacks=[2, 4, 8], veto_rows=[32], name="toy")
    assert META["steps_per_epoch"] == 8 and lookback_steps(meta, "epoch") == 8 and lookback_steps(meta, "decision") is None
    runs = [{"rewind": rewind, "features": torch.zeros(C, U, 4, 9), "steps": torch.as_tensor(STEPS), "veto_share": share,
             "meta": meta}]
    assert recorded_veto(runs[0], meta, 4, 0, 0.1, 32, "epoch")[0][0, 0] == 0.5
    d = samples(runs, "rewind:0.05")
    p = np.full(len(d["run"]), 0.9)
    near = select_rule(d, runs, np.array([0]), p, RuleSearch(patiences=(1,), taus=(0.1,)))
    assert near["early"] == 0 and near["decisions_per_epoch"] == 1  # only a decision an epoch apart reads the far share
    assert near["saved_share_of_oracle"] < 1.0
    rule = select_rule(d, runs, np.array([0]), p, RuleSearch(patiences=(1,), taus=(0.1,), lookbacks=("decision", "epoch")))
    assert rule["veto_lookback"] == "epoch" and rule["early"] == 0 and rule["saved_share_of_oracle"] == 1.0
    assert rule["decisions_per_epoch"] == 4 and near["veto_lookback"] == "decision"
    with pytest.raises(ValueError, match="lookbacks must be among"):
        RuleSearch(lookbacks=("week",))


def test_the_replay_agrees_with_the_trace_replay_on_the_committed_traces():
    """Two replays of SmartFRZPolicy.decide written apart: this one (recorded runs, held out) and
    scripts/trace_replay.py (bench traces, which chose the shipped rule). Where the rule's cadence falls on a
    trace's grid, both give the same freeze steps, start and veto included."""
    import importlib.util
    import json
    from pathlib import Path

    from smartfrz.predictor_training.training import cadence
    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("trace_replay", root / "scripts" / "trace_replay.py")
    TR = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(TR)
    rules = [(0.1, 2, 2, 16, 0.1, 0.6), (0.1, 2, 1, 16, 0.1, 0.6), (0.3, 2, 4, 0, 0.05, 0.4)]
    compared = 0
    for name in ("smoke_digits_cnn_s0", "demo_digits_cnn_demo_s0", "cpu_cifar10_resnet20_s0",
                 "headroom_cifar10_resnet20_long_s0"):
        trace = json.loads((root / "reports" / "bench" / "trace" / f"{name}.json").read_text())
        rows, U = trace["decisions"], len(trace["units"])
        steps = np.array([r["step"] for r in rows])
        P = np.array([[r["p"].get(str(u), 0.0) for u in range(U)] for r in rows])
        meta = {"steps_per_epoch": trace["steps_per_epoch"], "total_steps": trace["total_steps"],
                "flop_share": [u["flop_share"] for u in trace["units"]]}
        for thr, patience, per_epoch, per_run, tau, start in rules:
            stride = TR.stride_for(trace, per_epoch, per_run)
            if cadence(meta, per_epoch, per_run) != stride * (steps[1] - steps[0]):
                continue  # off the trace's grid: trace_replay rounds the cadence
            shares = np.full(P.shape, np.nan)
            for j, r in enumerate(rows):
                if r["step"] >= start * trace["total_steps"]:
                    for u, v in TR.veto_shares(trace, r, stride, 32).items():
                        shares[j, int(u)] = v
            ours = replay(P, np.zeros(P.shape, dtype=bool), steps, meta, thr, patience, per_epoch, per_run,
                          start=start, veto=(shares, tau))["pred"]
            assert ours == TR.replay(trace, thr, patience, per_epoch, tau, 32, per_run, start), (name, thr, per_epoch)
            compared += bool(ours)
    assert compared >= 8  # most comparisons freeze something


def test_a_recorded_run_replays_the_shipped_rule_with_its_own_veto_shares(tmp_path, capsys):
    """freeze_dataset records the veto's shares at the distances the rule reads, and scripts/replay_run.py replays
    the shipped predictor and whole rule on the run."""
    import importlib.util
    from pathlib import Path

    import torch
    from smartfrz.predictor_training.freeze_dataset import RUN_FORMAT, RunSpec, load_run, record_run, run_format, save_run
    torch.manual_seed(0)
    spec = RunSpec("digits_mlp", "digits", epochs=4, lr=0.05, batch_size=32, window=8, sample_size=256, probe_size=64)
    path = tmp_path / f"{spec.name}.safetensors"
    save_run(record_run(spec, progress=False), path)
    run = load_run(path)
    assert run_format(path) == RUN_FORMAT and run["meta"]["veto_lookbacks"] == [10, 21, 43]  # 43 steps an epoch
    C, U = run["rewind"].shape
    assert run["veto_share"].shape == (C, 3, U, 1)
    late = run["steps"] >= 0.25 * run["meta"]["total_steps"]
    assert torch.isnan(run["veto_share"][~late].float()).all() and not torch.isnan(run["veto_share"][late, :, 0].float()).all()
    root = Path(__file__).parents[1]
    mod_spec = importlib.util.spec_from_file_location("replay_run", root / "scripts" / "replay_run.py")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    mod.main([str(path), "--labels", "rewind:0.05"])
    out = capsys.readouterr().out
    assert "'decide_from': 0.6" in out and "rewind:0.05: frozen at" in out and f"/{U - 1} early" in out
    from smartfrz.predictor_training.training import recorded_veto
    shares, _ = recorded_veto(run, run["meta"], 2, 16, 0.1, 32, lookback=43)  # an epoch back: the third lookback
    assert torch.allclose(torch.from_numpy(shares), run["veto_share"][:, 2, :, 0].float(), atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="not at 30 steps"):
        recorded_veto(run, run["meta"], 2, 16, 0.1, 32, lookback=30)
    mod.main([str(path), "--veto-lookback", "epoch", "--quiet"])
    out = capsys.readouterr().out
    assert out.startswith("rule ") and "early" not in out  # quiet, one run: no per-run line and no summary


def test_label_lateness_groups_runs_by_regime_and_length(capsys, tmp_path):
    """The script behind the candidates page's "what the long runs say": each run lands in its regime and length group."""
    import importlib.util
    import json
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("label_lateness", Path(__file__).parents[1] / "scripts" / "label_lateness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = lambda name, regime, epochs: {"name": name, "regime": regime, "final": {"epoch": epochs}}
    metrics = {"runs": [run("a", "scratch", 8), run("b", "scratch", 24), run("c", "scratch", 20), run("d", "finetune", 3)],
               "held_out": {"family": {
                   "x": {"per_run": [{"run": 0, "oracle_saved": 0.4, "saved": 0.2, "early": 1, "units": 4},
                                     {"run": 1, "oracle_saved": 0.1, "saved": 0.0, "early": 0, "units": 9}]},
                   "y": {"per_run": [{"run": 2, "oracle_saved": 0.05, "saved": 0.02, "early": 2, "units": 9},
                                     {"run": 3, "oracle_saved": 0.3, "saved": 0.1, "early": 0, "units": 7}]}}}}
    rows = mod.rows(metrics, "family")
    assert sorted((r["name"], r["epochs"]) for r in rows) == [("a", 8), ("b", 24), ("c", 20), ("d", 3)]
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    mod.main([str(path), "--edges", "6", "13"])
    out = capsys.readouterr().out
    assert "| scratch | [13, inf) | 2 | 7.5% | 1.0% | 2/18 |" in out
    assert "| scratch | [6, 13) | 1 | 40.0% | 20.0% | 1/4 |" in out
    assert "| finetune | [0, 6) | 1 | 30.0% | 10.0% | 0/7 |" in out


def test_label_check_runs_retrains_a_recorded_recipe_and_freezes_at_the_label(tmp_path):
    """The counterfactual check behind reports/bench/bound/label_check_runs_*.json: `none` rebuilds the recorded
    recipe (its metric within a test image or two of the recording), the label's steps come from the run's own
    labels, and a shift moves every step earlier by that share of the run."""
    import importlib.util
    import json
    from pathlib import Path
    repo = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("label_check_runs", repo / "scripts" / "label_check_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from smartfrz.predictor_training.freeze_dataset import load_run
    name = "digits_mlp-digits-scratch-sgd0.05-cosine-s2"
    run = load_run(repo / "data" / "freeze_runs" / f"{name}.safetensors")
    label = "scratch=rewind:0.05,finetune=rewind:0.02"
    steps = mod.label_steps(run, label)
    total = run["meta"]["total_steps"]
    assert steps and all(s in run["steps"].tolist() for s in steps.values())
    assert mod.shifted(steps, 0.1, total) == {u: max(1, s - round(0.1 * total)) for u, s in steps.items()}
    mod.main(["--runs", str(repo / "data" / "freeze_runs"), "--names", name, "--label", label, "--shifts", "0",
              "--out", str(tmp_path / "check.json")])
    out = json.loads((tmp_path / "check.json").read_text())
    rows = {r["what"]: r for r in out["rows"]}
    assert out["summary"]["label-0"]["runs"] == 1 and out["summary"]["label-0"]["unsafe"] == int(not rows["label-0"]["safe"])
    assert abs(rows["none"]["metric"] - run["meta"]["final"]["metric"]) <= 0.5
    assert {int(u): s for u, s in rows["label-0"]["freeze_steps"].items()} == steps
    assert rows["label-0"]["saved"] == pytest.approx(mod.saved_share(steps, run["meta"]["flop_share"], total))


def test_shift_settled_moves_each_units_label_step_by_a_share_of_the_run():
    import torch
    from smartfrz.predictor_training.labels import shift_settled
    steps = [10, 20, 30, 40, 50]  # a 60-step run
    own = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)  # units settle at 30, 40, never
    earlier = shift_settled(own, steps, 60, 1 / 6)  # 10 steps earlier
    assert earlier[:, 0].tolist() == [False, True, True, True, True] and earlier[:, 1].tolist() == [False, False, True, True, True]
    assert not earlier[:, 2].any()  # a unit that never settles is not given a step
    later = shift_settled(own, steps, 60, -1 / 6)
    assert later[:, 0].tolist() == [False, False, False, True, True] and later[:, 1].tolist() == [False] * 4 + [True]
    assert not shift_settled(own, steps, 60, -1.0).any()  # past the run's end: never
    assert shift_settled(own, steps, 60, 0.9)[:, :2].all()  # never before step 1: from the first checkpoint


@pytest.mark.parametrize("safe_from, expect", [(-0.1, 0.1), (0.2, -0.2), (0.5, -1.0)])
def test_label_frontier_runs_searches_the_earliest_safe_shift_and_training_reads_it(tmp_path, monkeypatch, safe_from, expect):
    """The per-run search behind data/freeze_runs/label_shifts.json walks the grid from the label (shift 0),
    keeps the earliest safe shift (-1: none), resumes from its cache, and training's labels move by it. Here a
    freeze is safe when the first unit freezes no earlier than ``safe_from`` of the run after its label's step."""
    import importlib.util
    import json
    import shutil
    from pathlib import Path
    import torch
    repo = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("label_frontier_runs", repo / "scripts" / "label_frontier_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from smartfrz.predictor_training.freeze_dataset import load_run
    from smartfrz.predictor_training.training import attach_label_shifts, run_settled
    name, label = "digits_cnn-digits-scratch-sgd0.2-step-s1", "scratch=rewind:0.05,finetune=rewind:0.02"
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copy(repo / "data" / "freeze_runs" / f"{name}.safetensors", runs)
    run = load_run(runs / f"{name}.safetensors")
    base, total = run["meta"]["final"]["metric"], run["meta"]["total_steps"]
    first = mod.label_steps(run, label)[0]
    assert round(0.3 * total) < first < total - round(0.2 * total)  # the grid below moves it both ways
    trained = []

    def fake_train(spec, freeze, units, data_dir):
        trained.append(dict(freeze or {}))
        return base if freeze is None or min(freeze.values()) >= first + round(safe_from * total) else base - 1.0
    monkeypatch.setattr(mod, "train", fake_train)
    out = tmp_path / "shifts.json"
    argv = ["--runs", str(runs), "--names", name, "--label", label, "--grid", "-0.2", "0.1", "0.3", "--out", str(out)]
    mod.main(argv)
    table = json.loads(out.read_text())
    assert table["label"] == label and table["runs"][name]["shift"] == expect
    assert trained[0] == {}  # the family's first run is retrained without freezing too, as a check
    n = len(trained)
    mod.main(argv)  # resumes from the cache: nothing trained again
    assert len(trained) == n
    shifted = load_run(runs / f"{name}.safetensors")
    assert attach_label_shifts([shifted], out, label) == 1 and shifted["label_shift"] == expect
    own, moved = run_settled(run, label), run_settled(shifted, label)
    steps = run["steps"].tolist()
    first_own = steps[int(torch.nonzero(own[:, 0])[0])]
    if expect == -1.0:
        assert not moved[:, 0].any()
    else:
        assert steps[int(torch.nonzero(moved[:, 0])[0])] == next(s for s in steps if s >= first_own - round(expect * total))
    with pytest.raises(ValueError, match="measured along label"):
        attach_label_shifts([shifted], out, "rewind:0.05")


def test_label_frontier_runs_leaves_out_a_family_a_retrain_does_not_reproduce(tmp_path):
    import importlib.util
    import json
    from pathlib import Path
    repo = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("label_frontier_runs", repo / "scripts" / "label_frontier_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cache = tmp_path / "cache"
    cache.mkdir()
    common = dict(label="L", saved=0.2, regime="finetune", epochs=3, total_steps=100,
                  trained={"0": {"metric": 0.8, "delta": 0.0, "freeze_steps": {}, "saved": 0.2}})
    runs = {"a": dict(family="bert", base=0.0822, none=0.0891), "b": dict(family="bert", base=0.5),
            "c": dict(family="resnet", base=55.24, none=55.24), "d": dict(family="resnet", base=50.0)}
    for name, r in runs.items():
        (cache / f"{name}.json").write_text(json.dumps({"run": name, "shift": 0.1, **common, **r}))
    table = mod.write(tmp_path / "out.json", "L", [0.0, 0.1], cache)
    assert sorted(table["runs"]) == ["c", "d"] and table["left_out_families"] == ["bert"]
    assert mod.reproduced(98.22221994400024, 98.22221994400024) and not mod.reproduced(0.0891, 0.0822)


def test_functional_rule_freezes_a_prefix_once_its_share_stays_under_tau():
    import importlib.util
    from pathlib import Path
    repo = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("functional_rule", repo / "scripts" / "functional_rule.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    nan = float("nan")
    share = np.array([[nan, nan], [0.0, 0.2], [0.0, 0.0], [0.1, 0.0], [0.0, 0.0]])  # (checkpoints, prefixes)
    steps = [10, 20, 30, 40, 50]
    assert mod.rule_steps(share, steps, 0.05, 1) == {0: 20, 1: 30}
    assert mod.rule_steps(share, steps, 0.05, 2) == {0: 30, 1: 40}  # the prefix of two never before the first
    assert mod.rule_steps(share, steps, 0.05, 3) == {}  # no three passes in a row for the first unit: nothing freezes


def test_functional_signal_runs_reproduce_the_recorded_shares_and_the_rule_reads_them(tmp_path):
    """scripts/functional_signal_runs.py: the retrain is the recorded run (its metric and its 32-row shares come back
    exactly), the finer measures are shares in [0, 1], and functional_rule.py replays a rule on them. The run is
    recorded here: bit-exact replay holds on the machine that recorded it (another CPU's kernels round differently;
    the committed digits runs retrain to other metrics on an AMD EPYC than on the machine that recorded them)."""
    import importlib.util
    import json
    from pathlib import Path
    repo = Path(__file__).parents[1]
    mods = {}
    for name in ("functional_signal_runs", "functional_rule"):
        spec = importlib.util.spec_from_file_location(name, repo / "scripts" / f"{name}.py")
        mods[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    sig_mod, rule_mod = mods["functional_signal_runs"], mods["functional_rule"]
    import torch
    from smartfrz.predictor_training.freeze_dataset import RunSpec, record_run, save_run
    torch.manual_seed(0)
    spec = RunSpec("digits_mlp", "digits", epochs=4, lr=0.05, batch_size=32, window=8, sample_size=256, probe_size=64)
    name, runs = spec.name, tmp_path / "runs"
    runs.mkdir()
    save_run(record_run(spec, progress=False), runs / f"{name}.safetensors")
    sig_mod.main(["--runs", str(runs), "--names", name, "--out", str(tmp_path / "sig")])
    got = sig_mod.load_signal(tmp_path / "sig" / f"{name}.safetensors")
    assert got["check"]["reproduced"] and got["check"]["share32_max_diff"] == 0.0
    values = got["signal"][~got["signal"].isnan()]
    assert values.numel() and values.min() >= 0 and values.max() <= 1
    assert got["measures"] == list(sig_mod.MEASURES)
    shifts = {"label": "scratch=rewind:0.05,finetune=rewind:0.02", "runs": {name: {"shift": 0.0}}}
    (tmp_path / "shifts.json").write_text(json.dumps(shifts))
    rule_mod.main(["--runs", str(runs), "--shifts", str(tmp_path / "shifts.json"),
                   "--signals", str(tmp_path / "sig"), "--measures", "tv", "remaining", "--taus", "0.05", "1.0",
                   "--patiences", "1", "--out", str(tmp_path / "rule.json")])
    rows = json.loads((tmp_path / "rule.json").read_text())["rows"]
    assert {r["measure"] for r in rows} == {"tv", "remaining"} and all(r["runs"] == "digits" for r in rows)
    everything = [r for r in rows if r["measure"] == "remaining" and r["tau"] == 1.0]  # tau 1: all at the first checkpoint
    assert everything[0]["share_of_frontier"] >= max(r["share_of_frontier"] for r in rows) - 1e-9
    with pytest.raises(SystemExit):
        rule_mod.main(["--runs", str(runs), "--shifts", str(tmp_path / "shifts.json"),
                       "--measures", "tv"])  # a finer measure without --signals


def test_progress_input_check_auc_counts_ties_as_half():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("progress_input_check", Path(__file__).parents[1] / "scripts" / "progress_input_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    y = np.array([False, False, True, True])
    assert mod.auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert mod.auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert mod.auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert mod.auc(y, np.array([0.1, 0.3, 0.3, 0.4])) == 0.875  # one tie between a positive and a negative: half


def test_heldout_ceiling_replays_perfect_predictions_at_the_oracle_and_relief_only_acts_late():
    """The ceiling script on the committed runs, without training: P(freeze) = the labels themselves must let the
    chosen rule freeze nothing early and reach most of the oracle; random P must not; the relief lowers the
    threshold from its start on and nowhere before."""
    import importlib.util
    from pathlib import Path
    repo = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("heldout_ceiling", repo / "scripts" / "heldout_ceiling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from smartfrz.predictor_training import training as T
    from smartfrz.predictor_training.freeze_dataset import load_runs
    label = "scratch=rewind:0.05,finetune=rewind:0.02"
    runs = load_runs(repo / "data" / "freeze_runs")[:12]
    d = T.samples(runs, label)
    done = d["step"].numpy() / np.array([r["meta"]["total_steps"] for r in runs])[d["run"].numpy()]
    ids = np.arange(len(runs))
    grid = mod.rules([None], ["decision"], [0.0], [(0.0, 1.0)])
    perfect = d["y_eval"].numpy().astype(float)
    rule = mod.select(d, runs, perfect, done, ids, grid)
    s = mod.scored(mod.replay_rule(d, runs, perfect, done, ids, rule))
    assert s["early"] == 0 and s["saved_share_of_oracle"] > 0.8
    noise = np.random.default_rng(0).random(len(perfect))
    worse = mod.scored(mod.replay_rule(d, runs, noise, done, ids, mod.select(d, runs, noise, done, ids, grid)))
    assert worse["saved_share_of_oracle"] < s["saved_share_of_oracle"]
    limited = mod.rules([None], ["decision"], [0.0], [(0.0, 1.0)], (1,))
    assert len(limited) == len(grid) and mod.describe(limited[0])["freeze_per_decision"] == 1
    one_a_decision = mod.scored(mod.replay_rule(d, runs, perfect, done, ids, rule[:-1] + (1,)))  # only delays freezes
    assert one_a_decision["early"] == 0 and one_a_decision["saved_share_of_oracle"] < s["saved_share_of_oracle"]
    p = np.full(len(done), 0.5)
    q = mod.relieved(p, done, (0.2, 0.7))
    assert np.all(q[done >= 0.7] == 0.7) and np.all(q[done < 0.7] == 0.5)
    assert mod.relieved(p, done, (0.0, 1.0)) is p


def test_ship_rule_writes_the_whole_rule_and_an_older_file_entry_cannot_override_it(tiny_predictor, tmp_path):
    """A rule key left in the file's metadata used to come back as an 'extra' entry and override the new value."""
    import importlib.util
    import shutil
    from pathlib import Path

    from smartfrz.predictor import FreezePredictor
    spec = importlib.util.spec_from_file_location("ship_rule", Path(__file__).parents[1] / "scripts" / "ship_rule.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = tmp_path / "p.safetensors"
    shutil.copy(tiny_predictor, path)
    rule = ["--path", str(path), "--threshold", "0.2", "--patience", "2", "--per-epoch", "2", "--chosen-on", "a test"]
    mod.main(rule + ["--per-decision", "2"])
    assert FreezePredictor.load(path).freeze_per_decision == 2
    mod.main(rule + ["--tau", "0.1", "--probe-rows", "32", "--decide-from", "0.6"])  # no limit given: none
    p = FreezePredictor.load(path)
    assert (p.freeze_per_decision, p.veto_tau, p.veto_probe_rows, p.decide_from, p.threshold) == (0, 0.1, 32, 0.6, 0.2)
    assert p.metadata["rule_chosen_on"] == "a test" and "'freeze_per_decision': '2'" in p.metadata["earlier_rule"]
    with pytest.raises(SystemExit):
        mod.main(rule + ["--per-decision", "-1"])


def test_the_projected_veto_scales_a_window_by_the_learning_rate_still_to_come():
    """scripts/projected_veto.py: under a constant rate the projection is the windows left; under a decaying one
    (the rate now held to the end) it is smaller, and it is zero at the run's end."""
    import importlib.util
    from pathlib import Path

    import torch

    spec = importlib.util.spec_from_file_location("projected", Path(__file__).parents[1] / "scripts" / "projected_veto.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = {"steps": torch.tensor([20, 50, 80, 100]),
           "meta": {"total_steps": 100, "spec": {"arch": "digits_cnn", "task": "digits", "optimizer": "sgd", "lr": 0.1, "schedule": "constant"}}}
    np.testing.assert_allclose(mod.projection(run, 10, "steps"), [8, 5, 2, 0])
    np.testing.assert_allclose(mod.projection(run, 10, "lr"), [8, 5, 2, 0], rtol=1e-6)
    run["meta"]["spec"]["schedule"] = "linear"
    lr = mod.projection(run, 10, "lr")
    assert (lr[:3] < [8, 5, 2]).all() and lr[-1] == 0 and (np.diff(lr) < 0).all()
