"""kerzoo.hf.ZOSFTTrainer: TRL's SFTTrainer with the ZO step (loss on the completion only)."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_gpt2, training_args

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def char_tokenizer():
    """A character-level tokenizer built in memory (no hub download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz =+0123456789"
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def test_sft_trains_without_backward_and_logs_its_metrics_as_training(tmp_path, monkeypatch):
    from trl import SFTConfig

    from kerzoo.hf import ZOSFTTrainer

    def no_backward(*a, **k):
        raise AssertionError("a backward ran")

    data = datasets.Dataset.from_dict(
        {"prompt": ["1+1=", "2+2=", "3+1=", "2+1="] * 2, "completion": ["2", "4", "4", "3"] * 2}
    )
    model = tiny_gpt2()
    before = [p.clone() for p in model.parameters()]
    args = training_args(tmp_path, SFTConfig, max_steps=2, max_length=8, learning_rate=1e-2)
    trainer = ZOSFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=char_tokenizer(), zo="mezo"
    )
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    trainer.train()
    monkeypatch.undo()
    assert trainer.zo_optimizer.steps_done == 2
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for log in logs:
        assert {"projected_grad", "learning_rate", "mean_token_accuracy"} <= set(log)
        assert not any(k.startswith("eval_") for k in log)
