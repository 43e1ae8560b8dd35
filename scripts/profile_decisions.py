"""Where a SmartFRZ run's decision overhead goes: one bench task's `smartfrz` run under cProfile, the lab's
stopwatches (recording, deciding) and the callees of the policy's decision, the predictor and the veto.

    python scripts/profile_decisions.py --suite smoke --task digits_cnn --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from smartfrz.lab.bench import SUITES
from smartfrz.lab.experiment import ExperimentConfig, run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", required=True, choices=sorted(SUITES))
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args(argv)
    if a.task not in SUITES[a.suite]["tasks"]:
        ap.error(f"suite {a.suite} has tasks {sorted(SUITES[a.suite]['tasks'])}, not {a.task!r}")
    torch.set_num_threads(1)  # as the bench runs on a CPU
    base = dict(SUITES[a.suite]["tasks"][a.task])
    base.pop("extra_policies", None)
    cfg = ExperimentConfig(name="profile", policy="smartfrz", seed=a.seed, data_dir=a.data_dir, device="cpu",
                           out_dir=None, progress=False, record_cka=False, frz=base.pop("frz", {}), **base)
    prof = cProfile.Profile()
    prof.enable()
    res = run(cfg)
    prof.disable()
    print(f"wall {res.wall_s:.2f} s, overhead {res.overhead_s} ({res.overhead_s['total'] / res.wall_s:.2%}), "
          f"cadence {res.cadence}, frozen {len(res.frozen_units)} units")
    stats = pstats.Stats(prof)
    for name in ("policies.py.*decide", "predict_proba", "veto.py.*allow", "veto.py.*snapshot", "recorder.py.*record"):
        stats.print_callees(name)


if __name__ == "__main__":
    main()
