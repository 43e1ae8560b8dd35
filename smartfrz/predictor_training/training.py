"""Trains the shipped predictor on recorded runs and chooses it, and its decision rule, by end result.

Samples are (run, checkpoint, unit) windows. The training target is "this unit's prefix stays under
the label threshold from now on" (``labels.freeze_labels`` without the front-to-back condition).
What is scored is what the engine would do: its front-to-back rule (threshold, patience, decisions
per epoch) is replayed on held-out runs, and each run reports the share of the oracle's saving it
reached and the units it froze before their label ("early"). The rule is chosen on out-of-fold
predictions of the training runs only: the largest saving with at most ``MAX_EARLY`` early units.
Held out: one architecture family at a time, and one learning-rate schedule at a time.

``python -m smartfrz.predictor_training.training --runs DIR --out smartfrz/weights/smartfrz_predictor.safetensors --report reports/predictor``
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .freeze_dataset import load_runs
from .labels import (DEFAULT_LABEL, check_readable, decision_cadence, describe_label, front_to_back, label_for,
                     settled_under, shift_settled)
from ..predictor import INPUT_FEATURES, NUM_FEATURES, FreezePredictor, with_progress
from ..veto import LOOKBACKS as VETO_LOOKBACKS, longest_passing

LABEL = DEFAULT_LABEL
MAX_EARLY = 0.05  # share of units a rule may freeze before their label (on out-of-fold replays)
SETTLED_RUN_WEIGHT = 1.0  # training weight of runs labelled all-freezable at their first checkpoint
MEMBERS = 3  # networks averaged in a predictor trained here (reports/predictor/candidates: single ones vary)
FOLDS = 2  # out-of-fold splits (by run) whose predictions calibrate the predictor and choose its rule
GROUP_FOLDS = {"family": lambda meta: meta["family"], "schedule": lambda meta: meta["spec"]["schedule"]}
THRESHOLDS = tuple(np.round(np.linspace(0.30, 0.96, 23), 2))
DECISIONS_PER_EPOCH = (1, 2, 4)  # 4 = every checkpoint of the recorded runs
RULE_KEYS = ("threshold", "patience", "decisions_per_epoch", "decisions_per_run")  # what the search chooses
ENGINE_KEYS = ("decide_from", "veto_tau", "veto_probe_rows", "veto_lookback", "freeze_per_decision", "max_frozen_share")  # the rest of a shipped rule (scripts/ship_rule.py)
OBJECTIVES = ("pooled", "mean_run")


@dataclass(frozen=True)
class RuleSearch:
    """How the decision rule is chosen. ``pooled``: the share of the oracle's FLOP saving summed over runs
    (long runs weigh most); ``mean_run``: the mean of each run's share (each run counts once).
    ``per_run_floors``: minimum decisions per run tried (0: the per-epoch cadence alone). ``starts``: shares of the
    run before which no decision is made; ``taus``: the functional veto's (None: off; any other needs runs that
    recorded the veto's shares), read on the probe's first ``veto_rows`` rows; ``lookbacks``: how far back the veto's
    weights are (``VETO_LOOKBACKS``: the rule's previous decision, or an epoch, the span of one window)."""
    objective: str = "pooled"
    patiences: tuple[int, ...] = (1, 2, 3)
    per_run_floors: tuple[int, ...] = (0,)
    starts: tuple[float, ...] = (0.0,)
    taus: tuple[float | None, ...] = (None,)
    veto_rows: int = 32
    lookbacks: tuple[str, ...] = ("decision",)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if not self.patiences or min(self.patiences) < 1 or not self.per_run_floors or min(self.per_run_floors) < 0:
            raise ValueError(f"patiences must be >= 1 and per_run_floors >= 0 (non-empty); got {self}")
        if not self.starts or not all(0 <= x < 1 for x in self.starts) or not self.taus or \
                not all(t is None or 0 < t <= 1 for t in self.taus):
            raise ValueError(f"starts must be in [0, 1) and taus None or in (0, 1] (non-empty); got {self}")
        if not self.lookbacks or not set(self.lookbacks) <= set(VETO_LOOKBACKS):
            raise ValueError(f"lookbacks must be among {VETO_LOOKBACKS} (non-empty); got {self.lookbacks}")


def _values(run: dict, rule: str) -> torch.Tensor:
    if rule == "rewind":
        if "rewind" not in run:
            raise ValueError(f"run {run['meta']['name']} has no rewind harms (recorded before they existed); record it again")
        return run["rewind"]
    return run["cka"]


def run_settled(run: dict, label: str) -> torch.Tensor:
    """A recorded run's (checkpoints, units) own labels under ``label`` (``labels.settled_under``)."""
    meta = run.get("meta", {})
    label = label_for(label, meta.get("spec", {}).get("regime", "scratch"))
    check_readable(label, meta.get("rewind_cap", 0.05))  # runs recorded before the cap was kept: 0.05
    own = settled_under(label, lambda rule: _values(run, rule))
    if "label_shift" in run:  # the run's measured frontier along the label (attach_label_shifts)
        own = shift_settled(own, run["steps"].tolist(), meta["total_steps"], run["label_shift"])
    return own


def attach_label_shifts(runs: list[dict], path, label: str) -> int:
    """Give each run listed in ``path`` (``scripts/label_frontier_runs.py``'s output) its shift; runs it does not
    list keep the label as it is. The file's label must be the one trained on: a shift is measured along it."""
    table = json.loads(Path(path).read_text())
    if table.get("label") != label:
        raise ValueError(f"{path}: shifts were measured along label {table.get('label')!r}, not {label!r}")
    n = 0
    for r in runs:
        if (entry := table["runs"].get(r["meta"]["name"])) is not None:
            r["label_shift"], n = float(entry["shift"]), n + 1
    return n


def window_shape(runs: list[dict]) -> tuple[int, int]:
    """(snapshots, sampled weights) of the recorded windows: the shape the engine must record for the predictor."""
    return int(runs[0]["features"].shape[2]), int(runs[0]["meta"]["spec"]["sample_size"])


def samples(runs: list[dict], label: str = LABEL, settled_run_weight: float = SETTLED_RUN_WEIGHT,
            progress: bool = False) -> dict:
    """Flat arrays over (run, checkpoint, unit), with a training weight per sample: runs labelled all-freezable
    at their first checkpoint say nothing about *when* a unit settles, so they weigh ``settled_run_weight``.
    ``progress``: each window also carries the share of its run done at its checkpoint (``with_progress``)."""
    check_readable(label, 1.0)  # a malformed label raises, naming what is allowed
    cols = {k: [] for k in ("x", "y_train", "y_eval", "eligible", "run", "unit", "step", "weight")}
    for r_i, r in enumerate(runs):
        feats = r["features"].float()
        own = run_settled(r, label)
        lab = front_to_back(own)
        C, U = own.shape
        cols["weight"].append(torch.full((C * U,), settled_run_weight if bool(lab[0].all()) else 1.0))
        prev_ok = torch.cat([torch.ones(C, 1, dtype=torch.bool), lab[:, :-1]], 1)
        x = feats.reshape(C * U, *feats.shape[2:])
        if progress:
            x = with_progress(x, (r["steps"].float() / r["meta"]["total_steps"]).repeat_interleave(U))
        cols["x"].append(x)
        cols["y_train"].append(own.reshape(-1))
        cols["y_eval"].append(lab.reshape(-1))
        cols["eligible"].append(prev_ok.reshape(-1))
        cols["run"].append(torch.full((C * U,), r_i))
        cols["unit"].append(torch.arange(U).repeat(C))
        cols["step"].append(r["steps"].repeat_interleave(U))
    return {k: torch.cat(v) for k, v in cols.items()}


def fit_platt(logits: torch.Tensor, y: torch.Tensor, steps: int = 300) -> tuple[float, float]:
    """Logistic calibration of raw logits on held-out predictions."""
    a, b = torch.ones((), requires_grad=True), torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a * logits + b, y.float())
        loss.backward()
        return loss
    opt.step(closure)
    return float(a.detach()), float(b.detach())


