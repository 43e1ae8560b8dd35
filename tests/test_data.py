"""Data loaders on tiny real-format files written here, plus the shared copy when this machine has it."""
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from smartfrz.lab import data as D

SHARED = D.shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason=f"no shared data at {D.REPO_ROOT.parent / 'shared' / 'data'} "
                                  "(the team's read-only copy beside the checkout)")


@pytest.fixture(scope="module")
def tok():
    from smartfrz.lab.models import build_tokenizer
    return build_tokenizer("minilm")


def _write_cifar(root, n_per_class=5, split="train", seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), n_per_class).astype(np.int64)
    x = rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
    (root / "cifar10").mkdir(parents=True, exist_ok=True)
    np.savez(root / "cifar10" / f"{split}.npz", x=x, y=y)
    return x, y


# ----------------------------------------------------------------------------- CIFAR

def test_cifar_npz_format_and_normalization(tmp_path):
    x, y = _write_cifar(tmp_path)
    ds = D.load_cifar("cifar10", tmp_path, "train")
    assert len(ds) == 50 and ds.num_classes == 10 and ds.classes[3] == "cat"
    img, label = ds[7]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label == y[7] and isinstance(label, int)
    mean, std = D.CIFAR_STATS["cifar10"]
    expect = (x[7, 4, 5, 1] / 255 - mean[1]) / std[1]  # HWC on disk -> CHW out
    assert img[1, 4, 5].item() == pytest.approx(expect, abs=1e-5)
    assert D.load_cifar("cifar10", tmp_path, "train").x.data_ptr() == ds.x.data_ptr()  # decoded once, cached


def test_cifar_subset_balanced_and_deterministic(tmp_path):
    _write_cifar(tmp_path, n_per_class=8)
    a = D.load_cifar("cifar10", tmp_path, subset=20, seed=1)
    assert torch.bincount(a.targets, minlength=10).tolist() == [2] * 10
    b = D.load_cifar("cifar10", tmp_path, subset=20, seed=1)
    c = D.load_cifar("cifar10", tmp_path, subset=20, seed=2)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    counts = torch.bincount(D.load_cifar("cifar10", tmp_path, subset=25).targets, minlength=10)
    assert counts.sum() == 25 and set(counts.tolist()) == {2, 3}
    with pytest.raises(ValueError, match="larger"):
        D.load_cifar("cifar10", tmp_path, subset=81)


def test_random_crop_flip_is_a_shifted_window():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 32 * 32).view(2, 3, 32, 32) % 251 + 1  # no zeros: padding is recognizable
    out = D.random_crop_flip(x.to(torch.uint8), pad=4)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4)).to(torch.uint8)
    for i in range(2):
        windows = [w for dy in range(9) for dx in range(9) for w in
                   (padded[i, :, dy:dy + 32, dx:dx + 32], padded[i, :, dy:dy + 32, dx:dx + 32].flip(-1))]
        assert any(torch.equal(out[i], w) for w in windows)


def test_cifar_augment_batches_and_seeded_loader(tmp_path):
    _write_cifar(tmp_path)
    ds = D.load_cifar("cifar10", tmp_path, augment=True)
    xb, yb = next(iter(D.make_loader(ds, 16, shuffle=True, seed=3)))
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.long
    order = lambda seed: torch.cat([y for _, y in D.make_loader(ds, 16, shuffle=True, seed=seed)])
    assert torch.equal(order(3), order(3)) and not torch.equal(order(3), order(4))


def test_cifar_missing_names_path_and_download(tmp_path):
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        with pytest.raises(D.DatasetMissingError) as e:
            D.load_cifar(name, tmp_path / "nowhere", "test")
        msg = str(e.value)
        assert str(tmp_path / "nowhere" / folder) in msg and "download" in msg
    assert issubclass(D.DatasetMissingError, FileNotFoundError)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SMARTFRZ_DATA_DIR", raising=False)
    assert D.default_data_dir() == D.REPO_ROOT / "data"
    monkeypatch.setenv("SMARTFRZ_DATA_DIR", str(tmp_path))
    assert D.default_data_dir() == tmp_path


