"""End-to-end architecture sweep: unit discovery and freezing on models the package was not tuned on.

For each architecture (random initialisation, tiny inputs, small configs; nothing is downloaded) it finds the
units (`smartfrz.find_units`), checks their structure (forward order, no overlap, every trainable parameter in
exactly one unit or in the head, enough units for a deep model), freezes the front half with the engine
(`SmartFRZ(policy="none").freeze_through`), trains a few AdamW steps and checks that frozen parameters get no
gradient and stay bit-identical, that BatchNorm statistics inside frozen units stay put, that active parameters
move, and that a training step (forward + backward, `FlopCounterMode`) costs fewer FLOPs with the prefix frozen.

    python scripts/arch_sweep.py                       # every architecture -> reports/arch_sweep.{json,md}
    python scripts/arch_sweep.py --only densenet121 tied_lm --out /tmp/sweep   # a few, elsewhere

One thread (`torch.set_num_threads(1)`); the whole sweep takes a few minutes on a laptop CPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from smartfrz import SmartFRZ, find_units
from smartfrz.units import call_model

CHECKS = ("order", "partition", "enough_units", "frozen_no_grad", "frozen_unchanged", "bn_stats_fixed",
          "active_moves", "flops_lower", "backward_skipped", "shipped_rule")
CHECK_HELP = {
    "order": "units run front to back (first call of each unit later than the previous one's), no unit inside another",
    "partition": "every trainable parameter in exactly one unit or in the head (run after the last unit); "
                 "a parameter tied between a unit and the head must be named in an engine warning",
    "enough_units": "a deep model gives more than 2 freezable units",
    "frozen_no_grad": "parameters the engine froze have requires_grad False and .grad None after training steps",
    "frozen_unchanged": "frozen parameters are bit-identical after the steps",
    "bn_stats_fixed": "BatchNorm running statistics inside frozen units do not move (n/a: no BatchNorm there)",
    "active_moves": "every active parameter that received a gradient changed",
    "flops_lower": "forward+backward FLOPs with the prefix frozen are below the unfrozen step's",
    "shipped_rule": "the shipped predictor, its veto and recorder decide on a copy of the model for a few steps "
                    "(windows of 3 snapshots, a decision every step from the first): no error, finite losses",
    "backward_skipped": "no module inside a frozen unit outputs a tensor that requires grad in a training forward: "
                        "no backward runs through the frozen prefix and none of its activations are kept",
}


@dataclass
class Case:
    model: nn.Module
    example: Any  # what find_units and the engine get
    loss: Callable[[nn.Module], torch.Tensor]  # one training loss on a fixed batch
    deep: bool = True  # expected to give more than 2 units
    note: str = ""
    known: dict[str, str] = field(default_factory=dict)  # check -> why it fails by design (still reported as failing)


TIED = {"backward_skipped": "by design a weight tied with the head (or with a unit still active) stays trainable, so "
                            "backward still runs through the frozen units to reach it; the engine names it in a "
                            "warning at setup"}


# ---------------------------------------------------------------------------------------------- builders
def _images(size=32, n=2, classes=10):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)
    return x, y


def _cnn(model: nn.Module, size=32, note="", n=2) -> Case:
    x, y = _images(size, n)
    return Case(model, x, lambda m: F.cross_entropy(m(x), y), note=note)


def _tv(name: str, size=32, note="", **kw) -> Callable[[], Case]:
    def build():
        import torchvision
        return _cnn(torchvision.models.get_model(name, weights=None, num_classes=10, **kw), size, note)
    return build


def _timm(name: str, size=32, note="", **kw) -> Callable[[], Case]:
    def build():
        import timm
        return _cnn(timm.create_model(name, pretrained=False, num_classes=10, **kw), size, note)
    return build


def _tokens(n=2, length=12, vocab=100):
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab, (n, length), generator=g)


def _hf_classifier(cls_name: str, cfg_name: str, note: str = "", **cfg) -> Callable[[], Case]:
    def build():
        import transformers
        config = getattr(transformers, cfg_name)(vocab_size=100, num_labels=2, **cfg)
        model = getattr(transformers, cls_name)(config)
        ids = _tokens()
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        labels = torch.tensor([0, 1])
        return Case(model, batch, lambda m: m(**batch, labels=labels).loss, note=note)
    return build


def _hf_lora() -> Case:
    import peft
    case = _hf_classifier("BertForSequenceClassification", "BertConfig", **_BERTISH)()
    case.model = peft.get_peft_model(case.model, peft.LoraConfig(task_type="SEQ_CLS", r=4))
    case.note = "peft LoRA of rank 4 (query, value): only the adapters and the classifier train"
    return case


def _bart() -> Case:
    import transformers
    config = transformers.BartConfig(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, num_labels=2,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, max_position_embeddings=64)
    ids = _tokens()
    ids[:, -1] = config.eos_token_id  # the classifier reads the last <eos>
    batch, labels = {"input_ids": ids}, torch.tensor([0, 1])
    return Case(transformers.BartForSequenceClassification(config), batch, lambda m: m(**batch, labels=labels).loss,
                note="embedding shared by the encoder and the decoder", known=TIED)


def _gpt2_lm() -> Case:
    import transformers
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=4, n_head=2,
                                                                  n_positions=64))
    ids = _tokens()
    return Case(model, {"input_ids": ids}, lambda m: m(input_ids=ids, labels=ids).loss,
                note="lm_head tied to transformer.wte", known=TIED)


def _t5() -> Case:
    import transformers
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=3, num_decoder_layers=3, num_heads=2,
        decoder_start_token_id=0))
    ids, labels = _tokens(), _tokens(length=6)
    batch = {"input_ids": ids, "labels": labels}
    return Case(model, batch, lambda m: m(**batch).loss, note="shared embedding (encoder, decoder, lm_head)", known=TIED)


class LSTMClassifier(nn.Module):
    """Embedding -> 2-layer LSTM -> linear, read at the last position."""

    def __init__(self, vocab=100, dim=32, classes=2):
        super().__init__()
        self.emb, self.lstm, self.out = nn.Embedding(vocab, dim), nn.LSTM(dim, dim, num_layers=2, batch_first=True), \
            nn.Linear(dim, classes)

    def forward(self, ids):
        h, _ = self.lstm(self.emb(ids))
        return self.out(h[:, -1])


class _TiedBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class TiedLM(nn.Module):
    """A token model whose output layer shares the embedding's weight (weight tying, as GPT-2 and T5 do)."""

    def __init__(self, vocab=100, dim=32, depth=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.Sequential(*[_TiedBlock(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.norm(self.blocks(self.emb(ids))))


def _lstm() -> Case:
    ids, y = _tokens(), torch.tensor([0, 1])
    return Case(LSTMClassifier(), ids, lambda m: F.cross_entropy(m(ids), y), deep=False,
                note="nn.LSTM keeps all its layers in one module: one unit")


def _mlp() -> Case:
    layers = [nn.Linear(16, 32), nn.ReLU()] + [m for _ in range(3) for m in (nn.Linear(32, 32), nn.ReLU())]
    model = nn.Sequential(*layers, nn.Linear(32, 2))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 16, generator=g), torch.tensor([0, 1, 0, 1])
    return Case(model, x, lambda m: F.cross_entropy(m(x), y))


def _tied() -> Case:
    ids = _tokens()
    return Case(TiedLM(), ids, lambda m: F.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()),
                note="out.weight tied to emb.weight", known=TIED)


def _small_vit() -> Case:
    import torchvision
    return _cnn(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2,
                                                     hidden_dim=32, mlp_dim=64, num_classes=10))


