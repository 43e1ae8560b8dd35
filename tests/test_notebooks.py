"""The notebooks through papermill with overridden parameters, and the batch runner (``make test`` also
runs every notebook on its smoke preset with nbval)."""
import json
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def kernel():
    from jupyter_client.kernelspec import find_kernel_specs
    if "smartfrz" not in find_kernel_specs():
        pytest.skip("the 'smartfrz' Jupyter kernel is not registered: `make test` registers it (or run "
                    ".venv/bin/python -m ipykernel install --sys-prefix --name smartfrz)")


def test_notebooks_are_clean_and_parameterised():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.kernelspec == {"name": "smartfrz", "display_name": "Python (smartfrz)", "language": "python"}
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} was saved with outputs"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and params[0].source.startswith('preset = "smoke"'), path.name


def test_parameters_cell_lists_exactly_the_preset_keys():
    import ast
    from smartfrz.lab.presets import PRESETS
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {p.stem for p in notebooks} == set(PRESETS), "every notebook has presets, every preset a notebook"
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        names = [t.id for node in ast.parse(cell.source).body for t in node.targets]
        for preset, values in PRESETS[path.stem].items():
            assert names == ["preset", *values], f"{path.name}: parameters {names} vs preset {preset!r} {list(values)}"


def test_notebooks_are_paired_and_in_sync():
    """Each notebook has its Jupytext percent script, and both hold the same cells."""
    import jupytext
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        script = path.with_suffix(".py")
        assert script.is_file(), f"{script.name} missing: run `jupytext --sync notebooks/{path.name}`"
        a, b = nbformat.read(path, as_version=4), jupytext.read(script)
        cells = lambda nb: [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]
        assert cells(a) == cells(b), f"{path.name} and {script.name} differ: run `jupytext --sync notebooks/*.ipynb`"


def test_quickstart_notebook_with_parameters(tmp_path, tiny_predictor):
    import papermill as pm
    out = tmp_path / "quickstart"
    pm.execute_notebook(str(NOTEBOOKS / "01_quickstart.ipynb"), str(tmp_path / "executed.ipynb"), kernel_name="smartfrz",
                        parameters={"epochs": 2, "seeds": [0], "out_dir": str(out),
                                    "frz": {"predictor_path": str(tiny_predictor)}},
                        cwd=str(tmp_path), progress_bar=False)
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["epochs"] == 2 and res["settings"]["seeds"] == [0]
    by_policy = {r["policy"]: r for r in res["summary"]}
    assert set(by_policy) == {"none", "smartfrz"}
    assert by_policy["none"]["flops_saved"] == 0 and 0 <= by_policy["smartfrz"]["flops_saved"] < 1
    assert all(r["epochs"] == 2 for r in res["runs"])
    assert {p.name for p in out.glob("*.png")} == {"freeze_timeline.png", "accuracy_curves.png", "compute_saved.png"}
    assert "| smartfrz |" in (out / "summary.md").read_text()
    assert len(list((out / "runs").glob("*.json"))) == 2
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2  # the demo's W&B part, offline here


def test_reproduce_runs_skips_when_done_and_summarises(tmp_path, capsys):
    import torch
    from smartfrz.lab.experiment import ExperimentConfig, run
    from smartfrz.lab.reproduce import main
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine run this tiny model ~50x slower
    try:
        for policy in ("none", "linear"):  # two run files for the report to collect
            run(ExperimentConfig(name="t", policy=policy, epochs=2, out_dir=str(tmp_path / "runs"), progress=False))
    finally:
        torch.set_num_threads(threads)
    args = ["--preset", "smoke", "--only", "90_report", "--out", str(tmp_path / "executed"),
            "-p", "runs_dirs", f"[{tmp_path / 'runs'}]", "-p", "out_dir", str(tmp_path / "report")]
    rows = main(args)
    assert [(r["name"], r["status"]) for r in rows] == [("90_report-smoke", "done")]
    assert (tmp_path / "executed" / "90_report-smoke.ipynb").is_file()
    assert json.loads((tmp_path / "executed" / "90_report-smoke.done.json").read_text())["parameters"]["preset"] == "smoke"
    assert "| linear |" in (tmp_path / "report" / "results.md").read_text()
    assert "1 done" in capsys.readouterr().out
    rows = main(args)  # resumes: nothing left to run
    assert [r["status"] for r in rows] == ["skipped"]
    assert "1 skipped" in capsys.readouterr().out


def test_reproduce_reports_the_failing_cell_and_carries_on(tmp_path):
    from smartfrz.lab.reproduce import run_matrix
    for name, cells in (("broken", ["x = 1", "raise ValueError('boom')", "y = 2"]), ("fine", ["z = 3"])):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        nb.metadata.kernelspec = {"name": "smartfrz", "display_name": "Python (smartfrz)", "language": "python"}
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
    rows = run_matrix([("broken", "smoke", {}), ("fine", "smoke", {})], tmp_path / "out", progress=False,
                      notebooks_dir=tmp_path)
    assert [r["status"] for r in rows] == ["failed", "done"]
    assert rows[0]["note"].startswith("cell 1") and "ValueError: boom" in rows[0]["note"]
    assert not (tmp_path / "out" / "broken-smoke.done.json").exists()
    assert (tmp_path / "out" / "broken-smoke.ipynb").is_file()  # the executed notebook shows the error
