import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from smartfrz.lab.bench import POLICY_ORDER, main as bench_main, summarize
from smartfrz.lab.costs import frozen_count_per_step, integrate_train_flops
from smartfrz.lab.experiment import ExperimentConfig, run


def test_experiment_accounts_costs(tmp_path):
    r = run(ExperimentConfig(policy="linear", epochs=4, out_dir=str(tmp_path), progress=False,
                             frz={"freeze_start": 0.25, "freeze_level": 0.8}))
    saved = json.loads((tmp_path / f"{r.run}.json").read_text())
    assert saved["metric_name"] == "accuracy" and saved["metric"] > 50
    assert r.frozen_units and 0 < r.flops_saved < 1
    assert r.flops_check["rel_error"] < 1e-9  # the integrated table matches a direct count at the final prefix
    # the integral is exactly the per-step table: recompute it by hand from the timeline
    ks = frozen_count_per_step(r.timeline, r.steps)
    assert ks[0] == 0 and 0 < ks[-1] <= len(r.frozen_units)  # a freeze at the last step never runs
    assert r.prefix_step_flops == sorted(r.prefix_step_flops, reverse=True)
    assert r.wall_s > 0 and r.peak_mem_bytes > 0 and r.energy_j is None  # no NVML energy on CPU
    assert r.decision_flops == 0 and r.net_flops_saved == r.flops_saved  # linear decides without forwards


def test_decision_flops_are_the_vetos_probe_forwards():
    """SmartFRZ's veto runs forwards on its probe at decisions: counted, and charged against the saving."""
    from smartfrz.lab.costs import probe_forward_flops
    from smartfrz.lab.experiment import build
    from smartfrz.veto import probe_parts
    cfg = ExperimentConfig(policy="smartfrz", epochs=4, out_dir=None, progress=False, veto_probe=64)
    r = run(cfg)
    model, *_, probe, _ = build(cfg, "cpu")
    assert probe.shape[0] == 64
    part = probe_forward_flops(model, probe_parts(probe)[0])  # 4 equal parts of 16 images
    assert part * 4 == probe_forward_flops(model, probe)
    forwards = r.decision_flops / part  # each check's parts, a failing one stopping at the part that settles it
    assert forwards >= 4 and forwards == int(forwards)
    assert r.net_flops_saved == pytest.approx(r.flops_saved - r.decision_flops / r.full_train_flops)


def test_integrate_counts_freeze_from_next_step():
    tl = [{"step": 2, "event": "freeze"}, {"step": 3, "event": "freeze"}]
    assert frozen_count_per_step(tl, 5) == [0, 0, 1, 2, 2]
    assert integrate_train_flops(tl, 5, [10, 6, 3]) == 10 + 10 + 6 + 3 + 3


def test_smoke_suite(tmp_path):
    out = tmp_path / "smoke.json"
    bench_main(["--suite", "smoke", "--out", str(out)])
    bench = json.loads(out.read_text())
    assert bench["suite"] == "smoke" and bench["device"].startswith("cpu")
    keys = {"task", "policy", "seed", "metric_name", "metric", "train_flops", "wall_s", "peak_mem_bytes", "energy_j",
            "overhead_s", "frozen_units", "timeline"}
    assert all(keys <= set(r) for r in bench["runs"])
    assert {r["policy"] for r in bench["runs"]} == set(POLICY_ORDER)
    assert len(bench["runs"]) == 3 * len(POLICY_ORDER)  # three seeds, as every suite
    rows = {r["policy"]: r for r in summarize(bench)}
    assert rows["none"]["flops_saved"] == 0 and rows["none"]["speedup"] == pytest.approx(1.0)
    assert rows["oracle"]["flops_saved"] > 0  # hindsight CKA froze something
    table = out.with_suffix(".md").read_text()
    assert "| digits_cnn | smartfrz |" in table and "FLOPs saved" in table
    assert 0 < rows["smartfrz"]["overhead_share"] < 1  # recording and deciding, as a share of the run's time
    assert re.search(r"\| digits_cnn \| smartfrz \|.*\| \d+\.\d\d \(\d+\.\d%\) \|\n", table)


def test_per_seed_deltas_pair_each_run_with_none_of_its_own_seed():
    """The difference of medians mixes seeds: here it reads -10 while two of three seeds lost 1 point."""
    def r(policy, seed, metric):
        return {"task": "t", "policy": policy, "seed": seed, "metric_name": "accuracy", "metric": metric,
                "train_flops": 1.0, "wall_s": 1.0, "peak_mem_bytes": 1, "energy_j": None, "time_to_target_s": None,
                "overhead_s": {"total": 0.0}, "final": {}}
    bench = {"runs": [r("none", 0, 90.0), r("none", 1, 80.0), r("none", 2, 70.0),
                      r("smartfrz", 2, 69.0), r("smartfrz", 0, 89.0), r("smartfrz", 1, 80.0 - 10.0)]}
    row = {x["policy"]: x for x in summarize(bench)}["smartfrz"]
    assert row["metric_delta"] == pytest.approx(-10.0) and row["metric_delta_per_seed"] == pytest.approx([-1.0, -10.0, -1.0])
    assert row["metric_delta_median"] == pytest.approx(-1.0)  # what the table shows as Δ vs none
    from smartfrz.lab.bench import markdown
    bench.update(suite="s", device="cpu", started="now", read_back=3, trained=3)
    table = markdown(bench)
    assert "| t | smartfrz | 3 | accuracy 70 | -1.00 | -1.00 / -10.00 / -1.00 | 0.0% | n/m | n/a\\* |" in table
    assert "different loads" in table and "different loads" not in markdown({**bench, "read_back": 0})


