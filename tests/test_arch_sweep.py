"""Architectures beyond the tuned ones (scripts/arch_sweep.py runs them all): the cases its sweep found and fixed, and a
representative few end to end (units found, front half frozen, a few AdamW steps checked)."""
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smartfrz import SmartFRZ, find_units, freeze_through

spec = importlib.util.spec_from_file_location("arch_sweep", Path(__file__).parents[1] / "scripts" / "arch_sweep.py")
sweep = importlib.util.module_from_spec(spec)
sys.modules["arch_sweep"] = sweep  # dataclasses look their module up
spec.loader.exec_module(sweep)

x32 = torch.randn(2, 3, 32, 32)


def names(model, x):
    return [u.name for u in find_units(model, x)]


def run_checks(name, **skip):
    """Every check of the sweep for one architecture: {check: passed} (None: not applicable)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = sweep.run_case(name, sweep.ARCHS[name][1](), steps=2)
    return row, {c: v["pass"] for c, v in row["checks"].items()}


def test_densenet_dense_layers_are_units():
    """DenseNet's layers each read the list of all earlier outputs (no chain of single inputs): each is a unit."""
    torchvision = pytest.importorskip("torchvision")
    n = names(torchvision.models.densenet121(num_classes=10), x32)
    dense = [f"features.denseblock{b}.denselayer{i}" for b, d in enumerate((6, 12, 24, 16), 1) for i in range(1, d + 1)]
    assert [u for u in n if "denselayer" in u] == dense
    assert n[0] == "features.conv0+features.norm0" and len(n) == 1 + 58 + 3
    assert n.index("features.transition1") == 7 and n[-1] == "features.denseblock4.denselayer16"  # norm5: the head's
    row, checks = run_checks("densenet121")  # front half frozen: through denseblock3's 10th layer
    assert row["frozen_names"][-1] == "features.denseblock3.denselayer10"
    assert all(v is not False for v in checks.values()), row["checks"]
    assert checks["bn_stats_fixed"] and checks["backward_skipped"]


class _DenseLayer(nn.Module):
    def __init__(self, c_in, growth):
        super().__init__()
        self.bn, self.conv1, self.conv2 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, 8, 1), nn.Conv2d(8, growth, 3, padding=1)

    def forward(self, feats):  # reads a list of tensors, as torchvision's and timm's dense layers do
        return self.conv2(self.conv1(self.bn(torch.cat(feats, 1)).relu()).relu())


class _DenseBlock(nn.Module):
    def __init__(self, c, depth, growth=4):
        super().__init__()
        self.layers = nn.ModuleList(_DenseLayer(c + i * growth, growth) for i in range(depth))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)


def test_dense_connectivity_is_found_in_user_code_too():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), _DenseBlock(8, 3), nn.Conv2d(20, 8, 1), _DenseBlock(8, 2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    assert names(net, x32) == ["0", "1.layers.0", "1.layers.1", "1.layers.2", "2", "3.layers.0", "3.layers.1"]
    y = torch.tensor([0, 1])
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    frz = freeze_through(net, opt, x32, 2)  # through the first block's second layer
    frozen = [p for u in frz.units[:3] for p in u.parameters()]
    before = [p.clone() for p in frozen]
    bn = net[1].layers[1].bn.running_mean.clone()
    net.train()
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x32), y).backward()
        opt.step()
    assert all(torch.equal(a, p) and p.grad is None for a, p in zip(before, frozen))
    assert torch.equal(bn, net[1].layers[1].bn.running_mean)
    assert net[1].layers[2].conv1.weight.grad is not None


def test_norm_layers_join_the_unit_that_reads_them_and_reimplemented_norms_count():
    timm = pytest.importorskip("timm")
    n = names(timm.create_model("convnext_atto", num_classes=10), x32)
    assert "stages.1.downsample.0+stages.1.downsample.1" in n  # the downsampling LayerNorm rides with its conv
    assert not any(u.endswith("downsample.0") for u in n)  # no zero-FLOP norm-only unit

    class RMSNorm(nn.Module):  # a re-implemented norm: one vector of parameters
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    mlp = nn.Sequential(nn.Linear(4, 8), RMSNorm(8), nn.Linear(8, 8), RMSNorm(8), nn.Linear(8, 2))
    assert names(mlp, torch.randn(3, 4)) == ["0+1", "2+3"]


def test_a_class_repeated_only_inside_blocks_is_no_block_where_it_stands_alone():
    class SE(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.reduce, self.expand = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)

        def forward(self, x):
            return x * self.expand(self.reduce(x.mean((2, 3), keepdim=True)).relu()).sigmoid()

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv, self.se = nn.Conv2d(c, c, 3, padding=1), SE(c)

        def forward(self, x):
            return x + self.se(self.conv(x))

    class First(nn.Module):  # one of a kind, with an SE inside (timm's DepthwiseSeparableConv in EfficientNet-B0)
        def __init__(self, c):
            super().__init__()
            self.dw, self.se, self.pw = nn.Conv2d(c, c, 3, padding=1, groups=c), SE(c), nn.Conv2d(c, c, 1)

        def forward(self, x):
            return self.pw(self.se(self.dw(x)))

    net = nn.Sequential(nn.Conv2d(3, 8, 3), First(8), Block(8), Block(8), nn.Flatten(), nn.LazyLinear(2))
    net(x32)
    assert names(net, x32) == ["0", "1", "2", "3"]  # not 1.dw, 1.se, 1.pw