# ----------------------------------------------------------------------------- replaying the engine

def _grid(d: dict, r: int, p: np.ndarray):
    """Run r's (checkpoints, units) probability and label grids, and its checkpoint steps."""
    m = d["run"].numpy() == r
    steps, units = d["step"].numpy()[m], d["unit"].numpy()[m]
    order = np.unique(steps)
    U = int(units.max()) + 1
    P, Y = np.zeros((len(order), U)), np.zeros((len(order), U), dtype=bool)
    at = np.searchsorted(order, steps)
    P[at, units], Y[at, units] = p[m], d["y_eval"].numpy()[m]
    return P, Y, order


def cadence(meta: dict, per_epoch: int, per_run: int = 0) -> int:
    """Steps between the engine's decisions (``Policy.cadence``)."""
    return decision_cadence(meta["steps_per_epoch"], meta["total_steps"], per_epoch, per_run)


def veto_pass(shares: np.ndarray, k: int, settled: int, tau: float, checked: list | None = None) -> int:
    """``FunctionalVeto.allow`` on a recorded run: the longest prefix k..ok-1 whose share stays within tau, searched
    as the engine does (the front unit, then the whole prefix, then unit by unit). ``shares[i]``: units 0..i put
    back (in the run nothing was frozen, so the frozen units' own moves count too: it tends to veto more).
    ``checked`` collects each prefix tried (the engine's probe forwards, less its reference)."""
    checked = [] if checked is None else checked
    return longest_passing(lambda upto: checked.append(upto) or shares[upto - 1] <= tau, k, settled)  # NaN fails


