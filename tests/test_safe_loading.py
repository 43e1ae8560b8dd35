"""A checkpoint is data, never code: a pickle payload that would run a command is refused unexecuted."""
import os

import pytest
import torch
from torch import nn

from smartfrz.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint


class Payload:
    """Unpickling this calls os.system: what an attacker would plant in a shared checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def parts():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    return m, torch.optim.SGD(m.parameters(), lr=0.1)


@pytest.mark.parametrize("where", ["top", "nested"])
def test_malicious_pickle_is_refused(tmp_path, where):
    marker = tmp_path / "pwned"
    m, opt = parts()
    path = tmp_path / "evil.pt"
    if where == "top":
        torch.save(Payload(marker), path)
    else:  # a genuine-looking checkpoint with the payload tucked into its extra dict
        good = tmp_path / "good.pt"
        save_checkpoint(good, model=m, optimizer=opt, step=1, epoch=0)
        state = torch.load(good, weights_only=True)
        state["extra"] = {"note": Payload(marker)}
        torch.save(state, path)
        assert state["format"] == FORMAT
    with torch.no_grad():
        m[0].weight.add_(1.0)  # differs from the saved weights, so a partial load would show
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} holds objects other than tensors .* refused to "
                                              r"unpickle it, as that could run code"):
        load_checkpoint(path, model=m, optimizer=opt)
    assert not marker.exists()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_env_override_cannot_turn_off_weights_only(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only changes torch.load's default; we always pass weights_only=True."""
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), tmp_path / "evil.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    m, opt = parts()
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(tmp_path / "evil.pt", model=m, optimizer=opt)
    assert not marker.exists()
