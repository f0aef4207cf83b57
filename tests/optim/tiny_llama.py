"""A 2-layer LLaMA causal LM (vocab 64, hidden 32) with fixed random weights, for the tests."""

import torch
import transformers

CFG = transformers.LlamaConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
)


def llama(dtype=torch.float32):
    """The same weights at every call (seed 0), in ``dtype``."""
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(CFG).to(dtype)
