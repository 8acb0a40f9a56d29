"""`suite run --nproc N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT]`: the same command again, under
torchrun (torch.distributed.run), N processes per machine; suite.core.dist does the rest inside each worker."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from suite.errors import UserError


def launch(recipe: str | None, overrides: Sequence[str], out: str | None, device: str, resume: str | None,
           overwrite: bool, nproc: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None) -> int:
    """Choose and check the run directory once, here, then start the workers; their exit code."""
    from suite.runner import fresh_run_dir, next_free
    from suite.tasks import load_recipe

    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise UserError(f"--nproc {nproc} --nnodes {nnodes} --node-rank {node_rank}: need nproc >= 1, nnodes >= 1 "
                        "and 0 <= node-rank < nnodes")
    if nnodes > 1 and not rdzv_endpoint:
        raise UserError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the address of the first machine)")
    worker = [sys.executable, "-m", "suite.cli", "run"]
    if resume:
        worker += ["--resume", str(resume)]
    else:
        name = load_recipe(recipe, overrides).name  # a recipe mistake stops here, before any process starts
        run_dir = Path(out) if out else next_free(Path("runs") / name)
        if node_rank == 0:
            fresh_run_dir(run_dir, overwrite)  # refuses (or, asked to, replaces) a finished run once, here
        worker += [str(recipe), "--out", str(run_dir)]
    for item in overrides:
        worker += ["-s", item]
    worker += ["--device", device]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}",
           f"--node-rank={node_rank}"]
    cmd += ["--standalone"] if nnodes == 1 else ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    return subprocess.call([*cmd, *worker[1:]])