def _segmentation(name: str, size=64, **kw) -> Callable[[], Case]:
    """A dense-prediction model: a dict output ({"out": per-pixel logits}), a per-pixel loss."""
    def build():
        import torchvision
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=4, **kw)
        x, _ = _images(size)
        y = torch.randint(0, 4, (2, size, size), generator=torch.Generator().manual_seed(1))
        return Case(model, x, lambda m: F.cross_entropy(m(x)["out"], y), note="dict output, per-pixel loss")
    return build


def _detection() -> Case:
    """torchvision's Faster R-CNN: images and targets in, a dict of losses out in training, boxes in eval (the veto
    cannot read those: its engine needs veto_tau=1.0, and says so)."""
    import torchvision
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                                              num_classes=3)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 96, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 60.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    return Case(model, (images, targets), lambda m: sum(m(images, targets).values()),
                note="images and targets in; the RoI heads are the head")


def _weight_norm_resnet() -> Case:
    """torchvision's ResNet-18 with every conv weight-normalised (torch.nn.utils.parametrizations.weight_norm):
    each parametrized conv gets a class of its own, and its weight is computed by a module inside it."""
    import torchvision
    from torch.nn.utils.parametrizations import weight_norm
    model = torchvision.models.resnet18(num_classes=10)
    for m in [m for m in model.modules() if isinstance(m, nn.Conv2d)]:
        weight_norm(m)
    return _cnn(model, note="every conv weight-normalised (parametrizations)")


