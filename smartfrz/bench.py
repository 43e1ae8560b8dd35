"""Side-by-side benchmark: every policy on the same model, data order and seed, costs measured.

``python -m smartfrz.bench --suite smoke|cpu|gpu [--data-dir DIR] --out reports/bench/NAME.json``

Per task and seed, the ``none`` run goes first and doubles as the oracle's reference (its probe
CKA curves give the hindsight freeze steps). Ratios in the Markdown table are against ``none`` of
the same suite run, as medians over seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from .experiment import ExperimentConfig, ExperimentResult, oracle_steps, run

POLICY_ORDER = ("none", "oracle", "smartfrz", "linear", "autofreeze")

SUITES: dict[str, dict] = {
    # seconds on CPU; the tests run it
    "smoke": {"seeds": (0, 1), "tasks": {
        "digits_cnn": dict(task="digits", model="digits_cnn", epochs=6, batch_size=64, lr=0.05)}},
    # real data from --data-dir, 2 CPU cores
    "cpu": {"seeds": (0, 1, 2), "tasks": {
        "cifar10_resnet20": dict(task="cifar10", model="resnet20", subset=10000, epochs=30, batch_size=128, lr=0.1),
        "mrpc_minilm": dict(task="mrpc", model="minilm", epochs=3, batch_size=32, lr=5e-5, schedule="linear",
                            frz={"decide_every": 29})}},
    # paper-shaped runs for one GPU, each well inside a 10-minute call
    "gpu": {"seeds": (0, 1, 2), "tasks": {
        "cifar10_resnet18": dict(task="cifar10", model="resnet18_cifar", epochs=30, batch_size=256, lr=0.1),
        "cifar10_deit_tiny": dict(task="cifar10", model="deit_tiny", epochs=30, batch_size=256, lr=1e-3,
                                  optimizer="adamw", weight_decay=0.05),
        "mrpc_minilm": dict(task="mrpc", model="minilm", epochs=3, batch_size=32, lr=5e-5, schedule="linear",
                            frz={"decide_every": 29}),
        "cola_minilm": dict(task="cola", model="minilm", epochs=3, batch_size=32, lr=5e-5, schedule="linear",
                            frz={"decide_every": 67})}},
}


def linear_defaults(cfg: ExperimentConfig) -> dict:
    """FreezeOut-style schedule: start freezing at half of training, end with the front 80% frozen."""
    return {"freeze_start": 0.5, "freeze_level": 0.8}


def run_suite(suite: str, data_dir=None, device="auto", policies=POLICY_ORDER, seeds=None, tasks=None,
              out_dir="reports/bench/runs", progress=True) -> dict:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; allowed: {', '.join(SUITES)}")
    bad = sorted(set(policies) - set(POLICY_ORDER))
    if bad:
        raise ValueError(f"unknown policies {bad}; allowed: {', '.join(POLICY_ORDER)}")
    spec = SUITES[suite]
    seeds = tuple(seeds) if seeds is not None else spec["seeds"]
    tasks = {k: v for k, v in spec["tasks"].items() if tasks is None or k in tasks}
    jobs = [(t, s, p) for t in tasks for s in seeds for p in POLICY_ORDER if p in policies or p == "none"]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc=f"bench {suite}", dynamic_ncols=True)
    out = {"suite": suite, "device": None, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    refs: dict[tuple, ExperimentResult] = {}
    for task, seed, policy in jobs:
        base = dict(tasks[task])
        frz = dict(base.pop("frz", {}))
        cfg = ExperimentConfig(name=f"bench-{suite}-{task}", policy=policy, seed=seed, data_dir=data_dir, device=device,
                               out_dir=out_dir, progress=False, record_cka=policy == "none", **base)
        if policy == "linear":
            frz.update(linear_defaults(cfg))
        if policy == "oracle":
            cfg = replace(cfg, oracle_freeze_steps=oracle_steps(refs[(task, seed)], cfg.oracle_tau))
        cfg = replace(cfg, frz=frz)
        if bar is not None:
            bar.set_postfix_str(f"{task} s{seed} {policy}")
        res = run(cfg)
        if policy == "none":
            refs[(task, seed)] = res
        out["device"] = res.device
        ref = refs[(task, seed)]
        out["runs"].append(row(task, res, ref))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def row(task: str, res: ExperimentResult, ref: ExperimentResult) -> dict:
    target = ref.metric - 0.005 * abs(ref.metric)  # within 0.5% of full training's final metric
    reached = [h["time_s"] for h in res.history if h.get("eval") and h.get("metric", float("-inf")) >= target]
    return {"task": task, "policy": res.config["policy"], "seed": res.config["seed"], "metric_name": res.metric_name,
            "metric": res.metric, "final": res.final, "train_flops": res.train_flops,
            "full_train_flops": res.full_train_flops, "flops_saved": res.flops_saved, "wall_s": res.wall_s,
            "peak_mem_bytes": res.peak_mem_bytes, "energy_j": res.energy_j, "overhead_s": res.overhead_s,
            "time_to_target_s": reached[0] if reached else None, "target_metric": target,
            "frozen_units": res.frozen_units, "timeline": res.timeline, "flops_check": res.flops_check}


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


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
        rows.append({"task": task, "policy": policy, "seeds": len(rs), "metric_name": rs[0]["metric_name"], **med,
                     "metric_delta": med["metric"] - bmed["metric"],
                     "flops_saved": 1 - med["train_flops"] / bmed["train_flops"],
                     "speedup": bmed["wall_s"] / med["wall_s"] if med["wall_s"] else None,
                     "mem_ratio": med["peak_mem_bytes"] / bmed["peak_mem_bytes"] if bmed["peak_mem_bytes"] else None,
                     "overhead_s": _median([r["overhead_s"]["total"] for r in rs]),
                     **{f"final_{k}": v for k, v in extra.items()}})
    order = {p: i for i, p in enumerate(POLICY_ORDER)}
    return sorted(rows, key=lambda r: (r["task"], order.get(r["policy"], 99)))


def markdown(bench: dict) -> str:
    lines = [f"# Benchmark `{bench['suite']}`", "", f"Device: {bench['device']}. Started {bench['started']}.",
             "Medians over seeds; ratios against `none` (full training) of this same run.", "",
             "| task | policy | seeds | metric | Δ vs none | FLOPs saved | speed-up | time to target (s) | peak mem ratio | overhead (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summarize(bench):
        ttt = "n/a" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        lines.append(f"| {r['task']} | {r['policy']} | {r['seeds']} | {r['metric_name']} {r['metric']:.4g} | "
                     f"{r['metric_delta']:+.3g} | {100 * r['flops_saved']:.1f}% | {r['speedup']:.2f}x | {ttt} | "
                     f"{r['mem_ratio']:.2f} | {r['overhead_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", required=True, choices=sorted(SUITES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True, help="JSON path; the Markdown table goes beside it")
    ap.add_argument("--policies", nargs="*", default=list(POLICY_ORDER))
    ap.add_argument("--seeds", nargs="*", type=int, default=None)
    ap.add_argument("--tasks", nargs="*", default=None)
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.suffix != ".json":
        raise SystemExit(f"--out must end in .json (got {out}); the Markdown table is written beside it")
    bench = run_suite(a.suite, a.data_dir, a.device, a.policies, a.seeds, a.tasks, out_dir=str(out.parent / "runs"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(bench, indent=1, default=float))
    tmp.replace(out)
    out.with_suffix(".md").write_text(markdown(bench))
    print(markdown(bench))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
