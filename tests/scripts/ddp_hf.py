"""Run under torchrun: the Hugging Face Trainer with SmartFRZCallback on a tiny BERT; each rank writes its result.

torchrun --nproc_per_node=2 ddp_hf.py OUT_DIR
The Trainer wraps the model in DDP itself and keeps that wrapper, so DDPFreezer's rebuild is not
available: ``ddp_find_unused_parameters=True`` lets the wrapper skip the frozen parameters.
"""
import json
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.utils import logging

from smartfrz.integrations.hf import SmartFRZCallback


def main():
    out = Path(sys.argv[1])
    logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (64, 8), generator=g)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": int(ids[i, 0] % 2)}
            for i in range(64)]
    args = TrainingArguments(output_dir=str(out / "hf"), num_train_epochs=4, per_device_train_batch_size=8,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
                             ddp_backend="gloo", ddp_find_unused_parameters=True, ddp_timeout=45)
    rank = args.process_index
    # rank 1 alone would never freeze: it must follow rank 0's broadcast decisions
    cb = SmartFRZCallback(policy="linear" if rank == 0 else "none", freeze_start=0.25, decide_every=2,
                          **({} if rank == 0 else {"total_steps": 16}))
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    torch.save(model.state_dict(), out / f"model{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({"frozen": cb.frz.frozen_units, "world": args.world_size,
                                                      "freeze_steps": [e["step"] for e in cb.frz.timeline]}))


if __name__ == "__main__":
    main()
