"""W&B logging and report building, offline: nothing here reaches the network or needs a login."""
import json
import struct
import time
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

wandb = pytest.importorskip("wandb")

from smartfrz import SmartFRZ  # noqa: E402
from smartfrz.lab.train import fit  # noqa: E402
from smartfrz.lab import wandb_logging as wl  # noqa: E402
from smartfrz.lab.wandb_logging import TIMELINE_COLUMNS, WandbLogger, smartfrz_callback  # noqa: E402


def read_records(path):
    """Records of a ``.wandb`` file: a 7-byte ``:W&B`` header, then LevelDB-log framing (32 KiB blocks,
    7-byte chunk headers: crc, length, type) around ``wandb.proto`` Record messages. wandb 0.31 has no
    Python reader any more, and the format is stable, so the test reads it itself."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a .wandb file"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        if pos + 7 + length > len(data):  # still being written
            break
        buf += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def finished_records(path, timeout=15.0):
    """The records once the run's exit record is on disk: in offline mode ``run.finish()`` can return
    before the wandb service has flushed the file."""
    deadline = time.monotonic() + timeout
    while True:
        recs = read_records(path) if path.exists() else []
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def tiny_run(epochs=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    total = epochs * len(loader)
    frz = SmartFRZ(model, opt, example_input=x[:2], policy="linear", total_steps=total, freeze_start=0.0,
                   decide_every=2)
    return model, opt, loader, frz


def test_offline_run_writes_freeze_timeline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    model, opt, loader, frz = tiny_run()
    with WandbLogger(project="smartfrz-test", group="toy", method="linear", config=frz.config.to_dict(),
                     dir=tmp_path) as wb:
        assert wb.mode == "offline" and wb.enabled
        res = fit(model, opt, loader, 3, frz=frz, eval_loader=loader, log_every=4, progress=False,
                  on_step=smartfrz_callback(frz, wb, every=4), on_eval=wb.log_row)
        wb.log_fit(res, frz)
    assert not wb.enabled and len(frz.timeline) >= 2

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (events,) = (run_dir / "files" / "media" / "table" / "smartfrz").glob("freeze_events_*.table.json")
    table = json.loads(events.read_text())
    assert table["columns"] == list(TIMELINE_COLUMNS)
    assert [row[2] for row in table["data"]] == [e["unit"] for e in frz.timeline]  # unit column, in order
    assert [row[4] for row in table["data"]] == ["freeze"] * len(frz.timeline)
    (spans,) = (run_dir / "files" / "media" / "table" / "smartfrz").glob("freeze_timeline_spans_*.table.json")
    assert len(json.loads(spans.read_text())["data"]) == frz.num_frozen
    assert list((run_dir / "files" / "media" / "images" / "smartfrz").glob("freeze_timeline_*.png"))

    recs = finished_records(next(run_dir.glob("*.wandb")))
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert run.run_group == "toy" and "linear" in run.tags
    items = [i for r in recs if r.WhichOneof("record_type") == "history" for i in r.history.item]
    assert {"global_step", "train/loss", "eval/metric", "smartfrz/frozen_param_fraction",
            "smartfrz/freeze_events"} <= {i.key or i.nested_key[0] for i in items}  # media: nested keys
    assert {json.loads(i.value_json) for i in items if list(i.nested_key) == ["smartfrz/freeze_events", "path"]} \
        == {str(events.relative_to(run_dir / "files"))}  # the history points at the table file read above
    n_evals = sum(1 for h in res.history if h.get("eval"))
    assert n_evals == 3 and sum(i.key == "eval/metric" or i.nested_key[:1] == ["eval/metric"] for i in items) == n_evals
    summary = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for r in recs
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert summary["smartfrz/frozen_units"] == frz.num_frozen
    assert 0 < summary["smartfrz/avg_frozen_flop_share"] < summary["smartfrz/frozen_flop_share"]
    assert summary["final/metric"] == res.final["metric"]


def test_wandb_failures_warn_and_become_noops(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb, "init", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no W&B today")))
    _, _, _, frz = tiny_run()
    with pytest.warns(UserWarning, match="no W&B today"):
        wb = WandbLogger(dir=tmp_path)
    assert not wb.enabled
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a no-op logger is silent
        wb.log_step(1, loss=1.0)
        wb.log_freeze_events(frz.timeline)
        wb.log_timeline_chart(frz.timeline, [u.name for u in frz.units], 10)
        wb.log_summary({"a": 1})
        smartfrz_callback(frz, wb, every=1)(1)
        wb.finish()

    class BrokenRun:  # a run whose every call fails mid-training
        id, dir = "x", str(tmp_path)
        def __getattr__(self, name):
            raise ConnectionError("lost")
    wb.run = BrokenRun()
    with pytest.warns(UserWarning, match="log_step failed.*lost"):
        wb.log_step(2, loss=0.5)
    assert not wb.enabled
    wb.log_summary({"a": 1})  # stays a no-op


def test_online_init_failure_falls_back_to_offline(monkeypatch):
    modes = []

    class FakeRun:
        id, dir = "fake", "."
        define_metric = finish = lambda self, *a, **k: None

    def init(mode, **kw):
        modes.append(mode)
        if mode == "online":
            raise TimeoutError("init timed out")
        return FakeRun()
    monkeypatch.setattr(wl, "resolve_mode", lambda mode=None: "online")
    monkeypatch.setattr(wandb, "init", init)
    with pytest.warns(UserWarning, match="trying offline"):
        wb = WandbLogger()
    assert modes == ["online", "offline"] and wb.mode == "offline" and wb.enabled


def test_mode_resolution(monkeypatch):
    monkeypatch.setattr(wl, "logged_in", lambda: False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wl.resolve_mode() == "offline"
    with pytest.warns(UserWarning, match="no credentials"):
        assert wl.resolve_mode("online") == "offline"  # never a login prompt
    monkeypatch.setattr(wl, "logged_in", lambda: True)
    assert wl.resolve_mode() == "online" and wl.resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wl.resolve_mode("online") == "offline"  # the environment overrides the code
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert not WandbLogger().enabled
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wl, "_rank", lambda: 1)
    assert WandbLogger().mode == "disabled"  # under DDP only rank 0 logs


def test_frozen_spans_handle_unfreeze():
    ev = lambda step, i, kind: {"step": step, "unit": f"u{i}", "index": i, "event": kind, "flop_share": 0.25,
                                "params_frozen": 10}
    spans = wl.frozen_spans([ev(2, 0, "freeze"), ev(4, 1, "freeze"), ev(6, 1, "unfreeze"), ev(8, 1, "freeze")], 10)
    assert [(s["unit"], s["frozen_from"], s["frozen_to"]) for s in spans] == \
        [("u0", 2, 10), ("u1", 4, 6), ("u1", 8, 10)]


def test_report_spec_builds_offline(monkeypatch, tmp_path, capsys):
    wr_iface = pytest.importorskip("wandb_workspaces.reports.v2.interface")
    import socket
    from smartfrz.lab import wandb_report

    def no_network(*a, **k):
        raise AssertionError("build_report_spec touched the network")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(wandb, "Api", no_network)
    exps = ["cifar10-resnet18", "sst2-minilm", "it's odd"]
    report = wandb_report.build_report_spec("me", "smartfrz", exps)
    grids = [b for b in report.blocks if type(b).__name__ == "PanelGrid"]
    assert [g.runsets[0].name for g in grids] == exps + ["All experiments"]
    assert all(g.runsets[0].groupby == ["config.method"] for g in grids[:-1])
    for g in grids[:-1]:
        kinds = {type(p).__name__ for p in g.panels}
        assert {"LinePlot", "ScatterPlot", "MediaBrowser", "WeavePanelSummaryTable"} <= kinds

    # serialising the spec asks the server only for each project's id: stubbed here
    monkeypatch.setattr(wr_iface, "execute_graphql", lambda *a, **k: {"project": {"internalId": "P1"}})
    monkeypatch.setattr(wr_iface, "_get_api", lambda: None)
    spec = report._to_model().model_dump(by_alias=True, exclude_none=True)
    run_sets = [b["metadata"]["runSets"][0] for b in spec["spec"]["blocks"] if b["type"] == "panel-grid"]
    assert [rs["filters"]["filters"][0]["value"] for rs in run_sets[:-1]] == exps  # filtered by run group

    # the CLI, offline: the sync command and a non-zero exit, not a traceback
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)
    monkeypatch.setattr(wandb_report, "logged_in", lambda: False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_report.main(["--entity", "me", "--wandb-dir", str(tmp_path / "wandb")]) == 2
    err = capsys.readouterr().err
    assert "wandb login" in err and f"wandb sync {tmp_path / 'wandb'}/offline-run-*" in err
