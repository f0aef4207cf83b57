"""One rank of a data-parallel test run, started by tests/train/test_distributed.py with the
environment torchrun would set (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

argv[1]: a JSON list of jobs {"cfg": a validated config, "diverge": bool, "export": bool}. Each
job trains one Run on this rank (and with "export" writes its [export] folder, every rank joining
in). A TrainingError is printed as "ERROR <message>" and the next job runs.
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
    try:
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
