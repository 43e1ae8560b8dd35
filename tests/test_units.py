import pytest
import torch
import torchvision
from torch import nn

from conftest import cifar_resnet18, minilm
from smartfrz import find_units

x32 = torch.randn(2, 3, 32, 32)


def names(model, x, **kw):
    return [u.name for u in find_units(model, x, **kw)]


def test_resnet18_stem_then_blocks():
    units = find_units(cifar_resnet18(), x32)
    assert [u.name for u in units] == ["conv1+bn1"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert all(u.num_params > 0 for u in units)
    assert abs(sum(u.flop_share for u in units) - 1.0) < 0.01  # only avgpool + fc outside
    assert not any("fc" in u.name for u in units)


def test_resnet50_bottlenecks():
    n = names(torchvision.models.resnet50(num_classes=10), torch.randn(1, 3, 64, 64))
    assert n[0] == "conv1+bn1" and n[1] == "layer1.0" and n[-1] == "layer4.2" and len(n) == 17


def test_vgg_conv_with_bn():
    n = names(torchvision.models.vgg11_bn(num_classes=10), torch.randn(1, 3, 32, 32))
    assert n[:2] == ["features.0+features.1", "features.4+features.5"]
    assert sum(1 for u in n if u.startswith("features.")) == 8  # eight conv+BN layers
    assert "classifier.6" not in n  # the head


def test_mobilenetv2_inverted_residuals():
    n = names(torchvision.models.mobilenet_v2(num_classes=10), torch.randn(1, 3, 32, 32))
    assert n == [f"features.{i}" for i in range(19)]


def test_torchvision_vit_patch_embedding_then_blocks():
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                               hidden_dim=32, mlp_dim=64, num_classes=10)
    units = find_units(vit, x32)
    assert [u.name for u in units] == ["conv_proj"] + [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    assert {n for n, _ in units[0].extra_params} == {"class_token", "encoder.pos_embedding"}


def test_timm_deit():
    timm = pytest.importorskip("timm")
    deit = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10, depth=3)
    units = find_units(deit, x32)
    assert [u.name for u in units] == ["patch_embed", "blocks.0", "blocks.1", "blocks.2"]
    assert {n for n, _ in units[0].extra_params} == {"cls_token", "pos_embed"}


def test_minilm_embeddings_then_layers():
    model, tok = minilm()
    x = dict(tok(["a pair of", "sentences"], padding=True, return_tensors="pt"))
    n = names(model, x)
    assert n == ["bert.embeddings"] + [f"bert.encoder.layer.{i}" for i in range(6)]


def test_generic_rule_and_override():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    assert names(mlp, torch.randn(3, 4)) == ["0", "2"]  # last layer is the head

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, u, v):
            return self.head(self.b(self.a(u) + v))

    m = TwoInputs()
    assert names(m, (torch.randn(2, 4), torch.randn(2, 4))) == ["a", "b"]
    assert names(m, (torch.randn(2, 4), torch.randn(2, 4)), names=["b", "a"]) == ["a", "b"]  # execution order


def test_units_ignore_requires_grad():
    m = cifar_resnet18()
    before = names(m, x32)
    for p in m.layer1.parameters():
        p.requires_grad_(False)
    assert names(m, x32) == before


class _Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.bn1(self.conv1(x)).relu())


