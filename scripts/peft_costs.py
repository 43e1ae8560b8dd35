"""What reading only the weights that train changes for a LoRA fine-tune (docs/reliability.md, "LoRA and activation
checkpointing"), measured rather than argued:

- the veto's snapshot of the freezable units of MiniLM with LoRA adapters of rank 8 (peft's defaults): bytes and
  milliseconds when it copies every weight (as before) and when it copies what can change (``veto.unit_state``);
- the weights the timeline would have counted as frozen by the engine in the embeddings unit, where nothing trains;
- a training step's FLOPs saved by freezing all but the last layer of a 4-layer BERT with LoRA under PEFT's gradient
  checkpointing (``enable_input_require_grads``), with the engine's cut at the prefix's end and with it removed.

    python scripts/peft_costs.py --out reports/bench/diag/peft_costs.json

One thread; times are medians of 5 snapshots and vary with the machine, bytes and FLOPs do not.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import smartfrz
from smartfrz.veto import unit_state


def _every_weight(unit) -> list:
    """The veto's copy before it read only what can change: every parameter and buffer."""
    return [{k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()} for _, m in unit.members] + \
        [p.detach().to("cpu", copy=True) for _, p in unit.extra_params]


def _nbytes(states: list) -> int:
    return sum(t.numel() * t.element_size() for s in states for part in s
               for t in (part.values() if isinstance(part, dict) else [part]) if t is not None)


def veto_snapshots() -> dict:
    import peft
    from smartfrz.lab.models import build_model
    model = build_model("minilm", num_classes=2)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16))
    batch = {"input_ids": torch.randint(1000, 2000, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    frz = smartfrz.SmartFRZ(model, None, example_input=batch, policy="none")
    units = frz.units[: frz.max_frozen]
    out = {"units": len(units), "trainable_share": frz.trainable_total / sum(p.numel() for p in model.parameters()),
           "embeddings_unit_weights": frz.units[0].num_params, "embeddings_unit_trainable": frz.trainable_per_unit[0]}
    for name, copy in (("every_weight", _every_weight), ("what_can_change", unit_state)):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            states = [copy(u) for u in units]
            times.append(time.perf_counter() - t)
        out[name] = {"mib": _nbytes(states) / 2**20, "ms": 1e3 * statistics.median(times)}
    return out


def checkpointed_step_flops() -> dict:
    import peft
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
                     max_position_embeddings=32, num_labels=2)
    model = peft.get_peft_model(BertForSequenceClassification(cfg), peft.LoraConfig(task_type="SEQ_CLS", r=4))
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    model.train()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1, 64, (8, 16), generator=g), "attention_mask": torch.ones(8, 16, dtype=torch.long)}
    y = torch.randint(0, 2, (8,), generator=g)
    frz = smartfrz.SmartFRZ(model, None, example_input=batch, policy="none")

    def flops() -> int:
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(**batch).logits, y).backward()
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    full = flops()
    frz.freeze_through(len(frz.units) - 2)
    cut = flops()
    frz._boundary.remove()  # the prefix's output left in the graph, as before the cut
    uncut = flops()
    return {"frozen_units": frz.num_frozen, "of_units": len(frz.units), "full_step_flops": full,
            "saved_with_the_cut": 1 - cut / full, "saved_without_it": 1 - uncut / full}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = {"command": "python scripts/peft_costs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "torch": torch.__version__, "veto_snapshot": veto_snapshots(), "checkpointed_step": checkpointed_step_flops()}
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
