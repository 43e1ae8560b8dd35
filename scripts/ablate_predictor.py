"""The shipped rule without its predictor: a copy of a predictor file whose threshold is 0, so every unit with a full
window reads as settled and the rule's start, cadence, patience and functional veto decide alone. Benched with
``--predictor``, it measures what the attention predictor itself adds (docs/results.md, "What the predictor decides").

    python scripts/ablate_predictor.py --out artifacts/ablation/no_predictor.safetensors
    python -m smartfrz.lab.bench --suite headroom --data-dir ../shared/data --jobs 2 --policies none smartfrz \\
        --predictor artifacts/ablation/no_predictor.safetensors --out artifacts/ablation/headroom.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

from smartfrz.predictor import DEFAULT_PATH, FreezePredictor

WRITTEN_BY_SAVE = ("hparams", "threshold", "patience", "decisions_per_epoch", "decisions_per_run", "veto_tau",
                   "veto_probe_rows", "decide_from", "veto_lookback", "freeze_per_decision", "feature_version")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=str(DEFAULT_PATH), help="the predictor file to copy (default: the shipped one)")
    ap.add_argument("--out", required=True, help="where the copy goes (never the shipped file)")
    a = ap.parse_args(argv)
    if Path(a.out).resolve() == DEFAULT_PATH.resolve():
        ap.error("--out is the shipped predictor: write the ablation somewhere else")
    p = FreezePredictor.load(a.path)
    extra = {k: v for k, v in p.metadata.items() if k not in WRITTEN_BY_SAVE}  # what it was trained on, kept
    extra["ablation"] = "threshold 0: every ready unit reads as settled; the start, patience and the veto decide alone"
    p.threshold = 0.0
    p.save(a.out, extra=extra)
    print(f"wrote {a.out}: the rule of {a.path} with threshold 0")


if __name__ == "__main__":
    from smartfrz.lab.cli import run_cli
    run_cli(main)
