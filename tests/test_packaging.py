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


def test_import_smartfrz_is_light():
    """`import smartfrz` pulls in torch (safetensors when a predictor loads), never the lab or its stack;
    integrations.hf alone brings transformers, for those who use the Trainer."""
    import json
    import subprocess
    import sys
    code = ("import json, sys, smartfrz, smartfrz.integrations; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
            "{m for m in sys.modules if m.startswith('smartfrz')})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True, cwd=REPO).stdout))
    heavy = {"transformers", "timm", "pandas", "wandb", "sklearn", "matplotlib", "seaborn", "papermill", "datasets",
             "torchvision", "smartfrz.lab", "smartfrz.predictor_training"}
    assert "torch" in loaded and not loaded & heavy, sorted(loaded & heavy)


def test_core_stays_compact():
    # 1,800 until each peer got its own cadence and the functional veto (smartfrz/veto.py) joined the core; 2,000
    # until the rule got its start (decide_from) and the veto its probe rows; 2,050 until the veto ran its probe in
    # length-ordered parts and checked the whole prefix second; 2,100 until discovery split stages into their blocks
    # and the veto could look an epoch back (the rule's veto_lookback); 2,200 until a predictor could read the run's
    # progress (--progress-input); 2,225 until the architecture sweep (scripts/arch_sweep.py): discovery reads every
    # input a block is fed (DenseNet), knows re-implemented norm layers, and the engine names tied parameters; 2,275
    # until a torch.compile'd model was traced uncompiled and told how many recompiles its freezes need; 2,300 until
    # windows, veto copies and the timeline read only the weights that train (a LoRA fine-tune's adapters); 2,325 until
    # the engine found reentrant activation checkpointing starving the units after a frozen prefix, and fed them; 2,370
    # until it cut the graph after a prefix whose output required grad only for PEFT's gradient checkpointing; 2,380
    # until the engine followed weights a user's loop sets training or fixes later (a head-first warm-up); 2,410 until
    # the prefix cache fed activation checkpointing's recomputation of the first active unit; 2,450 until a loop
    # that sets a frozen unit's weights training again was found and unfrozen back to it; 2,465 until Hugging Face's
    # audio feature encoders stopped asking for input gradients while their first unit is frozen; 2,480 until the
    # veto checked, when the engine is built, that it can read the model's predictions (a detector's boxes: refused);
    # 2,505 until discovery saw through torch's parametrizations (weight_norm, spectral_norm); 2,520 until the veto
    # read the logits of a (loss, logits) tuple
    core = [p for p in (REPO / "smartfrz").rglob("*.py") if not {"lab", "predictor_training"} & set(p.parts)]
    lines = sum(len(p.read_text().splitlines()) for p in core)
    assert lines <= 2530, f"the core (smartfrz/ less lab/ and predictor_training/) grew to {lines} lines"


def test_readme_results_table_is_the_one_written_from_the_committed_bench_json():
    """The README's numbers are never typed by hand: they are what scripts/results_table.py writes from
    reports/bench/*.json, so a re-run bench without a rewritten README (or an edited cell) fails here."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("results_table", REPO / "scripts" / "results_table.py")
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    readme = (REPO / "README.md").read_text()
    found = re.search(re.escape(results.START) + r"\n(.*?)\n" + re.escape(results.END), readme, flags=re.S)
    assert found, "README.md lost its results markers"
    assert found.group(1) == results.table(), "run `python scripts/results_table.py` after a bench"
