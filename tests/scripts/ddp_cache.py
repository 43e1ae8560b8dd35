"""Run under torchrun: every rank trains a small CNN with the prefix cache through DDPFreezer; writes its store's keys.

torchrun --nproc_per_node=2 ddp_cache.py OUT_DIR
Units freeze in mid-epoch (the linear schedule at steps 12, 20 and 28), so each rank's store is part-filled by its
training steps and completed at the next epoch's start with the examples the DistributedSampler deals it that epoch.
"""
import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from smartfrz import SmartFRZ
from smartfrz.distributed import DDPFreezer
from smartfrz.lab.train import fit
from smartfrz.prefix_cache import PrefixCache

from ddp_toy import setup  # beside this script (torchrun puts its folder on the path)


def main():
    out = Path(sys.argv[1])
    rank, x, ds, loader, model, opt = setup(with_index=True)
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
