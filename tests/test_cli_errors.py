"""The failures a user can fix end every CLI with one `error:` line and a non-zero status, not a traceback;
--debug and SMARTFRZ_DEBUG=1 bring the traceback back. Run through the CLIs themselves (subprocesses)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

CLOSED_PORT = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # loopback port 9: refused at once, no network


def cli(*args, debug_env=False, **env):
    e = {k: v for k, v in os.environ.items() if k != "SMARTFRZ_DEBUG"}
    e.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **env)
    if debug_env:
        e["SMARTFRZ_DEBUG"] = "1"
    cmd = [sys.executable, *args] if args[0].endswith(".py") else [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=120)


def one_error_line(r, status, *says):
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr and "concurrent.futures" not in r.stderr, r.stderr
    errors = [ln for ln in re.split(r"[\r\n]", r.stderr) if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for s in says:
        assert s in errors[0], r.stderr
    return r.stderr


def cifar_task():
    from smartfrz.lab.bench import SUITES
    return next((s, t) for s, spec in SUITES.items() for t, c in spec["tasks"].items() if c["task"] == "cifar10")


def test_bench_missing_data_from_a_worker_process(tmp_path):
    suite, task = cifar_task()
    r = cli("smartfrz.lab.bench", "--suite", suite, "--tasks", task, "--seeds", "0", "--policies", "none",
            "--jobs", "2", "--data-dir", str(tmp_path), "--out", str(tmp_path / "b.json"))
    one_error_line(r, 1, "cifar10 not found", "python -m smartfrz.lab.data fetch cifar10")


def test_fetch_offline_says_from_where_and_how_by_hand(tmp_path):
    r = cli("smartfrz.lab.data", "fetch", "cifar10", "--data-dir", str(tmp_path), SMARTFRZ_CIFAR10_URL=CLOSED_PORT)
    err = one_error_line(r, 1, "could not download cifar10 from " + CLOSED_PORT)
    assert f"tar xzf cifar-10-python.tar.gz -C {tmp_path}" in err and "machine with internet" in err


def test_fetch_offline_traceback_with_smartfrz_debug(tmp_path):
    r = cli("smartfrz.lab.data", "fetch", "cifar10", "--data-dir", str(tmp_path), debug_env=True,
            SMARTFRZ_CIFAR10_URL=CLOSED_PORT)
    assert r.returncode != 0 and "Traceback" in r.stderr and "URLError" in r.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_bench_bad_argument(tmp_path, debug):
    r = cli("smartfrz.lab.bench", "--suite", "smoke", "--policies", "bogus", "--out", str(tmp_path / "b.json"),
            *(["--debug"] if debug else []))
    if debug:
        assert r.returncode != 0 and "Traceback" in r.stderr and "ValueError: unknown policies" in r.stderr
    else:
        one_error_line(r, 2, "unknown policies ['bogus']")


def test_unknown_name():
    r = cli("smartfrz.lab.data", "fetch", "glue", "--task", "nope")
    one_error_line(r, 2, "unknown GLUE task 'nope'")


def test_missing_files(tmp_path):
    r = cli("smartfrz.lab.label_study", "--bench", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o.json"))
    one_error_line(r, 1, f"No such file or directory: {tmp_path / 'nope.json'}")
    r = cli("smartfrz.predictor_training", "--runs", str(tmp_path))
    one_error_line(r, 1, f"no recorded runs (*.safetensors) in {tmp_path}")
    r = cli("scripts/gpu_bench_prepare.py", str(tmp_path))
    one_error_line(r, 1, f"{tmp_path}/cifar10/train.npz not found")


def test_bugs_keep_their_traceback(capsys):
    from smartfrz.lab.cli import run_cli
    from smartfrz.lab.data import balanced_subset, glue_task

    with pytest.raises(TypeError):  # raised in smartfrz, but by the interpreter (`"3" > 2`), not by a `raise`
        run_cli(lambda argv: balanced_subset([0, 1], "3"), [])
    with pytest.raises(SystemExit) as e:
        run_cli(lambda argv: glue_task("nope"), [])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: unknown GLUE task 'nope'")
    with pytest.raises(ValueError):
        run_cli(lambda argv: glue_task("nope"), ["--debug"])


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("uid", ["0", "1000"])
def test_make_lab_allows_root_only_as_root(tmp_path, uid):
    (tmp_path / "id").write_text(f"#!/bin/sh\necho {uid}\n")  # what `id -u` says
    (tmp_path / "id").chmod(0o755)
    r = subprocess.run(["make", "-n", "lab"], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    lab = [ln for ln in r.stdout.splitlines() if "jupyter lab" in ln]
    assert r.returncode == 0 and len(lab) == 1, r.stdout + r.stderr
    assert ("--allow-root" in lab[0]) == (uid == "0")