def _spectral_norm_discriminator() -> Case:
    """A DCGAN-style discriminator with spectral_norm on every layer (its power iteration updates buffers in
    training mode, as BatchNorm's statistics do): a GAN's other half."""
    from torch.nn.utils.parametrizations import spectral_norm
    layers, c = [], 3
    for width in (16, 32, 64, 64):
        layers += [spectral_norm(nn.Conv2d(c, width, 4, 2, 1)), nn.LeakyReLU(0.2)]
        c = width
    model = nn.Sequential(*layers, nn.Flatten(), spectral_norm(nn.Linear(64 * 2 * 2, 1)))
    x, _ = _images(32)
    return Case(model, x, lambda m: F.softplus(-m(x)).mean(), note="spectral_norm on every layer (parametrizations)")


class UNet(nn.Module):
    """A small U-Net: each encoder stage's output is read twice, by the next stage and by the decoder (a skip)."""

    def __init__(self, c=8, classes=3):
        super().__init__()
        conv = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
        self.enc = nn.ModuleList([conv(3, c), conv(c, 2 * c), conv(2 * c, 4 * c)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(4 * c, 2 * c, 2, 2), nn.ConvTranspose2d(2 * c, c, 2, 2)])
        self.dec = nn.ModuleList([conv(4 * c, 2 * c), conv(2 * c, c)])
        self.out = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        skips = []
        for i, e in enumerate(self.enc):
            x = e(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], 1))
        return self.out(x)


def _unet() -> Case:
    x, _ = _images(32)
    y = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    return Case(UNet(), x, lambda m: F.cross_entropy(m(x), y), note="encoder stages feed the decoder by skips")


def _hf_vit() -> Case:
    import transformers
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
                                    num_attention_heads=2, intermediate_size=64, num_labels=10)
    x, y = _images(32)
    return Case(transformers.ViTForImageClassification(config), {"pixel_values": x},
                lambda m: m(pixel_values=x, labels=y).loss)


def _hf_clip() -> Case:
    """A dual encoder with a contrastive loss: two towers side by side, run one after the other."""
    import transformers
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, max_position_embeddings=32),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2), projection_dim=16)
    x, _ = _images(32)
    batch = {"input_ids": _tokens(length=8), "pixel_values": x}
    return Case(transformers.CLIPModel(config), batch, lambda m: m(**batch, return_loss=True).loss,
                note="two towers: units in the order they run, the vision tower (its projection included) first")


def _hf_whisper() -> Case:
    import transformers
    config = transformers.WhisperConfig(vocab_size=100, num_mel_bins=16, encoder_layers=3, encoder_attention_heads=2,
                                        decoder_layers=2, decoder_attention_heads=2, d_model=32, encoder_ffn_dim=64,
                                        decoder_ffn_dim=64, max_source_positions=32, num_labels=2)
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(2, 16, 64, generator=g), torch.tensor([0, 1])
    return Case(transformers.WhisperForAudioClassification(config), {"input_features": feats},
                lambda m: m(input_features=feats, labels=labels).loss, note="log-mel features: two convs first")


