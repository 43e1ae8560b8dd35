"""Trains the shipped predictor on recorded runs and evaluates it honestly, family out.

Samples are (run, checkpoint, unit) windows. The training target is "this unit's CKA stays >= tau
from now on"; the evaluation target is the front-to-back label of ``smartfrz.predictor_training.labels``, scored on
*eligible* samples (every earlier unit already freezable), which is exactly where the engine acts.
Thresholds are chosen on out-of-fold predictions of the training family only.

``python -m smartfrz.predictor_training.training --runs DIR --out smartfrz/weights/smartfrz_predictor.safetensors --report reports/predictor``
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .freeze_dataset import load_runs
from .labels import freeze_labels
from ..predictor import FreezePredictor

TAU = 0.95  # CKA against the end of the run; see reports/predictor/cka_curves.png
TARGET_PRECISION = 0.9  # the bar on held-out families
SELECT_PRECISION = 0.95  # thresholds aim higher on the training family: transfer costs precision


def settled(cka: torch.Tensor, tau: float) -> torch.Tensor:
    ok = cka >= tau
    return torch.flip(torch.cummin(torch.flip(ok.int(), [0]), 0).values, [0]).bool()


def samples(runs: list[dict], tau: float) -> dict:
    """Flat arrays over (run, checkpoint, unit)."""
    cols = {k: [] for k in ("x", "y_train", "y_eval", "eligible", "run", "family", "unit", "step", "frac")}
    for r_i, r in enumerate(runs):
        cka, feats = r["cka"], r["features"].float()
        own, label = settled(cka, tau), freeze_labels(cka, tau)
        C, U = cka.shape
        prev_ok = torch.cat([torch.ones(C, 1, dtype=torch.bool), label[:, :-1]], 1)
        cols["x"].append(feats.reshape(C * U, *feats.shape[2:]))
        cols["y_train"].append(own.reshape(-1))
        cols["y_eval"].append(label.reshape(-1))
        cols["eligible"].append(prev_ok.reshape(-1))
        cols["run"].append(torch.full((C * U,), r_i))
        cols["family"].append([r["meta"]["family"]] * (C * U))
        cols["unit"].append(torch.arange(U).repeat(C))
        cols["step"].append(r["steps"].repeat_interleave(U))
        cols["frac"].append((r["steps"].float() / r["meta"]["total_steps"]).repeat_interleave(U))
    out = {k: torch.cat(v) for k, v in cols.items() if k != "family"}
    out["family"] = np.concatenate(cols["family"])
    return out


def fit_platt(logits: torch.Tensor, y: torch.Tensor, steps: int = 300) -> tuple[float, float]:
    """Logistic calibration of raw logits on held-out predictions."""
    a, b = torch.ones((), requires_grad=True), torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(a * logits + b, y.float())
        loss.backward()
        return loss
    opt.step(closure)
    return float(a.detach()), float(b.detach())


def pick_threshold(p: np.ndarray, y: np.ndarray, target: float = SELECT_PRECISION) -> float:
    """Lowest threshold whose precision on these predictions reaches the target."""
    for t in np.linspace(0.05, 0.99, 95):
        pred = p >= t
        if pred.sum() >= 5 and (y[pred].mean() >= target):
            return float(t)
    return 0.99


def _fit(d: dict, idx: torch.Tensor, seed: int, epochs: int) -> FreezePredictor:
    return train_predictor(d["x"][idx], d["y_train"][idx], epochs=epochs, seed=seed)


def train_calibrated(d: dict, idx: torch.Tensor, seed: int = 0, epochs: int = 25, folds: int = 3) -> FreezePredictor:
    """Out-of-fold (by run) logits -> Platt calibration and threshold; then a fit on all of ``idx``."""
    runs = d["run"][idx].unique()
    g = torch.Generator().manual_seed(seed)
    runs = runs[torch.randperm(len(runs), generator=g)]
    oof_logit = torch.zeros(len(idx))
    for f in range(min(folds, len(runs))):
        held = runs[f::min(folds, len(runs))]
        mask = torch.isin(d["run"][idx], held)
        m = _fit(d, idx[~mask], seed + f + 1, epochs)
        with torch.no_grad():
            oof_logit[mask] = m(d["x"][idx[mask]])
    a, b = fit_platt(oof_logit, d["y_train"][idx])
    elig = d["eligible"][idx]
    p_oof = torch.sigmoid(a * oof_logit + b).numpy()
    threshold = pick_threshold(p_oof[elig.numpy()], d["y_eval"][idx][elig].numpy())
    model = _fit(d, idx, seed, epochs)
    model.calibration.copy_(torch.tensor([a, b]))
    model.threshold = threshold
    return model


def simulate(p: np.ndarray, d: dict, sel: np.ndarray, threshold: float, min_active: int = 1, patience: int = 1,
             cadence: int = 1) -> list[dict]:
    """Replays the engine's front-to-back rule (with ``patience``) at every ``cadence``-th checkpoint
    of each run (4 checkpoints per epoch); freeze step per unit."""
    out = []
    for r in np.unique(d["run"].numpy()[sel]):
        m = sel & (d["run"].numpy() == r)
        steps, units = d["step"].numpy()[m], d["unit"].numpy()[m]
        U = units.max() + 1
        order = np.unique(steps)
        P = np.zeros((len(order), U))
        Y = np.zeros((len(order), U), dtype=bool)
        P[np.searchsorted(order, steps), units] = p[m]
        Y[np.searchsorted(order, steps), units] = d["y_eval"].numpy()[m]
        k, pred_step, streak = 0, {}, np.zeros(U)
        for t in range(0, len(order), cadence):
            streak = np.where(P[t] >= threshold, streak + 1, 0)
            while k < U - min_active and streak[k] >= patience:
                pred_step[k] = int(order[t])
                k += 1
        for u in range(U - min_active):
            hit = np.nonzero(Y[:, u])[0]
            out.append({"run": int(r), "unit": u, "pred_step": pred_step.get(u),
                        "label_step": int(order[hit[0]]) if len(hit) else None, "last_step": int(order[-1])})
    return out


def evaluate(model: FreezePredictor, d: dict, sel: torch.Tensor, runs_meta: list[dict]) -> dict:
    with torch.no_grad():
        p = torch.sigmoid(model(d["x"][sel])).numpy()
    y, elig = d["y_eval"][sel].numpy(), d["eligible"][sel].numpy()
    thr = model.threshold

    def prf(pp, yy):
        pred = pp >= thr
        tp = int((pred & yy).sum())
        prec = tp / max(int(pred.sum()), 1)
        rec = tp / max(int(yy.sum()), 1)
        return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / max(prec + rec, 1e-12),
                "n": int(len(yy)), "positives": int(yy.sum()), "predicted_positive": int(pred.sum())}

    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p[elig], bins) - 1, 0, 9)
    calib = [{"bin": f"{bins[i]:.1f}-{bins[i + 1]:.1f}", "n": int((which == i).sum()),
              "mean_p": float(p[elig][which == i].mean()) if (which == i).any() else None,
              "freq": float(y[elig][which == i].mean()) if (which == i).any() else None} for i in range(10)]
    ece = sum(c["n"] * abs(c["mean_p"] - c["freq"]) for c in calib if c["n"]) / max(int(elig.sum()), 1)
    full_p = np.zeros(len(d["y_eval"]))
    full_p[sel.numpy()] = p
    in_sel = np.isin(np.arange(len(full_p)), sel.numpy())
    rules = []
    for cadence, patience in ((1, 1), (1, 2), (4, 1), (4, 2)):
        s_ = simulate(full_p, d, in_sel, thr, patience=patience, cadence=cadence)
        both = [(s["pred_step"] - s["label_step"]) / s["last_step"] for s in s_ if s["pred_step"] is not None and s["label_step"] is not None]
        rules.append({"decisions_per_epoch": 4 // cadence, "patience": patience,
                      "early": int(sum(x < 0 for x in both)) + sum(1 for s in s_ if s["pred_step"] is not None and s["label_step"] is None),
                      "late_or_on_time": int(sum(x >= 0 for x in both)),
                      "median_lag_share": float(np.median(both)) if both else None,
                      "worst_early_share": float(min(both)) if both else None})
    sim = simulate(full_p, d, in_sel, thr, patience=2, cadence=1)
    lags = [s["pred_step"] - s["label_step"] for s in sim if s["pred_step"] is not None and s["label_step"] is not None]
    spe = {i: m["steps_per_epoch"] for i, m in enumerate(runs_meta)}
    lag_epochs = [(s["pred_step"] - s["label_step"]) / spe[s["run"]] for s in sim
                  if s["pred_step"] is not None and s["label_step"] is not None]
    return {"threshold": thr, "eligible": prf(p[elig], y[elig]), "all": prf(p, y),
            "brier": float(np.mean((p[elig] - y[elig]) ** 2)), "ece": float(ece), "calibration": calib,
            "freeze_points": {"units": len(sim), "both_froze": len(lags),
                              "early": int(sum(l < 0 for l in lags)), "late_or_on_time": int(sum(l >= 0 for l in lags)),
                              "median_lag_steps": float(np.median(lags)) if lags else None,
                              "median_lag_epochs": float(np.median(lag_epochs)) if lag_epochs else None,
                              "mean_abs_lag_epochs": float(np.mean(np.abs(lag_epochs))) if lag_epochs else None,
                              "never_frozen_but_labelled": sum(1 for s in sim if s["pred_step"] is None and s["label_step"] is not None),
                              "frozen_but_never_labelled": sum(1 for s in sim if s["pred_step"] is not None and s["label_step"] is None)},
            "decision_rules": rules, "simulation": sim}


def run(runs_dir, out=None, report=None, tau: float = TAU, epochs: int = 25, seed: int = 0, progress: bool = True) -> dict:
    runs = load_runs(runs_dir)
    metas = [r["meta"] for r in runs]
    d = samples(runs, tau)
    fam = d["family"]
    results = {"tau": tau, "runs": [{"name": m["name"], "family": m["family"], "units": len(m["units"]),
                                     "checkpoints": int(len(r["steps"])), "final": m["final"]} for m, r in zip(metas, runs)],
               "label_balance": {f: {"samples": int((fam == f).sum()), "freeze": int(d["y_eval"][torch.from_numpy(fam == f)].sum())}
                                 for f in np.unique(fam)}, "held_out": {}}
    families = [f for f in np.unique(fam)]
    if len(families) >= 2:
        for held in families:
            tr = torch.from_numpy(np.nonzero(fam != held)[0])
            te = torch.from_numpy(np.nonzero(fam == held)[0])
            model = train_calibrated(d, tr, seed, epochs)
            ev = evaluate(model, d, te, metas)
            results["held_out"][held] = {"trained_on": [f for f in families if f != held], **ev}
            if progress:
                e = ev["eligible"]
                print(f"held out {held}: precision {e['precision']:.3f} recall {e['recall']:.3f} f1 {e['f1']:.3f} "
                      f"(threshold {ev['threshold']:.2f}, ECE {ev['ece']:.3f})", flush=True)
    final = train_calibrated(d, torch.arange(len(d["y_train"])), seed, epochs)
    results["shipped"] = {"threshold": final.threshold, "calibration": final.calibration.tolist(),
                          "num_params": final.num_params, "hparams": final.hparams}
    if out:
        final.save(out, extra={"tau": tau, "trained_on": ",".join(m["name"] for m in metas),
                               "window": runs[0]["features"].shape[2]})
    if report:
        write_report(results, runs, Path(report), d)
    if out:
        write_card(results, Path(out).parent / "README.md", window=int(runs[0]["features"].shape[2]),
                   sample_size=int(runs[0]["meta"]["spec"]["sample_size"]))
    return results


def write_card(res: dict, path: Path, window: int, sample_size: int) -> None:
    """The short card that ships next to the weights."""
    held = "\n".join(f"| {f} | {', '.join(v['trained_on'])} | {v['threshold']:.2f} | {v['eligible']['precision']:.3f} | "
                     f"{v['eligible']['recall']:.3f} | {v['eligible']['f1']:.3f} | {v['ece']:.3f} |"
                     for f, v in res["held_out"].items())
    runs = "\n".join(f"  - {r['name']} ({r['family']}, {r['units']} units, {r['checkpoints']} checkpoints)" for r in res["runs"])
    sh = res["shipped"]
    path.write_text(f"""# smartfrz_predictor.safetensors

