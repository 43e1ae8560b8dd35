"""Run under torchrun: every rank trains a small CNN with SmartFRZ through DDPFreezer and writes what it ended with.

torchrun --nproc_per_node=2 ddp_train.py OUT_DIR PREDICTOR {smartfrz,linear}
Rank 1 is configured so that on its own it would never freeze: only rank 0's broadcast decision can make it.
"""
import gc
import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from smartfrz import SmartFRZ
from smartfrz.distributed import DDPFreezer
from smartfrz.lab.train import fit


def main():
    out, predictor, policy = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", timeout=timedelta(seconds=45))  # a stuck collective fails, never hangs
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :4].mean((1, 2, 3)) > 0).long()
    ds = TensorDataset(x, y)
    loader = DataLoader(ds, batch_size=16, sampler=DistributedSampler(ds, shuffle=True, seed=0))  # 8 steps/epoch
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
    model = nn.Sequential(block(1, 8), block(8, 8), block(8, 8), block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
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