def replay(P, Y, steps, meta: dict, threshold: float, patience: int, per_epoch: int, per_run: int = 0,
           min_active: int = 1, start: float = 0.0, veto: tuple | None = None, per_decision: int = 0,
           max_share: float = 1.0, gate: bool = False) -> dict:
    """The engine's rule (``SmartFRZPolicy.decide``) on one run's checkpoints; freeze steps and what they save.
    A decision falls at each multiple of the engine's cadence from ``start`` of the run on; it reads the first
    checkpoint at or after it (several decisions between two checkpoints read the same one). A unit settles when
    it and every active unit before it score >= threshold and, with ``veto`` = (shares (checkpoints, units), tau),
    the recorded veto passes; it freezes after ``patience`` decisions settled in a row, at most ``per_decision``
    units a decision (0: no limit), and never more than ``max_share`` of the units (the oracle is not capped).
    ``gate`` (scripts/veto_gate.py; not the engine's): the streak counts the predictor alone, and the veto checks
    only the prefix that would freeze, only then; a prefix it cuts keeps its streak.

    Saving = sum over units of (share of the step's forward FLOPs) x (share of the run left when frozen):
    what a frozen prefix takes off the backward pass, relative for comparisons with the oracle."""
    total = meta["total_steps"]
    every = cadence(meta, per_epoch, per_run)
    first = math.ceil(start * total)
    U = P.shape[1]
    limit = U - min_active
    rule_limit = min(limit, math.floor(max_share * U + 1e-9))  # as the engine caps (1: no cap)
    k, streak, pred, checks, checked = 0, [0] * U, {}, 0, []
    rows, shares = P.tolist(), None if veto is None else veto[0].tolist()  # plain floats: tiny rows, many replays
    steps = np.asarray(steps).tolist()
    # decisions counted so far: none before the start, nor before the first checkpoint's window was full (the
    # engine has nothing to score then), and at most the last one due by that checkpoint
    done = max(0, -(-first // every) - 1, steps[0] // every - 1) if steps else 0
    for t, s in enumerate(steps):
        last, done = done, max(done, s // every)
        for d in range(last + 1, done + 1):  # the decisions at d * every steps read this checkpoint
            settled, row = k, rows[t]
            while settled < rule_limit and row[settled] >= threshold:
                settled += 1
            if veto is not None and settled > k and not gate:
                too_late = (total - d * every) // every < patience - streak[k] - 1
                checks += not too_late
                settled = k if too_late else veto_pass(shares[t], k, settled, veto[1], checked)
            for u in range(k, U):
                streak[u] = streak[u] + 1 if u < settled else 0
            n, cap = k, k + per_decision if per_decision else rule_limit
            while n < min(rule_limit, cap) and streak[n] >= patience:
                n += 1
            if veto is not None and n > k and gate:
                checks, n = checks + 1, veto_pass(shares[t], k, n, veto[1], checked)
            for u in range(k, n):
                pred[u] = s
            k = n
    share = np.asarray(meta["flop_share"], dtype=float)
    label = {}
    for u in range(limit):
        hit = np.nonzero(Y[:, u])[0]
        if len(hit):
            label[u] = steps[hit[0]]
    early = [u for u, s in pred.items() if u not in label or s < label[u]]
    return {"pred": pred, "label": label, "saved": saved_share(pred, share, total),
            "oracle_saved": saved_share(label, share, total), "early": len(early), "units": limit,
            "veto_checks": checks, "veto_forwards": checks + len(checked)}  # a reference forward a check, then each prefix


def saved_share(freeze: dict[int, int], flop_share, total: int) -> float:
    """What units frozen at these steps ({unit: step}) take off a run of ``total`` steps: each unit's share of the
    step's forward FLOPs times the share of the run left when it froze (relative, for comparing with an oracle)."""
    return float(sum(flop_share[u] * (total - s) / total for u, s in freeze.items()))


def lookback_steps(meta: dict, lookback: str | None) -> int | None:
    """Steps back the veto's weights are: None, the rule's previous decision (``cadence``); "epoch": an epoch."""
    if lookback not in (None, *VETO_LOOKBACKS):
        raise ValueError(f"veto lookback must be one of {VETO_LOOKBACKS}; got {lookback!r}")
    return meta["steps_per_epoch"] if lookback == "epoch" else None


def recorded_veto(run: dict, meta: dict, per_epoch: int, per_run: int, tau: float, rows: int,
                  lookback: int | str | None = None) -> tuple:
    """(shares (checkpoints, units), tau) of a recorded run, read at the distance the engine's veto reads: its
    previous decision, ``cadence`` steps back (or ``lookback`` steps, one the run recorded, or a name of
    ``VETO_LOOKBACKS``), on the probe's first ``rows`` rows."""
    if isinstance(lookback, str):
        lookback = lookback_steps(meta, lookback)
    if "veto_share" not in run:
        raise ValueError(f"run {meta['name']} has no veto shares (recorded before they were, format 1): record it "
                         "again with python -m smartfrz.predictor_training.freeze_dataset to replay a rule with a veto")
    L, lookbacks = lookback or cadence(meta, per_epoch, per_run), meta["veto_lookbacks"]
    if L not in lookbacks or rows not in meta["veto_rows"]:
        raise ValueError(f"run {meta['name']} has veto shares at lookbacks {lookbacks} on {meta['veto_rows']} rows, "
                         f"not at {L} steps on {rows} rows (the rule's cadence and probe)")
    return run["veto_share"][:, lookbacks.index(L), :, meta["veto_rows"].index(rows)].float().numpy(), tau


def replay_all(grids: dict, runs, threshold, patience, per_epoch, per_run=0, start=0.0, veto=None,
               per_decision: int = 0, max_share: float = 1.0) -> list[dict]:
    """``replay`` on each run of ``grids`` (run -> ``_grid``); ``veto``: (tau, probe rows[, lookback]) read from each run."""
    return [{"run": int(r), **replay(P, Y, steps, runs[r]["meta"], threshold, patience, per_epoch, per_run, start=start,
                                     veto=veto and recorded_veto(runs[r], runs[r]["meta"], per_epoch, per_run, *veto),
                                     per_decision=per_decision, max_share=max_share)}
            for r, (P, Y, steps) in grids.items()]


def engine_rule(predictor: FreezePredictor) -> dict:
    """The whole rule a weights file ships (``SmartFRZPolicy`` reads it): cadence, threshold, patience, start, veto."""
    return {"threshold": float(predictor.threshold), "patience": int(predictor.patience),
            "decisions_per_epoch": int(predictor.decisions_per_epoch), "decisions_per_run": int(predictor.decisions_per_run),
            "decide_from": float(predictor.decide_from), "veto_tau": predictor.veto_tau,
            "veto_probe_rows": predictor.veto_probe_rows, "veto_lookback": predictor.veto_lookback,
            "freeze_per_decision": int(predictor.freeze_per_decision),
            "max_frozen_share": float(getattr(predictor, "max_frozen_share", 1.0))}


def summarize(rows: list[dict]) -> dict:
    oracle = sum(r["oracle_saved"] for r in rows)
    shares = [min(1.0, r["saved"] / r["oracle_saved"]) for r in rows if r["oracle_saved"] > 0]
    return {"runs": len(rows), "units": sum(r["units"] for r in rows), "early": sum(r["early"] for r in rows),
            "early_share": sum(r["early"] for r in rows) / max(1, sum(r["units"] for r in rows)),
            "saved_share_of_oracle": sum(r["saved"] for r in rows) / oracle if oracle > 0 else None,
            "median_run_share_of_oracle": float(np.median(shares)) if shares else None,
            "mean_run_share_of_oracle": float(np.mean(shares)) if shares else None,
            "saved": float(np.mean([r["saved"] for r in rows])) if rows else 0.0,
            "oracle_saved": float(np.mean([r["oracle_saved"] for r in rows])) if rows else 0.0}


def select_rule(d, runs, idx_runs, p, search: RuleSearch = RuleSearch()) -> dict:
    """The rule with the largest saving (``search.objective``) whose early share stays <= MAX_EARLY (else
    the fewest early)."""
    score = "saved_share_of_oracle" if search.objective == "pooled" else "mean_run_share_of_oracle"
    best, grids = None, {r: _grid(d, r, p) for r in idx_runs}
    vetoes = [(tau, search.veto_rows, lb) if tau is not None else None for tau in search.taus
              for lb in (search.lookbacks if tau is not None else [None])]
    for per_run, per_epoch, patience, start, veto, thr in itertools.product(
            search.per_run_floors, DECISIONS_PER_EPOCH, search.patiences, search.starts, vetoes, THRESHOLDS):
        s = summarize(replay_all(grids, runs, float(thr), patience, per_epoch, per_run, start, veto))
        ok = s["early_share"] <= MAX_EARLY
        tau, lookback = (None, None) if veto is None else (veto[0], veto[2])
        # ties: fewer decisions, a later start, a stricter veto, the nearer lookback (each costs less or risks less)
        key = (ok, (s[score] or 0.0) if ok else -s["early_share"], -per_epoch, -per_run, patience, start,
               -(tau if tau is not None else 2.0), lookback == "decision")
        if best is None or key > best[0]:
            best = (key, {"threshold": float(thr), "patience": patience, "decisions_per_epoch": per_epoch,
                          "decisions_per_run": per_run, "decide_from": start, "veto_tau": tau,
                          "veto_probe_rows": None if tau is None else search.veto_rows, "veto_lookback": lookback,
                          "freeze_per_decision": 0, "max_frozen_share": 1.0, **s})  # the search tries no limit, no cap
    return best[1]


# ----------------------------------------------------------------------------- fitting

def train_predictor(feats: torch.Tensor, labels: torch.Tensor, epochs: int = 30, lr: float = 2e-3,
                    batch_size: int = 256, seed: int = 0, pos_weight: float | None = None,
                    model: FreezePredictor | None = None, progress: bool = False,
                    weights: torch.Tensor | None = None, **hparams) -> FreezePredictor:
    """Fits the predictor on precomputed features; balanced by ``pos_weight`` (default weighted neg/pos)."""
    torch.manual_seed(seed)
    hparams.setdefault("num_features", INPUT_FEATURES + feats.shape[-1] - NUM_FEATURES)  # + progress, if it is there
    model = model or FreezePredictor(**hparams)
    model.train()
    y = labels.float()
    w = torch.ones_like(y) if weights is None else weights.float()
    if pos_weight is None:
        pos = (w * y).sum().clamp_min(1e-8)
        pos_weight = float((w.sum() - pos) / pos)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    it = range(epochs)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="train predictor")
    pw = torch.tensor(pos_weight)
    for _ in it:
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            b = perm[i:i + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(feats[b]), y[b], w[b], pos_weight=pw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def distil_one(teacher: FreezePredictor, x: torch.Tensor, weights: torch.Tensor | None = None, epochs: int = 6,
               seed: int = 0) -> FreezePredictor:
    """One network fitted to the teacher's P(freeze) on the same samples: an ensemble's decisions at one network's
    scoring cost (the engine scores every active unit at each decision)."""
    soft = torch.sigmoid(_logits(teacher, x))
    return train_predictor(x, soft, epochs=epochs, seed=seed, weights=weights, pos_weight=1.0,
                           **{k: v for k, v in teacher.hparams.items() if k != "members"})


def _logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + 4096]) for i in range(0, len(x), 4096)])


