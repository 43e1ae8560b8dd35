"""Finer functional signals on recorded runs: what the veto would read with the whole probe, or the change in
its output distributions rather than in its argmax.

A recorded run keeps, per checkpoint, the share of the probe's first 32 predictions that change when units 0..k
go back to their weights a lookback ago (`veto_share`). At 32 rows one prediction is 3% and the share flickers
(`scripts/functional_rule.py`). This script trains a recorded recipe again without freezing (the same run: its
final metric and its 32-row shares are checked against the recording) and keeps, at the same checkpoints and
lookbacks, for every prefix:

- ``share32``: the changed share on the first 32 rows (the recording's; the check),
- ``share``: the changed share on the whole probe (256 images, 128 or 256 sentences),
- ``tv``: the mean total-variation distance between the probe's softmax outputs, which moves before any argmax
  flips and does not count near-ties as all-or-nothing; ``tv32`` the same on the first 32 rows (the veto's cost),
- ``margin32``, ``margin32_tv``: the changed share and the mean total-variation distance on the 32 rows of the
  whole probe whose prediction the current model holds least firmly (smallest gap between its two most probable
  classes): the veto's cost, spent where a prediction can change (classification outputs only).

    python scripts/functional_signal_runs.py --runs data/freeze_runs --names <run names> --data-dir ../shared/data \\
        --jobs 2 --out artifacts/signals      # one <name>.safetensors per run; calling again skips those done

`scripts/functional_rule.py --signals artifacts/signals --measure tv` scores a rule on them.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from smartfrz.lab.train import example_input, fit
from smartfrz.predictor_training.freeze_dataset import RunSpec, _optimizer, build_task, load_run
from smartfrz.predictor_training.labels import VETO_FROM
from smartfrz.units import find_units
from smartfrz.veto import load_unit_state, logits, token_mask, unit_state

MEASURES = ("share32", "share", "tv", "tv32", "margin32", "margin32_tv")
CAP = 0.5  # a prefix scan stops once every measure is above this (larger prefixes: NaN, read as above it)


@torch.no_grad()
def prefix_measures(model, units, old: dict, probe) -> torch.Tensor:
    """(units, MEASURES) for units 0..k put back to ``old`` together, k = 0, 1, ...; NaN past the cap."""
    out = torch.full((len(units), len(MEASURES)), float("nan"))
    current = [unit_state(u) for u in units]
    ref = logits(model, probe)
    kept = token_mask(probe, ref)
    p_ref = ref.softmax(-1)
    top2 = p_ref.topk(2, -1).values if kept is None and ref.dim() == 2 else None
    low = None if top2 is None else (top2[:, 0] - top2[:, 1]).argsort()[:32]
    try:
        for i, u in enumerate(units):
            load_unit_state(u, old[i])
            new = logits(model, probe)
            flips = ref.argmax(-1) != new.argmax(-1)
            tv = 0.5 * (new.softmax(-1) - p_ref).abs().sum(-1)
            if kept is None:
                vals = [flips[:32].float().mean(), flips.float().mean(), tv.mean(), tv[:32].mean(),
                        flips[low].float().mean(), tv[low].mean()]
            else:  # per-token outputs: padding counts for nothing
                vals = [(flips & kept)[:32].sum() / kept[:32].sum().clamp_min(1), (flips & kept).sum() / kept.sum(),
                        (tv * kept).sum() / kept.sum(), (tv * kept)[:32].sum() / kept[:32].sum().clamp_min(1),
                        torch.tensor(float("nan")), torch.tensor(float("nan"))]
            out[i] = torch.stack([v.float() for v in vals])
            if bool((out[i] > CAP).all()):
                break
    finally:
        for u, s in zip(units, current):
            load_unit_state(u, s)
    return out


def record(name: str, runs_dir: str, data_dir, out_dir: str, threads: int = 1) -> str:
    torch.set_num_threads(threads)
    out = Path(out_dir) / f"{name}.safetensors"
    if out.exists():
        return f"{name}: kept"
    run = load_run(Path(runs_dir) / f"{name}.safetensors")
    meta = run["meta"]
    spec = RunSpec(**meta["spec"])
    model, loader, eval_loader, probe, mask, metric_fn = build_task(spec, data_dir, "cpu")
    total = spec.epochs * len(loader)
    # as the recording: a text probe is no example input, so the loader's first batch is drawn (advancing its RNG)
    units = find_units(model, probe[:2] if torch.is_tensor(probe) else example_input(next(iter(loader))))
    if [u.name for u in units] != meta["units"]:
        raise ValueError(f"{name}: the model's units {[u.name for u in units]} are not the recorded {meta['units']}")
    checkpoints = run["steps"].tolist()
    at = {s: i for i, s in enumerate(checkpoints)}  # checkpoint step -> row (looked up after every step)
    lookbacks = meta["veto_lookbacks"]
    start = math.ceil(VETO_FROM * total)
    wanted = {c - L for c in checkpoints if c >= start for L in lookbacks if c - L >= 0}
    copies: dict[int, list] = {}
    signal = torch.full((len(checkpoints), len(lookbacks), len(units), len(MEASURES)), float("nan"))

    def take(step: int) -> None:
        if step in wanted:
            copies[step] = [unit_state(u) for u in units]

    def on_step(step: int) -> None:
        if (i := at.get(step)) is not None and step >= start:
            was = model.training
            model.eval()
            for j, L in enumerate(lookbacks):
                if step - L in copies:
                    signal[i, j] = prefix_measures(model, units, dict(enumerate(copies[step - L])), probe)
            model.train(was)
            for s in [s for s in copies if s <= step - max(lookbacks)]:
                del copies[s]
        take(step)

    take(0)
    opt, sched = _optimizer(spec, model.parameters(), total)
    t0 = time.perf_counter()
    res = fit(model, opt, loader, spec.epochs, device="cpu", scheduler=sched, eval_loader=eval_loader,
              metric_fn=metric_fn, eval_every_epochs=spec.epochs, on_step=on_step, progress=False)
    metric, recorded = float(res.final["metric"]), float(meta["final"]["metric"])
    share32 = signal[..., 0]
    ref = run["veto_share"][..., 0].float()
    both = ~share32.isnan() & ~ref.isnan()
    check = {"metric": metric, "recorded_metric": recorded, "reproduced": metric == recorded,
             "share32_max_diff": float((share32[both] - ref[both]).abs().max()) if both.any() else None,
             "wall_s": time.perf_counter() - t0}
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({"signal": signal.contiguous(), "steps": run["steps"].contiguous()}, str(tmp),
              metadata={"name": name, "measures": json.dumps(MEASURES), "lookbacks": json.dumps(lookbacks),
                        "check": json.dumps(check)})
    tmp.replace(out)
    return f"{name}: {json.dumps(check)}"


def load_signal(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        return {"signal": f.get_tensor("signal"), "steps": f.get_tensor("steps"),
                "measures": json.loads(meta["measures"]), "lookbacks": json.loads(meta["lookbacks"]),
                "check": json.loads(meta["check"])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="a folder of recorded freeze runs")
    ap.add_argument("--names", nargs="+", required=True, help="run names (file stems), cheapest first")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="a folder: one <name>.safetensors per run")
    a = ap.parse_args(argv)
    if missing := [n for n in a.names if not (a.runs / f"{n}.safetensors").exists()]:
        ap.error(f"no recorded run {missing} in {a.runs}; names are the files' stems there")
    args = (a.names, [str(a.runs)] * len(a.names), [a.data_dir] * len(a.names), [str(a.out)] * len(a.names))
    if a.jobs == 1:
        for line in map(record, *args):
            print(line, flush=True)
    else:
        with ProcessPoolExecutor(a.jobs) as pool:
            for line in pool.map(record, *args):
                print(line, flush=True)


if __name__ == "__main__":
    main()