def test_tied_weights_are_named_at_setup_and_stay_trainable():
    row, checks = run_checks("tied_lm")
    model = sweep.TiedLM()
    ids = torch.randint(0, 100, (2, 6))
    units = find_units(model, ids)
    assert [u.name for u in units] == ["emb", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert units[0].tied == ["out.weight"] and all(not u.tied for u in units[1:])
    with pytest.warns(UserWarning, match=r"tied parameters emb\.weight \(units \['emb'\] and \['out\.weight'\]"):
        frz = freeze_through(model, None, ids, 1)
    assert model.emb.weight.requires_grad  # the head trains it: the warning says the frozen unit keeps changing
    assert not any(p.requires_grad for p in model.blocks[0].parameters())
    assert checks["partition"] and checks["frozen_no_grad"] and checks["frozen_unchanged"]
    assert checks["backward_skipped"] is False  # honest: backward still runs through blocks.0 to reach emb.weight
    assert frz.num_frozen == 2


def test_a_weight_held_by_a_module_that_never_runs_is_no_tie():
    """T5's ``shared`` holds the embedding the encoder runs, but never runs itself: no tie with the head. And a module
    registered under two names is one user."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Embedding(20, 8)
            self.embed = nn.Embedding(20, 8)
            self.embed.weight = self.shared.weight
            self.alias = self.embed
            self.mid, self.out = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, t):
            return self.out(self.mid(self.embed(t)).mean(1))

    m, ids = Model(), torch.randint(0, 20, (2, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tie warning
        frz = SmartFRZ(m, None, example_input=ids, policy="none")
    assert [u.name for u in frz.units] == ["embed", "mid"] and not frz.units[0].tied
    frz.freeze_through(0)
    assert not m.shared.weight.requires_grad


def test_gpt2_small_config():
    pytest.importorskip("transformers")
    row, checks = run_checks("hf_gpt2_cls")
    assert [u["name"] for u in row["unit_list"]] == ["transformer.wte", "transformer.wpe"] + \
        [f"transformer.h.{i}" for i in range(4)]
    assert all(v is not False for v in checks.values()) and not row["engine_warnings"], row["checks"]
    row, checks = run_checks("hf_gpt2_lm")  # lm_head tied with wte
    assert any("transformer.wte.weight" in w and "lm_head.weight" in w for w in row["engine_warnings"])
    assert checks["partition"] and checks["frozen_unchanged"] and checks["flops_lower"]


def test_lstm_classifier_and_mlp():
    row, checks = run_checks("lstm_classifier")
    assert [u["name"] for u in row["unit_list"]] == ["emb", "lstm"]  # nn.LSTM's two layers are one module
    assert row["frozen_names"] == ["emb"] and checks["frozen_no_grad"] and checks["frozen_unchanged"]
    assert checks["active_moves"] and checks["backward_skipped"] and checks["flops_lower"] is None  # LSTM FLOPs uncounted
    row, checks = run_checks("mlp")
    assert [u["name"] for u in row["unit_list"]] == ["0", "2", "4", "6"]
    assert all(v is not False for v in checks.values()), row["checks"]
    assert checks["flops_lower"] and row["flop_saving"] > 0.2


def test_prefix_cache_refuses_a_boundary_fed_a_list_instead_of_crashing():
    """After the engine freezes into a dense block, the first active layer reads a list: the cache says no, with a
    warning, and training goes on; at a transition (a tensor input) it caches."""
    torchvision = pytest.importorskip("torchvision")
    from test_prefix_cache import _engine, _image_loader

    from smartfrz.lab.train import batch_loss, to_device
    from smartfrz.prefix_cache import PrefixCache
    torch.manual_seed(0)
    m, loader = torchvision.models.densenet121(num_classes=10), _image_loader(n=8, batch_size=4)
    for k, ok in ((2, False), (6, True)):  # next unit: denselayer4 (a list), transition1 (a tensor)
        frz = _engine(m, loader, k)
        cache = PrefixCache(dtype=torch.float32)
        cache.attach(m, frz, loader, batch_loss, to_device, "cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache.sync()
        assert cache.enabled is ok and (cache.level == 7 if ok else "no tensor input" in cache.refused)
        assert ok or any("prefix cache off" in str(w.message) for w in caught)
        frz.unfreeze()


def test_peft_lora_model_passes_every_check():
    """A LoRA fine-tune (peft): the fixed pretrained weights are in no check's way, the adapters freeze with their
    unit, and no backward runs through the frozen prefix."""
    pytest.importorskip("peft")
    row, checks = run_checks("hf_bert_lora")
    assert all(v is not False for v in checks.values()), row["checks"]
    assert checks["frozen_no_grad"] and checks["frozen_unchanged"] and checks["backward_skipped"]


def test_audio_feature_encoder_stops_asking_for_input_gradients_while_frozen():
    """HF's wav2vec2-family feature encoders make the raw audio require grad in training (for checkpointing), so
    backward ran through their frozen conv layers for nothing (2% saved where 7% was there)."""
    pytest.importorskip("transformers")
    row, checks = run_checks("hf_wav2vec2_cls")
    assert all(v is not False for v in checks.values()), row["checks"]
    assert checks["backward_skipped"] and row["flop_saving"] > 0.05
    case = sweep.ARCHS["hf_wav2vec2_cls"][1]()
    encoder = case.model.wav2vec2.feature_extractor
    frz = SmartFRZ(case.model, None, example_input=case.example, policy="none")
    frz.freeze_through(0)
    assert encoder._requires_grad is False
    frz.unfreeze()
    assert encoder._requires_grad is True
    case.model.freeze_feature_encoder()  # the user's own choice stays: the engine never turns it back on
    frz = SmartFRZ(case.model, None, example_input=case.example, policy="none")
    frz.freeze_through(4)
    frz.unfreeze()
    assert encoder._requires_grad is False