def test_wall_clock_is_compared_only_between_runs_of_one_invocation():
    from smartfrz.lab.bench import markdown
    def r(policy, seed, wall, invocation):
        return {"task": "t", "policy": policy, "seed": seed, "metric_name": "accuracy", "metric": 90.0,
                "train_flops": 1.0, "wall_s": wall, "peak_mem_bytes": 1, "energy_j": None, "time_to_target_s": None,
                "overhead_s": {"total": 0.0}, "final": {}, "invocation": invocation}
    runs = [r("none", 0, 10.0, "a"), r("linear", 0, 5.0, "a"), r("oracle", 0, 4.0, "b")]
    bench = {"runs": runs, "suite": "s", "device": "cpu", "started": "b", "read_back": 2, "trained": 1}
    rows = {x["policy"]: x for x in summarize(bench)}
    assert rows["linear"]["speedup"] == pytest.approx(2.0) and rows["oracle"]["speedup"] is None
    table = markdown(bench)
    assert "| 2.00x |" in table and "| n/a\\* |" in table and "not all trained by one invocation" in table


def test_memory_ratio_only_where_the_peak_is_the_runs_own():
    """On a CPU the peak is the process's RSS, which `none` inflates with the lab's label snapshots."""
    from smartfrz.lab.bench import markdown
    def r(policy, mem):
        return {"task": "t", "policy": policy, "seed": 0, "metric_name": "accuracy", "metric": 90.0,
                "train_flops": 1.0, "wall_s": 1.0, "peak_mem_bytes": mem, "energy_j": None, "time_to_target_s": None,
                "overhead_s": {"total": 0.0}, "final": {}}
    bench = {"runs": [r("none", 200), r("linear", 100)], "suite": "s", "started": "now", "read_back": 0, "trained": 2}
    cpu = {**bench, "device": "cpu (x86_64, AVX512, 1 threads)"}
    assert {x["policy"]: x["mem_ratio"] for x in summarize(cpu)} == {"none": None, "linear": None}
    assert "| n/a† |" in markdown(cpu) and "No memory ratio on a CPU" in markdown(cpu)
    gpu = {**bench, "device": "NVIDIA H100 80GB HBM3"}
    assert {x["policy"]: x["mem_ratio"] for x in summarize(gpu)} == {"none": 1.0, "linear": 0.5}
    assert "| 0.50 |" in markdown(gpu) and "No memory ratio" not in markdown(gpu)


def test_bad_suite_and_policy():
    from smartfrz.lab.bench import run_suite
    with pytest.raises(ValueError, match="unknown suite 'huge'"):
        run_suite("huge")
    with pytest.raises(ValueError, match=r"unknown policies \['magic'\]"):
        run_suite("smoke", policies=["magic"])


# what must match between a resumed parallel suite and one uninterrupted serial run (not wall-clock)
_SAME = ("task", "policy", "seed", "metric", "final", "train_flops", "full_train_flops", "flops_saved", "timeline",
         "frozen_units", "steps", "flops_check")