def _hf_wav2vec2() -> Case:
    import transformers
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=64, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2),
                                         conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2, num_labels=2, mask_time_prob=0.0)
    g = torch.Generator().manual_seed(0)
    audio, labels = torch.randn(2, 1600, generator=g), torch.tensor([0, 1])
    return Case(transformers.Wav2Vec2ForSequenceClassification(config), {"input_values": audio},
                lambda m: m(input_values=audio, labels=labels).loss, note="raw audio: a conv feature encoder first")


_BERTISH = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64)
ARCHS: dict[str, tuple[str, Callable[[], Case]]] = {
    "resnet18": ("torchvision", _tv("resnet18")),
    "resnet50": ("torchvision", _tv("resnet50", 64)),
    "wide_resnet50_2": ("torchvision", _tv("wide_resnet50_2", 32)),
    "vgg11_bn": ("torchvision", _tv("vgg11_bn")),
    "mobilenet_v2": ("torchvision", _tv("mobilenet_v2")),
    "mobilenet_v3_small": ("torchvision", _tv("mobilenet_v3_small")),
    "efficientnet_b0": ("torchvision", _tv("efficientnet_b0")),
    "densenet121": ("torchvision", _tv("densenet121")),
    "shufflenet_v2_x0_5": ("torchvision", _tv("shufflenet_v2_x0_5")),
    "squeezenet1_0": ("torchvision", _tv("squeezenet1_0", 64)),
    "regnet_y_400mf": ("torchvision", _tv("regnet_y_400mf")),
    "convnext_tiny": ("torchvision", _tv("convnext_tiny")),
    "mnasnet0_5": ("torchvision", _tv("mnasnet0_5")),
    "googlenet": ("torchvision", _tv("googlenet", 64, aux_logits=False, init_weights=True)),
    "swin_t": ("torchvision", _tv("swin_t", 64)),
    "inception_v3": ("torchvision", _tv("inception_v3", 80, aux_logits=False, init_weights=True,
                                        note="Mixed_6a/Mixed_7a (one of a kind) are split into their parallel branches")),
    "vit_b_16": ("torchvision", _tv("vit_b_16", 32, image_size=32, note="image_size=32: 2x2 patches")),
    "vit_small_custom": ("torchvision", _small_vit),
    "timm_deit_tiny_patch16_224": ("timm", _timm("deit_tiny_patch16_224", img_size=32)),
    "timm_convnext_atto": ("timm", _timm("convnext_atto")),
    "timm_resnet18d": ("timm", _timm("resnet18d")),
    "timm_efficientnet_b0": ("timm", _timm("efficientnet_b0")),
    "hf_bert": ("transformers", _hf_classifier("BertForSequenceClassification", "BertConfig", **_BERTISH)),
    "hf_distilbert": ("transformers", _hf_classifier("DistilBertForSequenceClassification", "DistilBertConfig",
                                                     dim=32, n_layers=4, n_heads=2, hidden_dim=64,
                                                     max_position_embeddings=64)),
    "hf_roberta": ("transformers", _hf_classifier("RobertaForSequenceClassification", "RobertaConfig",
                                                  **{**_BERTISH, "max_position_embeddings": 70})),
    "hf_gpt2_cls": ("transformers", _hf_classifier("GPT2ForSequenceClassification", "GPT2Config", n_embd=32,
                                                   n_layer=4, n_head=2, n_positions=64, pad_token_id=0)),
    "hf_gpt2_lm": ("transformers", _gpt2_lm),
    "hf_t5": ("transformers", _t5),
    "hf_albert": ("transformers", _hf_classifier("AlbertForSequenceClassification", "AlbertConfig", embedding_size=16,
                                                 note="one layer shared across depth: the encoder is one unit",
                                                 **_BERTISH)),
    "hf_llama_cls": ("transformers", _hf_classifier("LlamaForSequenceClassification", "LlamaConfig", hidden_size=32,
                                                    num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2,
                                                    intermediate_size=64, pad_token_id=0)),
    "hf_bart_cls": ("transformers", _bart),
    "hf_bert_lora": ("peft", _hf_lora),
    "hf_electra": ("transformers", _hf_classifier("ElectraForSequenceClassification", "ElectraConfig",
                                                  embedding_size=16, **_BERTISH)),
    "deeplabv3_mobilenet_v3_large": ("torchvision", _segmentation("deeplabv3_mobilenet_v3_large")),
    "fcn_resnet50": ("torchvision", _segmentation("fcn_resnet50", 32)),
    "unet": ("torch", _unet),
    "resnet18_weight_norm": ("torchvision", _weight_norm_resnet),
    "spectral_norm_discriminator": ("torch", _spectral_norm_discriminator),
    "fasterrcnn_mobilenet_v3": ("torchvision", _detection),
    "hf_vit": ("transformers", _hf_vit),
    "hf_wav2vec2_cls": ("transformers", _hf_wav2vec2),
    "hf_whisper_cls": ("transformers", _hf_whisper),
    "hf_clip": ("transformers", _hf_clip),
    "lstm_classifier": ("torch", _lstm),
    "mlp": ("torch", _mlp),
    "tied_lm": ("torch", _tied),
}


