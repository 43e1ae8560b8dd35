"""A label checked against counterfactual freezing on the predictor's own training runs.

For each recorded freeze run (`data/freeze_runs`), every unit but the last is frozen at its label's step (the
oracle the predictor learns), and again at that step moved earlier by a share of the run (`--shifts`); each is
trained on from the same initialisation and data order as the recorded recipe, and compared with the recipe
trained again without freezing in the same invocation. A label is good on a run when its oracle is safe there
and the earlier freezes are not: then it sits at the run's frontier. Bench tasks have `scripts/frontier.py`;
this is the same question on the runs the labels are made from.

    python scripts/label_check_runs.py --runs data/freeze_runs --names resnet20-cifar10-scratch-sgd0.05-cosine-s4 \\
        --label scratch=rewind:0.05,finetune=rewind:0.02 --shifts 0 0.1 0.2 --data-dir ../shared/data --jobs 2 \\
        --out reports/bench/bound/label_check_runs.json

Saving is first-order, as the held-out replay counts it: each frozen unit's share of the step's forward FLOPs
times the share of the run left when it froze.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from smartfrz import SmartFRZ
from smartfrz.lab.train import example_input, fit
from smartfrz.predictor_training.freeze_dataset import RunSpec, _optimizer, build_task, load_run
from smartfrz.predictor_training.labels import first_steps, front_to_back
from smartfrz.predictor_training.training import run_settled, saved_share

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier import tolerance  # noqa: E402


def label_steps(run: dict, label: str) -> dict[int, int]:
    """Unit index -> the step the oracle freezes it at (every unit but the last): its front-to-back label's first
    checkpoint, as the engine freezes."""
    labels = front_to_back(run_settled(run, label))[:, :-1]
    return {int(u): s for u, s in first_steps(labels, run["steps"].tolist(), range(labels.shape[1])).items()}


def shifted(freeze: dict[int, int], shift: float, total: int) -> dict[int, int]:
    """The label's freeze steps moved earlier by ``shift`` of the run (never before step 1), still front to back;
    a negative shift moves them later, and units it moves past the run's end are not frozen."""
    moved = {u: max(1, s - round(shift * total)) for u, s in freeze.items()}
    return {u: s for u, s in moved.items() if s < total}


def train(spec: RunSpec, freeze: dict[int, int] | None, units: list[str], data_dir, threads: int = 1) -> float:
    """The recipe's final metric, trained with every unit in ``freeze`` (indices into the recorded ``units``)
    frozen from its step on (None: nothing)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(spec, freeze, units, data_dir)
    finally:
        torch.set_num_threads(before)


def _train(spec: RunSpec, freeze: dict[int, int] | None, units: list[str], data_dir) -> float:
    model, loader, eval_loader, probe, mask, metric_fn = build_task(spec, data_dir, "cpu")
    total = spec.epochs * len(loader)
    opt, sched = _optimizer(spec, model.parameters(), total)
    frz = None
    # drawn with or without freezing, as the recording drew it: a first batch of a shuffled loader advances its RNG
    example = probe[:2] if torch.is_tensor(probe) else example_input(next(iter(loader)))
    if freeze:
        frz = SmartFRZ(model, opt, example_input=example, policy="oracle", decide_every=1, total_steps=total,
                       steps_per_epoch=len(loader), oracle_freeze_steps={units[u]: s for u, s in freeze.items()})
        if [u.name for u in frz.units] != units:
            raise ValueError(f"{spec.name}: the model's units {[u.name for u in frz.units]} are not the recorded {units}")
    res = fit(model, opt, loader, spec.epochs, device="cpu", scheduler=sched, frz=frz, eval_loader=eval_loader,
              metric_fn=metric_fn, eval_every_epochs=spec.epochs, progress=False)
    return float(res.final["metric"])


def plan(run: dict, label: str, shifts) -> list[tuple[str, dict | None]]:
    """(what, freeze steps) to train for one run: no freezing first, then the label shifted by each share."""
    total, freeze = run["meta"]["total_steps"], label_steps(run, label)
    return [("none", None)] + [(f"label-{s:g}", shifted(freeze, s, total)) for s in shifts]


def summary(rows: list[dict]) -> dict:
    """Per freeze schedule (the label, each shift): how many runs lost more than the tolerance, and medians."""
    out = {}
    for what in dict.fromkeys(r["what"] for r in rows if r["what"] != "none"):
        sel = [r for r in rows if r["what"] == what]
        out[what] = {"runs": len(sel), "unsafe": sum(not r["safe"] for r in sel),
                     "median_delta": statistics.median(r["delta"] for r in sel), "worst_delta": min(r["delta"] for r in sel),
                     "median_saved": statistics.median(r["saved"] for r in sel)}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="a folder of recorded freeze runs")
    ap.add_argument("--names", nargs="+", required=True, help="run names (file stems) to check")
    ap.add_argument("--label", required=True, help="as smartfrz.predictor_training.training --label")
    ap.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.1, 0.2],
                    help="shares of the run to move the label's steps earlier by (0: the label itself)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if bad := [s for s in a.shifts if not 0.0 <= s < 1.0]:
        ap.error(f"--shifts are shares of the run in [0, 1); got {bad}")
    missing = [n for n in a.names if not (a.runs / f"{n}.safetensors").exists()]
    if missing:
        ap.error(f"no recorded run {missing} in {a.runs}; names are the files' stems there")
    jobs, rows = [], []
    for name in a.names:
        run = load_run(a.runs / f"{name}.safetensors")
        spec = RunSpec(**run["meta"]["spec"])
        for what, freeze in plan(run, a.label, a.shifts):
            jobs.append((name, what, freeze, spec, run["meta"]))
    args = ([j[3] for j in jobs], [j[2] for j in jobs], [j[4]["units"] for j in jobs], [a.data_dir] * len(jobs))
    if a.jobs == 1:
        metrics = list(map(train, *args))
    else:
        with ProcessPoolExecutor(a.jobs) as pool:
            metrics = list(pool.map(train, *args))
    base = {name: m for (name, what, *_), m in zip(jobs, metrics) if what == "none"}
    for (name, what, freeze, spec, meta), m in zip(jobs, metrics):
        total = meta["total_steps"]
        rows.append({"run": name, "what": what, "metric": m, "delta": m - base[name],
                     "safe": m - base[name] >= -tolerance(base[name]),
                     "saved": 0.0 if not freeze else saved_share(freeze, meta["flop_share"], total),
                     "freeze_steps": freeze or {}, "total_steps": total})
        print(f"{name} {what}: metric {m:.4g} ({m - base[name]:+.3g}), saves {rows[-1]['saved']:.1%} first-order"
              + ("" if rows[-1]["safe"] else "  UNSAFE"))
    table = summary(rows)
    for what, t in table.items():
        print(f"{what}: {t['unsafe']} of {t['runs']} runs past the tolerance, median delta {t['median_delta']:+.3g}, "
              f"worst {t['worst_delta']:+.3g}, median saving {t['median_saved']:.1%} first-order")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"label": a.label, "shifts": a.shifts, "summary": table, "rows": rows}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
