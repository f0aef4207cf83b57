"""Tiny causal LMs built from a config and tiny in-memory datasets for the HF integration tests."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

VOCAB, SEQ = 64, 8


class TokenDataset(torch.utils.data.Dataset):
    """n rows of random token ids (fixed by the seed), each its own labels."""

    def __init__(self, n: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_gpt2(seed: int = 0, head: str = "GPT2LMHeadModel"):
    """A 2-layer GPT-2 of hidden size 32, with GPT-2's dropout (0.1) in train mode; ``head``
    names the transformers class (default the causal LM)."""
    import transformers
    from transformers import GPT2Config

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None if head == "GPT2LMHeadModel" else 0,  # a classifier pools at padding
    )
    return getattr(transformers, head)(config).train()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps its state in process-wide singletons: each test starts from none."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def dataset():
    return TokenDataset()


@pytest.fixture
def model():
    return tiny_gpt2()


def training_args(out, cls=None, **kw):
    """TrainingArguments (or the subclass ``cls``, e.g. TRL's SFTConfig) for a CPU run with no
    reporting, logging every step."""
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(out),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_steps=4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        disable_tqdm=True,
        seed=0,
    )
    return (cls or TrainingArguments)(**{**base, **kw})