# ---------------------------------------------------------------------------------------------- checks
def _execution_order(model: nn.Module, example: Any) -> dict[nn.Module, int]:
    order: dict[nn.Module, int] = {}
    def note(mod, args):
        order.setdefault(mod, len(order))  # returns None: the hook leaves the arguments alone

    hooks = [m.register_forward_pre_hook(note) for m in model.modules()]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, example)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return order


def graph_in(model: nn.Module, loss: Callable, units) -> list[str]:
    """Modules inside ``units`` whose output requires grad in a training forward: autograd records a graph there,
    so backward runs through them (and keeps their activations). Frozen units at the front must have none."""
    names = {m: n for n, m in model.named_modules()}
    hits: list[str] = []

    def note(mod, args, out):
        if any(torch.is_tensor(t) and t.requires_grad for t in tree_leaves(out)) and names[mod] not in hits:
            hits.append(names[mod])

    handles = [m.register_forward_hook(note) for u in units for _, top in u.members for m in top.modules()]
    try:
        model.train()
        loss(model)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return hits


def step_flops(model: nn.Module, loss: Callable) -> int:
    with FlopCounterMode(display=False) as c:
        loss(model).backward()
    model.zero_grad(set_to_none=True)
    return c.get_total_flops()


def structure(model: nn.Module, example: Any, units, engine_warnings: list[str]) -> dict[str, tuple[bool, str]]:
    """Checks that need no training: order, partition (tied parameters), enough units is the caller's."""
    order = _execution_order(model, example)
    named = dict(model.named_modules())
    out: dict[str, tuple[bool, str]] = {}
    # order: each unit's first call after the previous unit's; members are separate subtrees
    firsts, problems = [], []
    for u in units:
        ran = [order[m] for _, m in u.members if m in order]
        if len(ran) < len(u.members):
            problems.append(f"{u.name} has members that never ran")
        firsts.append(min(ran) if ran else -1)
    problems += [f"{units[i + 1].name} starts before {units[i].name}" for i in range(len(units) - 1)
                 if firsts[i + 1] <= firsts[i]]
    members = [n for u in units for n, _ in u.members]
    problems += [f"{a} inside {b}" for a in members for b in members if a != b and a.startswith(b + ".")]
    out["order"] = (not problems, "; ".join(problems[:3]))
    # partition: by identity; where a parameter is used (module names that hold it) from named_parameters
    users: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        users.setdefault(id(p), []).append(pname.rpartition(".")[0])
    in_unit: dict[int, list[int]] = {}
    for i, u in enumerate(units):
        for p in {id(p): p for p in u.parameters()}.values():
            in_unit.setdefault(id(p), []).append(i)
    last = units[-1]
    last_end = max(order[m] for _, top in last.members for m in top.modules() if m in order)
    problems, notes = [], []
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owners = in_unit.get(id(p), [])
        if len(owners) > 1:  # tied between units: the engine freezes it with the last of them, and must say so
            warned = any(pname in w or units[owners[0]].name in w for w in engine_warnings if "tied" in w)
            notes.append(f"tied: {pname} in units {owners} ({'warned' if warned else 'NOT warned'})")
            if not warned:
                problems.append(f"{pname} in units {owners}, and no engine warning names it")
        elif not owners:  # the head: every module holding it runs after the last unit
            early = [n for n in users[id(p)] if named[n] in order and order[named[n]] <= last_end]
            if early:
                problems.append(f"{pname} in no unit, yet {early[0]} runs before the last unit ends")
            elif not any(named[n] in order for n in users[id(p)]):
                notes.append(f"{pname} never runs")
        if len(owners) == 1:  # in a unit: also used outside all units (tied with the head)?
            unit_modules = {id(m) for _, top in units[owners[0]].members for m in top.modules()}
            outside = [n for n in users[id(p)] if id(named[n]) not in unit_modules and named[n] in order
                       and not any(n == m or n.startswith(m + ".") for u in units for m, _ in u.members)
                       and not (n == "" or any(m.startswith(n + ".") for m in members))]
            if outside:
                warned = any(pname in w or any(o in w for o in outside) for w in engine_warnings if "tied" in w)
                notes.append(f"tied: {pname} also used by {outside[0]} ({'warned' if warned else 'NOT warned'})")
                if not warned:
                    problems.append(f"{pname} tied with {outside[0]} outside the units, and no engine warning names it")
    never = sorted({n for n in notes if n.endswith("never runs")})
    notes = [n for n in notes if not n.endswith("never runs")] + ([f"{len(never)} head parameter(s) never run"]
                                                                  if never else [])
    out["partition"] = (not problems, "; ".join(problems[:3] + notes[:2]))
    return out


