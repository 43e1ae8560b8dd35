"""Exact resume: a run SIGKILLed at a random step and resumed ends bitwise where an uninterrupted run does."""
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import smartfrz.checkpoint as ckpt_mod
from smartfrz import SmartFRZ
from smartfrz.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "resume_train.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def launch(out: Path, pred, *args, **kw) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(SCRIPT), str(out), str(pred), *args], env=ENV, text=True, **kw)


def finish(p: subprocess.Popen, timeout=120) -> None:
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    assert p.returncode == 0, err


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkilled_run_resumes_bitwise(tmp_path, tiny_predictor):
    full = launch(tmp_path / "full", tiny_predictor, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_at = random.randint(9, 50)  # 63 steps; freezes at steps 7 and 28; checkpoints every 3
    victim = launch(tmp_path / "cut", tiny_predictor, "--step-delay", "0.02", "--hang-at", "60",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = tmp_path / "cut" / "ckpt.pt"
    for line in victim.stdout:  # killed wherever it is: mid-step, or mid-checkpoint-write
        if int(line.split()[1]) >= kill_at and ckpt.exists():
            os.kill(victim.pid, signal.SIGKILL)
            break
    else:
        victim.kill()
    _, err = victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"run was not killed (kill_at={kill_at}): {err}"
    saved_step = read_checkpoint(ckpt)["step"]
    assert 3 <= saved_step < 60  # the last checkpoint before the kill landed (the child may have run on a bit)
    finish(launch(tmp_path / "cut", tiny_predictor, "--resume", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    finish(full)
    a, b = (torch.load(tmp_path / d / "final.pt", weights_only=True) for d in ("full", "cut"))
    msg = f"kill_at={kill_at}, resumed from step {saved_step}"
    assert len(a["frozen"]) >= 2 and b["frozen"] == a["frozen"], msg
    assert b["timeline"] == a["timeline"] and b["history"] == a["history"] and b["steps"] == 63, msg
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), msg
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)


class Crash(Exception):
    pass


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def fit_run(tmp_path, loader_kind, crash_at=None, resume=False, device="cpu"):
    """2 epochs of a tiny CNN on augmented images; ``crash_at`` dies (in-process) after that step."""
    from smartfrz.lab.data import ArrayLoader, ImageArrayDataset, make_loader
    from smartfrz.lab.train import fit
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ds = ImageArrayDataset(torch.randint(0, 256, (80, 8, 8, 3), generator=g, dtype=torch.uint8),
                           torch.arange(80) % 3, (0.5,) * 3, (0.25,) * 3, augment=True)
    loader = ArrayLoader(ds, 16, shuffle=True, seed=3, device=device) if loader_kind == "array" else \
        make_loader(ds, 16, shuffle=True, seed=3)  # augments with the global RNG, in the main process
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).to(device)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    frz = SmartFRZ(m, opt, example_input=torch.randn(2, 3, 8, 8, device=device), policy="linear", total_steps=10,
                   freeze_start=0.3)

    def on_step(step):
        if step == crash_at:
            raise Crash

    path = tmp_path / f"{loader_kind}.pt"
    try:
        fit(m, opt, loader, 2, device=device, frz=frz, progress=False, log_every=2, on_step=on_step, checkpoint_path=path,
            checkpoint_every=3, resume_from=path if resume else None)
    except Crash:
        pass
    return m, frz


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loader_kind", ["array", "dataloader"])
def test_fit_resumes_mid_epoch_with_augmentation(tmp_path, loader_kind, device):
    full, full_frz = fit_run(tmp_path / "full", loader_kind, device=device)
    fit_run(tmp_path, loader_kind, crash_at=8, device=device)  # checkpoint at step 6: epoch 1, batch 1 (5/epoch)
    assert read_checkpoint(tmp_path / f"{loader_kind}.pt")["step"] == 6
    res, res_frz = fit_run(tmp_path, loader_kind, resume=True, device=device)
    assert res_frz.frozen_units == full_frz.frozen_units and res_frz.num_frozen > 0
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), res.state_dict().values()))


# ----------------------------------------------------------------------------- atomic writes, corrupt files

