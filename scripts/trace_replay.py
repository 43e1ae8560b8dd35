"""Replay decision rules on decision traces (scripts/trace_decisions.py): when each unit would freeze, and
about how much that saves, for every rule of a grid, without training.

A unit freezes once, at `patience` consecutive decisions, it and every active unit before it scored
P(freeze) >= threshold and (with a veto) passed it: putting the prefix through it back to its earlier weights
changed at most tau of the probe's predictions (the engine's rule, smartfrz.policies.SmartFRZPolicy), read as far
back as the rule's previous decision (`veto_shares`). Savings are estimated as 2/3 of the frozen prefix's forward
FLOP share (its backward) over the remaining steps: a first-order figure along the unfrozen trajectory, for
choosing which rules to train, never a result. Traces that price the veto (probe_flops) rank rules net of its
forwards: each check at the price of a whole probe forward (traces recorded before the veto ran its probe in
length-ordered parts price the padded probe; a failing check now stops early), so the cost is an upper bound.

    python scripts/trace_replay.py reports/bench/trace/cpu_*.json
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


def replay(trace: dict, threshold: float, patience: int, per_epoch: int, tau: float | None,
           probe: int | None = None, per_run: int = 0, start: float = 0.0) -> dict[int, int]:
    """Unit index -> the step it freezes at under the rule; ``probe``: the veto reads only that many of the
    probe's first examples (traces record 32 and 64); ``per_run``: at least that many decisions a run."""
    return replay_with_cost(trace, threshold, patience, per_epoch, tau, probe, per_run, start)[0]