def shipped_rule(case: Case, steps: int = 8) -> tuple[bool, str]:
    """The default policy end to end on a copy of the model: recorder, predictor and functional veto on its outputs."""
    model = copy.deepcopy(case.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    options = dict(total_steps=steps, window=3, record_every=1, decide_every=1, decide_from=0.0, patience=1)
    note = ""
    try:
        frz = SmartFRZ(model, opt, example_input=case.example, **options)
    except ValueError as e:  # a model whose output the veto cannot read: the rule without its veto, as the error says
        if "functional veto" not in str(e):
            raise
        frz, note = SmartFRZ(model, opt, example_input=case.example, veto_tau=1.0, **options), "; veto refused (veto_tau=1.0)"
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = case.loss(model)
        loss.backward()
        opt.step()
        frz.step()
        losses.append(float(loss.detach()))
    checks = f"{frz.veto.forwards} veto checks" if frz.veto is not None else "no veto"
    return all(map(math.isfinite, losses)), f"{frz.num_frozen} of {len(frz.units)} units frozen in {steps} steps, {checks}{note}"


def run_case(name: str, case: Case, steps: int = 3) -> dict:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rule = shipped_rule(case)
        except Exception as e:  # noqa: BLE001 - reported as the check's failure
            rule = (False, f"{type(e).__name__}: {e}"[:300])
    torch.manual_seed(0)
    model = case.model
    t0 = time.perf_counter()
    units = find_units(model, case.example)
    row: dict[str, Any] = {"arch": name, "units": len(units), "note": case.note,
                           "unit_list": [{"name": u.name, "params": u.num_params, "flop_share": round(u.flop_share, 4)}
                                         for u in units]}
    checks: dict[str, tuple[bool | None, str]] = {}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    full = step_flops(model, case.loss)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frz = SmartFRZ(model, opt, example_input=case.example, policy="none")
    engine_warnings = [str(w.message) for w in caught]
    row["engine_warnings"] = engine_warnings
    checks.update(structure(model, case.example, frz.units, engine_warnings))
    biggest = max(u.flop_share for u in units)
    checks["enough_units"] = (len(units) > 2 or not case.deep,
                              f"{len(units)} units" + (f", largest unit {biggest:.0%} of the FLOPs" if biggest > 0.3 else ""))
    k = max(1, len(units) // 2)  # the front half (at least one unit)
    frz.freeze_through(k - 1)
    model.train()
    cut = step_flops(model, case.loss)
    frozen_units = units[:k]
    frozen = [p for u in frozen_units for p in u.parameters() if not p.requires_grad]
    kept = [p for u in frozen_units for p in u.parameters() if p.requires_grad]  # tied: the engine keeps them trainable
    norms = [m for u in frozen_units for _, top in u.members for m in top.modules()
             if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]
    stats_before = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    before = {id(p): p.detach().clone() for p in model.parameters()}
    got_grad: set[int] = set()
    losses = []
    for _ in range(steps):
        model.train()  # as a loop does every epoch: the engine keeps frozen members in eval
        opt.zero_grad(set_to_none=True)
        loss = case.loss(model)
        loss.backward()
        got_grad |= {id(p) for p in model.parameters() if p.grad is not None and bool(p.grad.any())}
        opt.step()
        frz.step()
        losses.append(float(loss.detach()))
    bad_grad = [p for p in frozen if p.grad is not None or p.requires_grad]
    checks["frozen_no_grad"] = (not bad_grad and bool(frozen), f"{len(frozen)} frozen tensors" +
                                (f", {len(bad_grad)} with a grad" if bad_grad else "") +
                                (f"; {len(kept)} tied tensor(s) in frozen units kept trainable" if kept else ""))
    changed = [p for p in frozen if not torch.equal(before[id(p)], p.detach())]
    checks["frozen_unchanged"] = (not changed, f"{len(changed)} changed" if changed else "")
    if norms:
        moved = [i for i, (m, s) in enumerate(zip(norms, stats_before))
                 if not (torch.equal(s[0], m.running_mean) and torch.equal(s[1], m.running_var)
                         and torch.equal(s[2], m.num_batches_tracked))]
        checks["bn_stats_fixed"] = (not moved, f"{len(norms)} BN layers" + (f", {len(moved)} moved" if moved else ""))
    else:
        checks["bn_stats_fixed"] = (None, "no BatchNorm in the frozen units")
    active = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    still = [n for n, p in active if id(p) in got_grad and torch.equal(before[id(p)], p.detach())]
    no_grad = [n for n, p in active if id(p) not in got_grad]  # unused, or a zero gradient (a bias before a train-mode BN)
    checks["active_moves"] = (not still and len(no_grad) < len(active),
                              (f"unmoved: {still[:3]}" if still else "") +
                              (f" {len(no_grad)} active tensor(s) got no or an all-zero gradient" if no_grad else ""))
    share = frz.frozen_flop_share
    saving = 1 - cut / full if full else 0.0
    in_graph = graph_in(model, case.loss, frozen_units)
    counted = share > 0  # FlopCounterMode counts no FLOPs in lookups, nor in CPU LSTMs (mkldnn_rnn_layer)
    checks["flops_lower"] = (cut < full if counted else None,
                             f"{full / 1e6:.1f} -> {cut / 1e6:.1f} MFLOPs (-{saving:.0%}); frozen forward share {share:.0%}"
                             + ("" if counted else " (the frozen units run no op FlopCounterMode counts)"))
    checks["backward_skipped"] = (not in_graph, f"outputs needing grad in: {in_graph[:3]}" if in_graph else "")
    checks["shipped_rule"] = rule
    row.update(frozen=k, frozen_names=[u.name for u in frozen_units], flops_full=full, flops_frozen=cut,
               flop_saving=round(saving, 4), frozen_flop_share=round(share, 4), losses=[round(x, 4) for x in losses],
               finite=all(math.isfinite(x) for x in losses), seconds=round(time.perf_counter() - t0, 2))
    row["checks"] = {c: {"pass": v[0], "detail": v[1]} | ({"known": case.known[c]} if c in case.known else {})
                     for c, v in checks.items()}
    failed = {c for c, v in checks.items() if v[0] is False}
    row["status"] = "fail" if failed - set(case.known) or not row["finite"] else "known" if failed else "pass"
    row["largest_unit_share"] = round(biggest, 4)
    return row


# ---------------------------------------------------------------------------------------------- report
def _mark(v: bool | None) -> str:
    return "n/a" if v is None else ("pass" if v else "**FAIL**")


def markdown(rows: list[dict], command: str, steps: int) -> str:
    lines = ["# Architecture sweep", "", f"Command: `{command}`", "",
             f"torch {torch.__version__}, CPU, one thread; random initialisation, tiny inputs, small configs (see "
             "`scripts/arch_sweep.py`). The front half of the units is frozen with `SmartFRZ(policy=\"none\")"
             f".freeze_through`, then {steps} AdamW steps. *saving*: FLOPs of a training step (forward + backward, "
             "`FlopCounterMode`) saved by the frozen prefix. `shipped_rule`: the default policy (the shipped predictor "
             "and its veto) trains a copy of the model, see Checks. **FAIL (known)**: fails by design, explained in the "
             "notes.",
             "", "| architecture | source | units | largest unit | saving | " + " | ".join(CHECKS) + " | notes |",
             "|---|---|---|---|---|" + "---|" * len(CHECKS) + "---|"]
    for r in rows:
        if r["status"] in ("skipped", "error"):
            lines.append(f"| {r['arch']} | {r.get('source', '')} | - | - | - | " + " | ".join("-" for _ in CHECKS)
                         + f" | {r['status'].upper()}: {r['reason']} |")
            continue
        notes = [r["note"]] if r["note"] else []
        notes += [f"{c}: {v.get('known') or v['detail']}" for c, v in r["checks"].items()
                  if v["detail"] and (v["pass"] is False or c == "partition" or "refused" in v["detail"])]
        marks = [_mark(v["pass"]) + (" (known)" if "known" in v and v["pass"] is False else "")
                 for v in (r["checks"][c] for c in CHECKS)]
        lines.append(f"| {r['arch']} | {r.get('source', '')} | {r['units']} | {r['largest_unit_share']:.0%} | "
                     f"{r['flop_saving']:.0%} | " + " | ".join(marks) + " | " + "; ".join(notes).replace("|", "/") + " |")
    lines += ["", "Checks:", ""] + [f"- `{c}`: {CHECK_HELP[c]}" for c in CHECKS]
    lines += ["", "## Units per architecture", "", "Name (share of the forward FLOPs); the head is not listed.", ""]
    for r in rows:
        if "unit_list" in r:
            names = ", ".join(f"{u['name']} ({u['flop_share']:.1%})" for u in r["unit_list"])
            lines.append(f"- **{r['arch']}** ({r['units']}, frozen in the sweep: {r['frozen']}): {names}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help=f"architectures to run (default: all of {list(ARCHS)})")
    ap.add_argument("--out", default="reports/arch_sweep", help="writes <out>.json and <out>.md")
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    unknown = sorted(set(a.only or []) - set(ARCHS))
    if unknown:
        ap.error(f"unknown architecture(s) {unknown}; known: {list(ARCHS)}")
    command = "python scripts/arch_sweep.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])
                                                 if (argv if argv is not None else sys.argv[1:]) else "")
    rows = []
    for name in a.only or ARCHS:
        source, build = ARCHS[name]
        try:
            case = build()
        except (ImportError, AttributeError, RuntimeError, ValueError, TypeError) as e:
            rows.append({"arch": name, "source": source, "status": "skipped", "reason": f"{type(e).__name__}: {e}"})
            print(f"{name:28s} SKIPPED {e}", flush=True)
            continue
        try:
            row = run_case(name, case, a.steps)
        except Exception as e:  # noqa: BLE001 - a crash is a finding: record it and go on
            rows.append({"arch": name, "source": source, "status": "error", "reason": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()})
            print(f"{name:28s} ERROR {type(e).__name__}: {e}", flush=True)
            continue
        row["source"] = source
        rows.append(row)
        failed = [c for c, v in row["checks"].items() if v["pass"] is False]
        print(f"{name:28s} {row['units']:3d} units  {row['status']:4s} {failed or ''}  "
              f"saving {row['flop_saving']:.0%}  {row['seconds']}s", flush=True)
        del case, row
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "torch": torch.__version__, "checks": CHECK_HELP,
                                                    "results": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, command, a.steps))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return int(any(r["status"] in ("fail", "error") for r in rows))  # known failures are reported, not fatal


if __name__ == "__main__":
    sys.exit(main())