def inner_splits(runs: list[dict], run_ids: np.ndarray, folds: int | str, seed: int) -> list[np.ndarray]:
    """The held-out runs of each out-of-fold split: ``folds`` random splits by run, or one split per architecture
    family or schedule (``"family"``, ``"schedule"``), so the rule is chosen on predictions for unseen groups."""
    if isinstance(folds, str):
        if folds not in GROUP_FOLDS:
            raise ValueError(f"folds must be an integer >= 2 or one of {', '.join(GROUP_FOLDS)}; got {folds!r}")
        keys = np.array([GROUP_FOLDS[folds](runs[r]["meta"]) for r in run_ids])
        if len(np.unique(keys)) < 2:
            raise ValueError(f"folds={folds!r} needs runs of at least two groups; these are all {keys[0]!r}")
        return [run_ids[keys == g] for g in np.unique(keys)]
    order = np.random.default_rng(seed).permutation(run_ids)
    n = min(folds, len(order))
    return [order[f::n] for f in range(n)]


def fit_members(d: dict, idx: torch.Tensor, seed: int, epochs: int = 6, members: int = MEMBERS,
                distil: bool = False) -> FreezePredictor:
    """``members`` networks with different seeds on samples ``idx``, logits averaged; with ``distil``, one network
    then learns their averaged P(freeze) on the same samples, so it costs one network's scoring."""
    x, y, w = d["x"][idx], d["y_train"][idx], d["weight"][idx]  # gathered once, not once per network
    nets = FreezePredictor.ensemble([train_predictor(x, y, epochs=epochs, seed=seed + 100 * j, weights=w)
                                     for j in range(members)])
    return distil_one(nets, x, w, epochs, seed + 100 * members) if distil else nets


def out_of_fold(d: dict, runs: list[dict], run_ids: np.ndarray, seed: int = 0, epochs: int = 6,
                folds: int | str = FOLDS, members: int = MEMBERS, distil: bool = False) -> tuple[torch.Tensor, float, float]:
    """Logits for ``run_ids``' samples from fits without their split (``inner_splits``), and the Platt scale and
    bias fitted on them: what calibrates a predictor and chooses its rule."""
    in_sel = np.isin(d["run"].numpy(), run_ids)
    oof = torch.zeros(len(d["run"]))
    for f, held in enumerate(inner_splits(runs, run_ids, folds, seed)):
        held_m = np.isin(d["run"].numpy(), held)
        m = fit_members(d, torch.from_numpy(np.nonzero(in_sel & ~held_m)[0]), seed + f + 1, epochs, members, distil)
        te = torch.from_numpy(np.nonzero(held_m)[0])
        oof[te] = _logits(m, d["x"][te])
    sel = torch.from_numpy(np.nonzero(in_sel)[0])
    a, b = fit_platt(oof[sel], d["y_train"][sel])
    return oof, a, b


def train_selected(d: dict, runs: list[dict], run_ids: np.ndarray, seed: int = 0, epochs: int = 6,
                   folds: int | str = FOLDS, search: RuleSearch = RuleSearch(), members: int = MEMBERS,
                   distil: bool = False) -> tuple[FreezePredictor, dict]:
    """Out-of-fold logits (``out_of_fold``) -> Platt calibration and the decision rule; then a fit on all of
    ``run_ids`` (``fit_members``: the rule and the held-out folds are chosen and replayed with the distilled
    network, not with the ensemble, when ``distil``)."""
    oof, a, b = out_of_fold(d, runs, run_ids, seed, epochs, folds, members, distil)
    p_oof = torch.sigmoid(a * oof + b).numpy()
    rule = select_rule(d, runs, run_ids, p_oof, search)
    model = fit_members(d, torch.from_numpy(np.nonzero(np.isin(d["run"].numpy(), run_ids))[0]), seed, epochs, members, distil)
    model.calibration.copy_(torch.tensor([a, b]))
    model.threshold = rule["threshold"]
    model.patience, model.decisions_per_epoch = rule["patience"], rule["decisions_per_epoch"]
    model.decisions_per_run, model.decide_from = rule["decisions_per_run"], rule["decide_from"]
    model.veto_tau, model.veto_probe_rows = rule["veto_tau"], rule["veto_probe_rows"]
    model.veto_lookback = rule["veto_lookback"] or "decision"
    return model, rule


def classification(p, d, sel, threshold) -> dict:
    y, elig = d["y_eval"].numpy()[sel], d["eligible"].numpy()[sel]
    pred = p[sel] >= threshold
    tp = int((pred & y & elig).sum())
    prec = tp / max(int((pred & elig).sum()), 1)
    rec = tp / max(int((y & elig).sum()), 1)
    return {"precision": prec, "recall": rec, "n": int(elig.sum())}


