"""Logs the functional veto's changed share for every prefix at every decision, nothing frozen (patience huge, threshold
1e-6, the shipped veto looking back one decision, 128 probe rows). A diagnostic (2026-12-06), beside its outputs:
    python reports/bench/diag/veto_shares.py SUITE TASK SEED OUT.json   (e.g. headroom sst2_minilm 0 ...)
The SST-2 files were logged with the shipped threshold (0.1; every prefix scored above it), the digits ones with 1e-6.
The maintained tool for such traces is scripts/trace_decisions.py (P(freeze) too, and every lookback): use it next time."""
import json, sys, torch
from smartfrz.lab.experiment import ExperimentConfig, run
from smartfrz import veto as V
from smartfrz.lab.bench import SUITES
torch.set_num_threads(1)
suite, task, seed, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
log = []
orig = V.FunctionalVeto.allow

@torch.no_grad()
def allow(self, model, start, stop, step=None):
    prev = self.earlier(step)
    was = model.training; model.eval()
    ref = [V.logits(model, p) for p in self.parts]
    saved = {i: V.unit_state(self.units[i]) for i in range(start, stop) if i in prev}
    row = {"step": step, "start": start, "shares": []}
    for upto in range(start + 1, stop + 1):
        i = upto - 1
        if i not in prev: break
        V.load_unit_state(self.units[i], prev[i])
        new = [V.logits(model, p) for p in self.parts]
        flips = sum(int((r.argmax(-1) != n.argmax(-1)).sum()) for r, n in zip(ref, new))
        rows = sum(r.shape[0] for r in ref)
        row["shares"].append(flips / rows)
    for i, s in saved.items(): V.load_unit_state(self.units[i], s)
    model.train(was)
    row["rows"] = sum(r.shape[0] for r in ref)
    log.append(row)
    return orig(self, model, start, stop, step)
V.FunctionalVeto.allow = allow
from smartfrz import policies as PL
PL.SmartFRZPolicy._too_late = lambda self, engine, k: False
kw = {k: v for k, v in SUITES[suite]["tasks"][task].items() if k != "extra_policies"}
cfg = ExperimentConfig(policy="smartfrz", seed=seed, data_dir="../shared/data", progress=False,
                       frz={"patience": 1000, "veto_probe_rows": 128, "decide_from": 0.0, "threshold": 1e-6}, **kw)
r = run(cfg)
json.dump({"task": task, "seed": seed, "metric": r.metric, "steps": r.steps, "log": log,
           "units": [u["name"] for u in r.units]}, open(out, "w"))
print(task, seed, r.metric, len(log))
