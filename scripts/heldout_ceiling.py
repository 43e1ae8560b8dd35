"""How far can any decision rule take the predictor on runs it never saw?

For each held-out fold (one family out, one schedule out) the predictor is trained without the fold, calibrated
and given out-of-fold predictions on its training runs as ``training.train_selected`` does, and its P(freeze) on
the fold's runs is kept (``--cache``, resumable). The engine's rule is then replayed on them two ways:

- ``selected``: the rule chosen on the training runs' out-of-fold predictions (largest saving with at most
  ``MAX_EARLY`` of units early) and replayed on the fold: what the training report's held-out figures measure.
  ``--reliefs DELTA@FROM``: the search may also lower the threshold by DELTA from FROM of the run on (a rule
  that reads progress: high while early-settling runs must stay safe, lower near the end where CNN units settle).
- ``--per-decisions 0 1 2``: the grid also tries a limit on units frozen at one decision (the engine's
  ``freeze_per_decision``; 0: none).
- ``--no-predictor``: P(freeze) is the share of the run done, so a threshold is a fixed point of the run (the
  veto still applies): the baseline any predictor has to beat.
- ``hindsight``: the one rule (the same grid) with the largest saving on the held-out predictions themselves at
  each budget of units frozen early: a ceiling for any way of choosing a rule for these predictions.

    python scripts/heldout_ceiling.py --cache artifacts/heldout_probs.npz --out reports/predictor/heldout_ceiling.json
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from smartfrz.predictor_training import training as T
from smartfrz.predictor_training.freeze_dataset import load_runs

KINDS = {"family": lambda meta: meta["family"], "schedule": lambda meta: meta["spec"]["schedule"]}


def fold_probs(d: dict, runs: list[dict], held: np.ndarray, members: int, epochs: int, seed: int = 0) -> np.ndarray:
    """Calibrated P(freeze) on every sample: out of fold on the training runs, from the full fit on ``held``'s runs
    (``training.train_selected``'s steps)."""
    train_ids = np.setdiff1d(np.arange(len(runs)), held)
    logits, a, b = T.out_of_fold(d, runs, train_ids, seed, epochs, T.FOLDS, members)
    in_train = np.isin(d["run"].numpy(), train_ids)
    model = T.fit_members(d, torch.from_numpy(np.nonzero(in_train)[0]), seed, epochs, members)
    te = torch.from_numpy(np.nonzero(~in_train)[0])
    logits[te] = T._logits(model, d["x"][te])
    return torch.sigmoid(a * logits + b).numpy()


def relieved(p: np.ndarray, done: np.ndarray, relief: tuple[float, float]) -> np.ndarray:
    """P as a threshold lowered by ``delta`` from ``relax_from`` of the run on would read it."""
    delta, relax_from = relief
    return np.where(done >= relax_from, p + delta, p) if delta else p


def rules(taus, lookbacks, starts, reliefs, per_decisions=(0,)):
    vetoes = [None if t is None else (t, 32, lb) for t in taus for lb in (lookbacks if t is not None else [None])]
    return list(itertools.product(reliefs, (0, 16), T.DECISIONS_PER_EPOCH, (1, 2, 3), starts, vetoes, T.THRESHOLDS,
                                  per_decisions))


def replay_rule(d, runs, p, done, run_ids, rule, grids_by_relief: dict | None = None) -> list[dict]:
    """``grids_by_relief``: a dict kept across calls with the same ``p`` and ``run_ids``, so each relief's grids are
    built once rather than once per rule (building them costs more than the replay)."""
    relief, per_run, per_epoch, patience, start, veto, threshold, per_decision = rule
    cache = {} if grids_by_relief is None else grids_by_relief
    if relief not in cache:
        q = relieved(p, done, relief)
        cache[relief] = {r: T._grid(d, r, q) for r in run_ids}
    grids = cache[relief]
    return T.replay_all(grids, runs, float(threshold), patience, per_epoch, per_run, start, veto, per_decision)


def scored(rows: list[dict]) -> dict:
    s = T.summarize(rows)
    return {k: s[k] for k in ("early", "units", "early_share", "saved_share_of_oracle")}


def breakdown(runs: list[dict], rows: list[dict]) -> dict:
    """Where a rule's early units are (run name -> count) and each family's share of its oracle's saving."""
    fam: dict[str, list] = {}
    for row in rows:
        f = fam.setdefault(runs[row["run"]]["meta"]["family"], [0.0, 0.0])
        f[0], f[1] = f[0] + row["saved"], f[1] + row["oracle_saved"]
    return {"early_by_run": {runs[row["run"]]["meta"]["name"]: row["early"] for row in rows if row["early"]},
            "share_by_family": {k: v[0] / v[1] if v[1] > 0 else None for k, v in sorted(fam.items())}}


def describe(rule) -> dict:
    (delta, relax_from), per_run, per_epoch, patience, start, veto, threshold, per_decision = rule
    return {"threshold": float(threshold), "patience": patience, "decisions_per_epoch": per_epoch,
            "decisions_per_run": per_run, "decide_from": start, "veto": None if veto is None else list(veto),
            "relief": delta, "relax_from": relax_from, "freeze_per_decision": per_decision}


def select(d, runs, p, done, run_ids, grid) -> tuple:
    """``training.select_rule``'s objective over ``grid``: the largest pooled saving within MAX_EARLY (else the fewest
    early); ties go to fewer decisions, a longer patience, a smaller relief, then no limit a decision (not its start,
    veto or lookback)."""
    best, grids = None, {}
    for rule in grid:
        s = scored(replay_rule(d, runs, p, done, run_ids, rule, grids))
        ok = s["early_share"] <= T.MAX_EARLY
        key = (ok, (s["saved_share_of_oracle"] or 0.0) if ok else -s["early_share"], -rule[2], -rule[1], rule[3],
               -rule[0][0], -rule[7])
        if best is None or key > best[0]:
            best = (key, rule)
    return best[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="data/freeze_runs")
    ap.add_argument("--label", default="scratch=rewind:0.05,finetune=rewind:0.02")
    ap.add_argument("--label-shifts", default="data/freeze_runs/label_shifts.json")
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--progress-input", action="store_true")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--cache", default=None, help="npz of each fold's probabilities (made if missing, resumed)")
    ap.add_argument("--no-predictor", action="store_true", help="P(freeze) = the share of the run done (no training)")
    ap.add_argument("--taus", nargs="+", default=["none", "0.05", "0.1"])
    ap.add_argument("--lookbacks", nargs="+", default=["decision", "epoch"])
    ap.add_argument("--starts", nargs="+", type=float, default=[0.0, 0.4, 0.6])
    ap.add_argument("--reliefs", nargs="*", default=[], help="DELTA@FROM, e.g. 0.2@0.7 (the selected rule's grid only)")
    ap.add_argument("--per-decisions", nargs="+", type=int, default=[0],
                    help="limits on units frozen at one decision to try (0: none; the engine's freeze_per_decision)")
    ap.add_argument("--budgets", nargs="+", type=int, default=[29, 45, 60], help="units early the hindsight rule may freeze")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.members < 1 or a.epochs < 1:
        ap.error(f"--members and --epochs must be >= 1; got {a.members} and {a.epochs}")
    if min(a.per_decisions) < 0:
        ap.error(f"--per-decisions takes integers >= 0 (0: no limit); got {a.per_decisions}")
    if (a.cache is None) != a.no_predictor:
        ap.error("give --cache (the predictor's probabilities) or --no-predictor, not both")
    try:
        reliefs = [(0.0, 1.0)] + [tuple(float(v) for v in r.split("@")) for r in a.reliefs]
        if not all(len(r) == 2 and r[0] >= 0 and 0 <= r[1] <= 1 for r in reliefs):
            raise ValueError
    except ValueError:
        ap.error(f"--reliefs takes DELTA@FROM pairs, DELTA >= 0 and FROM in [0, 1], such as 0.2@0.7; got {a.reliefs}")
    taus = [None if t == "none" else float(t) for t in a.taus]
    runs = load_runs(a.runs)
    if a.label_shifts:
        T.attach_label_shifts(runs, a.label_shifts, a.label)
    d = T.samples(runs, a.label, progress=a.progress_input)
    done = d["step"].numpy() / np.array([r["meta"]["total_steps"] for r in runs])[d["run"].numpy()]
    setting = json.dumps({"runs": len(runs), "label": a.label, "shifts": a.label_shifts} if a.no_predictor else {
        "runs": len(runs), "label": a.label, "members": a.members, "epochs": a.epochs,
        "progress_input": a.progress_input, "shifts": a.label_shifts})
    cache = Path(a.cache) if a.cache else None
    probs = dict(np.load(cache)) if cache and cache.is_file() else {}
    if probs and (made := str(probs.pop("setting"))) != setting:
        raise SystemExit(f"{cache} was made with other settings ({made}, not {setting}); give another --cache")
    base = rules(taus, a.lookbacks, a.starts, reliefs[:1], a.per_decisions)
    grid = rules(taus, a.lookbacks, a.starts, reliefs, a.per_decisions)
    out = {"setting": json.loads(setting), "predictor": not a.no_predictor, "max_early": T.MAX_EARLY, "grid": {"taus": a.taus, "lookbacks": a.lookbacks,
           "starts": a.starts, "reliefs": a.reliefs, "per_decisions": a.per_decisions}, "kinds": {}}
    for kind in a.kinds:
        groups = np.array([KINDS[kind](r["meta"]) for r in runs])
        held_p = np.zeros(len(done))
        res = out["kinds"][kind] = {"selected": {}, "relief": {}, "hindsight": {}}
        totals: dict[str, list] = {}
        for g in np.unique(groups):
            key, held = f"{kind}/{g}", np.nonzero(groups == g)[0]
            if a.no_predictor:
                probs[key] = done
            elif key not in probs:
                probs[key] = fold_probs(d, runs, held, a.members, a.epochs)
                np.savez(cache, setting=setting, **probs)
            p = probs[key]
            held_p[np.isin(d["run"].numpy(), held)] = p[np.isin(d["run"].numpy(), held)]
            train_ids = np.nonzero(groups != g)[0]
            for name, g_grid in (("selected", base), ("relief", grid if a.reliefs else None)):
                if g_grid is None:
                    continue
                rule = select(d, runs, p, done, train_ids, g_grid)
                rows = replay_rule(d, runs, p, done, held, rule)
                totals.setdefault(name, []).extend(rows)
                res[name][str(g)] = {"rule": describe(rule), **scored(rows)}
            print(kind, g, {n: (round(res[n][str(g)]["saved_share_of_oracle"] or 0, 2), res[n][str(g)]["early"])
                            for n in ("selected", "relief") if str(g) in res[n]}, flush=True)
        ids = np.arange(len(runs))
        for name, rows in totals.items():
            res[name + "_total"] = scored(rows)
        grids: dict = {}
        every = [(scored(replay_rule(d, runs, held_p, done, ids, rule, grids)), rule) for rule in base]
        for budget in a.budgets:
            ok = [(s, r) for s, r in every if s["early"] <= budget]
            s, r = max(ok, key=lambda sr: sr[0]["saved_share_of_oracle"] or 0.0) if ok else (None, None)
            res["hindsight"][str(budget)] = None if s is None else {"rule": describe(r), **s, **breakdown(
                runs, replay_rule(d, runs, held_p, done, ids, r, grids))}
        print(kind, "selected", res.get("selected_total"), "relief", res.get("relief_total"), flush=True)
        print(kind, "hindsight", {b: (round(v["saved_share_of_oracle"], 2), v["early"]) for b, v in res["hindsight"].items() if v},
              flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
