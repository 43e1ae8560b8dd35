"""The two README commands must set everything up: pins, conda mirror, CI entry point."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pins(text):
    return dict(re.findall(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", text, re.M))


def test_everything_is_pinned_and_mirrored():
    req = pins((REPO / "requirements.txt").read_text())
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"
    lines = [l for l in (REPO / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert all("==" in l for l in lines), "every requirement must be pinned"
    assert pins((REPO / "environment.yml").read_text()) == req


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_shipped_predictor_is_packaged():
    from smartfrz.predictor import DEFAULT_PATH, FreezePredictor
    assert DEFAULT_PATH.is_file(), f"shipped predictor missing at {DEFAULT_PATH}"
    pred = FreezePredictor.load()
    assert pred.num_params <= 2_000_000 and 0 < pred.threshold < 1
    assert (DEFAULT_PATH.parent / "README.md").is_file()  # its card