@pytest.mark.shared_data
@needs_shared
def test_shared_cifar10():
    ds = D.load_cifar("cifar10", SHARED, "test")
    assert len(ds) == 10_000 and torch.bincount(ds.targets).tolist() == [1000] * 10
    mean = (ds.x.float().mean((0, 1, 2)) / 255).tolist()  # README: test mean (0.4941, 0.4851, 0.4504)
    assert mean == pytest.approx([0.4941, 0.4851, 0.4504], abs=2e-3)
    sub = D.load_cifar("cifar10", SHARED, "test", subset=100, augment=True)
    assert torch.bincount(sub.targets).tolist() == [10] * 10 and sub[0][0].shape == (3, 32, 32)


# ----------------------------------------------------------------------------- digits

def test_digits_split_deterministic_and_stratified():
    tr, te = D.load_digits("train"), D.load_digits("test")
    assert len(tr) + len(te) == 1797 and len(te) == 450
    x, y = tr.tensors
    assert x.shape[1:] == (1, 8, 8) and x.min() >= 0 and x.max() <= 1 and tr.num_classes == 10
    assert torch.equal(x, D.load_digits("train").tensors[0])
    assert not torch.equal(x, D.load_digits("train", seed=1).tensors[0])
    frac = torch.bincount(te.tensors[1]).float() / len(te)
    assert frac.min() > 0.08 and frac.max() < 0.12  # stratified: ~10% per class


# ----------------------------------------------------------------------------- GLUE

def _write_tsv(path, df):
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, sep="\t", index=False)


def test_glue_tsv_and_dynamic_padding(tmp_path, tok):
    words = "the quick brown fox jumps over a lazy dog again and again".split()
    df = pd.DataFrame({"idx": range(6), "sentence1": [" ".join(words[:k + 1]) for k in range(6)],
                       "sentence2": ["a dog"] * 6, "label": [0, 1, 0, 1, 1, 0]})
    _write_tsv(tmp_path / "glue" / "MRPC" / "train.tsv", df)
    ds = D.load_glue("MRPC", tok, tmp_path, "train", max_length=64)
    assert len(ds) == 6 and ds.num_labels == 2 and ds.source.endswith("train.tsv")
    assert set(ds[0]) == {"input_ids", "attention_mask", "token_type_ids", "labels"} and ds[1]["labels"] == 1
    lens = [len(ds[i]["input_ids"]) for i in range(3)]
    assert len(set(lens)) == 3  # unpadded
    batch = D.glue_collate(tok)([ds[0], ds[1], ds[2]])
    assert batch["input_ids"].shape == (3, max(lens)) and max(lens) < 64
    assert batch["attention_mask"].sum(1).tolist() == lens and batch["labels"].dtype == torch.long
    assert (batch["input_ids"][0, lens[0]:] == tok.pad_token_id).all()
    assert D.glue_collate(tok, pad_to_multiple_of=8)([ds[0]])["input_ids"].shape[1] % 8 == 0
    sub = D.load_glue("mrpc", tok, tmp_path, "train", subset=3, seed=0)
    assert len(sub) == 3 and [e["input_ids"] for e in sub] == [e["input_ids"] for e in D.load_glue(
        "mrpc", tok, tmp_path, "train", subset=3, seed=0)]


def test_glue_stsb_floats_and_parquet(tmp_path, tok):
    df = pd.DataFrame({"sentence1": ["A plane is taking off.", "A man plays"], "sentence2": ["A plane departs.", "x"],
                       "label": [5.0, 0.4], "idx": [0, 1]})
    _write_tsv(tmp_path / "glue" / "STS-B" / "dev.tsv", df)
    batch = D.glue_collate(tok)(list(D.load_glue("stsb", tok, tmp_path, "validation")))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == pytest.approx([5.0, 0.4])
    (tmp_path / "glue" / "rte" / "parquet").mkdir(parents=True)  # lower-case dir and parquet only
    df.assign(label=[1, 0]).to_parquet(tmp_path / "glue" / "rte" / "parquet" / "validation.parquet")
    ds = D.load_glue("rte", tok, tmp_path, "validation")
    assert len(ds) == 2 and ds.source.endswith("validation.parquet") and ds[0]["labels"] == 1