def test_killed_suite_resumes_in_parallel_and_equals_an_uninterrupted_run(tmp_path):
    from smartfrz.lab.bench import run_suite
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "killed" / "smoke.json"
    runs = out.with_suffix(".runs")
    cmd = [sys.executable, "-m", "smartfrz.lab.bench", "--suite", "smoke", "--seeds", "0", "--jobs", "1",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    deadline = time.time() + 300
    while not (list(runs.glob("*.json")) and out.is_file()):  # a run's file is written just before the suite's
        assert proc.poll() is None, f"the suite ended before its first run was written: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no run was written within 5 minutes"
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.wait()
    done_before = len(list(runs.glob("*.json")))
    assert 1 <= done_before < len(POLICY_ORDER)
    partial = json.loads(out.read_text())  # the suite's JSON was written after its first run, not only at the end
    assert partial["complete"] is False and 1 <= len(partial["runs"]) <= done_before  # (a kill may fall between)

    resumed = run_suite("smoke", seeds=[0], runs_dir=runs, jobs=2, progress=False)
    assert resumed["read_back"] == done_before and resumed["trained"] == len(POLICY_ORDER) - done_before
    assert len(list(runs.glob("*.json"))) == len(POLICY_ORDER)
    again = run_suite("smoke", seeds=[0], runs_dir=runs, jobs=2, progress=False)  # nothing left to train
    assert again["read_back"] == len(POLICY_ORDER) and again["trained"] == 0

    whole = run_suite("smoke", seeds=[0], runs_dir=tmp_path / "whole", jobs=1, progress=False)
    def pick(bench):
        rows = [{**{k: r[k] for k in _SAME}, "final": {k: v for k, v in r["final"].items() if k != "time_s"}}
                for r in bench["runs"]]
        return sorted(rows, key=lambda r: r["policy"])

    assert pick(resumed) == pick(whole)
    assert any(r["frozen_units"] for r in whole["runs"])  # the comparison covers real freeze timelines


def test_experiment_reports_the_window_shape_the_engine_recorded():
    from smartfrz.lab.experiment import ExperimentConfig, run
    r = run(ExperimentConfig(policy="smartfrz", epochs=2, progress=False, out_dir=None)).to_dict()
    assert {k: r["cadence"][k] for k in ("window", "sample_size", "windows_recorded")} == \
        {"window": 20, "sample_size": 512, "windows_recorded": True}  # the shipped predictor's training windows
    assert r["cadence"]["record_every"] * 20 <= r["steps"] // 2  # spread over one epoch, as in the recorded runs


def test_run_key_follows_every_setting():
    from smartfrz.lab.bench import run_key
    from smartfrz.lab.experiment import ExperimentConfig
    a = ExperimentConfig(policy="linear", epochs=2)
    assert run_key(a, 1) == run_key(ExperimentConfig(policy="linear", epochs=2, progress=False, out_dir=None), 1)
    changed = [ExperimentConfig(policy="linear", epochs=3), ExperimentConfig(policy="linear", epochs=2, lr=0.1),
               ExperimentConfig(policy="linear", epochs=2, frz={"freeze_start": 0.3}),
               ExperimentConfig(policy="none", epochs=2)]
    keys = {run_key(c, 1) for c in changed} | {run_key(a, 2)}
    assert run_key(a, 1) not in keys and len(keys) == len(changed) + 1


def test_run_key_follows_the_predictors_content_not_its_place(tmp_path):
    import shutil
    from smartfrz.lab.bench import run_key, run_suite
    from smartfrz.lab.experiment import ExperimentConfig
    from smartfrz.predictor import DEFAULT_PATH, FreezePredictor
    copy, other = tmp_path / "copy.safetensors", tmp_path / "other.safetensors"
    shutil.copy(DEFAULT_PATH, copy)
    FreezePredictor(threshold=0.7).save(other)
    key = lambda path: run_key(ExperimentConfig(epochs=2, frz={} if path is None else {"predictor_path": str(path)}), 1)
    assert key(None) == key(copy) != key(other)
    with pytest.raises(FileNotFoundError, match="predictor file not found: .*missing.safetensors"):
        run_suite("smoke", predictor=tmp_path / "missing.safetensors")


def test_bad_jobs_and_tasks():
    from smartfrz.lab.bench import run_suite
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        run_suite("smoke", jobs=0)
    with pytest.raises(ValueError, match=r"unknown tasks \['mnist'\] in suite 'smoke'; allowed: digits_cnn"):
        run_suite("smoke", tasks=["mnist"])


def test_label_study_replays_the_oracle_under_other_rules(tmp_path):
    from smartfrz.lab.bench import _write_json, run_suite
    from smartfrz.lab.label_study import study, table
    bench_path = tmp_path / "smoke.json"
    bench = run_suite("smoke", seeds=[0], policies=["none", "oracle"], runs_dir=bench_path.with_suffix(".runs"),
                      jobs=1, progress=False)
    _write_json(bench_path, bench)
    rows = study(bench_path, ["rewind:0.05", "remaining:0.2"], jobs=1, out_dir=tmp_path / "labels")
    by = {r["rule"]: r for r in rows}
    oracle = next(r for r in bench["runs"] if r["policy"] == "oracle")
    assert by["rewind:0.05"]["metric"] == oracle["metric"]  # the bench's own oracle run, read back
    assert by["rewind:0.05"]["flops_saved"] == pytest.approx(oracle["flops_saved"])
    assert len(list((tmp_path / "labels").glob("*.json"))) == 1  # only the new rule was trained
    assert 0 <= by["remaining:0.2"]["flops_saved"] < 1
    again = study(bench_path, ["digits_cnn=rewind:0.05"], jobs=1, out_dir=tmp_path / "labels")
    assert [r["metric"] for r in again] == [oracle["metric"]]  # a rule scoped to a task runs there
    with pytest.raises(ValueError, match="no task 'other'"):
        study(bench_path, ["other=rewind:0.05"], jobs=1, out_dir=tmp_path / "labels")
    rows = [{"task": "t", "rule": "r:1", "seed": s, "metric": m, "none_metric": 90.0, "flops_saved": 0.1,
             "frozen_units": 2, "first_freeze_epoch": 1.0} for s, m in ((2, 89.0), (0, 90.5), (1, 89.8))]
    assert "| -0.2 | +0.5 / -0.2 / -1 | 10.0% |" in table(rows)  # the median, then each seed's delta in seed order


def test_freeze_all_bound_freezes_every_unit_at_the_step_asked():
    """scripts/freeze_all_bound.py: the bound is only an upper bound if everything freezes at that very step,
    not at the next epoch end (the oracle's default cadence)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bound", Path(__file__).parents[1] / "scripts" / "freeze_all_bound.py")
    bound = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bound)
    cfgs = bound.configs("smoke", "digits_cnn", [0.5, 2], [0], cache=False, data_dir=None)
    assert [(e, c.seed, sorted(set(c.oracle_freeze_steps.values()))) for e, _, c in cfgs] == [(0.5, 0, [11]), (2, 0, [44])]
    cfg = cfgs[0][2]  # 22 steps per epoch
    freezes = [e for e in run(cfg).timeline if e["event"] == "freeze"]
    assert len(freezes) == len(cfg.oracle_freeze_steps) - 1 and {e["step"] for e in freezes} == {11}
    first = bound.configs("smoke", "digits_cnn", [1], [0], cache=False, data_dir=None, first_units=(2,))
    assert [list(c.oracle_freeze_steps) for *_, c in first] == [list(cfg.oracle_freeze_steps)[:2]]
    with pytest.raises(ValueError, match="K must be 1.."):
        bound.configs("smoke", "digits_cnn", [1], [0], cache=False, data_dir=None, first_units=(len(cfg.oracle_freeze_steps),))


def test_rule_ceiling_replays_patience_cadence_window_and_front_to_back_order():
    """scripts/rule_ceiling.py: a unit freezes at the patience-th decision from its label (or from a full window),
    never before the unit in front of it, and an unlabelled unit stops the prefix."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("ceiling", Path(__file__).parents[1] / "scripts" / "rule_ceiling.py")
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    labels = {"a": 44, "b": 22, "c": 66, "d": None, "e": 0}
    assert ceiling.rule_steps(labels, 1, 1, 22, 132, 20) == {"a": 44, "b": 44, "c": 66}
    assert ceiling.rule_steps(labels, 1, 3, 22, 132, 20) == {"a": 88, "b": 88, "c": 110}
    assert ceiling.rule_steps(labels, 4, 2, 22, 132, 20) == {"a": 50, "b": 50, "c": 75}  # every 5 steps
    assert ceiling.rule_steps({"a": 0}, 4, 1, 22, 132, 20) == {"a": 20}  # not before the window is full
    assert ceiling.rule_steps({"a": 120}, 1, 2, 22, 132, 20) == {}  # would come after the run's end


def test_trace_replay_is_the_engines_rule_on_a_traced_run():
    """scripts/trace_replay.py: a unit's count runs only while it and every active unit before it score P >= the
    threshold and pass the veto; a decision the rule does not take (a slower cadence) is skipped, not counted."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("replay", Path(__file__).parents[1] / "scripts" / "trace_replay.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    p = [{"0": 0.9, "1": 0.9}, {"0": 0.9, "1": 0.9}, {"0": 0.05, "1": 0.9}, {"0": 0.9, "1": 0.9}, {"0": 0.9, "1": 0.9}]
    share = [{"0": 0.0, "1": 0.2}, {"0": 0.0, "1": 0.0}, {"0": 0.0, "1": 0.0}, {"0": 0.0, "1": 0.0}, {"0": 0.0, "1": 0.0}]
    trace = {"steps_per_epoch": 10, "total_steps": 30, "units": [{"flop_share": 0.5}, {"flop_share": 0.3}, {"flop_share": 0.2}],
             "decisions": [{"step": 2 * (i + 1), "p": pi, "share": si} for i, (pi, si) in enumerate(zip(p, share))]}
    assert replay.replay(trace, 0.5, 2, 5, None) == {0: 4, 1: 4}
    assert replay.replay(trace, 0.5, 2, 5, 0.1) == {0: 4, 1: 6}  # unit 1 vetoed at step 2, counts from step 4
    assert replay.replay(trace, 0.5, 3, 5, 0.1) == {}  # unit 0 dips at step 6: its count and unit 1's start again
    assert replay.replay(trace, 0.5, 1, 1, 0.1) == {0: 10, 1: 10}  # one decision an epoch: the 5th row only
    assert replay.replay(trace, 0.5, 1, 2, 0.1) == {0: 4, 1: 4}  # two: every 2nd row (steps 4 and 8)
    assert replay.replay(trace, 0.5, 1, 1, 0.1, per_run=15) == {0: 2, 1: 4}  # >= 15 a run: every 30 // 15 steps
    assert replay.replay(trace, 0.5, 2, 5, None, start=0.2) == {0: 10, 1: 10}  # nothing decided before step 6
    assert abs(replay.saving(trace, {0: 4}) - 2 / 3 * 0.5 * 26 / 30) < 1e-12
    # admissible when some measured-safe schedule freezes each unit the rule freezes no later (epochs; its seed's own)
    safe = {"tasks": {"t": {"oracle": {"latest": [0.4, None], "per_seed": {"0": [0.2, 0.6]}}}}}
    assert replay.within_safe("t_s0", trace, {0: 4}, safe) and not replay.within_safe("t_s0", trace, {0: 4, 1: 4}, safe)
    assert replay.within_safe("t_s1", trace, {0: 4}, safe) and not replay.within_safe("t_s1", trace, {0: 3}, safe)
    assert not replay.within_safe("t_s1", trace, {0: 8, 1: 8}, safe)  # never frozen in any safe schedule


def test_trace_replay_reads_the_veto_as_far_back_as_the_rules_previous_decision():
    """The engine puts units back to their weights at the rule's previous decision: a rule deciding every k-th
    traced decision reads the shares recorded k decisions back (--lookbacks); a distance the trace did not record
    is refused, and only a trace that predates --lookbacks is read at the traced cadence's own (shorter) one."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("replay", Path(__file__).parents[1] / "scripts" / "trace_replay.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    near, far = {"0": 0.0, "1": 0.0}, {"0": 0.0, "1": 0.3}  # unit 1 moved little since the last look, much over two
    rows = [{"step": 2 * (i + 1), "p": {"0": 0.9, "1": 0.9}, "share": near, "share_n": {"64": near},
             "share_k": {"2": {"64": far, "32": far}}} for i in range(6)]
    trace = {"task": "t", "steps_per_epoch": 12, "total_steps": 12, "units": [{"flop_share": 0.5}] * 3, "decisions": rows}
    assert replay.replay(trace, 0.5, 1, 6, 0.1, probe=64) == {0: 2, 1: 2}  # every traced decision: one back
    assert replay.replay(trace, 0.5, 1, 3, 0.1, probe=64) == {0: 4}  # every 2nd: two back, unit 1 vetoed
    assert replay.replay({**trace, "decisions": [{k: v for k, v in r.items() if k != "share_k"} for r in rows]},
                         0.5, 1, 3, 0.1, probe=64) == {0: 4, 1: 4}  # a trace that predates --lookbacks: one back
    with pytest.raises(SystemExit, match="--lookbacks 3"):
        replay.replay(trace, 0.5, 1, 2, 0.1, probe=64)  # every 3rd: not recorded


def test_frontier_every_seed_judges_each_grid_point_by_its_median(tmp_path, monkeypatch):
    """--every-seed: where the search seed loses at every point, the search alone finds nothing; the whole grid on
    every seed takes the point that saves most among those safe by the median."""
    import importlib.util
    import json
    import sys
    from types import SimpleNamespace
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    spec = importlib.util.spec_from_file_location("frontier", Path(__file__).parents[1] / "scripts" / "frontier.py")
    fr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fr)
    metric = {(6, 1.0): (88.0, 88.0, 90.0), (4, 1.0): (89.0, 89.8, 90.0), (3, 0.5): (89.0, 90.0, 90.0)}  # seeds 0, 1, 2
    saved = {(6, 1.0): 0.4, (4, 1.0): 0.25, (3, 0.5): 0.2}
    monkeypatch.setitem(fr.GRIDS, ("headroom", "t"), dict(cache=False, points=list(metric)))
    monkeypatch.setattr(fr, "configs", lambda suite, task, epochs, seeds, cache, data_dir, ks: [
        (epochs[0], ks[0], SimpleNamespace(k=ks[0], e=epochs[0], seed=s, cache=cache)) for s in seeds])
    monkeypatch.setattr(fr, "train_all", lambda cfgs, runs_dir, jobs: [
        {"metric": metric[c.k, c.e][c.seed], "flops_saved": saved[c.k, c.e], "frozen_units": [0] * c.k} for c in cfgs])
    none = [{"task": "t", "policy": "none", "seed": s, "metric": 90.0, "flops_saved": 0.0} for s in (0, 1, 2)]
    (tmp_path / "b.json").write_text(json.dumps({"runs": none}))
    fr.main(["--task", "t", "--bench", str(tmp_path / "b.json"), "--out", str(tmp_path / "f.json")])
    assert json.loads((tmp_path / "f.json").read_text())["frontier"] is None  # seed 0 loses 1 point at every point
    fr.main(["--task", "t", "--bench", str(tmp_path / "b.json"), "--every-seed", "--out", str(tmp_path / "f.json")])
    out = json.loads((tmp_path / "f.json").read_text())
    assert [(c["first_units"], c["at_epoch"], c["safe"]) for c in out["confirmed"]] == \
        [(6, 1.0, False), (4, 1.0, True), (3, 0.5, True)]
    assert "first 4 units at epoch 1" in out["frontier"]["source"] and out["frontier"]["median_delta"] == pytest.approx(-0.2)


