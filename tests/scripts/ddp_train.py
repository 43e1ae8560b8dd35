"""Run under torchrun: every rank trains a small CNN with SmartFRZ through DDPFreezer and writes what it ended with.

torchrun --nproc_per_node=2 ddp_train.py OUT_DIR PREDICTOR {smartfrz,linear}
Rank 1 is configured so that on its own it would never freeze: only rank 0's broadcast decision can make it.
"""
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader

from smartfrz import SmartFRZ
from smartfrz.distributed import DDPFreezer
from smartfrz.lab.train import fit

from ddp_toy import setup  # beside this script (torchrun puts its folder on the path)


def main():
    out, predictor, policy = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    rank, x, ds, loader, model, opt = setup()
    if policy == "smartfrz":
        opts = dict(policy="smartfrz", predictor_path=predictor, threshold=0.1 if rank == 0 else 0.999, window=3,
                    sample_size=64, record_every=1, patience=1)
    else:  # linear: units freeze one after another from step 8 on
        opts = dict(policy="linear" if rank == 0 else "none", total_steps=32, freeze_start=0.25)
    frz = SmartFRZ(model, opt, example_input=x[:2], decide_every=4, **opts)
    sent = []

    def on_wrap(ddp):  # count the gradient elements DDP all-reduces (comm hooks die with a rebuilt wrapper)
        def hook(state, bucket):
            sent.append(bucket.buffer().numel())
            return allreduce_hook(state, bucket)
        ddp.register_comm_hook(None, hook)

    per_step = []

    def on_step(step):
        per_step.append(sum(sent))
        sent.clear()

    ddp = DDPFreezer(model, frz, on_wrap=on_wrap)
    fit(ddp, opt, loader, 4, frz=frz, eval_loader=DataLoader(ds, batch_size=64), on_step=on_step, log_every=4,
        progress=False, checkpoint_path=out / "ckpt.pt", checkpoint_every=8)
    ddp.sync_buffers()  # BatchNorm stats differ after the last forward (DDP syncs them before each one)
    torch.save(model.state_dict(), out / f"model{rank}.pt")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "frozen": frz.frozen_units, "freeze_steps": [e["step"] for e in frz.timeline], "rebuilds": ddp.rebuilds,
        "sent_per_step": per_step, "trainable": trainable, "total": sum(p.numel() for p in model.parameters())}))
    dist.barrier()
    del ddp  # release the last reducer before the process group goes
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