def heldout(d, runs, model, rule, run_ids) -> dict:
    sel = np.isin(d["run"].numpy(), run_ids)
    p = np.zeros(len(d["run"]))
    p[sel] = torch.sigmoid(_logits(model, d["x"][torch.from_numpy(np.nonzero(sel)[0])])).numpy()
    grids = {r: _grid(d, r, p) for r in run_ids}
    veto = (rule["veto_tau"], rule["veto_probe_rows"], rule.get("veto_lookback")) if rule.get("veto_tau") is not None else None
    rows = replay_all(grids, runs, rule["threshold"], rule["patience"], rule["decisions_per_epoch"],
                      rule["decisions_per_run"], rule.get("decide_from", 0.0), veto, rule.get("freeze_per_decision", 0),
                      rule.get("max_frozen_share", 1.0))
    return {"rule": {k: rule[k] for k in rule if k in RULE_KEYS or k in ENGINE_KEYS},
            **summarize(rows), **classification(p, d, sel, rule["threshold"]),
            "per_run": [{**r, "pred": {str(k): v for k, v in r["pred"].items()},
                         "label": {str(k): v for k, v in r["label"].items()}} for r in rows]}


def run(runs_dir, out=None, report=None, label: str = LABEL, epochs: int = 6, seed: int = 0, progress: bool = True,
        label_study: list | None = None, held_out: bool = True, previous=None,
        search: RuleSearch = RuleSearch(), members: int = MEMBERS, settled_run_weight: float = SETTLED_RUN_WEIGHT,
        distil: bool = False, folds: int | str = FOLDS, fixed_rule: dict | str | None = "shipped",
        label_shifts=None, progress_input: bool = False) -> dict:
    """``label_shifts``: a file of runs' measured frontiers along ``label`` (``attach_label_shifts``).
    ``progress_input``: the predictor also reads the share of the planned run done (``with_progress``).
    ``fixed_rule``: a whole engine rule (``engine_rule``, or a weights file whose rule to take; "shipped": the
    packaged one) replayed held out beside each fold's own chosen rule, with each fold's predictor: what the
    held-out runs would have seen from the engine."""
    if isinstance(fixed_rule, (str, Path)):
        fixed_rule = engine_rule(FreezePredictor.load(None if fixed_rule == "shipped" else fixed_rule))
    runs = load_runs(runs_dir)
    shifted = attach_label_shifts(runs, label_shifts, label) if label_shifts else 0
    metas = [r["meta"] for r in runs]
    d = samples(runs, label, settled_run_weight, progress=progress_input)
    run_family = np.array([m["family"] for m in metas])
    run_schedule = np.array([m["spec"]["schedule"] for m in metas])
    all_ids = np.arange(len(runs))
    results = {"label": label, "label_shifts": {"file": str(label_shifts), "runs": shifted} if label_shifts else None,
               "progress_input": progress_input, "max_early": MAX_EARLY, "search": asdict(search), "settled_run_weight": settled_run_weight,
               "teachers": members if distil else 0, "folds": folds,
               "runs": [{"name": m["name"], "family": m["family"], "schedule": m["spec"]["schedule"],
                         "optimizer": m["spec"]["optimizer"], "lr": m["spec"]["lr"], "regime": m["spec"]["regime"],
                         "units": len(m["units"]), "checkpoints": int(len(r["steps"])), "final": m["final"]}
                        for m, r in zip(metas, runs)],
               "positives": int(d["y_eval"].sum()), "samples": int(len(d["y_eval"])), "held_out": {}}
    if fixed_rule is not None and fixed_rule.get("veto_tau") is not None and any("veto_share" not in r for r in runs):
        print(f"not replaying the fixed rule held out: {sum('veto_share' not in r for r in runs)} runs were recorded "
              "before the veto's shares (format 1); record them again", flush=True)
        fixed_rule = None
    if fixed_rule is not None:
        results["held_out_fixed"] = {"rule": fixed_rule}
    for kind, groups in (("family", run_family), ("schedule", run_schedule)):
        if not held_out or len(np.unique(groups)) < 2:
            continue
        results["held_out"][kind] = {}
        for g in np.unique(groups):
            model, rule = train_selected(d, runs, all_ids[groups != g], seed, epochs, folds, search=search,
                                         members=members, distil=distil)
            ev = heldout(d, runs, model, rule, all_ids[groups == g])
            results["held_out"][kind][str(g)] = ev
            if fixed_rule is not None:
                results["held_out_fixed"].setdefault(kind, {})[str(g)] = heldout(d, runs, model, fixed_rule,
                                                                                 all_ids[groups == g])
            if progress:
                print(f"held out {kind} {g}: {ev['saved_share_of_oracle'] or 0:.2f} of the oracle's saving, "
                      f"{ev['early']}/{ev['units']} units early (rule {ev['rule']})" + (
                          "" if fixed_rule is None else "; the fixed rule: {saved_share_of_oracle:.2f}, {early}/{units} "
                          "early".format(**results["held_out_fixed"][kind][str(g)])), flush=True)
    if held_out and previous is not None:  # a predictor shipped before, with its whole rule (it may have seen these runs)
        old = FreezePredictor.load(previous)
        old_rule = engine_rule(old)
        results["previous"] = {k: v for k, v in heldout(d, runs, old, old_rule, all_ids).items() if k != "per_run"}
        results["previous"].update(sha256=_sha(previous), label=old.metadata.get("label", "unrecorded"),
                                   trained_on=old.metadata.get("trained_on", "unrecorded"))
    final, rule = train_selected(d, runs, all_ids, seed, epochs, folds, search=search, members=members, distil=distil)
    results["shipped"] = {"rule": {k: rule[k] for k in RULE_KEYS + ENGINE_KEYS},
                          "out_of_fold": {k: v for k, v in rule.items() if k not in RULE_KEYS + ENGINE_KEYS},
                          "calibration": final.calibration.tolist(), "num_params": final.num_params, "hparams": final.hparams}
    if out:
        window, sample_size = window_shape(runs)  # the engine records windows of this shape for the predictor
        final.save(out, extra={"label": label, "trained_on": f"{len(runs)} runs of {runs_dir}", "window": window,
                               "sample_size": sample_size})
    if report:
        write_report(results, runs, Path(report), label_study)
    if out:
        write_card(results, Path(out).parent / "README.md", *window_shape(runs))
    return results


def _sha(path) -> str:
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


# ----------------------------------------------------------------------------- reports

def _start_and_veto(r: dict) -> str:
    tau = r.get("veto_tau")
    back = "an epoch back" if r.get("veto_lookback") == "epoch" else "at the previous decision"
    veto = (f"the functional veto at tau {tau:g} on the probe's first {r['veto_probe_rows']} rows, weights {back}"
            if tau is not None else "no functional veto")
    return f"no decision before {r.get('decide_from', 0.0):.0%} of the run, {veto}"