def test_frontier_confirms_the_largest_safe_grid_point_on_every_seed(tmp_path, monkeypatch):
    """scripts/frontier.py: the grid runs on one seed; the largest saving within the tolerance there is confirmed
    on the others, and the frontier is the best of that and the safe oracles (median of per-seed deltas)."""
    import importlib.util
    import json
    import sys
    from types import SimpleNamespace
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    spec = importlib.util.spec_from_file_location("frontier", Path(__file__).parents[1] / "scripts" / "frontier.py")
    fr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fr)
    # (K, epoch, seed) -> (metric, saved): (6, 1.0) saves most but loses 2 points; (4, 1.0) is safe on seed 0
    # and on one of the others; (3, 0.5) is never reached (one candidate confirmed)
    table = {(6, 1.0, 0): (88.0, 0.40), (4, 1.0, 0): (89.8, 0.25), (3, 0.5, 0): (90.0, 0.20),
             (4, 1.0, 1): (89.0, 0.26), (4, 1.0, 2): (89.9, 0.24)}
    monkeypatch.setitem(fr.GRIDS, ("headroom", "t"), dict(cache=True, points=[(6, 1.0), (4, 1.0), (3, 0.5)]))
    monkeypatch.setattr(fr, "configs", lambda suite, task, epochs, seeds, cache, data_dir, ks: [
        (epochs[0], ks[0], SimpleNamespace(k=ks[0], e=epochs[0], seed=s, cache=cache)) for s in seeds])
    monkeypatch.setattr(fr, "train_all", lambda cfgs, runs_dir, jobs: [
        {"metric": table[c.k, c.e, c.seed][0], "flops_saved": table[c.k, c.e, c.seed][1], "frozen_units": [0] * c.k}
        for c in cfgs])
    none = [{"task": "t", "policy": "none", "seed": s, "metric": 90.0, "flops_saved": 0.0} for s in (0, 1, 2)]
    oracle = [{"task": "t", "policy": "oracle", "seed": s, "metric": m, "flops_saved": 0.1}
              for s, m in ((0, 90.0), (1, 89.0), (2, 89.0))]  # median -1.0: not safe
    (tmp_path / "b.json").write_text(json.dumps({"runs": none + oracle}))
    fr.main(["--task", "t", "--bench", str(tmp_path / "b.json"), "--out", str(tmp_path / "f.json")])
    out = json.loads((tmp_path / "f.json").read_text())
    assert [(c["first_units"], c["at_epoch"], c["safe"]) for c in out["confirmed"]] == [(4, 1.0, True)]
    assert out["confirmed"][0]["delta_per_seed"] == pytest.approx([-0.2, -1.0, -0.1])
    assert out["oracles"]["oracle"]["safe"] is False
    assert out["frontier"]["median_flops_saved"] == pytest.approx(0.25) and "first 4 units at epoch 1" in out["frontier"]["source"]
    # label-study oracles on every seed are candidates too: a safe one that saves more raises the frontier, an
    # unsafe one or one missing a seed does not
    study = {"bench": str(tmp_path / "b.json"), "rows": [
        *({"task": "t", "rule": "rewind:0.02", "seed": s, "metric": m, "flops_saved": 0.3}
          for s, m in ((0, 89.9), (1, 89.7), (2, 90.0))),
        *({"task": "t", "rule": "cka:0.9", "seed": s, "metric": 85.0, "flops_saved": 0.5} for s in (0, 1, 2)),
        {"task": "t", "rule": "cka:0.99", "seed": 0, "metric": 90.0, "flops_saved": 0.6},
        {"task": "other", "rule": "cka:0.999", "seed": 0, "metric": 90.0, "flops_saved": 0.7}]}
    (tmp_path / "labels.json").write_text(json.dumps(study))
    fr.main(["--task", "t", "--bench", str(tmp_path / "b.json"), "--labels", str(tmp_path / "labels.json"),
             "--out", str(tmp_path / "f.json")])
    out = json.loads((tmp_path / "f.json").read_text())
    assert set(out["oracles"]) == {"oracle", "oracle with label rewind:0.02", "oracle with label cka:0.9"}
    assert out["oracles"]["oracle with label cka:0.9"]["safe"] is False
    assert out["frontier"]["source"] == "oracle with label rewind:0.02"
    assert out["frontier"]["median_flops_saved"] == pytest.approx(0.3)
    study["bench"] = "elsewhere.json"
    (tmp_path / "labels.json").write_text(json.dumps(study))
    with pytest.raises(SystemExit):
        fr.main(["--task", "t", "--bench", str(tmp_path / "b.json"), "--labels", str(tmp_path / "labels.json"),
                 "--out", str(tmp_path / "f.json")])


