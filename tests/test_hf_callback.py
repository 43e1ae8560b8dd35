import torch

from conftest import minilm


def _pairs_args_callback(tok, tmp_path, tiny_predictor):
    """Sixteen sentence pairs, 3 epochs of 2 steps, and a callback that freezes at the first epoch's end."""
    from transformers import TrainingArguments
    from smartfrz.integrations.hf import SmartFRZCallback

    texts = [("a good movie", "a fine film"), ("bad one here", "the sky is blue"), ("I loved it", "it was great"),
             ("terrible", "wonderful day")] * 4
    data = [dict(tok(a, b), labels=i % 2) for i, (a, b) in enumerate(texts)]
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=8,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    cb = SmartFRZCallback(policy="smartfrz", predictor_path=str(tiny_predictor), threshold=0.01, patience=1, window=2,
                          sample_size=64, record_every=1)
    return data, args, cb


def test_trainer_callback_freezes_and_skips_updates(tmp_path, tiny_predictor):
    from transformers import DataCollatorWithPadding, Trainer

    torch.manual_seed(0)
    model, tok = minilm()
    data, args, cb = _pairs_args_callback(tok, tmp_path, tiny_predictor)
    emb = model.bert.embeddings.word_embeddings.weight
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[cb])
    trainer.train()
    frz = cb.frz
    assert frz.config.steps_per_epoch == 2
    assert frz.num_frozen >= 1 and frz.frozen_units[0] == "bert.embeddings"
    first = frz.timeline[0]
    assert first["step"] == 2 and first["p_freeze"] >= 0.01  # decided at the first epoch end
    frozen_ids = {id(p) for u in frz.units[: frz.num_frozen] for p in u.parameters()}
    assert frozen_ids.isdisjoint({id(p) for g in trainer.optimizer.param_groups for p in g["params"]})
    assert not emb.requires_grad
    assert model.classifier.weight.requires_grad


def test_the_callback_probes_the_veto_with_the_first_batch_and_leaves_the_data_order_alone():
    from types import SimpleNamespace

    from torch.utils.data import DataLoader
    from smartfrz.integrations.hf import SmartFRZCallback

    model, tok = minilm()
    data = [dict(tok(f"sentence number {i}", truncation=True), labels=i % 2) for i in range(20)]
    from transformers import DataCollatorWithPadding
    loader = DataLoader(data, batch_size=8, shuffle=True, collate_fn=DataCollatorWithPadding(tok))
    cb = SmartFRZCallback(policy="none", veto_tau=0.1)
    args, state = SimpleNamespace(num_train_epochs=2, seed=0), SimpleNamespace(max_steps=6)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    cb.on_train_begin(args, state, None, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      train_dataloader=loader)
    assert torch.equal(torch.get_rng_state(), before)  # the Trainer's own first batch is the one it would have drawn
    assert cb.frz.veto.probe["input_ids"].shape[0] == 8 and "labels" not in cb.frz.veto.probe


def test_trainer_callback_on_a_peft_lora_model_freezes_adapters_only(tmp_path, tiny_predictor):
    """The Trainer with a peft model: its optimizer holds the adapters alone, and the engine freezes those."""
    import pytest
    peft = pytest.importorskip("peft")
    from transformers import DataCollatorWithPadding, Trainer

    torch.manual_seed(0)
    base, tok = minilm()
    model = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4))
    data, args, cb = _pairs_args_callback(tok, tmp_path, tiny_predictor)
    fixed = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[cb])
    trainer.train()
    frz = cb.frz
    assert frz.num_frozen >= 2 and frz.timeline[0]["params_frozen"] == 0  # the embeddings: nothing of them trained
    assert frz.timeline[1]["params_frozen"] == sum(p.numel() for p in frz.recorder.params[1]) > 0
    assert not any(p.requires_grad for u in frz.units[: frz.num_frozen] for p in u.parameters())
    assert all(torch.equal(p, fixed[n]) for n, p in model.named_parameters() if n in fixed)
    frozen = {id(p) for u in frz.units[: frz.num_frozen] for p in u.parameters()}
    assert frozen.isdisjoint({id(p) for g in trainer.optimizer.param_groups for p in g["params"]})
