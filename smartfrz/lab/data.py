"""Real data loaders: CIFAR-10/100, ImageNet-style folders, sklearn digits, GLUE.

Everything reads from local files first (our machines are offline) and raises
DatasetMissingError -- with the path and the command that fetches the data --
instead of ever falling back to random data. Fetch CLI:

    python -m smartfrz.lab.data fetch cifar10 --data-dir data
    python -m smartfrz.lab.data fetch glue --task mrpc --data-dir data
    python -m smartfrz.lab.data fetch imagenette --data-dir data
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[2]


class DatasetMissingError(FileNotFoundError):
    """Data is not on disk and could not be fetched; the message says where and how."""


class DatasetDownloadError(DatasetMissingError):
    """A fetch could not reach its server (offline machines are the norm here); the message's first line
    says from where, the rest how to put the data on this machine by hand."""


def _download_url(name: str, default: str) -> str:
    """``SMARTFRZ_<NAME>_URL`` fetches from a mirror instead (the tests point it at a closed local port)."""
    return os.environ.get(f"SMARTFRZ_{name.upper()}_URL") or default


def _download_error(name, url, e, by_hand) -> DatasetDownloadError:
    return DatasetDownloadError(f"could not download {name} from {url} ({type(e).__name__}: {e})\n"
                                f"hint: this machine may be offline; {by_hand}")


def default_data_dir() -> Path:
    return Path(os.environ["SMARTFRZ_DATA_DIR"]) if os.environ.get("SMARTFRZ_DATA_DIR") else REPO_ROOT / "data"


def shared_data_dir() -> Path | None:
    """The team's read-only copy beside the checkout (../shared/data), if this machine has it."""
    p = REPO_ROOT.parent / "shared" / "data"
    return p if p.is_dir() else None


def _fetch_cmd(what: str, data_dir, extra: str = "") -> str:
    return f"python -m smartfrz.lab.data fetch {what}{extra} --data-dir {data_dir}"


# ----------------------------------------------------------------------------- CIFAR

CIFAR_STATS = {  # per-channel mean/std of the official training sets
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_TV_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_ARRAYS: dict = {}  # decoded splits keyed by (path, mtime): the LZMA npz takes seconds to decode


def _load_npz(path: Path):
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _ARRAYS:
        with np.load(path) as d:  # lazy per member: skip e.g. source_path
            _ARRAYS[key] = (d["x"], d["y"].astype(np.int64))
    return _ARRAYS[key]


def _load_torchvision_cifar(name: str, root: Path, train: bool, download: bool):
    import torchvision
    key = (str(root.resolve()), name, train)
    if key not in _ARRAYS:
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        url = _download_url(name, cls.url)
        if url != cls.url:  # torchvision downloads from the class's url
            cls = type(cls.__name__, (cls,), {"url": url})
        try:
            ds = cls(str(root), train=train, download=download)
        except OSError as e:  # urllib.error.URLError: no network
            if not download:
                raise
            raise _download_error(name, url, e, f"download {url} on a machine with internet, copy it to this one and "
                                                f"unpack it with `tar xzf {Path(url).name} -C {root}` (it holds "
                                                f"{_TV_DIRS[name]}/), or copy a fetched {_TV_DIRS[name]}/ "
                                                f"into {root}/") from e
        _ARRAYS[key] = (ds.data, np.asarray(ds.targets, dtype=np.int64), ds.classes)
    return _ARRAYS[key]


def balanced_subset(labels, k: int, seed: int = 0) -> np.ndarray:
    """Seeded, class-balanced choice of k indices (sorted), so small runs keep every class."""
    labels = np.asarray(labels)
    if k > len(labels):
        raise ValueError(f"subset={k} is larger than the split ({len(labels)} examples)")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = np.full(len(classes), k // len(classes))
    per[rng.permutation(len(classes))[: k % len(classes)]] += 1
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    take = [p[:n] for p, n in zip(pools, per)]
    chosen = np.concatenate(take)
    if len(chosen) < k:  # some class ran short: top up from the leftovers
        rest = rng.permutation(np.concatenate([p[n:] for p, n in zip(pools, per)]))
        chosen = np.concatenate([chosen, rest[: k - len(chosen)]])
    return np.sort(chosen)


def random_crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Batched RandomCrop(padding=pad) + RandomHorizontalFlip on NCHW: no per-image PIL work."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))  # zero fill, like torchvision's RandomCrop
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1))
    rows, cols = dy + torch.arange(h), dx + torch.arange(w)
    cols = torch.where(torch.rand(n, 1) < 0.5, cols.flip(1), cols)  # flip = reversed column index
    return xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]


