"""The wheel check's speed check: one ZO step's perturbation work on OPT-125m shapes, the
installed kerzoo's engine against the peers' loop (benchmarks/engine_bench.py's comparison).

    python .ci/engine_speed.py BENCHMARKS_DIR [--max-ratio 0.5]

Fails (exit 1) when kerzoo's step takes more than --max-ratio of the peers' step: the compiled
engine takes ~0.1x, the pure-torch reference ~6x, so 0.5 fails where the engine is not used.
"""

import argparse
import json
import sys

ap = argparse.ArgumentParser()
ap.add_argument("benchmarks", help="a folder holding engine_bench.py and common.py")
ap.add_argument("--max-ratio", type=float, default=0.5)
ap.add_argument("--repeat", type=int, default=3)
ap.add_argument("--model", default="opt-125m")
ap.add_argument(
    "--tensors", type=int, default=34, help="the model's first N tensors past the embeddings"
)
args = ap.parse_args()
sys.path.insert(0, args.benchmarks)

import torch  # noqa: E402
from engine_bench import kerzoo_step_foreach, opt_shapes, peers_step  # noqa: E402

import kerzoo  # noqa: E402
import kerzoo.engine as engine  # noqa: E402

from common import best_time  # noqa: E402

device = torch.device("cpu")
# two decoder layers' tensors (14 M elements): the ratio of a whole model's step, in seconds
shapes = opt_shapes(args.model)[2 : 2 + args.tensors]
params = [torch.empty(s).normal_(0, 0.05) for s in shapes]
keys = [engine.param_key(f"p{i}") for i in range(len(params))]
t_ours = t_peers = float("inf")
for _ in range(args.repeat):  # interleaved, so that a busy machine slows both alike
    t_ours = min(t_ours, best_time(lambda: kerzoo_step_foreach(params, keys), device, 1))
    t_peers = min(t_peers, best_time(lambda: peers_step(params), device, 1))
ratio = t_ours / t_peers
row = engine.info()[0]
print(
    json.dumps(
        {
            "kerzoo": kerzoo.__file__,
            "model": args.model,
            "elements": sum(p.numel() for p in params),
            "threads": torch.get_num_threads(),
            "cpu_route": row["cpu_route"],
            "kerzoo_step_s": round(t_ours, 4),
            "peers_step_s": round(t_peers, 4),
            "ratio_to_peers": round(ratio, 3),
        }
    )
)
if ratio > args.max_ratio:
    sys.exit(f"kerzoo's step takes {ratio:.2f}x the peers' (limit {args.max_ratio}x): {row}")
