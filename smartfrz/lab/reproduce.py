"""Batch reproduction: runs the experiment matrix (notebook x parameter set) through papermill.

    python -m smartfrz.lab.reproduce --preset paper --gpu 0          # every paper experiment, on GPU 0
    python -m smartfrz.lab.reproduce --preset smoke                  # the whole matrix, small, on a CPU
    python -m smartfrz.lab.reproduce --preset paper --only 10_cnn    # the cells whose name contains 10_cnn

Executed notebooks go to ``--out`` (``reports/executed/<notebook>-<cell>.ipynb``) with a ``.done.json``
marker once they finish without error; runs with a marker are skipped, so running the command again
resumes. A failing notebook is reported with its failing cell and the others carry on; a summary
table ends the run (also written to ``<out>/summary-<preset>.json``); the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _cells(notebook: str, preset: str, *variants: tuple[str, dict]) -> list[tuple[str, str, dict]]:
    return [(notebook, f"{preset}-{label}" if label else preset, {"preset": preset, **params})
            for label, params in variants or [("", {})]]


SMOKE = [cell for nb in ("00_train_predictor", "01_quickstart", "10_cnn_cifar", "11_vit_cifar", "12_imagenet_subset",
                         "20_bert_glue", "30_ablations", "90_report") for cell in _cells(nb, "smoke")]
CIFAR = [(f"{d}-{r}", {"datasets": [d], "regimes": [r]}) for d in ("cifar10", "cifar100") for r in ("scratch", "finetune")]
PAPER = (_cells("10_cnn_cifar", "paper", *CIFAR) + _cells("11_vit_cifar", "paper", *CIFAR)
         + _cells("12_imagenet_subset", "paper", ("imagenette", {}),
                  ("imagenet100", {"name": "imagenet100", "data_dir": "data/imagenet", "classes": "imagenet100"}))
         + _cells("20_bert_glue", "paper", ("mrpc", {"tasks": ["mrpc"]}), ("cola", {"tasks": ["cola"]}))
         + _cells("30_ablations", "paper") + _cells("01_quickstart", "paper") + _cells("90_report", "paper"))
PREDICTOR = _cells("00_train_predictor", "full")  # only with --predictor: it rewrites the shipped weights
MATRIX = {"smoke": SMOKE, "paper": PAPER}


def run_matrix(cells: list[tuple[str, str, dict]], out_dir, kernel: str = "smartfrz", cwd=None,
               progress: bool = True, notebooks_dir=NOTEBOOKS) -> list[dict]:
    """Executes each (notebook, label, parameters) cell unless its marker says it is done; never raises
    for a failing notebook. Returns one status row per cell."""
    import papermill as pm
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cwd = str(cwd or NOTEBOOKS.parent)
    rows = []
    bar = tqdm(cells, desc="reproduce", unit="notebook", disable=not progress)
    for notebook, label, params in bar:
        name = f"{notebook}-{label}"
        bar.set_postfix_str(name)
        executed, marker = out_dir / f"{name}.ipynb", out_dir / f"{name}.done.json"
        row = {"name": name, "notebook": notebook, "parameters": params, "executed": str(executed)}
        if marker.is_file() and executed.is_file():
            rows.append({**row, "status": "skipped", "seconds": 0.0, "note": "done before"})
            continue
        marker.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(Path(notebooks_dir) / f"{notebook}.ipynb"), str(executed), parameters=params,
                                kernel_name=kernel, cwd=cwd, progress_bar=False)
        except pm.PapermillExecutionError as e:
            note = f"cell {e.cell_index} (execution count {e.exec_count}): {e.ename}: {e.evalue}"
            rows.append({**row, "status": "failed", "seconds": time.perf_counter() - t0, "note": note})
        except Exception as e:  # noqa: BLE001 - kernel missing or dead, unreadable notebook...: report, carry on
            rows.append({**row, "status": "failed", "seconds": time.perf_counter() - t0,
                         "note": f"{type(e).__name__}: {e}"})
        else:
            secs = time.perf_counter() - t0
            marker.write_text(json.dumps({"notebook": notebook, "parameters": params, "seconds": secs,
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
            rows.append({**row, "status": "done", "seconds": secs, "note": ""})
        if rows[-1]["status"] == "failed":
            tqdm.write(f"FAILED {name}: {rows[-1]['note']} (see {executed})")
    return rows


def summary_table(rows: list[dict]) -> str:
    lines = [f"{'run':<44} {'status':<8} {'time':>8}  note", "-" * 90]
    lines += [f"{r['name']:<44} {r['status']:<8} {r['seconds']:>7.0f}s  {r['note'][:200]}" for r in rows]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    lines.append(f"{len(rows)} notebooks: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m smartfrz.lab.reproduce", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(MATRIX), default="paper")
    ap.add_argument("--only", default=None, help="keep the runs whose name matches this (a substring or a glob)")
    ap.add_argument("--gpu", default=None, help="sets CUDA_VISIBLE_DEVICES for the notebooks' kernels")
    ap.add_argument("--out", default="reports/executed", help="folder for the executed notebooks and markers")
    ap.add_argument("--predictor", action="store_true",
                    help="paper: first regenerate the shipped predictor (00_train_predictor, preset full)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="extra notebook parameter for every run (VALUE parsed as YAML), e.g. -p seeds '[0, 1]'")
    ap.add_argument("--kernel", default="smartfrz")
    ap.add_argument("--list", action="store_true", help="print the matrix and exit")
    a = ap.parse_args(argv)
    import yaml
    cells = (PREDICTOR if a.predictor and a.preset == "paper" else []) + MATRIX[a.preset]
    extra = {k: yaml.safe_load(v) for k, v in a.parameter}
    cells = [(nb, label, {**params, **extra}) for nb, label, params in cells]
    if a.only:
        pattern = a.only if any(c in a.only for c in "*?[") else f"*{a.only}*"
        cells = [c for c in cells if fnmatch.fnmatch(f"{c[0]}-{c[1]}", pattern)]
    if not cells:
        raise ValueError(f"no run of preset {a.preset!r} matches --only {a.only!r}; --list shows them")
    if a.list:
        for nb, label, params in cells:
            print(f"{nb}-{label}: {params}")
        return []
    if a.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(a.gpu)
    rows = run_matrix(cells, a.out, kernel=a.kernel)
    table = summary_table(rows)
    print(table)
    Path(a.out, f"summary-{a.preset}.json").write_text(json.dumps(rows, indent=1))
    print(f"executed notebooks: {a.out}/; summary: {a.out}/summary-{a.preset}.json")
    if any(r["status"] == "failed" for r in rows):
        sys.exit(1)
    return rows


if __name__ == "__main__":
    from .cli import run_cli
    run_cli(main)
