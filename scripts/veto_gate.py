"""Would the functional veto cost less, and decide as well, if it were checked only where a freeze would follow?

The shipped rule counts a unit's streak only over decisions where the predictor settles it *and* the veto passes
it, so the veto runs at every decision after the start where the predictor settles anything: on a short
fine-tune, most decisions. A gated veto lets the predictor's streak alone pick the prefix that would freeze now and
checks only that prefix, only then; a prefix the veto cuts keeps its streak and is checked again at the next
decision. Fewer checks, one pass instead of ``patience`` in a row: cheaper and weaker.

Both are replayed with the shipped predictor and rule on every recorded run (`data/freeze_runs`), against each
run's label (as ``scripts/projected_veto.py``): the first-order saving as a share of the label's, units frozen
before their label, and the veto's probe forwards (a reference, then one per prefix put back, as the engine counts
``FunctionalVeto.forwards``). The predictor saw most of these runs, so the savings are optimistic alike for both.

    python scripts/veto_gate.py --runs data/freeze_runs --shifts data/freeze_runs/label_shifts.json \
        --out reports/predictor/veto_gate.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from projected_veto import replay_inputs, replay_parser  # noqa: E402

from smartfrz.predictor_training import training as T  # noqa: E402


def main(argv=None) -> None:
    a = replay_parser(__doc__).parse_args(argv)
    rule, runs, d, p = replay_inputs(a)
    grids = [T._grid(d, r, p) for r in range(len(runs))]
    shares = [T.recorded_veto(run, run["meta"], rule["decisions_per_epoch"], rule["decisions_per_run"], rule["veto_tau"],
                              rule["veto_probe_rows"], rule["veto_lookback"])[0] for run in runs]
    rows, same = [], {}
    print("| veto | tau | runs | saving, share of the label's | units early | checks | probe forwards |\n|---|---|---|---|---|---|---|")
    for tau in sorted({rule["veto_tau"], *a.taus}):
        per_run = {gate: [{"run": run["meta"]["name"], "regime": run["meta"]["spec"]["regime"],
                           **T.replay(*grid, run["meta"], rule["threshold"], rule["patience"], rule["decisions_per_epoch"],
                                      rule["decisions_per_run"], start=rule["decide_from"], veto=(sh, tau),
                                      per_decision=rule["freeze_per_decision"], max_share=rule["max_frozen_share"],
                                      gate=gate)}
                          for run, grid, sh in zip(runs, grids, shares)] for gate in (False, True)}
        same[str(tau)] = sum(x["pred"] == y["pred"] for x, y in zip(per_run[False], per_run[True]))
        for gate, name in ((False, "in the streak (shipped)"), (True, "gated")):
            for kind in ("scratch", "finetune", None):
                sel = [x for x in per_run[gate] if kind is None or x["regime"] == kind]
                s = T.summarize(sel)
                row = {"veto": name, "tau": tau, "kind": kind or "all", **s,
                       "veto_checks": sum(x["veto_checks"] for x in sel), "veto_forwards": sum(x["veto_forwards"] for x in sel)}
                rows.append(row)
                print(f"| {name} | {tau:g} | {row['kind']} ({s['runs']}) | {s['saved_share_of_oracle']:.0%} | "
                      f"{s['early']}/{s['units']} | {row['veto_checks']} | {row['veto_forwards']} |")
    print("runs freezing exactly alike, by tau:", same)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"command": "python scripts/veto_gate.py " + " ".join(argv or sys.argv[1:]),
                                     "label": a.label, "shifts": str(a.shifts), "rule": rule, "rows": rows,
                                     "identical_runs": same, "runs": len(runs)}, indent=1))


if __name__ == "__main__":
    main()