class _Stage(nn.Module):
    """A stage class of the kind timm and user code write: a downsampling conv, then a chain of blocks."""

    def __init__(self, c, depth):
        super().__init__()
        self.down, self.blocks = nn.Conv2d(c, c, 1), nn.Sequential(*[_Residual(c) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.down(x))


class _Experts(nn.Module):
    """Blocks of one class side by side (experts, branches): each reads the input, none the other's output."""

    def __init__(self, c):
        super().__init__()
        self.experts = nn.ModuleList(_Residual(c) for _ in range(3))

    def forward(self, x):
        return sum(e(x) for e in self.experts)


def test_stages_give_way_to_their_blocks():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), _Stage(8, 3), _Stage(8, 2), nn.Flatten(), nn.LazyLinear(2))
    net(x32)
    assert names(net, x32) == ["0", "1.down", "1.blocks.0", "1.blocks.1", "1.blocks.2", "2.down", "2.blocks.0", "2.blocks.1"]
    side_by_side = nn.Sequential(nn.Conv2d(3, 8, 3), _Experts(8), _Experts(8), nn.Flatten(), nn.LazyLinear(2))
    side_by_side(x32)
    assert names(side_by_side, x32) == ["0", "1", "2"]  # parallel blocks are not a chain
    n = names(torchvision.models.regnet_y_400mf(num_classes=10), x32)  # AnyStage: depths 1, 3, 6, 6
    assert n[:4] == ["stem", "trunk_output.block1", "trunk_output.block2.block2-0", "trunk_output.block2.block2-1"]
    assert len(n) == 17 and "trunk_output.block3" not in n
    n = names(torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=True), torch.randn(1, 3, 64, 64))
    assert n[-1] == "inception5b" and len(n) == 12  # a branch's conv+BN layers are no blocks: Inception stays whole


def test_t5_blocks_of_both_stacks_in_order():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(vocab_size=50, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                decoder_start_token_id=0)
    ids = torch.randint(1, 50, (2, 7))
    n = names(transformers.T5ForConditionalGeneration(cfg), {"input_ids": ids, "labels": torch.randint(1, 50, (2, 4))})
    blocks = [u.split("+")[0] for u in n if ".block." in u]
    assert blocks == ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]
    assert "encoder.block.1+encoder.final_layer_norm" in n  # T5LayerNorm is a norm layer: it rides with the stack's end


def test_timm_norm_act_layer_is_no_block():
    timm = pytest.importorskip("timm")
    n = names(timm.create_model("efficientnet_b0", num_classes=10), x32)
    assert n[0] == "conv_stem+bn1" and "bn1" not in n  # BatchNormAct2d has children, yet is a norm layer


def test_a_block_free_model_held_by_one_wrapper_is_split_into_its_parts():
    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.fc3(self.fc2(self.fc1(x).relu()).relu())

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = Body(), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.body(x))

    assert names(Wrapped(), torch.randn(3, 4)) == ["body.fc1", "body.fc2", "body.fc3"]  # not one unit, "body"
    transformers = pytest.importorskip("transformers")
    albert = transformers.AlbertForSequenceClassification(transformers.AlbertConfig(
        vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32))
    ids = torch.randint(1, 50, (2, 7))  # one layer shared across depth: embeddings, the encoder, the pooler
    assert names(albert, {"input_ids": ids}) == ["albert.embeddings", "albert.encoder", "albert.pooler"]


def test_weight_normalised_layers_are_units_that_hold_their_own_weights():
    """torch.nn.utils.parametrizations (weight_norm, spectral_norm) computes a layer's weight in a module inside it and
    gives each parametrized layer a class of its own. Those inner modules were taken for the units, every layer's bias
    rode with the first as a container's parameter, and freezing it froze them all."""
    from torch.nn.utils.parametrizations import weight_norm
    from smartfrz import freeze_through
    torch.manual_seed(0)
    layers = [m for i in range(4) for m in (weight_norm(nn.Conv1d(8 if i else 1, 8, 3, padding=1)), nn.LeakyReLU(0.1))]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(2, 1, 64)
    units = find_units(model, x)
    assert [u.name for u in units] == ["0", "2", "4", "6"] and not any(u.extra_params for u in units)
    assert [sorted(n for n, _ in u.named_parameters()) for u in units][1] == \
        ["2.bias", "2.parametrizations.weight.original0", "2.parametrizations.weight.original1"]
    assert all(u.flop_share > 0 for u in units)
    freeze_through(model, None, x, 0)
    assert not model[0].bias.requires_grad and model[2].bias.requires_grad and model[2].parametrizations.weight.original1.requires_grad