The attention-based freeze predictor that `SmartFRZ(..., policy="smartfrz")` loads by default
(architecture: `smartfrz/predictor.py`; {sh['num_params']} parameters; safetensors, no pickle).

- Labels: linear CKA of each unit's output on a fixed probe batch against the end of the same run;
  freezable when CKA >= tau = {res['tau']} from then on, and every earlier unit too.
- Window: {window} snapshots of {sample_size} sampled weights (any window length works at inference).
- Decision threshold (stored in the file): {sh['threshold']:.2f} on Platt-calibrated P(freeze)
  (scale, bias = {sh['calibration'][0]:.3f}, {sh['calibration'][1]:.3f}), chosen for precision >= {SELECT_PRECISION}
  on out-of-fold predictions.
- Training data ({len(res['runs'])} runs):
{runs}

Held-out metrics (leave-one-family-out, eligible samples; full report: `reports/predictor/report.md`):

| held out | trained on | threshold | precision | recall | F1 | ECE |
|---|---|---|---|---|---|---|
{held}

Regenerate (all 15 runs were recorded on one H200; `--preset cpu` records fewer MiniLM runs on a CPU):

```bash
python -m smartfrz.predictor_training.freeze_dataset --preset gpu --data-dir DATA --out artifacts/freeze_runs
python -m smartfrz.predictor_training.freeze_dataset --preset gpu_text --data-dir DATA --out artifacts/freeze_runs
python -m smartfrz.predictor_training.training --runs artifacts/freeze_runs \\
    --out smartfrz/weights/smartfrz_predictor.safetensors --report reports/predictor
```
""")


def write_report(res: dict, runs: list[dict], folder: Path, d: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    folder.mkdir(parents=True, exist_ok=True)
    slim = json.loads(json.dumps(res))
    for v in slim["held_out"].values():
        v.pop("simulation", None)
    (folder / "metrics.json").write_text(json.dumps(slim, indent=2))
    manifest = {"tau": res["tau"], "runs": [{**r, "spec": run["meta"]["spec"], "steps_per_epoch": run["meta"]["steps_per_epoch"],
                                             "record_every": run["meta"]["record_every"], "units_names": run["meta"]["units"]}
                                            for r, run in zip(res["runs"], runs)],
                "samples": int(len(d["y_eval"])), "label_balance": res["label_balance"]}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    # CKA curves that justify tau
    rows = [{"run": r["meta"]["name"], "progress": float(s) / r["meta"]["total_steps"], "unit": u, "cka": float(c)}
            for r in runs for t, s in enumerate(r["steps"]) for u, c in enumerate(r["cka"][t])]
    df = pd.DataFrame(rows)
    g = sns.relplot(df, x="progress", y="cka", hue="unit", col="run", col_wrap=4, kind="line", palette="viridis",
                    height=2.4, aspect=1.2, legend="brief")
    for ax in g.axes.flat:
        ax.axhline(res["tau"], color="red", ls="--", lw=1)
        ax.set_ylim(0.4, 1.01)
    g.set_titles("{col_name}", size=7)
    g.savefig(folder / "cka_curves.png", dpi=110)
    plt.close("all")
    # calibration + freeze points on held-out families
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for fam, v in res["held_out"].items():
        c = [b for b in v["calibration"] if b["n"]]
        axes[0].plot([b["mean_p"] for b in c], [b["freq"] for b in c], "o-", label=f"held-out {fam}")
        sim = [s for s in v["simulation"] if s["label_step"] is not None]
        axes[1].scatter([s["label_step"] / s["last_step"] for s in sim],
                        [(s["pred_step"] if s["pred_step"] is not None else s["last_step"]) / s["last_step"] for s in sim],
                        label=f"held-out {fam}", alpha=0.7)
    axes[0].plot([0, 1], [0, 1], "k:", lw=1)
    axes[0].set(xlabel="predicted P(freeze)", ylabel="observed freeze rate", title="calibration (eligible samples)")
    axes[1].plot([0, 1], [0, 1], "k:", lw=1)
    axes[1].set(xlabel="CKA label freeze point (share of run)", ylabel="predicted freeze point",
                title="freeze points (above the line = late)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "heldout.png", dpi=110)
    plt.close(fig)
    lines = ["# SmartFRZ predictor: held-out evaluation", "",
             f"Generated by `python -m smartfrz.predictor_training.training` (tau = {res['tau']}, target precision "
             f"{TARGET_PRECISION}). Labels: linear CKA of each unit's output on a fixed probe batch against the end "
             "of the same run; a unit is freezable when CKA >= tau from then on and every earlier unit is too.", "",
             "## Runs", "", "| run | family | units | checkpoints | final metric |", "|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['name']} | {r['family']} | {r['units']} | {r['checkpoints']} | "
                     f"{r['final'].get('metric_name', '')} {r['final'].get('metric', float('nan')):.2f} |")
    lines += ["", "Label balance: " + ", ".join(f"{f}: {v['freeze']}/{v['samples']} freezable" for f, v in res["label_balance"].items()), "",
              "## Leave-one-family-out (eligible samples: every earlier unit freezable)", "",
              "| held out | trained on | threshold | precision | recall | F1 | ECE | Brier | median lag (epochs) | early / late-or-on-time | missed |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for fam, v in res["held_out"].items():
        e, fp = v["eligible"], v["freeze_points"]
        lag = fp["median_lag_epochs"]
        lines.append(f"| {fam} | {', '.join(v['trained_on'])} | {v['threshold']:.2f} | {e['precision']:.3f} | {e['recall']:.3f} | "
                     f"{e['f1']:.3f} | {v['ece']:.3f} | {v['brier']:.3f} | {'n/a' if lag is None else f'{lag:+.2f}'} | "
                     f"{fp['early']} / {fp['late_or_on_time']} | {fp['never_frozen_but_labelled']} |")
    lines += ["", "All samples (including units whose predecessors are not yet freezable):", ""]
    for fam, v in res["held_out"].items():
        a = v["all"]
        lines.append(f"- held-out {fam}: precision {a['precision']:.3f}, recall {a['recall']:.3f}, F1 {a['f1']:.3f} (n={a['n']})")
    lines += ["", f"Targets: precision >= {TARGET_PRECISION} for 'freeze' at recall >= 0.6 on held-out families.", "",
              "Lag: replaying the engine's front-to-back rule (patience 2) at every checkpoint (4 per epoch) of each held-out run; "
              "positive = the predictor froze later than the CKA label (costs time), negative = earlier (risks accuracy).", "",
              "## Decision rule: cadence and patience (replayed on held-out runs)", "",
              "Shares of the run; early counts include units frozen that the labels never mark freezable.", "",
              "| held out | decisions / epoch | patience | early | late or on time | median lag | worst early |",
              "|---|---|---|---|---|---|---|"]
    for fam, v in res["held_out"].items():
        for r in v["decision_rules"]:
            med = "n/a" if r["median_lag_share"] is None else f"{r['median_lag_share']:+.3f}"
            worst = "n/a" if r["worst_early_share"] is None else f"{r['worst_early_share']:+.3f}"
            lines.append(f"| {fam} | {r['decisions_per_epoch']} | {r['patience']} | {r['early']} | {r['late_or_on_time']} | {med} | {worst} |")
    lines += ["", "The engine's defaults are one decision per epoch and patience 2.", "",
              f"Shipped predictor: trained on all runs, threshold {res['shipped']['threshold']:.2f}, "
              f"{res['shipped']['num_params']} parameters.", "",
              "![CKA curves](cka_curves.png)", "", "![held-out calibration and freeze points](heldout.png)", ""]
    (folder / "report.md").write_text("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--report", default=None)
    ap.add_argument("--tau", type=float, default=TAU)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = run(a.runs, a.out, a.report, a.tau, a.epochs, a.seed)
    print(json.dumps(res["shipped"]))



def train_predictor(feats: torch.Tensor, labels: torch.Tensor, epochs: int = 30, lr: float = 2e-3,
                    batch_size: int = 256, seed: int = 0, pos_weight: float | None = None,
                    model: FreezePredictor | None = None, progress: bool = False, **hparams) -> FreezePredictor:
    """Fits the predictor on precomputed features; balanced by ``pos_weight`` (default neg/pos)."""
    torch.manual_seed(seed)
    model = model or FreezePredictor(**hparams)
    model.train()
    y = labels.float()
    if pos_weight is None:
        pos = y.sum().clamp_min(1.0)
        pos_weight = float((len(y) - pos) / pos)
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
            loss = F.binary_cross_entropy_with_logits(model(feats[b]), y[b], pos_weight=pw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()

if __name__ == "__main__":
    main()