def test_glue_missing_names_paths_and_fetch(tmp_path, tok, monkeypatch):
    def offline(*a, **k):
        raise ConnectionError("offline")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(D.DatasetMissingError) as e:
        D.load_glue("cola", tok, tmp_path, "validation")
    msg = str(e.value)
    assert str(tmp_path / "glue" / "CoLA" / "dev.tsv") in msg and "validation.parquet" in msg
    assert "python -m smartfrz.lab.data fetch glue --task cola" in msg
    with pytest.raises(ValueError, match="unknown GLUE task"):
        D.glue_task("squad")
    assert D.GLUE_TASKS["mnli"]["dev"] == "validation_matched" and D.GLUE_TASKS["stsb"]["num_labels"] == 1


@pytest.mark.shared_data
@needs_shared
def test_shared_glue_mrpc_cola(tmp_path, tok):
    mrpc = D.load_glue("mrpc", tok, SHARED, "validation")
    cola = D.load_glue("cola", tok, SHARED, "validation")
    assert (len(mrpc), len(cola)) == (408, 1043)
    assert sum(e["labels"] for e in mrpc) == 279 and sum(e["labels"] for e in cola) == 721
    assert len(D.load_glue("mrpc", tok, SHARED, "train", subset=64)) == 64
    only_parquet = tmp_path
    (only_parquet / "glue" / "MRPC").mkdir(parents=True)
    (only_parquet / "glue" / "MRPC" / "parquet").symlink_to(SHARED / "glue" / "MRPC" / "parquet")
    pq = D.load_glue("mrpc", tok, only_parquet, "validation")
    assert pq.source.endswith("validation.parquet")
    assert [e["input_ids"] for e in pq] == [e["input_ids"] for e in mrpc]  # TSV and parquet agree


def test_glue_metrics_known_values():
    m = D.glue_metrics("cola", [1, 0, 0, 0], [1, 1, 0, 0])  # TP=1 TN=2 FP=0 FN=1
    assert m["matthews_correlation"] == pytest.approx(2 / 12 ** 0.5) and m["metric_name"] == "matthews_correlation"
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    m = D.glue_metrics("MRPC", logits, [1, 1, 0, 0])
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(2 / 3) and m["metric"] == m["f1"]
    m = D.glue_metrics("stsb", np.array([[0.0], [1.0], [3.0]]), [1.0, 2.0, 4.0])
    assert m["pearson"] == pytest.approx(1.0) and m["spearmanr"] == pytest.approx(1.0) and m["metric_name"] == "pearson"
    assert D.glue_metrics("rte", [1, 1], [1, 0]) == {"accuracy": 0.5, "metric": 0.5, "metric_name": "accuracy"}


# ----------------------------------------------------------------------------- ImageFolder

def test_imagefolder_real_images_and_class_subset(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (17, 60), (64, 64), (33, 21)]
    for split in ("train", "val"):
        for c in ("n01", "n02", "n03"):
            (tmp_path / split / c).mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                (img.convert("L") if i == 3 else img).save(tmp_path / split / c / f"{i}.{'jpg' if i % 2 else 'png'}")
    tr = D.load_imagefolder(tmp_path, "train", image_size=32)
    assert len(tr) == 12 and tr.num_classes == 3 and tr[3][0].shape == (3, 32, 32)
    va = D.load_imagefolder(tmp_path, "val", image_size=32, classes=["n03", "n01"])
    assert va.classes == ["n01", "n03"] and len(va) == 8 and sorted({y for _, y in va.samples}) == [0, 1]
    assert [va[i][0].shape for i in range(len(va))] == [(3, 32, 32)] * 8
    with pytest.raises(D.DatasetMissingError, match="n09"):
        D.load_imagefolder(tmp_path, "val", classes=["n01", "n09"])
    with pytest.raises(D.DatasetMissingError) as e:
        D.load_imagefolder(tmp_path / "imagenette2-160", "val")
    assert str(tmp_path / "imagenette2-160" / "val") in str(e.value) and "imagenette2-160.tgz" in str(e.value)