def stride_for(trace: dict, per_epoch: int, per_run: int = 0) -> int:
    """Traced decisions between the rule's decisions: the engine's cadence (Policy.cadence), in trace rows."""
    rows, spe, total = trace["decisions"], trace["steps_per_epoch"], trace["total_steps"]
    traced_every = max(1, rows[1]["step"] - rows[0]["step"]) if len(rows) > 1 else spe
    every = [spe // per_epoch] if per_epoch else []
    if per_run:
        every.append(total // per_run)
    return max(1, round(max(1, min(every)) / traced_every))


def veto_search(share: dict, start: int, stop: int, tau: float) -> tuple[int, int]:
    """(the longest prefix start..passed-1 the veto allows, the probe forwards it runs), as smartfrz.veto does:
    a reference forward, the front unit put back, then the whole prefix; only a failing whole is searched unit by
    unit, front first. ``share[i]``: the change with units start..i put back (a unit without one has no earlier
    weights, so the search stops before it, and runs nothing when that is the front unit)."""
    known = start
    while known < stop and str(known) in share:
        known += 1
    if known == start:
        return start, 0
    fits = lambda i: share[str(i)] <= tau  # the prefix through unit i
    if not fits(start):
        return start, 2
    if known == start + 1 or fits(known - 1):
        return known, 2 if known == start + 1 else 3
    passed, forwards = start + 1, 3
    while passed + 1 < known:
        forwards += 1
        if not fits(passed):
            break
        passed += 1
    return passed, forwards


def veto_shares(trace: dict, row: dict, stride: int, probe: int | None) -> dict:
    """Each prefix's changed share as the engine's veto would read it at this decision. The engine puts units back
    to their weights at the rule's previous decision (``stride`` traced decisions back, for rules of at most 4
    decisions an epoch); traces recorded with ``--lookbacks`` hold that distance. Older traces and the whole
    probe hold only the traced cadence's own lookback (about a quarter epoch): shorter than a slower rule's, so
    their veto passes more often than the engine's would."""
    if probe is None:
        return row["share"]
    if "share_n" not in row:
        raise SystemExit(f"a trace of {trace.get('task')} predates the small-probe shares: read it with probe all")
    if "share_k" not in row or stride == 1:
        return row["share_n"][str(probe)]
    far = row["share_k"].get(str(stride))
    if far is None:
        raise SystemExit(f"a trace of {trace.get('task')} has no shares {stride} traced decisions back at step "
                         f"{row['step']}: record it with --lookbacks {stride} and a --lookback-from no later than "
                         f"the rule's start")
    return far[str(probe)]


def replay_with_cost(trace: dict, threshold: float, patience: int, per_epoch: int, tau: float | None,
                     probe: int | None = None, per_run: int = 0, start: float = 0.0) -> tuple[dict[int, int], int]:
    """(replay's freeze steps, the veto forwards the engine would run for them), decision by decision as
    SmartFRZPolicy.decide: the front units scoring >= threshold, cut to what the veto allows, extend their
    streaks; a unit freezes at ``patience``."""
    rows = trace["decisions"]
    stride = stride_for(trace, per_epoch, per_run)
    every = stride * (max(1, rows[1]["step"] - rows[0]["step"]) if len(rows) > 1 else trace["steps_per_epoch"])
    n_units = len(trace["units"]) - 1  # the head stays
    streak, frozen, out, forwards = [0] * n_units, 0, {}, 0
    for j, r in enumerate(rows):
        if (j + 1) % stride:
            continue
        if r["step"] < start * trace["total_steps"]:
            continue  # before the rule's start: no decision at all
        settled = frozen
        while settled < n_units and r["p"].get(str(settled), 0.0) >= threshold:
            settled += 1
        if tau is not None and settled > frozen:
            late = (trace["total_steps"] - r["step"]) // every < patience - streak[frozen] - 1
            if late:  # the engine skips a veto no freeze could follow
                settled = frozen
            else:
                settled, f = veto_search(veto_shares(trace, r, stride, probe), frozen, settled, tau)
                forwards += f
        for u in range(frozen, n_units):
            streak[u] = streak[u] + 1 if u < settled else 0
        k = frozen
        while k < n_units and streak[k] >= patience:
            k += 1
        for u in range(frozen, k):
            out[u] = r["step"]
        frozen = k
    return out, forwards


def decision_cost(trace: dict, forwards: int, probe: int | None = None) -> float | None:
    """The veto's forwards as a share of the run's training FLOPs (None: a trace that predates pricing them)."""
    flops = trace.get("probe_flops", {}).get("all" if probe is None else str(probe))
    return None if flops is None else forwards * flops / (trace["total_steps"] * trace["step_flops"])


def saving(trace: dict, steps: dict[int, int]) -> float:
    shares = [u["flop_share"] for u in trace["units"]]
    total, saved = trace["total_steps"], 0.0
    for u, s in steps.items():
        saved += 2 / 3 * shares[u] * (total - s) / total
    return saved


def within_safe(name: str, trace: dict, steps: dict[int, int], safe: dict) -> bool:
    """Some schedule measured safe on the trace's task (reports/bench/trace/safe_schedules.json) freezes every unit
    the rule freezes no later than the rule does: per seed where the trace's seed has one, else its latest."""
    task, seed = name.rsplit("_s", 1)
    spe = trace["steps_per_epoch"]
    for sched in safe["tasks"][task].values():
        s = sched.get("per_seed", {}).get(seed, sched["latest"])
        if all(u < len(s) and s[u] is not None and step / spe >= s[u] - 1e-9 for u, step in steps.items()):
            return True
    return False


def by_task(by_trace: dict[str, float]) -> dict[str, float]:
    """Each task's mean over its seeds (trace names end in _s<seed>)."""
    tasks: dict[str, list[float]] = {}
    for name, v in by_trace.items():
        tasks.setdefault(name.rsplit("_s", 1)[0], []).append(v)
    return {k: sum(v) / len(v) for k, v in tasks.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--thresholds", nargs="*", type=float, default=[0.2, 0.3, 0.36, 0.5])
    ap.add_argument("--patience", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--per-epoch", nargs="*", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--per-run", nargs="*", type=int, default=[0], help="at least this many decisions a run (0: none)")
    ap.add_argument("--starts", nargs="*", type=float, default=[0.0],
                    help="shares of the planned run before which no decision is made")
    ap.add_argument("--taus", nargs="*", type=float, default=[0.0, 0.01, 0.02, 0.05])
    ap.add_argument("--probes", nargs="*", default=["all"],
                    help="veto probe sizes to rank: all (the traced probe) or 32 / 64 (its first examples)")
    ap.add_argument("--show", nargs="*", default=None,
                    help="rules THR,PAT,PER,TAU[,PROBE[,PER_RUN[,START]]] to print freeze epochs and decision cost for")
    ap.add_argument("--earliest", nargs="*", default=[],
                    help="TASK=EPOCH: no unit of a trace whose name starts with TASK may freeze before EPOCH (a "
                         "freeze step measured safe there); with it, the admissible rules are ranked by their net "
                         "saving (after the veto's forwards) as a share of each task's best, averaged over tasks")
    ap.add_argument("--safe", default=None,
                    help="safe schedules (reports/bench/trace/safe_schedules.json): with it, a rule is admissible only "
                         "where some measured-safe schedule freezes each unit it freezes no later; rules are ranked as "
                         "with --earliest")
    ap.add_argument("--max-cost", type=float, default=None,
                    help="with --earliest or --safe: a rule is admissible only where its veto's forwards cost at most "
                         "this share of the run's training FLOPs on every trace (e.g. 0.01)")
    ap.add_argument("--top", type=int, default=15, help="ranked rules to print (--earliest)")
    a = ap.parse_args(argv)
    traces = {Path(p).stem: json.loads(Path(p).read_text()) for p in a.traces}
    safe = json.loads(Path(a.safe).read_text()) if a.safe else None
    if a.earliest or safe:
        floors = {k: float(v) for k, v in (e.split("=") for e in a.earliest)}
        floor = {n: next((e for k, e in floors.items() if n.startswith(k)), 0.0) for n in traces}
        admissible = {}  # rule -> {task: mean net saving over its seeds}
        for thr, pat, per, tau, probe, prun, start in itertools.product(
                a.thresholds, a.patience, a.per_epoch, [None, *a.taus], a.probes, a.per_run, a.starts):
            probe = None if probe == "all" else int(probe)
            if (tau is None and probe is not None) or not (per or prun):
                continue  # no veto, no probe; no cadence
            st = {n: replay_with_cost(t, thr, pat, per, tau, probe, prun, start) for n, t in traces.items()}
            if all(min(s.values(), default=1e18) / traces[n]["steps_per_epoch"] >= floor[n]
                   and (safe is None or within_safe(n, traces[n], s, safe))
                   and (a.max_cost is None or (decision_cost(traces[n], f, probe) or 0.0) <= a.max_cost)
                   for n, (s, f) in st.items()):
                net = {n: saving(traces[n], s) - (decision_cost(traces[n], f, probe) or 0.0) for n, (s, f) in st.items()}
                admissible[(thr, pat, per, tau, probe or "all", prun, start)] = by_task(net)
        # each task counts once, and relative to the best any admissible rule nets there: large absolute savings
        # on one task must not outvote another
        best = {k: max(r[k] for r in admissible.values()) for k in next(iter(admissible.values()), {})}
        score = {rule: sum(r[k] / best[k] if best[k] > 0 else 1.0 for k in best) / len(best)
                 for rule, r in admissible.items()}
        for rule in sorted(score, key=score.get, reverse=True)[:a.top]:
            thr, pat, per, tau, probe, prun, start = rule
            nets = ", ".join(f"{k} {v:.1%}" for k, v in admissible[rule].items())
            print(f"{score[rule]:.2f} of each task's best  (net: {nets})  threshold {thr} patience {pat} "
                  f"per-epoch {per} per-run {prun} tau {tau} probe {probe} start {start}")
        return
    if a.show:
        for rule in a.show:
            thr, pat, per, tau, probe, prun, start = (rule.split(",") + ["all", "0", "0"][rule.count(",") - 3:])[:7]
            tau = None if tau == "none" else float(tau)
            probe = None if probe == "all" else int(probe)
            print(f"rule threshold {thr} patience {pat} per-epoch {per} per-run {prun} tau {tau} probe {probe or 'all'} "
                  f"start {start}")
            for name, t in traces.items():
                st, fw = replay_with_cost(t, float(thr), int(pat), int(per), tau, probe, int(prun), float(start))
                cost, spe = decision_cost(t, fw, probe), t["steps_per_epoch"]
                print(f"  {name:45s} saved~{saving(t, st):6.1%}  deciding {'n/m' if cost is None else f'{cost:.1%}'}"
                      f"  freeze epochs " + " ".join(f"{st[u] / spe:.2f}" for u in sorted(st)))
        return
    print("thr  pat per  tau   " + "  ".join(f"{n[:22]:>22s}" for n in traces))
    for thr, pat, per, tau in itertools.product(a.thresholds, a.patience, a.per_epoch, [None, *a.taus]):
        cells = []
        for t in traces.values():
            st = replay(t, thr, pat, per, tau)
            first = min(st.values()) / t["steps_per_epoch"] if st else float("nan")
            cells.append(f"{saving(t, st):5.1%} {len(st):2d}u @{first:5.2f}")
        print(f"{thr:.2f} {pat:3d} {per:3d} {str(tau):5s} " + "  ".join(f"{c:>22s}" for c in cells))


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
