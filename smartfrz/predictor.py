"""The attention-based freeze predictor: reads a unit's weight window, returns P(freeze).

Architecture (documented because the shipped weights depend on it):

1. ``window_features``: W tokens of features of a (W, S) window of tailored weights, invariant to coordinate
   order and weight scale (distance to the newest snapshot, step size, step cosines with the net displacement
   and the previous step, agreement share, age; path efficiency and net displacement). Any W runs, but the
   statistics shift with W and S, so the engine records the shape the weights file names (``window``, ``sample_size``).
2. A linear embedding, ``layers`` pre-norm self-attention encoder layers over the W tokens, then the newest
   token queries the window with one multi-head attention; an MLP gives one logit.
3. ``members`` such networks (seeds differ) are averaged and a Platt scaling fitted on held-out runs
   calibrates P(freeze). One member with the defaults (d_model=64, 4 heads, 2 layers) has 93k parameters.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

NUM_FEATURES = 9  # what window_features computes (and what recorded datasets store)
INPUT_FEATURES = 8  # what the network reads: the learning-rate-free subset, see model_inputs
FEATURE_VERSION = "1"
DEFAULT_PATH = Path(__file__).parent / "weights" / "smartfrz_predictor.safetensors"


def _log(x: torch.Tensor) -> torch.Tensor:
    return torch.log10(x.clamp_min(1e-8))


@torch.no_grad()
def window_features(windows: torch.Tensor) -> torch.Tensor:
    """(n, W, S) tailored weights, oldest first -> (n, W, NUM_FEATURES) scale-free features."""
    x = windows.float()
    n, W, S = x.shape
    newest = x[:, -1:]
    scale = newest.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (n,1,1)
    net = (newest - x[:, :1])  # (n,1,S)
    net_norm = net.norm(dim=-1, keepdim=True)
    dist = (x - newest).norm(dim=-1, keepdim=True) / scale
    d = x.diff(dim=1)  # (n, W-1, S): read once (reads are the cost), features padded so token t has its step
    d_norm, along = d.norm(dim=-1, keepdim=True), d * net
    cos_net = along.sum(-1, keepdim=True) / (d_norm * net_norm).clamp_min(1e-12)
    agree = torch.relu(along).sign_().sum(-1, keepdim=True) / S  # the share > 0, 4x faster than a bool sum
    self_cos = (d[:, :1] * d[:, :1]).sum(-1, keepdim=True) / (d_norm[:, :1] * d_norm[:, :1]).clamp_min(1e-12)
    turns = (d[:, 1:] * d[:, :-1]).sum(-1, keepdim=True) / (d_norm[:, 1:] * d_norm[:, :-1]).clamp_min(1e-12)
    step_norm, cos_net, agree = (torch.cat([f[:, :1], f], dim=1) for f in (d_norm, cos_net, agree))
    cos_prev = torch.cat([self_cos, self_cos, turns], dim=1)  # the step before each; the first two: step 1 itself
    age = torch.linspace(-1.0, 0.0, W, device=x.device).view(1, W, 1).expand(n, W, 1)
    path = d_norm.sum(1, keepdim=True) if W > 1 else step_norm.sum(1, keepdim=True)
    efficiency, net_rel = (net_norm / path.clamp_min(1e-12)).expand(n, W, 1), (net_norm / scale).expand(n, W, 1)
    feats = torch.cat([_log(dist + 1e-8), _log(step_norm / scale), cos_net, cos_prev, agree, age,
                       _log(efficiency), _log(net_rel), (_log(step_norm / scale) - _log(net_rel / W))], dim=-1)
    return torch.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=-8.0)


def model_inputs(feats: torch.Tensor) -> torch.Tensor:
    """The learning-rate-free view the network reads: absolute step sizes depend on the optimizer and learning
    rate and did not transfer across families (exploratory leave-one-family-out); ratios within the window do.
    Columns past ``NUM_FEATURES`` (the run's progress, ``with_progress``) pass through."""
    rel_step = feats[..., 1:2] - feats[..., 1:2].mean(1, keepdim=True)
    rel_dist = feats[..., 0:1] - feats[..., 7:8]
    return torch.cat([feats[..., [2, 3, 4, 5, 6, 8]], rel_step, rel_dist, feats[..., NUM_FEATURES:]], -1)


def with_progress(feats: torch.Tensor, progress: float | torch.Tensor) -> torch.Tensor:
    """Window features with the share of the planned run done (one value, or one per window) on every token."""
    p = torch.as_tensor(progress, dtype=feats.dtype, device=feats.device).reshape(-1, 1, 1)
    return torch.cat([feats, p.expand(feats.shape[0], feats.shape[1], 1)], -1)


class _Member(nn.Module):
    """One network: newest-snapshot attention over a unit's window -> freeze logit."""

    def __init__(self, d_model: int, heads: int, layers: int, hidden: int, num_features: int):
        super().__init__()
        self.embed = nn.Linear(num_features, d_model)
        enc = nn.TransformerEncoderLayer(d_model, heads, hidden, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, layers, enable_nested_tensor=False)
        self.query_norm = nn.LayerNorm(d_model)
        self.attend = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x))
        q = self.query_norm(h[:, -1:])
        return self.head(q + self.attend(q, h, h, need_weights=False)[0]).view(-1)