def test_noise_floor_trains_none_at_nudged_learning_rates_against_each_seeds_none(tmp_path, monkeypatch):
    """scripts/noise_floor.py: `none` at each scaled learning rate (the optimizer's default where the task sets
    none), every seed, read against the committed `none` of its seed; scale 1 is refused (it is that run)."""
    import importlib.util
    import json
    import sys
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    spec = importlib.util.spec_from_file_location("noise_floor", Path(__file__).parents[1] / "scripts" / "noise_floor.py")
    nf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nf)
    seen = []
    metric = {(0, 0.999): 98.0, (1, 0.999): 98.0, (2, 0.999): 99.0, (0, 1.001): 98.6, (1, 1.001): 98.4, (2, 1.001): 98.0}

    def fake_train(cfgs, runs_dir, jobs):
        seen.extend(cfgs)
        return [{"metric": metric[c.seed, round(c.lr / 0.05, 3)]} for c in cfgs]
    monkeypatch.setattr(nf, "train_all", fake_train)
    none = [{"task": "digits_cnn_demo", "policy": "none", "seed": s, "metric": 98.5} for s in (0, 1, 2)]
    (tmp_path / "b.json").write_text(json.dumps({"runs": none}))
    nf.main(["--suite", "demo", "--task", "digits_cnn_demo", "--bench", str(tmp_path / "b.json"), "--out", str(tmp_path / "n.json")])
    assert {(c.seed, round(c.lr, 9), c.policy, c.record_cka) for c in seen} == {
        (s, round(0.05 * x, 9), "none", True) for s in (0, 1, 2) for x in (0.999, 1.001)}  # demo sets no lr: SGD's 0.05
    out = json.loads((tmp_path / "n.json").read_text())
    assert out["max_abs_delta"] == pytest.approx(0.5) and out["runs_past_tolerance"] == 0
    assert out["median_delta_by_scale"] == pytest.approx({"0.999": -0.5, "1.001": -0.1})
    with pytest.raises(SystemExit):
        nf.main(["--suite", "demo", "--task", "digits_cnn_demo", "--bench", str(tmp_path / "b.json"), "--lr-scales", "1",
                 "--out", str(tmp_path / "n.json")])