class ImageArrayDataset(Dataset):
    """A whole split held as one uint8 NHWC tensor; decoding, augmenting and normalizing happen
    per batch (DataLoader calls __getitems__), which is what makes CPU epochs fast."""

    def __init__(self, x, y, mean, std, augment=False, classes=None):
        self.x = torch.as_tensor(x)  # shares memory with the cached numpy array; never written to
        self.targets = torch.as_tensor(y, dtype=torch.long)
        self.mean, self.std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self.augment, self.classes = augment, classes
        self.num_classes = len(classes) if classes else int(self.targets.max()) + 1

    def __len__(self):
        return len(self.targets)

    def get_batch(self, idx):
        """(images float NCHW normalized, labels long) for a list/tensor of indices."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        x = self.x[idx].permute(0, 3, 1, 2)
        if self.augment:
            x = random_crop_flip(x)
        return (x.float().div_(255) - self.mean) / self.std, self.targets[idx]

    def __getitems__(self, idx):
        x, y = self.get_batch(idx)
        return list(zip(x.unbind(0), y.tolist()))

    def __getitem__(self, i):
        return self.__getitems__([i])[0]


def load_cifar(name="cifar10", data_dir=None, split="train", subset=None, seed=0, augment=False, download=False):
    """CIFAR-10/100 from `<data_dir>/<name>/{train,test}.npz` (x uint8 NHWC, y) or the torchvision layout."""
    name = name.lower().replace("-", "")
    if name not in CIFAR_STATS:
        raise ValueError(f"unknown CIFAR variant {name!r}; expected 'cifar10' or 'cifar100'")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    npz, tv_dir = data_dir / name / f"{split}.npz", data_dir / _TV_DIRS[name]
    classes = CIFAR10_CLASSES if name == "cifar10" else None
    if npz.is_file():
        x, y = _load_npz(npz)
    elif tv_dir.is_dir() or download:
        try:
            x, y, classes = _load_torchvision_cifar(name, data_dir, split == "train", download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise DatasetMissingError(_cifar_msg(name, npz, tv_dir, data_dir) + f" ({e})") from e
    else:
        raise DatasetMissingError(_cifar_msg(name, npz, tv_dir, data_dir))
    if subset is not None:
        idx = balanced_subset(y, subset, seed)
        x, y = x[idx], y[idx]
    mean, std = CIFAR_STATS[name]
    ds = ImageArrayDataset(x, y, mean, std, augment=augment, classes=classes)
    ds.num_classes = 10 if name == "cifar10" else 100  # a small subset may miss a class
    return ds


def _cifar_msg(name, npz, tv_dir, data_dir):
    tv = "CIFAR10" if name == "cifar10" else "CIFAR100"
    return (f"{name} not found: looked for {npz} and {tv_dir}. Fetch it with `{_fetch_cmd(name, data_dir)}` "
            f"or `python -c \"import torchvision; torchvision.datasets.{tv}('{data_dir}', download=True)\"`, "
            f"or pass download=True.")


# ----------------------------------------------------------------------------- ImageNet-style folders

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"


def load_imagefolder(root, split="train", image_size=224, classes=None):
    """ImageFolder on `<root>/<split>` with the standard ImageNet transforms.

    `classes` keeps only those folders (e.g. the ImageNet-100 wnids); labels are 0..k-1 in sorted
    folder-name order, so a subset of ImageNet-1k and a pre-extracted copy label alike.
    """
    from torchvision import datasets, transforms as T
    path = Path(root) / split
    if not path.is_dir():
        raise DatasetMissingError(
            f"image folder {path} not found (expected {path}/<class>/<image>). For Imagenette run: "
            f"`wget {IMAGENETTE_URL} && tar xzf imagenette2-160.tgz -C {Path(root).parent}` "
            f"(or `{_fetch_cmd('imagenette', Path(root).parent)}`); for ImageNet download ILSVRC2012 "
            f"from image-net.org and arrange it as {Path(root)}/{{train,val}}/<wnid>/*.JPEG.")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if split == "train":
        tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    else:
        tf = T.Compose([T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size), T.ToTensor(), norm])
    keep = None if classes is None else sorted(set(classes))

    class _Folder(datasets.ImageFolder):
        def find_classes(self, directory):
            found, _ = super().find_classes(directory)
            if keep is None:
                return found, {c: i for i, c in enumerate(found)}
            missing = sorted(set(keep) - set(found))
            if missing:
                raise DatasetMissingError(f"classes {missing[:5]}{'...' if len(missing) > 5 else ''} "
                                          f"({len(missing)} in all) not found under {directory}")
            return keep, {c: i for i, c in enumerate(keep)}

    ds = _Folder(str(path), transform=tf)
    ds.num_classes = len(ds.classes)
    return ds


# ----------------------------------------------------------------------------- sklearn digits

def load_digits(split="train", seed=0, test_fraction=0.25):
    """sklearn's bundled 8x8 digits (real scans, ships with sklearn): the offline demo's data."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = _sk_digits()
    x = d.images.astype(np.float32)[:, None] / 16.0  # pixel counts 0..16 -> [0, 1]
    tr, te = train_test_split(np.arange(len(x)), test_size=test_fraction, random_state=seed, stratify=d.target)
    idx = tr if split == "train" else te
    ds = TensorDataset(torch.from_numpy(x[idx]), torch.from_numpy(d.target[idx]).long())
    ds.num_classes = 10
    return ds


