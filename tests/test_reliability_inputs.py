"""Bad inputs to the training loop and engine: each gets an error naming what was wrong and what is allowed."""
import pytest
import torch
from torch import nn

from smartfrz import SmartFRZ
from smartfrz.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from smartfrz.lab.train import NonFiniteLossError, fit


def small_cnn():
    torch.manual_seed(0)
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU())
    return nn.Sequential(block(1, 4), block(4, 4), block(4, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def batches(n=6, poison=None):
    """A fixed list of (x, y) batches; batch ``poison`` holds inf inputs, so its loss is NaN."""
    g = torch.Generator().manual_seed(0)
    out = [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(n)]
    if poison is not None:
        out[poison] = (torch.full_like(out[poison][0], float("inf")), out[poison][1])
    return out


def setup(**kw):
    m = small_cnn()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    frz = SmartFRZ(m, opt, example_input=torch.randn(2, 1, 6, 6), **kw) if kw else None
    return m, opt, frz


@pytest.mark.parametrize("epochs", [0, -2, 2.5, True])
def test_fit_rejects_bad_epochs(epochs):
    m, opt, _ = setup()
    with pytest.raises(ValueError, match=f"epochs must be a positive integer; got {epochs!r}"):
        fit(m, opt, batches(), epochs, progress=False)


@pytest.mark.parametrize("kw,match", [
    (dict(checkpoint_every=0, checkpoint_path="c.pt"), "checkpoint_every must be a positive integer"),
    (dict(checkpoint_every=5), "checkpoint_path and checkpoint_every go together"),
    (dict(start_step=99), r"start_step must lie in \[0, 12\]"),
])
def test_fit_rejects_bad_options(kw, match):
    m, opt, _ = setup()
    with pytest.raises(ValueError, match=match):
        fit(m, opt, batches(), 2, progress=False, **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(decide_every=0), "decide_every must be a positive integer or None; got 0"),
    (dict(record_every=0), "record_every must be a positive integer or None; got 0"),
])
def test_engine_rejects_zero_intervals(kw, match):
    with pytest.raises(ValueError, match=match):
        setup(policy="none", **kw)


def test_window_longer_than_training(tiny_predictor):
    with pytest.raises(ValueError, match=r"window=6 snapshots taken every record_every=2 steps need 12 steps .* "
                                         r"only 10 steps: nothing would ever freeze. Allowed: window \* record_every"):
        setup(predictor_path=tiny_predictor, window=6, record_every=2, total_steps=10)
    setup(policy="linear", window=6, record_every=2, total_steps=10)  # records no windows: nothing to check
    m, opt, frz = setup(predictor_path=tiny_predictor, window=6, record_every=3)  # length unknown until fit()
    with pytest.warns(UserWarning, match="need 18 steps .* only 12 steps"):
        fit(m, opt, batches(), 2, frz=frz, progress=False)


def test_truncated_checkpoint_in_fit_leaves_model_untouched(tmp_path):
    m, opt, _ = setup()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=m, optimizer=opt, step=3, epoch=0)
    path.write_bytes(path.read_bytes()[:-100])
    m2 = small_cnn()
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(1.0)  # differs from what was saved
    before = [p.clone() for p in m2.parameters()]
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt or truncated"):
        fit(m2, torch.optim.SGD(m2.parameters(), lr=0.1), batches(), 2, progress=False, resume_from=path)
    assert all(torch.equal(a, b) for a, b in zip(before, m2.parameters()))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        fit(m2, torch.optim.SGD(m2.parameters(), lr=0.1), batches(), 2, progress=False, resume_from=tmp_path / "x")


# a wrong-shaped predictor file: tests/test_bad_inputs.py::test_wrong_shape_predictor_file


def test_predictor_for_other_features_is_refused_at_load(tmp_path):
    from smartfrz.predictor import FreezePredictor
    FreezePredictor(d_model=16, heads=2, layers=1, hidden=32, num_features=7).save(tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="num_features"):
        setup(predictor_path=tmp_path / "p.safetensors")


def test_nan_loss_stops_fit_keeps_last_checkpoint_and_freezes_nothing(tmp_path, tiny_predictor):
    opts = dict(predictor_path=tiny_predictor, threshold=0.01, patience=1, window=3, sample_size=32, record_every=1,
                decide_every=11)
    m, opt, frz = setup(**opts)  # control: with finite weights this threshold freezes at step 11
    fit(m, opt, batches(13), 1, frz=frz, progress=False)
    assert frz.timeline and frz.timeline[0]["step"] == 11
    m, opt, frz = setup(**opts)
    path = tmp_path / "ckpt.pt"
    data = batches(13, poison=9)  # loss NaN at step 10, weights NaN from then on
    with pytest.warns(UserWarning, match="non-finite weights in a recorded window: no freeze decision"), \
            pytest.raises(NonFiniteLossError, match="loss became NaN/inf by step 12; .* last checkpoint was kept"):
        fit(m, opt, data, 1, frz=frz, progress=False, log_every=100, checkpoint_path=path, checkpoint_every=3)
    assert frz.step_count == 12 and frz.timeline == []  # the step-11 decision saw NaN windows: froze nothing
    ck = read_checkpoint(path)  # the last good one, from step 9
    assert ck["step"] == 9 and all(torch.isfinite(v).all() for v in ck["model"].values())
    m, opt, _ = setup()
    with pytest.raises(NonFiniteLossError, match=r"loss became nan by step 10 \(epoch 1\); training stopped; lower"):
        fit(m, opt, data, 1, progress=False, log_every=2)
    with pytest.raises(NonFiniteLossError, match=rf"by step 10 \(epoch 1\); training stopped; the last checkpoint "
                                                 rf"\({path}\) was kept"):
        fit(*setup()[:2], data, 1, progress=False, log_every=5, checkpoint_path=path, checkpoint_every=20)
    assert read_checkpoint(path)["step"] == 9