class FreezePredictor(nn.Module):
    """The mean logit of ``members`` networks trained with different seeds: single networks' held-out
    decisions moved by tens of points between retrainings on the same runs (reports/predictor)."""

    def __init__(self, d_model: int = 64, heads: int = 4, layers: int = 2, hidden: int = 128,
                 num_features: int = INPUT_FEATURES, threshold: float = 0.5, members: int = 1):
        super().__init__()
        self.hparams = dict(d_model=d_model, heads=heads, layers=layers, hidden=hidden, num_features=num_features,
                            members=members)
        self.threshold = threshold  # the decision rule chosen with the weights, stored with them
        self.patience, self.decisions_per_epoch, self.decisions_per_run = 2, 1, 0  # 0: no per-run floor
        self.veto_tau: float | None = None  # the functional veto's tau (smartfrz.veto); None: no veto
        self.veto_probe_rows: int | None = None  # rows of the probe the veto reads (its cost); None: all
        self.veto_lookback = "decision"  # how far back the veto's weights are (smartfrz.veto.LOOKBACKS)
        self.decide_from = 0.0  # share of the planned run before which no freeze is decided
        self.freeze_per_decision = 0  # most units newly frozen at one decision; 0: no limit
        self.max_frozen_share = 1.0  # most share of the units ever frozen (FreezeOut's freeze_level); 1: no cap
        self.reads_progress = num_features == INPUT_FEATURES + 1  # the share of the run done too (--progress-input)
        self.members = nn.ModuleList(_Member(d_model, heads, layers, hidden, num_features) for _ in range(members))
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))  # Platt scale and bias, fitted after training

    @classmethod
    def ensemble(cls, nets: list["FreezePredictor"]) -> "FreezePredictor":
        model = cls(**{**nets[0].hparams, "members": sum(len(n.members) for n in nets)})
        model.members = nn.ModuleList(m for n in nets for m in n.members)
        return model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, W, NUM_FEATURES [+ progress]) window features -> (n,) calibrated logits."""
        x = model_inputs(feats if self.reads_progress else feats[..., :NUM_FEATURES])
        return torch.stack([m(x) for m in self.members]).mean(0) * self.calibration[0] + self.calibration[1]

    @torch.no_grad()
    def predict_proba(self, windows: torch.Tensor, progress: float | None = None) -> torch.Tensor:
        """P(freeze) for raw (n, W, S) windows; ``progress``: the share of the planned run done, for a predictor
        that reads it (``reads_progress``)."""
        if self.reads_progress and progress is None:
            raise ValueError("this predictor reads the run's progress: pass progress= (the share of the planned run done)")
        p = next(self.parameters())
        feats = window_features(windows.to(p.device)).to(p.dtype)
        return torch.sigmoid(self(with_progress(feats, progress) if self.reads_progress else feats)).float()

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        meta = {"hparams": json.dumps(self.hparams), "threshold": repr(float(self.threshold)),
                "patience": str(int(self.patience)), "decisions_per_epoch": str(int(self.decisions_per_epoch)),
                "decisions_per_run": str(int(self.decisions_per_run)), "veto_tau": repr(self.veto_tau),
                "veto_probe_rows": repr(self.veto_probe_rows), "decide_from": repr(float(self.decide_from)),
                "veto_lookback": str(self.veto_lookback), "freeze_per_decision": str(int(self.freeze_per_decision)),
                **({"max_frozen_share": repr(float(self.max_frozen_share))} if self.max_frozen_share < 1 else {}),
                "feature_version": FEATURE_VERSION, **{k: str(v) for k, v in (extra or {}).items()}}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> "FreezePredictor":
        """Loads without pickle; a missing, corrupt or wrong-shaped file gets an error that names it."""
        from safetensors import safe_open

        path = Path(path) if path is not None else DEFAULT_PATH
        if not path.is_file():
            hint = ("the shipped predictor is missing from the installation; reinstall smartfrz or regenerate it "
                    "with notebooks/00_train_predictor.ipynb") if path == DEFAULT_PATH else "check the path"
            raise FileNotFoundError(f"predictor file not found: {path} ({hint})")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise ValueError(f"predictor file {path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
        if meta.get("feature_version") != FEATURE_VERSION or "hparams" not in meta:
            raise ValueError(f"predictor file {path} was not written by this smartfrz version "
                             f"(feature_version={meta.get('feature_version')!r}, expected {FEATURE_VERSION!r})")
        hp = json.loads(meta["hparams"])
        if "members" not in hp:  # written before ensembles: one network, its keys without the member prefix
            tensors = {k if k == "calibration" else f"members.0.{k}": v for k, v in tensors.items()}
        if hp.get("num_features") not in (INPUT_FEATURES, INPUT_FEATURES + 1):
            raise ValueError(f"predictor file {path} expects num_features={hp.get('num_features')} inputs per snapshot; "
                             f"this smartfrz version feeds {INPUT_FEATURES}, or {INPUT_FEATURES + 1} with the run's "
                             f"progress (feature_version {FEATURE_VERSION})")
        with torch.random.fork_rng(devices=[]):  # initialising before loading must not shift the run's random stream
            model = cls(**hp, threshold=float(meta.get("threshold", 0.5)))
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(f"predictor file {path} does not match the predictor architecture: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        for k, v in expected.items():
            if tensors[k].shape != v.shape:
                raise ValueError(f"predictor file {path}: tensor {k!r} has shape {tuple(tensors[k].shape)}, "
                                 f"expected {tuple(v.shape)}")
        model.load_state_dict(tensors)
        model.patience, model.decisions_per_epoch = int(meta.get("patience", 2)), int(meta.get("decisions_per_epoch", 1))
        model.decisions_per_run = int(meta.get("decisions_per_run", 0))
        model.veto_tau = None if meta.get("veto_tau", "None") == "None" else float(meta["veto_tau"])
        model.veto_probe_rows = None if meta.get("veto_probe_rows", "None") == "None" else int(meta["veto_probe_rows"])
        model.decide_from = float(meta.get("decide_from", 0.0))
        model.veto_lookback = meta.get("veto_lookback", "decision")  # files written before it: the previous decision
        model.freeze_per_decision = int(meta.get("freeze_per_decision", 0))  # files written before it: no limit
        model.max_frozen_share = float(meta.get("max_frozen_share", 1.0))  # and no cap
        model.metadata = meta
        return model.to(device).eval()

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
