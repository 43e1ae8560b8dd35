"""What the torchrun test scripts share: the process group, and the same small CNN and data on every rank."""
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def setup(with_index: bool = False):
    """(rank, x, dataset, loader, model, optimizer); with_index: batches (x, y, index), as the prefix cache needs."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=45))  # a stuck collective fails, never hangs
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, :, :4].mean((1, 2, 3)) > 0).long()
    ds = TensorDataset(x, y, torch.arange(256)) if with_index else TensorDataset(x, y)
    loader = DataLoader(ds, batch_size=16, sampler=DistributedSampler(ds, shuffle=True, seed=0))  # 8 steps/epoch
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
    model = nn.Sequential(block(1, 8), block(8, 8), block(8, 8), block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return dist.get_rank(), x, ds, loader, model, opt
