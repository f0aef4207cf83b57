"""Tiny models built from transformers configs (random weights, the shipped MiniLM tokenizer),
saved once per session, and a helper that writes a small training config."""

import json

import pytest
import torch

from kerzoo.train import config as C
from kerzoo.train.model import resolve_path, trainable_state


def _save(folder, model, tok):
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folders of a BERT-style encoder and OPT- and LLaMA-style causal LMs, 2 layers of width 32."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(resolve_path("builtin:all-minilm-l6-v2"))
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    opt = OPTForCausalLM(
        OPTConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            ffn_dim=64,
            word_embed_proj_dim=32,
            max_position_embeddings=64,
            architectures=["OPTForCausalLM"],
        )
    )
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            max_position_embeddings=64,
            architectures=["LlamaForCausalLM"],
        )
    )
    return {
        "bert": _save(root / "bert", bert, tok),
        "opt": _save(root / "opt", opt, tok),
        "llama": _save(root / "llama", llama, tok),
    }


TOP = {"bert": "encoder.layer.1.", "opt": "model.decoder.layers.1.", "llama": "model.layers.1."}
SMALL = {
    "data": {"eval_size": 24},
    "train": {
        "steps": 6,
        "batch_size": 4,
        "eval_every": 3,
        "checkpoint_every": 3,
        "eval_batch_size": 24,
    },
}


@pytest.fixture
def make_cfg(tmp_path, tiny_models):
    """make_cfg(name, family="bert", **sections) -> a validated config writing to tmp_path/name."""

    def make(name="run", family="bert", **over):
        raw = json.loads(json.dumps(SMALL))
        raw["model"] = {"name": tiny_models[family], "trainable": [TOP[family]]}
        raw["train"]["out"] = str(tmp_path / name)
        for section, values in over.items():
            raw.setdefault(section, {}).update(values)
        return C.validate(raw)

    return make


def params(run):
    return {k: v.clone() for k, v in trainable_state(run.model).items()}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
