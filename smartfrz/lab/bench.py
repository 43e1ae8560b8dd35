"""Side-by-side benchmark: every policy on the same model, data order and seed, costs measured.

``python -m smartfrz.lab.bench --suite smoke|demo|cpu|headroom|gpu [--data-dir DIR] [--jobs N] --out reports/bench/NAME.json``

Per task and seed, the ``none`` run goes first and doubles as the oracle's reference (its rewind
harms give the hindsight freeze steps, ``ExperimentConfig.oracle_label``). Ratios in the Markdown table are against ``none`` of
the same suite run, as medians over seeds.

Runs go to ``--jobs`` worker processes (single-threaded on CPU unless ``--threads`` says otherwise),
and each finished run is written at once to ``<out>.runs/`` under a key made of its whole
configuration: calling again with the same ``--out`` reads those back and trains only what is
missing, and a changed setting trains anew.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, replace
from pathlib import Path

from .experiment import ExperimentConfig, oracle_steps, resolve_device, run

POLICY_ORDER = ("none", "oracle", "smartfrz", "linear", "autofreeze")
CACHE_POLICIES = ("oracle+cache", "smartfrz+cache")  # the same decisions, with the prefix cache
ALL_POLICIES = POLICY_ORDER + CACHE_POLICIES

SUITES: dict[str, dict] = {
    "smoke": {
        "seeds": (0, 1, 2),
        "why": "Seconds on CPU; the tests run it.",
        "tasks": {"digits_cnn": dict(task="digits", model="digits_cnn", epochs=6, batch_size=64, lr=0.05)}},
    "demo": {
        "seeds": (0, 1, 2),
        "why": "`make demo`'s setting (smartfrz.lab.quickstart: digits_cnn, 15 epochs, batch 32, the defaults), with every policy.",
        "tasks": {"digits_cnn_demo": dict(task="digits", model="digits_cnn", epochs=15, batch_size=32)}},
    "cpu": {
        "seeds": (0, 1, 2),
        # Sizes fixed from step timings alone, before any metric of this suite was seen (one thread each,
        # two runs side by side on 2 cores). A MiniLM-MRPC step takes ~2.2 s with random batches padded to
        # their longest pair: a `none` run took 14 min, so the 15 MRPC runs the issue fixes (full train/dev,
        # 3 epochs) would take ~80 min of the two cores alone. Length-grouped batches (the HF Trainer's
        # group_by_length; still dynamic padding, the same examples and epochs) cut the padding, about a
        # third of the tokens. A ResNet-20 step at batch 128 takes ~0.27 s: 4,000 class-balanced images x
        # 10 epochs (320 steps, 10 freeze decisions at the default cadence) is ~2 min a run. Per-epoch
        # checks use a fixed 1,000-image test subset (~1% of a run); the final metric uses all 10,000.
        "why": ("MiniLM-MRPC: full train/dev, 3 epochs, dynamic padding with length-grouped batches (as the HF "
                "Trainer's group_by_length), the paper's fine-tuning recipe otherwise. ResNet-20 from scratch on "
                "4,000 balanced CIFAR-10 images x 10 epochs, sized so the 30 runs fit 75 minutes on 2 cores (from "
                "step timings, before any result). Per-epoch evaluation on a fixed 1,000-image test subset; the "
                "final metric on the full 10,000. Every SmartFRZ option is the package default."),
        "tasks": {
            "mrpc_minilm": dict(task="mrpc", model="minilm", epochs=3, batch_size=32, lr=5e-5, schedule="linear",
                                group_by_length=True, extra_policies=CACHE_POLICIES),
            "cifar10_resnet20": dict(task="cifar10", model="resnet20", subset=4000, epochs=10, batch_size=128,
                                     lr=0.1, epoch_eval_subset=1000)}},
    "headroom": {
        "seeds": (0, 1, 2),
        # Where freezing can pay: a many-step fine-tune and a from-scratch CNN trained past its plateau. Sized
        # from step timings alone, before any metric of this suite was seen (one thread each, two runs side by
        # side on 2 cores: a MiniLM step on length-grouped SST-2 batches of 32 takes ~0.8 s, a ResNet-20 step at
        # batch 128 ~0.5 s), so that the 36 suite runs and the frontier sweep (scripts/frontier.py) fit about
        # 110 minutes together. Each task's frontier (the most any accuracy-safe freeze saves) is in
        # reports/bench/bound/frontier_*.json.
        "why": ("MiniLM fine-tuned on 8,000 SST-2 sentences (a random subset per seed) x 2 epochs, 500 steps, "
                "length-grouped batches of 32, AdamW with linear decay; ResNet-20 from scratch on 2,000 balanced "
                "CIFAR-10 images x 30 epochs (480 steps; SGD with momentum, cosine, crop and flip), per-epoch "
                "evaluation on a fixed 1,000-image test subset and the final one on all 10,000. Every SmartFRZ "
                "option is the package default; linear and the oracle decide at every step, AutoFreeze at its "
                "20 intervals a run. Frontier (scripts/frontier.py, measured from none and oracle runs alone, "
                "oracles of other labels included): SST-2 11.6% of FLOPs (the oracle of label rewind:0.02; the "
                "grid's best, the first 4 units at epoch 1.5 with the cache, 7.7%; the shipped label's oracle "
                "loses 0.92 points), ResNet-20 13.8% (the first 7 units at epoch 21; the oracle saves 7.0%)."),
        "tasks": {
            "sst2_minilm": dict(task="sst2", model="minilm", subset=8000, epochs=2, batch_size=32, lr=5e-5,
                                schedule="linear", group_by_length=True, extra_policies=CACHE_POLICIES),
            "cifar10_resnet20_long": dict(task="cifar10", model="resnet20", subset=2000, epochs=30, batch_size=128,
                                          lr=0.1, epoch_eval_subset=1000)}},
    "labelcheck": {
        "seeds": tuple(range(10)),
        # Labels checked against counterfactual freezing (issue 23) on families outside the test suites: small
        # networks trained from scratch with a cosine schedule, the kind on which the held-back case saw the
        # rewind oracle lose 2.1 points. Ten seeds, since a digits delta moves 0.2-0.9 points from noise alone
        # (reports/bench/bound/noise_*digits*.json). Read with smartfrz.lab.label_study.
        "why": ("The digits MLP and CNN from scratch, 12 epochs, batch 32, SGD 0.05 with cosine decay, 10 seeds: each "
                "label's oracle (label_study) against `none`. Every SmartFRZ option is the package default."),
        "tasks": {"digits_mlp_cosine": dict(task="digits", model="digits_mlp", epochs=12, batch_size=32, lr=0.05),
                  "digits_cnn_cosine": dict(task="digits", model="digits_cnn", epochs=12, batch_size=32, lr=0.05)}},
    "tuning": {
        "seeds": (0, 1, 2),
        # A many-step fine-tune outside `headroom` on which a decision rule may be chosen (that suite is the test).
        # The full CoLA run the shipped predictor never saw (artifacts/freeze_runs, the cpu preset's seed 3) settles
        # its upper layers late by its labels, as SST-2 does, and the shipped rule replayed on it freezes all of them
        # at 75% of the run (docs/predictor.md). Sized from that run's timing (~0.75 s a step on one core).
        "why": ("MiniLM fine-tuned on all 8,551 CoLA sentences x 3 epochs (804 steps), length-grouped batches of 32, "
                "AdamW 5e-5 with linear decay, Matthews correlation on all 1,043 dev sentences. Every SmartFRZ option "
                "is the package default."),
        "tasks": {
            "cola_minilm": dict(task="cola", model="minilm", epochs=3, batch_size=32, lr=5e-5, schedule="linear",
                                group_by_length=True)}},
    "tuning_sst2": {
        "seeds": (10, 11, 12),
        # SST-2 outside `headroom`, on which a rule may be chosen: other sentences (subsets drawn with seeds 10-12,
        # so none is nested in a headroom subset), a shorter run. Added because CoLA does not reproduce SST-2's
        # loss from freezing every layer at 68% of the run (docs/results.md, the `tuning` suite). Sized from the
        # headroom SST-2 step timing (~0.8 s a step on one core), before any run of it.
        "why": ("MiniLM fine-tuned on 6,000 SST-2 sentences (a random subset per seed, seeds 10-12) x 2 epochs, "
                "length-grouped batches of 32, AdamW 5e-5 with linear decay, accuracy on all 872 dev sentences. "
                "Every SmartFRZ option is the package default."),
        "tasks": {
            "sst2_minilm_6k": dict(task="sst2", model="minilm", subset=6000, epochs=2, batch_size=32, lr=5e-5,
                                   schedule="linear", group_by_length=True)}},
    "lora": {
        "seeds": (0, 1, 2),
        # Parameter-efficient fine-tuning, the common way to fine-tune a large model: only LoRA adapters train, so a
        # unit's weights are mostly fixed and its window must read the adapters alone. No run of it was recorded
        # for the predictor. Sized from the SST-2 step timing (~0.8 s a full step on one core, less with LoRA).
        "why": ("MiniLM with LoRA adapters of rank 8 (peft's defaults: query and value, the classifier trained in "
                "full; 0.3% of the weights train) on 6,000 SST-2 sentences (a random subset per seed) x 3 epochs, "
                "length-grouped batches of 32, AdamW 5e-4 with linear decay, accuracy on all 872 dev sentences. "
                "Every SmartFRZ option is the package default."),
        "tasks": {
            "sst2_minilm_lora": dict(task="sst2", model="minilm", lora=8, subset=6000, epochs=3, batch_size=32,
                                     lr=5e-4, schedule="linear", group_by_length=True)}},
    "gpu": {
        "seeds": (0, 1, 2),
        # Sized for one H200 inside two device calls of ~5 minutes (scripts/gpu_bench.sh: vision, then text),
        # 4 runs sharing the GPU, data resident on it (CIFAR arrays on the device, crops and flips batched
        # there). The carried CIFAR-10 subset is 12,000 images and the test set (64 MiB per call; MiniLM travels in the other).
        "why": ("ResNet-18 (CIFAR stem) and DeiT-tiny from scratch on 12,000 balanced CIFAR-10 images x 30 epochs, "
                "per-epoch evaluation on a fixed 2,000-image test subset and the final one on all 10,000; MiniLM "
                "fine-tuned on all 67,349 SST-2 sentences for one epoch (2,105 steps), length-grouped batches of 32. "
                "Every SmartFRZ option is the package default."),
        "tasks": {
            "cifar10_resnet18": dict(task="cifar10", model="resnet18_cifar", subset=12000, epochs=30, batch_size=256,
                                     lr=0.1, epoch_eval_subset=2000),
            "sst2_minilm_full": dict(task="sst2", model="minilm", epochs=1, batch_size=32, lr=5e-5, schedule="linear",
                                     group_by_length=True, extra_policies=CACHE_POLICIES),
            "cifar10_deit_tiny": dict(task="cifar10", model="deit_tiny", subset=12000, epochs=30, batch_size=256,
                                      lr=1e-3, optimizer="adamw", weight_decay=0.05, epoch_eval_subset=2000)}},
}

# what a run's key leaves out: where data is read from, where results are written and how they are shown
# change no number in it
_NOT_IN_KEY = ("data_dir", "out_dir", "progress", "wandb", "wandb_project", "wandb_dir")


# FreezeOut-style schedule: start freezing at half of training, end with the front 80% frozen
LINEAR_DEFAULTS = {"freeze_start": 0.5, "freeze_level": 0.8}


REFERENCE_FORMAT = 2  # what a `none` run records for the oracle: 2 = step-0 probe, CKA and rewind harms
PREFIX_CACHE_FORMAT = 4  # how +cache runs fill and verify: 4 = in training steps, a part-filled store completed
# with its missing examples at each epoch start (3: whole batches; 2: in training steps only); 8 verification rows
VETO_FORMAT = 4  # how the smartfrz rule runs: 4 = as 3, with nothing scored, recorded or copied that only a decision before
# the rule's start could read (same decisions, less overhead); 3 = front unit, then the whole prefix; probe in
# length-ordered parts, a check stopping once settled (2: parts, prefixes front to back; before: the whole probe)


def run_key(cfg: ExperimentConfig, threads: int | None) -> str:
    """A name that changes whenever anything that can change the run's numbers changes."""
    import torch

    from .. import __version__
    d = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_KEY}
    for k in ("veto_probe", "lora"):  # the lab's probe, full fine-tuning: runs recorded before the options keep their keys
        if not d[k]:
            del d[k]
    # an oracle's numbers follow from its freeze steps (in the key); the label that made them is a name.
    # (0.95 stands where the label option was a CKA threshold, so runs recorded then keep their keys.)
    d.pop("oracle_label")
    d["oracle_tau"] = 0.95
    if cfg.record_cka:
        d["reference"] = REFERENCE_FORMAT
    if cfg.cache:
        d["prefix_cache"] = PREFIX_CACHE_FORMAT
    d["device"] = resolve_device(cfg.device)
    d.update(threads=threads, smartfrz=__version__, torch=torch.__version__)
    d["frz"] = {k: v for k, v in d["frz"].items() if k != "predictor_path"}  # its content is keyed, not its place
    if cfg.policy == "smartfrz":
        from ..predictor import DEFAULT_PATH
        d["windows"] = "as trained"  # the engine records the predictor file's window shape (before: 30 x 1,024)
        d["veto_format"] = VETO_FORMAT
        d["predictor_sha256"] = hashlib.sha256(Path(cfg.frz.get("predictor_path") or DEFAULT_PATH).read_bytes()).hexdigest()
    digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{cfg.run_name}-{digest}"


