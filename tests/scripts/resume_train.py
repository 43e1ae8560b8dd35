"""Trains a small CNN on sklearn digits with SmartFRZ, checkpointing; the resume test kills and restarts it.

python resume_train.py OUT_DIR PREDICTOR [--resume] [--step-delay S] [--hang-at STEP]
Prints "step N" after every step; writes OUT_DIR/final.pt (weights, optimizer, frozen units) at the end.
"""
import argparse
import time
from pathlib import Path

import torch
from torch import nn

from smartfrz import SmartFRZ
from smartfrz.lab.data import load_digits, make_loader
from smartfrz.lab.train import fit


def small_cnn():
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
    return nn.Sequential(block(1, 8), block(8, 8), block(8, 8), block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(8, 10))  # dropout: the global RNG must be restored too


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("predictor")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--step-delay", type=float, default=0.0)
    ap.add_argument("--hang-at", type=int, default=None, help="stall here, so a SIGKILL is sure to find it alive")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.1)
    a = ap.parse_args()
    torch.set_num_threads(1)  # bitwise reproducibility across processes
    torch.manual_seed(0)
    out = Path(a.out)
    train = make_loader(load_digits("train"), 64, shuffle=True, seed=1, drop_last=True)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
    x0 = next(iter(make_loader(load_digits("train"), 2)))[0]
    frz = SmartFRZ(model, opt, example_input=x0, policy="smartfrz", predictor_path=a.predictor, threshold=a.threshold,
                   window=3, sample_size=64, record_every=2, decide_every=7, steps_per_epoch=len(train))

    def on_step(step):
        print(f"step {step}", flush=True)
        time.sleep(a.step_delay)
        if step == a.hang_at:
            time.sleep(300)

    ckpt = out / "ckpt.pt"
    res = fit(model, opt, train, a.epochs, scheduler=sched, frz=frz, on_step=on_step, log_every=5, progress=False,
              checkpoint_path=ckpt, checkpoint_every=3, resume_from=ckpt if a.resume else None)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "frozen": frz.frozen_units,
                "timeline": [(e["step"], e["unit"], e["p_freeze"]) for e in frz.timeline],
                "history": res.history, "steps": res.steps}, out / "final.pt")


if __name__ == "__main__":
    main()