# ----------------------------------------------------------------------------- GLUE

def _task(dir_name, keys, num_labels, metrics, main, dev="validation"):
    return dict(dir=dir_name, keys=keys, num_labels=num_labels, metrics=metrics, main=main, dev=dev)


GLUE_TASKS = {
    "cola": _task("CoLA", ("sentence", None), 2, ("matthews_correlation",), "matthews_correlation"),
    "sst2": _task("SST-2", ("sentence", None), 2, ("accuracy",), "accuracy"),
    "mrpc": _task("MRPC", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), "f1"),
    "qqp": _task("QQP", ("question1", "question2"), 2, ("accuracy", "f1"), "f1"),
    "stsb": _task("STS-B", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"), "pearson"),
    "mnli": _task("MNLI", ("premise", "hypothesis"), 3, ("accuracy",), "accuracy", dev="validation_matched"),
    "qnli": _task("QNLI", ("question", "sentence"), 2, ("accuracy",), "accuracy"),
    "rte": _task("RTE", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy"),
    "wnli": _task("WNLI", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy"),
}


def glue_task(task: str) -> dict:
    key = task.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; choose from {sorted(GLUE_TASKS)}")
    return {"name": key, **GLUE_TASKS[key]}


class GlueDataset(Dataset):
    """Tokenized, unpadded examples; padding happens per batch in glue_collate."""

    def __init__(self, task, examples, source):
        info = glue_task(task)
        self.task, self.examples, self.source = info["name"], examples, source
        self.num_labels = self.num_classes = info["num_labels"]
        self.is_regression = info["num_labels"] == 1

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def _glue_frame(info, glue_dir: Path, hf_split: str):
    """(DataFrame, source) from local TSV, local parquet or the HF hub, in that order."""
    import pandas as pd
    tsv_name = {"train": "train", "test": "test"}.get(hf_split, hf_split.replace("validation", "dev"))
    tried = []
    task_dirs = [glue_dir / info["dir"]]
    if glue_dir.is_dir():  # also accept e.g. glue/mrpc or glue/STSB
        task_dirs += [p for p in sorted(glue_dir.iterdir())
                      if p.name.lower().replace("-", "") == info["name"] and p != task_dirs[0]]
    for d in task_dirs:
        for path, read in ((d / f"{tsv_name}.tsv", lambda p: pd.read_csv(p, sep="\t", quoting=3, keep_default_na=False)),
                           (d / "parquet" / f"{hf_split}.parquet", pd.read_parquet)):
            tried.append(str(path))
            if path.is_file():
                return read(path), str(path)
    try:
        import datasets
        return datasets.load_dataset("nyu-mll/glue", info["name"], split=hf_split).to_pandas(), "hf:nyu-mll/glue"
    except Exception as e:  # offline, no cache, blocked hub...
        raise DatasetMissingError(
            f"GLUE {info['name']} split {hf_split!r} not found locally (tried {', '.join(tried)}) and the Hugging "
            f"Face hub failed ({type(e).__name__}: {e}). Fetch it with "
            f"`{_fetch_cmd('glue', glue_dir.parent, ' --task ' + info['name'])}` on a machine with internet.") from e


def load_glue(task, tokenizer, data_dir=None, split="train", max_length=128, subset=None, seed=0):
    """Tokenized GLUE split (list of dicts, no padding). split: train | validation | test (or an HF name)."""
    info = glue_task(task)
    hf_split = info["dev"] if split in ("validation", "dev") else split
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    df, source = _glue_frame(info, data_dir / "glue", hf_split)
    if subset is not None and subset < len(df):
        df = df.iloc[np.sort(np.random.default_rng(seed).permutation(len(df))[:subset])]
    a, b = info["keys"]
    texts = [df[a].astype(str).tolist()] + ([df[b].astype(str).tolist()] if b else [])
    enc = tokenizer(*texts, truncation=True, max_length=max_length)
    dtype = float if info["num_labels"] == 1 else int
    labels = [dtype(v) for v in df["label"].tolist()]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    examples = [{**{k: enc[k][i] for k in keys}, "labels": labels[i]} for i in range(len(labels))]
    return GlueDataset(info["name"], examples, source)


def glue_collate(tokenizer, pad_to_multiple_of=None):
    """Pads each batch to its own longest sequence (not max_length): much less wasted compute."""
    pad_values = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0,
                  "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0)}
    left = getattr(tokenizer, "padding_side", "right") == "left"

    def collate(batch):
        n = max(len(ex["input_ids"]) for ex in batch)
        if pad_to_multiple_of:
            n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        out = {}
        for k, v in pad_values.items():
            if k in batch[0]:
                rows = [([v] * (n - len(ex[k])) + ex[k]) if left else (ex[k] + [v] * (n - len(ex[k]))) for ex in batch]
                out[k] = torch.tensor(rows, dtype=torch.long)
        labels = [ex["labels"] for ex in batch]
        out["labels"] = torch.tensor(labels, dtype=torch.float if isinstance(labels[0], float) else torch.long)
        if "index" in batch[0]:  # IndexedDataset: the prefix cache keys examples by it
            out["index"] = torch.tensor([ex["index"] for ex in batch], dtype=torch.long)
        return out

    return collate


def glue_metrics(task, preds, labels) -> dict:
    """GLUE's official metrics; preds may be logits (N, C) or class ids / scores (N,)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    info = glue_task(task)
    preds, labels = np.asarray(preds), np.asarray(labels)
    if info["num_labels"] == 1:
        preds = preds.reshape(-1)
    elif preds.ndim == 2:
        preds = preds.argmax(-1)
    fns = {"accuracy": lambda: accuracy_score(labels, preds), "f1": lambda: f1_score(labels, preds),
           "matthews_correlation": lambda: matthews_corrcoef(labels, preds),
           "pearson": lambda: pearsonr(preds, labels)[0], "spearmanr": lambda: spearmanr(preds, labels)[0]}
    out = {m: float(fns[m]()) for m in info["metrics"]}
    return {**out, "metric": out[info["main"]], "metric_name": info["main"]}


# ----------------------------------------------------------------------------- loaders

def make_loader(dataset, batch_size, shuffle=False, seed=0, collate_fn=None, num_workers=0, drop_last=False,
                lengths=None, **kw):
    """DataLoader whose shuffle order (and worker seeds) depend only on `seed`, not on global RNG state.
    ``lengths`` (per example) with shuffle: length-grouped batches (see LengthGroupedSampler)."""
    g = torch.Generator().manual_seed(seed)
    if shuffle and lengths is not None:
        kw["sampler"], shuffle = LengthGroupedSampler(lengths, batch_size, g), False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g, collate_fn=collate_fn,
                      num_workers=num_workers, drop_last=drop_last, **kw)


class LengthGroupedSampler(torch.utils.data.Sampler):
    """A random order, sorted by length within chunks of 50 batches, so that dynamically padded batches
    hold examples of similar length and pad little (the Hugging Face Trainer's ``group_by_length``).
    It draws from the loader's own generator, so data order and exact resume work as with shuffle."""

    def __init__(self, lengths, batch_size: int, generator: torch.Generator, chunk_batches: int = 50):
        self.lengths, self.generator, self.chunk = list(lengths), generator, batch_size * chunk_batches

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        chunks = [sorted(order[i:i + self.chunk], key=lambda j: -self.lengths[j])
                  for i in range(0, len(order), self.chunk)]
        return iter([j for c in chunks for j in c])


# ----------------------------------------------------------------------------- fetch CLI (needs internet)

def fetch(what, data_dir=None, task=None):
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    if what in ("cifar10", "cifar100"):
        _load_torchvision_cifar(what, data_dir, True, True)
        _load_torchvision_cifar(what, data_dir, False, True)
    elif what == "glue":
        import datasets
        for t in [task] if task else sorted(GLUE_TASKS):
            info = glue_task(t)
            out = data_dir / "glue" / info["dir"] / "parquet"
            try:
                splits = datasets.load_dataset("nyu-mll/glue", info["name"])
            except OSError as e:  # ConnectionError: offline, or the hub is blocked
                raise _download_error(f"GLUE {info['name']}", "the Hugging Face hub (nyu-mll/glue)", e,
                                      f"run `{_fetch_cmd('glue', 'data', ' --task ' + info['name'])}` on a "
                                      f"machine with internet and copy its data/glue/{info['dir']}/ into "
                                      f"{data_dir / 'glue'}/ (the GLUE TSVs, {info['dir']}/train.tsv and "
                                      f"dev.tsv, work too)") from e
            out.mkdir(parents=True, exist_ok=True)
            for split, ds in splits.items():
                ds.to_parquet(str(out / f"{split}.parquet"))
    elif what == "imagenette":
        import tarfile
        import urllib.request
        tgz, url = data_dir / "imagenette2-160.tgz", _download_url("imagenette", IMAGENETTE_URL)
        try:
            urllib.request.urlretrieve(url, tgz)
        except OSError as e:  # urllib.error.URLError: no network
            tgz.unlink(missing_ok=True)
            raise _download_error("imagenette", url, e, f"download {url} on a machine with internet, copy it to "
                                                        f"this one and unpack it with `tar xzf {tgz.name} -C "
                                                        f"{data_dir}`") from e
        with tarfile.open(tgz) as tf:
            tf.extractall(data_dir, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        tgz.unlink()
    else:
        raise ValueError(f"unknown dataset {what!r}; choose cifar10, cifar100, glue or imagenette")
    print(f"fetched {what} into {data_dir}")


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m smartfrz.lab.data")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download a dataset into the data dir (needs internet)")
    f.add_argument("what", choices=["cifar10", "cifar100", "glue", "imagenette"])
    f.add_argument("--data-dir", default=None)
    f.add_argument("--task", default=None, help="GLUE task (default: all)")
    a = p.parse_args(argv)
    fetch(a.what, a.data_dir, a.task)


# ----------------------------------------------------------------------------- fast in-memory batches

def select_classes(ds: ImageArrayDataset, classes) -> ImageArrayDataset:
    """The examples of ``classes`` only, relabelled 0..k-1 (for fine-tuning on unseen classes)."""
    classes = list(classes)
    keep = torch.isin(ds.targets, torch.tensor(classes))
    remap = torch.full((int(ds.targets.max()) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    out = ImageArrayDataset(ds.x[keep], remap[ds.targets[keep]], ds.mean.flatten().tolist(), ds.std.flatten().tolist(),
                            augment=ds.augment, classes=[ds.classes[c] for c in classes] if ds.classes else None)
    out.num_classes = len(classes)
    return out


class IndexedDataset(Dataset):
    """Examples with their dataset index: ``"index"`` added to dicts, appended to tuples (the prefix
    cache keys the stored activations by it)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        item = self.ds[i]
        return {**item, "index": i} if isinstance(item, dict) else (*item, i)

    def __getattr__(self, name):
        if name == "ds":
            raise AttributeError(name)
        return getattr(self.ds, name)


def subset_loader(loader, k: int, seed: int = 0):
    """The same loader over a fixed random ``k`` of its examples (order kept), or None when it holds
    no more than ``k``: cheap per-epoch evaluation that sees the same examples every time."""
    n = len(loader.y) if isinstance(loader, ArrayLoader) else len(loader.dataset)
    if k >= n:
        return None
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    if isinstance(loader, ArrayLoader):
        sub = copy.copy(loader)
        sub.x, sub.y = loader.x[idx.to(loader.x.device)], loader.y[idx.to(loader.y.device)]
        return sub
    return make_loader(torch.utils.data.Subset(loader.dataset, idx.tolist()), loader.batch_size,
                       collate_fn=loader.collate_fn)


class ArrayLoader:
    """Batches straight from an ImageArrayDataset held on ``device``: no per-sample Python, and the
    shuffle order of every epoch is fixed by ``seed`` (epoch e uses seed + e)."""

    def __init__(self, ds: ImageArrayDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 device="cpu", drop_last: bool = False, with_index: bool = False):
        self.x, self.y = ds.x.to(device), ds.targets.to(device)
        self.mean, self.std = ds.mean.to(device), ds.std.to(device)
        self.augment, self.batch_size, self.shuffle, self.seed, self.drop_last = ds.augment, batch_size, shuffle, seed, drop_last
        self.epoch = 0
        self.num_classes = ds.num_classes
        self.with_index = with_index  # batches (x, y, index): the prefix cache keys examples by index

    def __len__(self):
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        aug_gen = torch.Generator(device=self.x.device).manual_seed(self.seed + 7919 * self.epoch)
        self.epoch += 1
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.x[idx].permute(0, 3, 1, 2)
            if self.augment:
                x = _crop_flip(x, aug_gen)
            x = (x.float().div_(255) - self.mean) / self.std
            yield (x, self.y[idx], idx) if self.with_index else (x, self.y[idx])


def _crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Seeded random 32px crop (zero padding 4) and horizontal flip, batched on x's device."""
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    flip = torch.rand(n, 1, generator=g, device=x.device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    return xp[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)