def _set_threads(threads: int | None) -> None:
    import torch
    if threads:
        torch.set_num_threads(threads)


def _worker_init(threads: int | None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    _set_threads(threads)


def _train(cfg: ExperimentConfig) -> dict:
    return run(cfg).to_dict()


def run_suite(suite: str, data_dir=None, device="auto", policies=ALL_POLICIES, seeds=None, tasks=None,
              runs_dir="reports/bench/runs", jobs: int | None = None, threads: int | None = None,
              progress=True, on_run=None, predictor: str | None = None, train: bool = True,
              veto_probe: int | None = None) -> dict:
    """Trains (or reads back) every run of a suite; ``on_run(bench)`` sees the results after each run."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
    spec = SUITES[suite]
    unknown = sorted(set(tasks or ()) - set(spec["tasks"]))
    if unknown:
        raise ValueError(f"unknown tasks {unknown} in suite {suite!r}; allowed: {', '.join(spec['tasks'])}")
    tasks = {k: v for k, v in spec["tasks"].items() if tasks is None or k in tasks}
    return run_tasks(tasks, seeds if seeds is not None else spec["seeds"], policies, name=suite, why=spec["why"],
                     data_dir=data_dir, device=device, runs_dir=runs_dir, jobs=jobs, threads=threads,
                     progress=progress, on_run=on_run, predictor=predictor, train=train, veto_probe=veto_probe)


def run_tasks(tasks: dict[str, dict], seeds, policies=ALL_POLICIES, name: str = "custom", why: str | None = None,
              data_dir=None, device="auto", runs_dir="reports/bench/runs", jobs: int | None = None,
              threads: int | None = None, progress=True, on_run=None, predictor: str | None = None,
              train: bool = True, veto_probe: int | None = None) -> dict:
    """Every policy on each task spec (ExperimentConfig fields, plus ``extra_policies`` such as the
    ``+cache`` ones) and seed, side by side; what ``run_suite`` and the notebooks build on. ``predictor``: a
    weights file for the ``smartfrz`` policies instead of the shipped one (to compare candidates). ``train=False``
    only reads back finished runs (to render a suite whose runs were made elsewhere or in parts). ``veto_probe``:
    the smartfrz policies' veto probe size instead of the lab's (256 images, 128 sentences), to price the veto."""
    if predictor is not None and not Path(predictor).is_file():
        raise FileNotFoundError(f"predictor file not found: {predictor}")
    suite, spec = name, {"why": why}
    bad = sorted(set(policies) - set(ALL_POLICIES))
    if bad:
        raise ValueError(f"unknown policies {bad}; allowed: {', '.join(ALL_POLICIES)}")
    on_cpu = resolve_device(device) == "cpu"
    jobs = jobs if jobs is not None else (os.cpu_count() or 1) if on_cpu else 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer; got {jobs!r}")
    threads = threads if threads is not None else (1 if on_cpu else None)
    seeds = tuple(seeds)

    def wanted(task):  # a task's extra policies (the prefix cache) run only where the suite lists them
        offered = POLICY_ORDER + tuple(tasks[task].get("extra_policies", ()))
        return [p for p in ALL_POLICIES if p in offered and (p in policies or p == "none")]
    # every `none` first (each unlocks an oracle), then the rest, the prefix-cache runs last (so the base
    # suite's own wall-clock can be read off); within that, in the suite's task order
    todo = sorted(((t, s, p) for t in tasks for s in seeds for p in wanted(t)),
                  key=lambda j: (j[2] != "none", j[2] in CACHE_POLICIES, list(tasks).index(j[0]), j[1],
                                 ALL_POLICIES.index(j[2])))
    runs_dir = Path(runs_dir)
    results: dict[tuple, dict] = {}
    finished: dict[tuple, float | None] = {}  # seconds into this invocation when each run finished
    out = {"suite": suite, "why": spec["why"], "device": None, "jobs": jobs, "threads_per_job": threads,
           "commit": _git_commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "complete": False,
           "read_back": 0, "trained": 0, "suite_wall_s": None, "runs": []}
    t0 = time.perf_counter()

    def config(task, seed, label) -> ExperimentConfig | None:
        cfg = task_config(suite, task, tasks[task], seed, label, data_dir, device, predictor, veto_probe)
        if cfg.policy != "oracle":
            return cfg
        ref = results.get((task, seed, "none"))
        return None if ref is None else replace(cfg, oracle_freeze_steps=oracle_steps(ref, cfg.oracle_label))

    def finish(job, res: dict, key: str | None) -> None:
        if key is not None:  # trained now: written at once, so a kill loses nothing finished
            res["invocation"] = out["started"]  # wall-clock is compared only between runs of one invocation
            _write_json(runs_dir / f"{key}.json", res)
            out["trained"] += 1
        results[job] = res
        finished[job] = None if key is None else time.perf_counter() - t0  # read back: finished earlier
        out["device"] = res["device"]
        out["runs"] = [{**row(j[0], results[j], results[(j[0], j[1], "none")]), "finished_s": finished[j]}
                       for j in todo if j in results and (j[0], j[1], "none") in results]
        out["suite_wall_s"] = time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix_str(f"{out['read_back']} read back, {out['trained']} trained")
            bar.update(1)
        if on_run is not None:
            on_run(out)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"bench {suite}", dynamic_ncols=True)
    pending = list(todo)
    running: dict = {}
    # (workers are reused: on a CPU a run's peak RSS can hold an earlier run's leftovers, so no CPU memory ratio
    # is shown. max_tasks_per_child=1 would isolate them, but Python 3.11's executor then raises in its manager
    # thread when a failed run shuts the pool down early)
    pool = ProcessPoolExecutor(jobs, mp_context=_spawn(), initializer=_worker_init, initargs=(threads,)) \
        if jobs > 1 else None
    try:
        while pending or running:
            for job in list(pending):  # read back what is done, start what is ready
                cfg = config(*job)
                if cfg is None:
                    continue
                key = run_key(cfg, threads)
                saved = runs_dir / f"{key}.json"
                if saved.is_file():
                    pending.remove(job)
                    out["read_back"] += 1
                    finish(job, json.loads(saved.read_text()), None)
                    continue
                if not train:
                    continue
                if pool is None:
                    pending.remove(job)
                    finish(job, _train_here(cfg, threads), key)
                    break  # an oracle may have become ready
                if len(running) < jobs:
                    pending.remove(job)
                    running[pool.submit(_train, cfg)] = (job, key)
            if not running and (not train or all(config(*j) is None for j in pending)):
                break  # what is left can't be read back (or its reference failed): the suite stays incomplete
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    job, key = running.pop(fut)
                    finish(job, fut.result(), key)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.close()
    out["complete"] = not pending
    out["suite_wall_s"] = time.perf_counter() - t0
    return out


def task_config(suite: str, task: str, spec: dict, seed: int, label: str, data_dir=None, device="auto",
                predictor: str | None = None, veto_probe: int | None = None) -> ExperimentConfig:
    """The configuration the bench trains for ``label`` (a policy, ``+cache`` for the prefix cache) on a task spec
    and seed: with ``run_key``, what finds a suite's run in its ``.runs`` folder. An oracle's freeze steps come from
    its ``none`` run, added by the caller."""
    base = dict(spec)
    base.pop("extra_policies", None)
    policy, cache = label.removesuffix("+cache"), label.endswith("+cache")
    frz = {**base.pop("frz", {}), **(LINEAR_DEFAULTS if policy == "linear" else {})}
    if policy == "smartfrz" and predictor is not None:
        frz["predictor_path"] = str(Path(predictor).resolve())
    if policy == "smartfrz" and veto_probe is not None:
        base["veto_probe"] = veto_probe
    return ExperimentConfig(name=f"bench-{suite}-{task}", policy=policy, seed=seed, data_dir=data_dir, device=device,
                            out_dir=None, progress=False, record_cka=policy == "none", cache=cache, frz=frz, **base)


def _train_here(cfg: ExperimentConfig, threads: int | None) -> dict:
    import torch
    before = torch.get_num_threads()
    _set_threads(threads)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(before)


def _spawn():
    import multiprocessing
    return multiprocessing.get_context("spawn")  # fork after torch's thread pools start can deadlock


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    tmp.replace(path)


def row(task: str, res: dict, ref: dict) -> dict:
    target = ref["metric"] - 0.005 * abs(ref["metric"])  # within 0.5% of full training's final metric
    reached = [h["time_s"] for h in res["history"] if h.get("eval") and h.get("metric", float("-inf")) >= target]
    keep = ("metric_name", "metric", "final", "train_flops", "full_train_flops", "flops_saved", "wall_s",
            "peak_mem_bytes", "energy_j", "overhead_s", "frozen_units", "timeline", "flops_check", "steps")
    label = res["config"]["policy"] + ("+cache" if res["config"].get("cache") else "")
    return {"task": task, "policy": label, "seed": res["config"]["seed"], "run": res["run"],
            "invocation": res.get("invocation"),
            **{k: res[k] for k in keep}, "decision_flops": res.get("decision_flops"), "cache": res.get("cache"),
            "time_to_target_s": reached[0] if reached else None,
            "target_metric": target}


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def seed_deltas(runs: list[dict], task: str, policy: str) -> list[tuple[dict, float]]:
    """Each run of ``policy`` on ``task``, in seed order, with its metric's change against `none` of its own seed
    (same initialisation and data order); runs whose seed has no `none` are left out."""
    base = {r["seed"]: r["metric"] for r in runs if r["task"] == task and r["policy"] == "none"}
    return [(r, r["metric"] - base[r["seed"]]) for r in sorted(runs, key=lambda r: r["seed"])
            if r["task"] == task and r["policy"] == policy and r["seed"] in base]


def summarize(bench: dict) -> list[dict]:
    """Medians over seeds per (task, policy), with ratios against `none` of the same run."""
    rows = []
    by = {}
    for r in bench["runs"]:
        by.setdefault((r["task"], r["policy"]), []).append(r)
    for (task, policy), rs in by.items():
        base = by[(task, "none")]
        med = {k: _median([r[k] for r in rs]) for k in ("metric", "train_flops", "wall_s", "peak_mem_bytes", "energy_j", "time_to_target_s")}
        bmed = {k: _median([r[k] for r in base]) for k in med}
        extra = {m: _median([r["final"].get(m) for r in rs if isinstance(r["final"].get(m), (int, float))])
                 for m in ("accuracy", "f1", "matthews_correlation") if any(m in r["final"] for r in rs)}
        paired = [(r["seed"], d) for r, d in seed_deltas(bench["runs"], task, policy)]
        rows.append({"task": task, "policy": policy, "seeds": len(rs), "metric_name": rs[0]["metric_name"], **med,
                     "metric_delta": med["metric"] - bmed["metric"],
                     "metric_delta_per_seed": [d for _, d in paired],  # against `none` of the same seed, by seed
                     "metric_delta_median": _median([d for _, d in paired]),  # the figure targets are judged on
                     "flops_saved": 1 - med["train_flops"] / bmed["train_flops"],
                     # the decisions' own forwards (veto probes) over full training; None: not recorded then
                     "decision_flops_share": None if any(r.get("decision_flops") is None for r in rs) else
                     _median([r["decision_flops"] / r["full_train_flops"] for r in rs]),
                     "speedup": bmed["wall_s"] / med["wall_s"] if med["wall_s"] and _one_invocation(rs + base, bench) else None,
                     # on a CPU peak memory is the process's RSS, and `none` also holds the lab's label snapshots
                     # (a model copy per checkpoint): every policy would read as saving memory. On a GPU the
                     # snapshots sit in host RAM and the peak is CUDA's own allocation.
                     "mem_ratio": med["peak_mem_bytes"] / bmed["peak_mem_bytes"]
                     if bmed["peak_mem_bytes"] and not str(bench.get("device") or "cpu").startswith("cpu") else None,
                     "overhead_s": _median([r["overhead_s"]["total"] for r in rs]),
                     # recording and deciding as a share of the run's own wall-clock: what a decision costs in time
                     "overhead_share": _median([r["overhead_s"]["total"] / r["wall_s"] for r in rs if r["wall_s"]]),
                     **{f"final_{k}": v for k, v in extra.items()}})
    order = {p: i for i, p in enumerate(ALL_POLICIES)}
    return sorted(rows, key=lambda r: (r["task"], order.get(r["policy"], 99)))


def _one_invocation(runs: list[dict], bench: dict) -> bool:
    """Whether these runs were trained by one invocation, so their wall-clock shared a load and compares.
    Runs recorded before the invocation was kept: only when the suite trained everything it shows."""
    seen = {r.get("invocation") for r in runs}
    if None in seen:
        return not bench.get("read_back")
    return len(seen) == 1


def _share(x: float | None) -> str:
    return "n/m" if x is None else f"{100 * x:.1f}%"


def _delta(d: float, metric: float) -> str:
    """Points of accuracy (%) to 2 decimals; scores in [0, 1] (F1, Matthews) to 4."""
    return f"{d:+.4f}" if abs(metric) <= 1 else f"{d:+.2f}"


def markdown(bench: dict, command: str | None = None) -> str:
    state = "" if bench.get("complete", True) else " **Partial: the suite has not finished.**"
    wall = bench.get("suite_wall_s")
    lines = [f"# Benchmark `{bench['suite']}`", "",
             f"Device: {bench['device']}; {bench.get('jobs', 1)} runs side by side. Started {bench['started']}"
             + (f", suite wall-clock {wall / 60:.1f} min" if wall else "") + f".{state}",
             *([f"Command: `{command}`"] if command else []),
             *([f"Code: commit `{bench['commit']}`."] if bench.get("commit") else []), "",
             f"Setting: {bench['why']}" if bench.get("why") else "", "",
             "Medians over seeds; ratios against `none` (full training) of this same run. **FLOPs saved is the "
             "primary figure**: runs shared the machine, so wall-clock speed-ups are given too but carry that "
             "noise. Δ is in the metric's own units: accuracy in % (digits, CIFAR) or in [0, 1] (GLUE: accuracy, F1, "
             "Matthews correlation). Δ per seed: each run against the `none` run of its own seed (same initialisation "
             "and data order), in seed order; Δ vs none is their median.", "",
             "Decision FLOPs: the decisions' own forwards (the functional veto's probe batches) as a share of full "
             "training; FLOPs saved does not subtract them, so a policy's net saving is the difference (n/m: not "
             "recorded by runs that old). Overhead: the seconds spent recording weight windows and deciding (the "
             "predictor, the veto's forwards and copies), and their share of the run's own wall-clock (median). Peak "
             "memory: CUDA's peak allocation on a GPU (see † on a CPU).", "",
             "| task | policy | seeds | metric | Δ vs none | Δ per seed | FLOPs saved | decision FLOPs "
             "| speed-up (wall) | time to target (s) | peak mem ratio | overhead (s, share of time) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = summarize(bench)
    for r in rows:
        ttt = "n/a" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        speed = "n/a\\*" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        mem = "n/a†" if r["mem_ratio"] is None else f"{r['mem_ratio']:.2f}"
        lines.append(f"| {r['task']} | {r['policy']} | {r['seeds']} | {r['metric_name']} {r['metric']:.4g} | "
                     f"{_delta(r['metric_delta_median'], r['metric'])} | "
                     f"{' / '.join(_delta(d, r['metric']) for d in r['metric_delta_per_seed'])} | "
                     f"{100 * r['flops_saved']:.1f}% | {_share(r['decision_flops_share'])} | {speed} | {ttt} | "
                     f"{mem} | {r['overhead_s']:.2f} ({_share(r['overhead_share'])}) |")
    if any(r["mem_ratio"] is None for r in rows):
        lines += ["", "† No memory ratio on a CPU: peak memory there is the worker process's resident size, which keeps "
                  "what its earlier runs left, and the `none` runs also hold the lab's label snapshots (a copy of the "
                  "model per checkpoint), so every policy would read as saving memory. The JSON keeps each run's "
                  "`peak_mem_bytes`."]
    if any(r["speedup"] is None for r in rows):
        lines += ["", "\\* No wall-clock speed-up: these runs and their `none` runs were not all trained by one "
                  "invocation of the bench, so they ran under different loads. Read the FLOPs."]
    by = {(r["task"], r["policy"]): r for r in rows}
    notes = [f"- {t}: none {by[(t, 'none')]['metric_name']} {by[(t, 'none')]['metric']:.4g}, oracle "
             f"{by[(t, 'oracle')]['metric']:.4g} ({by[(t, 'oracle')]['metric_delta_median']:+.3g}) at "
             f"{100 * by[(t, 'oracle')]['flops_saved']:.1f}% FLOPs saved"
             for t in dict.fromkeys(r["task"] for r in rows) if (t, "oracle") in by]
    if notes:
        lines += ["", "The oracle (hindsight labels from the `none` run of the same seed) against full training:",
                  *notes]
    cached = [r for r in bench["runs"] if r.get("cache")]
    if cached:
        lines += ["", "Prefix cache (`+cache`: the same policy, frozen units' outputs stored per example; medians):"]
        for (task, label) in dict.fromkeys((r["task"], r["policy"]) for r in cached):
            rs = [r for r in cached if (r["task"], r["policy"]) == (task, label)]
            c = {k: _median([r["cache"][k] for r in rs]) for k in ("ram_bytes", "disk_bytes", "fill_flops")}
            fill = _median([r["cache"]["fill_flops"] / r["train_flops"] for r in rs])
            served = _median([r["cache"]["hits"] / max(1, r["steps"]) for r in rs])
            lines.append(f"- {task} {label}: store {(c['ram_bytes'] + c['disk_bytes']) / 2**20:.1f} MiB "
                         f"({rs[0]['cache']['dtype']}), its own work (8 verification rows per freeze, and the "
                         f"passes that complete a part-filled store at an epoch's start) is {100 * fill:.2f}% of the "
                         f"run's FLOPs; {served:.0%} of steps fed from a store")
    base = [r["finished_s"] for r in bench["runs"] if r.get("finished_s") is not None and not r.get("cache")]
    if base and cached:
        lines += ["", f"The runs without the cache finished {max(base) / 60:.1f} min into this invocation."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", required=True, choices=sorted(SUITES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True, help="JSON path; the Markdown table goes beside it, the runs in <out>.runs/")
    ap.add_argument("--policies", nargs="*", default=list(ALL_POLICIES),
                    help="default: all; the +cache ones run only on the tasks that list them")
    ap.add_argument("--seeds", nargs="*", type=int, default=None)
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--jobs", type=int, default=None, help="runs side by side (default: CPU cores on CPU, 1 on GPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 on CPU)")
    ap.add_argument("--predictor", default=None, help="weights for the smartfrz policies (default: the shipped ones)")
    ap.add_argument("--veto-probe", type=int, default=None,
                    help="examples in the smartfrz policies' veto probe (default: 256 images, 128 sentences)")
    ap.add_argument("--no-train", action="store_true", help="only read back finished runs and render them")
    ap.add_argument("--render", action="store_true",
                    help="only re-write the Markdown beside --out from that JSON (its Command: line is kept)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.suffix != ".json":
        raise SystemExit(f"--out must end in .json (got {out}); the Markdown table is written beside it")
    command = "python -m smartfrz.lab.bench " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    if a.render:
        import re
        bench, md = json.loads(out.read_text()), out.with_suffix(".md")
        kept = re.search(r"^Command: `(.+)`$", md.read_text() if md.is_file() else "", re.M)
        md.write_text(markdown(bench, kept.group(1) if kept else None))
        print(f"wrote {md} from {out}")
        return

    def save(bench):
        _write_json(out, bench)
        out.with_suffix(".md").write_text(markdown(bench, command))

    bench = run_suite(a.suite, a.data_dir, a.device, a.policies, a.seeds, a.tasks,
                      runs_dir=out.with_suffix(".runs"), jobs=a.jobs, threads=a.threads, on_run=save,
                      predictor=a.predictor, train=not a.no_train, veto_probe=a.veto_probe)
    save(bench)
    print(markdown(bench, command))
    print(f"wrote {out} and {out.with_suffix('.md')} ({bench['read_back']} runs read back, {bench['trained']} trained)")


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)