def parts(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    return m, opt, SmartFRZ(m, opt, example_input=torch.randn(2, 4), policy="none")


def train_steps(m, opt, n=3):
    for _ in range(n):
        opt.zero_grad()
        m(torch.randn(8, 4)).square().mean().backward()
        opt.step()


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m, opt, frz = parts()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=m, optimizer=opt, frz=frz, step=1, epoch=0)
    train_steps(m, opt)
    real_save = torch.save

    def dies_half_way(obj, f):  # what a crash (or full disk) leaves behind: a half-written temp file
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(ckpt_mod.torch, "save", dies_half_way)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, model=m, optimizer=opt, frz=frz, step=2, epoch=0)
    monkeypatch.undo()
    monkeypatch.setattr(ckpt_mod.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed before rename")))
    with pytest.raises(OSError, match="killed before rename"):
        save_checkpoint(path, model=m, optimizer=opt, frz=frz, step=3, epoch=0)
    monkeypatch.undo()
    m2, opt2, frz2 = parts(seed=1)
    assert load_checkpoint(path, model=m2, optimizer=opt2, frz=frz2)["step"] == 1  # the old one, intact
    assert not (tmp_path / "ckpt.pt.tmp").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "empty", "garbage"])
def test_corrupt_checkpoint_raises_and_changes_nothing(tmp_path, damage):
    m, opt, frz = parts()
    train_steps(m, opt)
    frz.freeze_through(0)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=m, optimizer=opt, frz=frz, step=3, epoch=0)
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) * 2 // 3], "empty": b"", "garbage": b"\x00junk" * 100,
                      "flip_byte": raw[:1500] + bytes([raw[1500] ^ 0x40]) + raw[1501:]}[damage])
    m2, opt2, frz2 = parts(seed=1)
    before = {k: v.clone() for k, v in m2.state_dict().items()}
    opt_before = str(opt2.state_dict())
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt or truncated"):
        load_checkpoint(path, model=m2, optimizer=opt2, frz=frz2)
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in before.items())
    assert frz2.num_frozen == 0 and str(opt2.state_dict()) == opt_before


def test_checkpoint_for_another_model_is_refused(tmp_path):
    m, opt, frz = parts()
    save_checkpoint(tmp_path / "c.pt", model=m, optimizer=opt, frz=frz, step=0, epoch=0)
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(CheckpointError, match=r"'4.weight' has shape \(2, 8\), the model has \(3, 8\)"):
        load_checkpoint(tmp_path / "c.pt", model=other, optimizer=torch.optim.Adam(other.parameters()))
    with pytest.raises(CheckpointError, match=r"for another model: missing \[\], unexpected \['4.bias'"):
        load_checkpoint(tmp_path / "c.pt", model=other[:3], optimizer=torch.optim.Adam(other.parameters()))


def test_unsafe_state_is_refused_at_save_time(tmp_path):
    m, opt, frz = parts()
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]\['fn'\] is a builtins.function"):
        save_checkpoint(tmp_path / "c.pt", model=m, optimizer=opt, step=0, epoch=0, extra={"fn": lambda: 0})
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("device", DEVICES)
def test_rng_round_trip(device):
    import numpy as np
    state = ckpt_mod.get_rng_state()
    draws = (torch.rand(3, device=device), random.random(), np.random.rand(3))
    ckpt_mod.set_rng_state(state)
    again = (torch.rand(3, device=device), random.random(), np.random.rand(3))
    assert torch.equal(draws[0], again[0]) and draws[1] == again[1] and (draws[2] == again[2]).all()


@pytest.mark.parametrize("saved_compiled, resumed_compiled", [(True, False), (False, True), (True, True)])
def test_resume_across_compiled_and_uncompiled(tmp_path, saved_compiled, resumed_compiled):
    """torch.compile prefixes a model's state keys with '_orig_mod.'; a checkpoint holds the plain module's, so a run
    saved compiled resumes uncompiled (and back), bitwise where the uninterrupted run ends."""
    def run(steps, compiled, save=None, load=None):
        m, opt, frz = parts()
        frz = SmartFRZ(m, opt, example_input=torch.randn(2, 4), policy="linear", total_steps=8, freeze_start=0.2)
        net = torch.compile(m, backend="eager") if compiled else m
        start = load_checkpoint(load, model=net, optimizer=opt, frz=frz)["step"] if load else 0
        g = torch.Generator().manual_seed(1)
        batches = [torch.randn(8, 4, generator=g) for _ in range(8)]
        for step in range(start, steps):
            opt.zero_grad()
            net(batches[step]).square().mean().backward()
            opt.step()
            frz.step()
        if save:
            save_checkpoint(save, model=net, optimizer=opt, frz=frz, step=steps, epoch=0)
        return m, frz

    full, full_frz = run(8, compiled=False)
    run(4, saved_compiled, save=tmp_path / "ckpt.pt")
    assert not any(k.startswith("_orig_mod") for k in read_checkpoint(tmp_path / "ckpt.pt")["model"])
    res, res_frz = run(8, resumed_compiled, load=tmp_path / "ckpt.pt")
    assert res_frz.frozen_units == full_frz.frozen_units and res_frz.num_frozen > 0
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), res.state_dict().values()))
