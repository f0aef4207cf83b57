"""Momentum and Adam with no buffer (updates 'momentum-replay', 'adam-replay') against the
buffered rules: memory held between steps and step time against the history length h.

    python benchmarks/momentum_replay.py [--hidden 256] [--layers 4] [--json FILE]

A LLaMA-shaped causal LM built from a transformers config (fp32, in place, batch 4 x 64), one
CPU thread. Held memory: the bytes of every tensor in the optimizer's state (the rules'
buffers; momentum-replay keeps h x q floats per tensor, not tensors). Step time: median of
--steps steps after 2 + h (so the history is full), for mezo (no momentum), zo-sgd-mmt (one
buffer), zo-adam (two), and zo-sgd-mmt-replay and zo-adam-replay at each h: their updates
regenerate h x q directions per element (adam-replay materialises each past estimate apart).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers

import kerzoo

from common import write_json


def build(hidden: int, layers: int):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=1024,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(cfg)


def held_bytes(opt) -> int:
    return sum(
        v.numel() * v.element_size()
        for st in opt.state.values()
        for v in st.values()
        if isinstance(v, torch.Tensor)
    )


def measure(model, ids, name, steps, **kw):
    opt = kerzoo.optimizer(name, model, lr=1e-7, perturb="inplace", **kw)
    closure = lambda: model(input_ids=ids, labels=ids).loss
    for _ in range(2 + kw.get("history", 0)):  # the history full before timing
        opt.step(closure)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.step(closure)
        times.append(time.perf_counter() - t)
    return statistics.median(times), held_bytes(opt)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--histories", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    ap.add_argument(
        "--replays",
        nargs="+",
        default=["zo-sgd-mmt-replay", "zo-adam-replay"],
        help="the no-buffer presets timed at each h",
    )
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = build(args.hidden, args.layers)
    ids = torch.randint(0, 1024, (4, 64), generator=torch.Generator().manual_seed(0))
    params = sum(p.numel() for p in model.parameters())
    out = {
        "params": params,
        "torch": torch.__version__,
        "hidden": args.hidden,
        "layers": args.layers,
        "runs": {},
    }
    print(f"{params / 1e6:.2f} M parameters (fp32: {4 * params / 2**20:.1f} MiB)")
    runs = [("mezo", {}), ("zo-sgd-mmt", {}), ("zo-adam", {})]
    runs += [(name, {"history": h}) for name in args.replays for h in args.histories]
    for name, kw in runs:
        step, held = measure(model, ids, name, args.steps, **kw)
        label = name + (f" h={kw['history']}" if kw else "")
        out["runs"][label] = {"step_s": step, "held_bytes": held}
        print(f"{label:24s} {step * 1e3:8.1f} ms a step   held {held / 2**20:7.2f} MiB", flush=True)
    write_json(out, args.json)


if __name__ == "__main__":
    main()