def _veto_words(r: dict) -> str:
    if r.get("veto_tau") is None:
        return "off"
    return f"{r['veto_tau']:g}" + (" (an epoch back)" if r.get("veto_lookback") == "epoch" else "")


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _heldout_table(block: dict, kind: str) -> list[str]:
    lines = [f"| held-out {kind} | runs | oracle saving (mean) | smartfrz saving (mean) | share of oracle (pooled / mean run) "
             "| early units | precision / recall | rule (threshold, patience, decisions/epoch, min decisions/run, start, veto tau) |",
             "|---|---|---|---|---|---|---|---|"]
    for g, v in block.items():
        r = v["rule"]
        lines.append(f"| {g} | {v['runs']} | {_pct(v['oracle_saved'])} | {_pct(v['saved'])} | "
                     f"{_pct(v['saved_share_of_oracle'])} / {_pct(v['mean_run_share_of_oracle'])} | "
                     f"{v['early']}/{v['units']} | {v['precision']:.2f} / {v['recall']:.2f} | "
                     f"{r['threshold']:.2f}, {r['patience']}, {r['decisions_per_epoch']}, {r['decisions_per_run']}, "
                     f"{r.get('decide_from', 0.0):g}, {_veto_words(r)} |")
    rows = list(block.values())
    if rows:
        t = fold_totals(block)
        lines.append(f"| **all folds** | {t['runs']} | {_pct(t['oracle_saved'])} | {_pct(t['saved'])} | "
                     f"{_pct(t['saved_share_of_oracle'])} / {_pct(t['mean_run_share_of_oracle'])} | "
                     f"{t['early']}/{t['units']} | | |")
    return lines


def fold_totals(block: dict) -> dict:
    """All held-out runs of a leave-one-group-out block, summarized as one."""
    return summarize([r for v in block.values() for r in v["per_run"]])


def _objective_words(res: dict) -> str:
    return ("pooled over runs" if res["search"]["objective"] == "pooled"
            else "the mean of each run's share: every run counts once, whatever its length")


