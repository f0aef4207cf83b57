"""One rank of a data-parallel test run, started by tests/train/test_distributed.py with the
environment torchrun would set (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

argv[1]: a JSON list of jobs {"cfg": a validated config, "diverge": bool, "export": bool,
"stop_at": step, "flip": path, "seed": n}. Each job trains one Run on this rank (after
torch.manual_seed(n) when ``seed`` is given: peft draws LoRA's initial adapters from torch's
generator); with ``stop_at`` it stops there and a new Run resumes from the checkpoint to the end;
with ``flip``, rank 0 first flips a byte in the middle of that file; with "export" it writes its
[export] folder, every rank joining in. A TrainingError is printed as "ERROR <message>" and the
next job runs.
"""

import json
import sys
from pathlib import Path

import torch

from kerzoo.train import distributed
from kerzoo.train.export import export_run
from kerzoo.train.loop import Run, TrainingError

jobs = json.loads(Path(sys.argv[1]).read_text())
dp = None
for job in jobs:
    dp = distributed.DataParallel(job["cfg"]["distributed"])
    if job.get("flip") and dp.rank == 0:
        with open(job["flip"], "r+b") as f:
            f.seek(f.seek(0, 2) // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 1]))
    if "seed" in job:
        torch.manual_seed(job["seed"])
    try:
        if job.get("stop_at"):
            first = Run(job["cfg"], progress=False, parallel=dp)
            first.train(stop_at=job["stop_at"])
            first.close()
        run = Run(job["cfg"], progress=False, parallel=dp)
        if (
            job.get("diverge") and dp.rank == 1
        ):  # a replica that drifted: the check must stop the run
            with torch.no_grad():
                next(p for p in run.model.parameters() if p.requires_grad).add_(1e-3)
        run.train()
        if job.get("export"):
            export_run(run)
        print("DONE", run.step, flush=True)
    except TrainingError as exc:
        print("ERROR", exc, flush=True)
if dp is not None:
    dp.close()