def test_noise_floor_null_freeze_freezes_only_the_units_that_carry_no_flops(tmp_path, monkeypatch):
    """--null-freeze: the oracle freezes the front units without FLOPs from step 0 on every seed, read against that
    seed's `none` run (found under its bench key); a model whose first unit carries FLOPs has no null freeze."""
    import importlib.util
    import json
    import sys
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    spec = importlib.util.spec_from_file_location("noise_floor", Path(__file__).parents[1] / "scripts" / "noise_floor.py")
    nf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nf)
    from smartfrz.lab.bench import SUITES, run_key
    from smartfrz.lab.experiment import ExperimentConfig
    units = [{"name": "emb", "flop_share": 0.0}, {"name": "pos", "flop_share": 0.0}, {"name": "l0", "flop_share": 0.5}]
    assert nf.no_flop_front(units) == ["emb", "pos"] and nf.no_flop_front(units[2:]) == []
    runs = tmp_path / "b.runs"
    runs.mkdir()
    base = {k: v for k, v in SUITES["demo"]["tasks"]["digits_cnn_demo"].items() if k != "extra_policies"}
    for seed in (0, 1, 2):
        cfg = ExperimentConfig(**base, name="bench-demo-digits_cnn_demo", policy="none", seed=seed, device="auto",
                               out_dir=None, progress=False, record_cka=True)
        (runs / f"{run_key(cfg, 1)}.json").write_text(json.dumps({"metric": 98.5, "units": units}))
    seen = []

    def fake_train(cfgs, runs_dir, jobs):
        seen.extend(cfgs)
        return [{"metric": 98.5 + c.seed, "flops_saved": 0.0} for c in cfgs]
    monkeypatch.setattr(nf, "train_all", fake_train)
    nf.main(["--suite", "demo", "--task", "digits_cnn_demo", "--bench", str(tmp_path / "b.json"), "--null-freeze",
             "--out", str(tmp_path / "n.json")])
    assert [(c.seed, c.policy, c.oracle_freeze_steps) for c in seen] == [
        (s, "oracle", {"emb": 0, "pos": 0}) for s in (0, 1, 2)]
    out = json.loads((tmp_path / "n.json").read_text())
    assert out["median_delta"] == pytest.approx(1.0) and out["max_abs_delta"] == pytest.approx(2.0)
    for f in runs.iterdir():
        f.write_text(json.dumps({"metric": 98.5, "units": units[2:]}))
    with pytest.raises(SystemExit, match="carries FLOPs"):
        nf.main(["--suite", "demo", "--task", "digits_cnn_demo", "--bench", str(tmp_path / "b.json"), "--null-freeze",
                 "--out", str(tmp_path / "n.json")])