def write_report(res: dict, runs: list[dict], folder: Path, label_study: list | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    slim = json.loads(json.dumps(res))
    (folder / "metrics.json").write_text(json.dumps(slim, indent=1))
    manifest = {"label": res["label"], "runs": [{**r, "spec": run["meta"]["spec"], "units_names": run["meta"]["units"]}
                                                for r, run in zip(res["runs"], runs)]}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    # held-out freeze points against the labels
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, (kind, block) in zip(axes, res["held_out"].items()):
        for g, v in block.items():
            xs, ys = [], []
            for r in v["per_run"]:
                total = runs[r["run"]]["meta"]["total_steps"]
                for u, s in r["label"].items():
                    xs.append(s / total)
                    ys.append(r["pred"].get(u, total) / total)
            ax.scatter(xs, ys, s=12, alpha=0.7, label=g)
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(xlabel="label freeze point (share of run)", ylabel="replayed smartfrz freeze point",
               title=f"held-out {kind} (above the line = late)")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(folder / "heldout.png", dpi=110)
    plt.close(fig)

    lines = ["# SmartFRZ predictor: labels, held-out evaluation, decision rule", "",
             f"Generated by `python -m smartfrz.predictor_training.training{_flags(res)}` from {len(runs)} recorded runs "
             f"(`python -m smartfrz.predictor_training.freeze_dataset --preset cpu`).", "",
             "## Labels", "",
             f"Label `{res['label']}`: a unit is freezable at checkpoint t when {describe_label(res['label'])}."
             + (" The rewind term asks " if "rewind" in res["label"] else " A rewind term would ask ")
             + "directly whether the network training produced still needs what the prefix learned after t; the old "
             "label (linear CKA of the unit's output >= 0.95) asked whether the representation looked alike, which a "
             "fine-tuned layer does from step 0 while its small moves still carry the accuracy."
             + _shift_words(res), ""]
    if label_study:
        from ..lab.label_study import table
        lines += ["### Is the oracle built from the labels accuracy-safe? (bench runs)", "",
                  "The oracle replayed under each label on a bench's own `none` runs (same seed, data order and model), "
                  "medians over seeds, made by:", ""]
        rows = []
        for path in label_study:
            study = json.loads(Path(path).read_text())
            lines.append(f"- `{study.get('command', 'python -m smartfrz.lab.label_study --bench ' + study['bench'])}`")
            rows += study["rows"]
        lines += ["", table(sorted(rows, key=lambda r: (r["task"], r["rule"]))), ""]
    w = res.get("settled_run_weight", 1.0)
    lines += ["## Runs", "", f"{len(runs)} runs, {res['samples']} (checkpoint, unit) samples, {res['positives']} labelled freezable."
              + (f" Runs labelled all-freezable at their first checkpoint weigh {w:g} in training." if w != 1.0 else ""), "",
              "| run | family | schedule | optimizer | lr | regime | units | checkpoints | final metric |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['name']} | {r['family']} | {r['schedule']} | {r['optimizer']} | {r['lr']:g} | {r['regime']} | "
                     f"{r['units']} | {r['checkpoints']} | {r['final'].get('metric_name', '')} {r['final'].get('metric', float('nan')):.3g} |")
    lines += ["", "## Held out: the engine's rule replayed on runs the predictor never saw", "",
              "Savings are the FLOP-share-weighted share of the run left when each unit froze (the backward work a "
              "frozen prefix removes, comparable across runs); the oracle freezes each unit at its label. Early = "
              "frozen before its label (or never labelled). The rule of each fold is chosen on out-of-fold predictions "
              f"of its training runs: the largest share of the oracle's saving ({_objective_words(res)}) with at most "
              f"{100 * MAX_EARLY:g}% early units, over patience {list(res['search']['patiences'])}, decisions per "
              f"epoch {list(DECISIONS_PER_EPOCH)}, minimum decisions per run {list(res['search']['per_run_floors'])} "
              "(0: none; the engine applies the floor when it knows the run's length from `total_steps`), starts "
              f"{list(res['search'].get('starts', [0.0]))}, veto taus {list(res['search'].get('taus', [None]))} "
              f"(None: no veto) and veto lookbacks {list(res['search'].get('lookbacks', ['decision']))}.", ""]
    for kind, block in res["held_out"].items():
        lines += [f"### Leave one {kind} out", ""] + _heldout_table(block, kind) + [""]
    if "held_out_fixed" in res:
        r = res["held_out_fixed"]["rule"]
        lines += ["### The engine's whole rule, held out", "",
                  f"Each fold's predictor (trained without the held-out group) read through one fixed rule, the one "
                  f"a weights file ships (`--fixed-rule`; by default the packaged one): no decision before {r['decide_from']:.0%} of the run, "
                  f"{r['decisions_per_epoch']} decision(s) an epoch and at least {r['decisions_per_run']} a run, "
                  f"threshold {r['threshold']:g}, patience {r['patience']}, and the functional veto "
                  + (f"(tau {r['veto_tau']:g} on the probe's first {r['veto_probe_rows']} rows, read from the veto "
                     "shares each run recorded at the distance of "
                     + ("an epoch" if r.get("veto_lookback") == "epoch" else "the rule's previous decision")
                     + "; in the run nothing was "
                     "frozen, so a prefix's share also counts the moves of units the rule had frozen: it tends to veto "
                     "more often than the engine would)" if r.get("veto_tau") is not None else "off")
                  + ". With the packaged file, this is the engine's default held out.", ""]
        for kind, block in res["held_out_fixed"].items():
            if kind != "rule":
                lines += [f"Leave one {kind} out:", ""] + _heldout_table(block, kind) + [""]
    if "previous" in res:
        v = res["previous"]
        lines += ["### The previously shipped predictor on the same runs", "",
                  f"Predictor `{v['sha256']}` (label {v.get('label', 'unrecorded')}, trained on "
                  f"{v.get('trained_on', 'unrecorded')}: it may have seen some of these runs, so this is no held-out "
                  f"figure), its whole rule (threshold {v['rule']['threshold']:g}, patience {v['rule']['patience']}, "
                  f"{v['rule']['decisions_per_epoch']} decision(s) an epoch and at least {v['rule']['decisions_per_run']} a run, "
                  f"{_start_and_veto(v['rule'])}), scored against these labels: "
                  f"{_pct(v['saved_share_of_oracle'])} of the oracle's saving (mean run {_pct(v['mean_run_share_of_oracle'])}), "
                  f"{v['early']}/{v['units']} units early.", ""]
    sh = res["shipped"]
    oof = sh["out_of_fold"]
    lines += ["## Shipped", "",
              f"Trained on all {len(runs)} runs. Rule chosen on their out-of-fold predictions: threshold "
              f"{sh['rule']['threshold']:.2f}, patience {sh['rule']['patience']}, {sh['rule']['decisions_per_epoch']} "
              f"decision(s) per epoch and at least {sh['rule']['decisions_per_run']} per run when its length is known, "
              f"{_start_and_veto(sh['rule'])} (stored in the weights file; the engine uses them unless told otherwise). "
              f"Out of fold it reached {_pct(oof['saved_share_of_oracle'])} of the oracle's saving pooled, "
              f"{_pct(oof['mean_run_share_of_oracle'])} in the mean run, with "
              f"{oof['early']}/{oof['units']} units early. {_networks_words(res, capital=True)}; {sh['num_params']} parameters.", "",
              "Not varied: the window (the runs record {} snapshots of {} weights spread over one epoch; the weights "
              "file names that shape and the engine records windows of it unless told otherwise).".format(*window_shape(runs)),
              "", "![held-out freeze points](heldout.png)", ""]
    (folder / "report.md").write_text("\n".join(lines))


def _networks_words(res: dict, capital: bool = False) -> str:
    if res.get("teachers"):
        return f"{'O' if capital else 'o'}ne network distilled from the averaged P(freeze) of {res['teachers']} networks with different seeds"
    return f"{res['shipped']['hparams'].get('members', 1)} network(s) with different seeds, logits averaged"


def _shift_words(res: dict) -> str:
    progress = (" Besides its window the network reads the share of the planned run done at the decision "
                "(`--progress-input`), so the engine needs `total_steps`.") if res.get("progress_input") else ""
    if not res.get("label_shifts"):
        return progress
    return progress + (f" On {res['label_shifts']['runs']} of the runs each unit's label step is moved to the run's measured "
            f"frontier along it (`{res['label_shifts']['file']}`, `scripts/label_frontier_runs.py`): as far earlier, or "
            "later, as freezing there and training on stayed within 0.5 points of the recorded run.")


def _flags(res: dict) -> str:
    """The training options that differ from the defaults, so the card's command regenerates these weights."""
    s, flags = res["search"], []
    if res.get("label", LABEL) != LABEL:
        flags.append(f"--label {res['label']}")
    if s["objective"] != RuleSearch.objective:
        flags.append(f"--objective {s['objective']}")
    if tuple(s["patiences"]) != RuleSearch.patiences:
        flags.append("--patiences " + " ".join(map(str, s["patiences"])))
    if tuple(s["per_run_floors"]) != RuleSearch.per_run_floors:
        flags.append("--per-run-floors " + " ".join(map(str, s["per_run_floors"])))
    if tuple(s.get("starts", RuleSearch.starts)) != RuleSearch.starts:
        flags.append("--starts " + " ".join(f"{x:g}" for x in s["starts"]))
    if tuple(s.get("taus", RuleSearch.taus)) != RuleSearch.taus:
        flags.append("--taus " + " ".join("none" if t is None else f"{t:g}" for t in s["taus"]))
    if tuple(s.get("lookbacks", RuleSearch.lookbacks)) != RuleSearch.lookbacks:
        flags.append("--veto-lookbacks " + " ".join(s["lookbacks"]))
    if res.get("settled_run_weight", 1.0) != SETTLED_RUN_WEIGHT:
        flags.append(f"--settled-run-weight {res['settled_run_weight']:g}")
    members = res.get("teachers") or res["shipped"]["hparams"].get("members", 1)
    if members != MEMBERS:
        flags.append(f"--members {members}")
    if res.get("teachers"):
        flags.append("--distil")
    if res.get("folds", 2) != FOLDS:  # weights from before the flag used 2
        flags.append(f"--folds {res['folds']}")
    if res.get("label_shifts"):
        flags.append(f"--label-shifts {res['label_shifts']['file']}")
    if res.get("progress_input"):
        flags.append("--progress-input")
    return "".join(f" {f}" for f in flags)


def write_card(res: dict, path: Path, window: int, sample_size: int) -> None:
    """The short card that ships next to the weights."""
    sh = res["shipped"]
    folds = []
    for what, blocks in (("its own rule", res["held_out"]), ("the shipped rule", res.get("held_out_fixed", {}))):
        for kind, block in blocks.items():
            if kind == "rule":
                continue
            t = fold_totals(block)
            folds.append(f"| leave one {kind} out, {what} | {len(block)} | {_pct(t['saved_share_of_oracle'])} | "
                         f"{_pct(t['mean_run_share_of_oracle'])} | {t['early']}/{t['units']} |")
    path.write_text(f"""# smartfrz_predictor.safetensors

The attention-based freeze predictor that `SmartFRZ(..., policy="smartfrz")` loads by default
(architecture: `smartfrz/predictor.py`; {_networks_words(res)}; {sh['num_params']} parameters;
safetensors, no pickle).

- Labels `{res['label']}`: a unit is freezable at checkpoint t when {describe_label(res['label'])}
  (`smartfrz/predictor_training/labels.py`).{_shift_words(res)}
- Window: {window} snapshots of {sample_size} sampled weights spread over an epoch. The file names this shape and
  the engine records windows of it unless `window=`/`sample_size=` are set: other shapes run, but shift the
  inputs' statistics (path efficiency, step cosines) away from what the predictor learned.
- Decision rule (stored in the file, chosen by replayed end result on out-of-fold runs): threshold
  {sh['rule']['threshold']:.2f} on Platt-calibrated P(freeze), patience {sh['rule']['patience']},
  {sh['rule']['decisions_per_epoch']} decision(s) per epoch, and at least {sh['rule']['decisions_per_run']} per run
  when the engine knows the run's length (`total_steps`; the lab and the HF callback pass it);
  {_start_and_veto(sh['rule'])}.
- Training data: {len(res['runs'])} runs, {len({r['family'] for r in res['runs']})} families,
  {len({r['schedule'] for r in res['runs']})} schedules, SGD and AdamW, scratch and fine-tuned (`reports/predictor/manifest.json`).

Held out (replaying the engine's rule; full report: `reports/predictor/report.md`):

| folds | groups | share of the oracle's saving (pooled) | (mean run) | units frozen early |
|---|---|---|---|---|
{chr(10).join(folds)}

Regenerate (about 5 hours of one CPU core for the runs, `--shard I/N` splits them; then about 20 minutes of
training: {_networks_words(res)} per fit, 2 inner folds and a final fit for each held-out group):

```bash
python -m smartfrz.predictor_training.freeze_dataset --preset cpu --data-dir DATA --out data/freeze_runs --threads 1
python -m smartfrz.predictor_training.training --runs data/freeze_runs \\
    --out smartfrz/weights/smartfrz_predictor.safetensors --report reports/predictor{_flags(res)}
```
""")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--report", default=None)
    ap.add_argument("--label", default=LABEL, help="RULE:TAU, or terms joined by + that must all hold (e.g. rewind:0.01, cka:0.995+rewind:0.1), or one per kind "
                    "of run (e.g. scratch=cka:0.995,finetune=rewind:0.02)")
    ap.add_argument("--label-shifts", default=None,
                    help="scripts/label_frontier_runs.py's output: each run it lists is labelled at its measured "
                         "frontier along --label (its steps moved by the run's shift); the rest keep --label")
    ap.add_argument("--label-study", nargs="*", default=None, help="label_study JSONs whose tables go into the report")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--previous", default=None, help="a predictor file to score beside the new one (the one shipped before)")
    ap.add_argument("--no-held-out", action="store_true", help="only the shipped fit (the report needs the folds)")
    ap.add_argument("--fixed-rule", default="shipped",
                    help="a weights file whose whole rule (start, cadence, threshold, patience, veto) is also replayed held "
                         "out with each fold's predictor; 'shipped' (default): the packaged one; 'none': skip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--objective", default="pooled", choices=OBJECTIVES,
                    help="what the rule maximizes: the pooled share of the oracle's saving, or each run's share, averaged")
    ap.add_argument("--patiences", nargs="+", type=int, default=list(RuleSearch.patiences))
    ap.add_argument("--starts", nargs="+", type=float, default=list(RuleSearch.starts),
                    help="shares of the run before which no decision is made, to try, e.g. 0 0.4 0.6")
    ap.add_argument("--taus", nargs="+", default=["none"],
                    help="functional veto taus to try ('none': no veto; others need runs that recorded the veto's shares)")
    ap.add_argument("--veto-lookbacks", nargs="+", default=list(RuleSearch.lookbacks), choices=list(VETO_LOOKBACKS),
                    help="how far back the veto's weights are, to try: the rule's previous decision, or an epoch")
    ap.add_argument("--per-run-floors", nargs="+", type=int, default=list(RuleSearch.per_run_floors),
                    help="minimum decisions per run to try (0: per-epoch cadence only), e.g. 0 8 12 16")
    ap.add_argument("--members", type=int, default=MEMBERS, help="networks averaged in the predictor (seeds differ)")
    ap.add_argument("--distil", action="store_true",
                    help="fit one network to the members' averaged P(freeze): an ensemble's decisions at one network's cost")
    ap.add_argument("--folds", default=str(FOLDS),
                    help="out-of-fold splits whose predictions calibrate the predictor and choose its rule (each fit on "
                         f"the rest): a number of random splits by run, or one split per {' or '.join(GROUP_FOLDS)}"),
    ap.add_argument("--progress-input", action="store_true",
                    help="the predictor also reads the share of the planned run done (the engine then needs total_steps)")
    ap.add_argument("--settled-run-weight", type=float, default=SETTLED_RUN_WEIGHT,
                    help="training weight of runs labelled all-freezable at their first checkpoint")
    a = ap.parse_args(argv)
    if a.members < 1:
        ap.error(f"--members must be >= 1; got {a.members}")
    folds = int(a.folds) if a.folds.isdigit() else a.folds
    if folds not in GROUP_FOLDS and not (isinstance(folds, int) and folds >= 2):
        ap.error(f"--folds must be an integer >= 2 or one of {', '.join(GROUP_FOLDS)}; got {a.folds!r}")
    if not 0 <= a.settled_run_weight <= 1:
        ap.error(f"--settled-run-weight must be in [0, 1]; got {a.settled_run_weight}")
    try:
        taus = tuple(None if t.lower() == "none" else float(t) for t in a.taus)
    except ValueError:
        ap.error(f"--taus are numbers in (0, 1] or 'none'; got {a.taus}")
    try:
        search = RuleSearch(a.objective, tuple(a.patiences), tuple(a.per_run_floors), tuple(a.starts), taus,
                            lookbacks=tuple(a.veto_lookbacks))
    except ValueError as e:
        ap.error(str(e))
    res = run(a.runs, a.out, a.report, a.label, a.epochs, a.seed, label_study=a.label_study, held_out=not a.no_held_out,
              search=search, previous=a.previous, members=a.members, settled_run_weight=a.settled_run_weight,
              distil=a.distil, folds=folds, fixed_rule=None if a.fixed_rule == "none" else a.fixed_rule,
              label_shifts=a.label_shifts, progress_input=a.progress_input)
    print(json.dumps(res["shipped"]))


if __name__ == "__main__":
    from ..lab.cli import run_cli
    run_cli(main)
