"""Every bad input gets an error naming the problem, and the model is left exactly as it was."""
import pytest
import torch
from torch import nn

from conftest import cifar_resnet18
from smartfrz import SmartFRZ, find_units


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}, [p.requires_grad for p in m.parameters()], \
        [mod.training for mod in m.modules()]


def untouched(m, snap):
    sd, rg, tr = snap
    return all(torch.equal(v, m.state_dict()[k]) for k, v in sd.items()) and \
        rg == [p.requires_grad for p in m.parameters()] and tr == [mod.training for mod in m.modules()]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return cifar_resnet18()


def test_model_without_parameters():
    with pytest.raises(ValueError, match="has no parameters"):
        find_units(nn.Sequential(nn.ReLU(), nn.Flatten()), torch.randn(2, 3))


def test_rejected_example_input(model):
    snap = snapshot(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="example_input was rejected by ResNet.forward"):
        SmartFRZ(model, opt, example_input=torch.randn(2, 5, 32, 32), policy="none")
    assert untouched(model, snap) and len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_unknown_unit_names(model):
    snap = snapshot(model)
    with pytest.raises(KeyError, match=r"unknown unit name\(s\) \['layer9'\].*named_modules"):
        SmartFRZ(model, None, example_input=torch.randn(2, 3, 32, 32), policy="none", units=["conv1", "layer9"])
    assert untouched(model, snap)


def test_unknown_unit_in_freeze_through(model):
    frz = SmartFRZ(model, None, example_input=torch.randn(2, 3, 32, 32), policy="none")
    with pytest.raises(KeyError, match="unknown unit 'layer7.0'"):
        frz.freeze_through("layer7.0")
    with pytest.raises(IndexError, match="units 0..8"):
        frz.freeze_through(42)
    assert frz.num_frozen == 0


@pytest.mark.parametrize("content,match", [
    (None, "predictor file not found"),
    (b"not a safetensors file at all", "not a readable safetensors file"),
])
def test_bad_predictor_file(model, tmp_path, content, match):
    path = tmp_path / "pred.safetensors"
    if content is not None:
        path.write_bytes(content)
    snap = snapshot(model)
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        SmartFRZ(model, None, example_input=torch.randn(2, 3, 32, 32), predictor_path=path)
    assert untouched(model, snap)


def test_wrong_shape_predictor_file(model, tmp_path):
    from safetensors.torch import save_file
    from smartfrz.predictor import FreezePredictor
    p = FreezePredictor(d_model=16, heads=2, layers=1, hidden=32)
    t = {k: v.contiguous() for k, v in p.state_dict().items()}
    t["members.0.head.3.weight"] = torch.zeros(2, 32)
    save_file(t, str(tmp_path / "w.safetensors"), metadata={
        "hparams": '{"d_model": 16, "heads": 2, "layers": 1, "hidden": 32, "num_features": 8, "members": 1}',
        "feature_version": "1", "threshold": "0.5"})
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"'members.0.head.3.weight' has shape \(2, 32\), expected \(1, 32\)"):
        SmartFRZ(model, None, example_input=torch.randn(2, 3, 32, 32), predictor_path=tmp_path / "w.safetensors")
    assert untouched(model, snap)


def test_state_for_another_model(model):
    frz = SmartFRZ(model, None, example_input=torch.randn(2, 3, 32, 32), policy="none")
    other = SmartFRZ(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), None, example_input=torch.randn(1, 3),
                     policy="none")
    with pytest.raises(ValueError, match="saved for units"):
        frz.load_state_dict(other.state_dict())


@pytest.mark.parametrize("kw,match", [
    (dict(model="resnet9000"), "unknown model 'resnet9000'; choose from: .*torchvision:<name>, timm:<name>, hf:<repo id>"),
    (dict(task="imagenet-22k"), "unknown task 'imagenet-22k'; allowed:"),
    (dict(policy="freeze-all"), "unknown policy 'freeze-all'; allowed:"),
    (dict(epochs=0), "epochs must be a positive integer; got 0"),
    (dict(epochs=-3), "epochs must be a positive integer; got -3"),
])
def test_unknown_experiment_settings(kw, match):
    from smartfrz.lab.experiment import ExperimentConfig
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**kw)


def test_unknown_preset_and_dataset_missing_offline(tmp_path):
    from smartfrz.lab import presets
    from smartfrz.lab.experiment import ExperimentConfig, run
    with pytest.raises(ValueError, match="unknown preset 'huge' for 10_cnn_cifar; allowed: smoke, paper"):
        presets.resolve("10_cnn_cifar", "huge")
    earlier = tmp_path / "runs" / "earlier.json"
    earlier.parent.mkdir()
    earlier.write_text("{}")
    from smartfrz.lab.data import DatasetMissingError
    with pytest.raises(DatasetMissingError, match=str(tmp_path / "empty")) as e:
        run(ExperimentConfig(task="cifar10", model="resnet20", data_dir=str(tmp_path / "empty"),
                             out_dir=str(tmp_path / "runs"), progress=False))
    assert "download" in str(e.value)
    assert earlier.read_text() == "{}" and len(list(earlier.parent.iterdir())) == 1  # nothing written or lost