def test_label_reach_reads_each_units_freeze_epoch_from_recorded_harms(tmp_path):
    """scripts/label_reach.py: a label's schedule is read off the `none` runs' harms or CKA curves (median epoch over
    runs; a unit labelled in fewer than half of them is never frozen); rewind thresholds above the recorded cap and
    malformed labels are refused."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("reach", Path(__file__).parents[1] / "scripts" / "label_reach.py")
    reach = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reach)
    nan = None

    def none_run(seed, harms):  # 3 checkpoints (steps 10, 20, 30), 2 units, 10 steps an epoch
        return {"run": f"bench-t-x-none-s{seed}", "config": {"policy": "none", "name": "bench-t", "epochs": 3},
                "steps": 30, "cka": {"steps": [10, 20, 30], "units": ["a", "b"], "rewind": harms,
                                     "curves": [[0.96, 0.8], [0.99, 0.9], [1.0, 1.0]]}}
    runs = [none_run(0, [[0.03, nan], [0.01, 0.04], [0.0, 0.0]]), none_run(1, [[0.0, 0.01], [0.0, 0.0], [0.0, 0.0]]),
            none_run(2, [[nan, nan], [0.0, nan], [0.0, 0.0]])]
    for i, r in enumerate(runs):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    (tmp_path / "other.json").write_text(json.dumps({**runs[0], "config": {"policy": "linear"}}))
    found = reach.none_runs(tmp_path)
    assert list(found) == ["t"] and len(found["t"]) == 3
    assert reach.schedule(found["t"], 0.05) == [1.0, 2.0]  # a: epochs 1, 1, 2; b: 2, 1, 3
    assert reach.schedule(found["t"], 0.02) == [2.0, 3.0]  # a: 2, 1, 2; b: 3, 1, 3
    assert reach.schedule(found["t"], "rewind:0.02") == [2.0, 3.0]
    assert reach.schedule(found["t"], "cka:0.95") == [1.0, 3.0]  # CKA(t, end) >= 0.95 from then on: a at 10, b at 30
    with pytest.raises(SystemExit, match="above the cap these harms were recorded with"):  # 0.05 when unrecorded
        reach.main([str(tmp_path), "--taus", "0.1"])
    with pytest.raises(SystemExit, match="above the cap these harms were recorded with"):
        reach.main([str(tmp_path), "--taus", "--labels", "cka:0.95+rewind:0.2"])
    with pytest.raises(ValueError, match="RULE one of"):
        reach.main([str(tmp_path), "--labels", "cka=0.99"])
    capped = [{**r, "cka": {**r["cka"], "rewind_cap": 0.2}} for r in found["t"]]  # recorded since the cap rose
    assert reach.schedule(capped, "rewind:0.1") == [1.0, 2.0]
    assert reach.schedule(capped, "cka:0.95+rewind:0.02") == [2.0, 3.0]  # each unit at the later of its two labels


def test_bench_figure_pairs_each_seed_with_its_none_and_nets_out_the_decisions(tmp_path):
    """scripts/bench_figure.py: a point is one seed's net saving (the veto's forwards subtracted) and its Δ against
    `none` of that seed, in points (GLUE scores x100); the figure is written."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_figure", Path(__file__).parents[1] / "scripts" / "bench_figure.py")
    fig = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fig)

    def run_(policy, seed, metric, saved=0.0, decision=0.0):
        return {"task": "t", "policy": policy, "seed": seed, "metric": metric, "metric_name": "accuracy",
                "flops_saved": saved, "decision_flops": decision, "full_train_flops": 100.0}
    bench = {"runs": [run_("none", 0, 0.80), run_("none", 1, 0.90), run_("smartfrz", 1, 0.88, 0.2, 1.0),
                      run_("smartfrz", 0, 0.81, 0.3, 2.0), run_("smartfrz", 2, 0.5, 0.9)]}  # seed 2: no `none`
    pts = fig.points(bench, "smartfrz", "t")
    assert [(round(x, 6), round(y, 6)) for x, y in pts] == [(28.0, 1.0), (19.0, -2.0)]
    bench["runs"] = [dict(r, metric=100 * r["metric"]) for r in bench["runs"]]  # a metric already in %
    assert [round(y, 6) for _, y in fig.points(bench, "smartfrz", "t")] == [1.0, -2.0]
    out = tmp_path / "f.png"
    fig.draw([{"suite": "s", "task": "t", "series": {"smartfrz": pts}, "noise": 0.3, "frontier": 25.0,
               "tolerance": 0.5}], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablated_predictor_keeps_the_rule_and_lets_every_ready_unit_through(tmp_path):
    """scripts/ablate_predictor.py: the same weights and rule with threshold 0 (the veto and the start decide alone),
    and it refuses to overwrite the shipped file."""
    import importlib.util
    from smartfrz.predictor import DEFAULT_PATH, FreezePredictor
    spec = importlib.util.spec_from_file_location("ablate", Path(__file__).parents[1] / "scripts" / "ablate_predictor.py")
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    out = tmp_path / "np.safetensors"
    ablate.main(["--out", str(out)])
    shipped, ablated = FreezePredictor.load(), FreezePredictor.load(out)
    assert ablated.threshold == 0.0 < shipped.threshold
    for key in ("patience", "decisions_per_epoch", "decisions_per_run", "veto_tau", "veto_probe_rows", "decide_from",
                "veto_lookback", "freeze_per_decision", "max_frozen_share"):
        assert getattr(ablated, key) == getattr(shipped, key), key
    assert all(torch.equal(a, b) for a, b in zip(shipped.state_dict().values(), ablated.state_dict().values()))
    assert ablated.metadata["trained_on"] == shipped.metadata["trained_on"]
    with pytest.raises(SystemExit):
        ablate.main(["--out", str(DEFAULT_PATH)])


def test_compare_timelines_names_the_units_a_change_moved():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ct", Path(__file__).parents[1] / "scripts" / "compare_timelines.py")
    ct = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ct)

    def run_(policy, seed, metric, steps=()):
        return {"task": "t", "policy": policy, "seed": seed, "metric": metric, "flops_saved": 0.1 * len(steps),
                "timeline": [{"index": i, "step": s, "event": "freeze"} for i, s in enumerate(steps)]}
    a = {"runs": [run_("none", 0, 90.0), run_("none", 1, 80.0), run_("smartfrz", 0, 89.0, (5, 9)),
                  run_("smartfrz", 1, 80.0, (4,))]}
    b = {"runs": [run_("none", 0, 90.0), run_("none", 1, 80.0), run_("smartfrz", 0, 88.0, (5, 7)),
                  run_("smartfrz", 1, 80.0, (4,))]}
    lines = ct.compare(a, b)
    assert lines[0] == "t seed 0: units moved (first -> second step): 1: 9 -> 7" and lines[1] == "t seed 1: same"
    assert lines[2].startswith("t: 1 of 2 runs identical; Δ vs none -0.5 -> -1,")
