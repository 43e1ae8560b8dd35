"""Run under torchrun: every rank trains a small CNN with the prefix cache through DDPFreezer; writes its store's keys.

torchrun --nproc_per_node=2 ddp_cache.py OUT_DIR
Units freeze in mid-epoch (the linear schedule at steps 12, 20 and 28), so each rank's store is part-filled by its
training steps and completed at the next epoch's start with the examples the DistributedSampler deals it that epoch.
"""
import gc
import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from smartfrz import SmartFRZ
from smartfrz.distributed import DDPFreezer
from smartfrz.lab.train import fit
from smartfrz.prefix_cache import PrefixCache


def main():
    out = Path(sys.argv[1])
    dist.init_process_group("gloo", timeout=timedelta(seconds=45))  # a stuck collective fails, never hangs
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :4].mean((1, 2, 3)) > 0).long()
    ds = TensorDataset(x, y, torch.arange(256))  # batches (x, y, index)
    loader = DataLoader(ds, batch_size=16, sampler=DistributedSampler(ds, shuffle=True, seed=0))  # 8 steps/epoch
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
    model = nn.Sequential(block(1, 8), block(8, 8), block(8, 8), block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    frz = SmartFRZ(model, opt, example_input=x[:2], decide_every=4, policy="linear", total_steps=32,
                   freeze_start=0.1, freeze_level=1.0)
    cache = PrefixCache(dtype=torch.float32)
    ddp = DDPFreezer(model, frz)
    fit(ddp, opt, loader, 4, frz=frz, progress=False, cache=cache)
    ddp.sync_buffers()
    torch.save(model.state_dict(), out / f"model{rank}.pt")
    shard = sorted(int(i) for i in loader.sampler)  # the last epoch's
    (out / f"rank{rank}.json").write_text(json.dumps({
        "frozen": frz.frozen_units, "freeze_steps": [e["step"] for e in frz.timeline], "shard": shard,
        "stored": sorted(int(i) for i in cache.store.ram), "served": cache.served, "enabled": cache.enabled,
        "refused": cache.refused, "fill_examples": cache.fill_examples, "captured": cache.captured}))
    dist.barrier()
    del ddp
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
