"""Peak memory (RSS) of the default run against the same model's inference, in separate processes.

python benchmarks/train_memory.py
"""

import json
import subprocess
import sys

INFER = """
import resource, torch
from kerzoo.train import config, data, model as M, tasks
cfg = config.load(None)
ex = data.load_examples(cfg['data']['source'])
_, ev = data.split(ex, cfg['data']['eval_size'], 0)
m, tok, kind = M.load_model(cfg['model'])
task = tasks.make_task(cfg['task'], tok, kind, ex)
size = cfg['train']['eval_batch_size']
right = sum(task.score(m, ev[i:i + size])["acc"][0] for i in range(0, len(ev), size))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
TRAIN = """
import resource, sys
from kerzoo.cli import main
main(["train", "--fresh", "--out", "runs/memory", "--steps", "200"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_kib(code: str) -> int:
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    inference, train = peak_kib(INFER), peak_kib(TRAIN)
    print(
        json.dumps(
            {
                "inference_peak_rss_mib": inference / 1024,
                "train_peak_rss_mib": train / 1024,
                "ratio": train / inference,
            },
            indent=2,
        )
    )
