"""`suite run --nproc N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT]`: the same command again, under
torchrun (torch.distributed.run), N processes per machine; suite.core.dist does the rest inside each worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from suite.errors import UserError

RESUME = "SUITE_RESUME"  # in the workers' environment: the command that continues this launch, for rank 0 to print


def launch(recipe: str | None, overrides: Sequence[str], out: str | None, device: str, resume: str | None,
           overwrite: bool, nproc: int, nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None) -> int:
    """Choose and check the run directory once, here, then start the workers; their exit code."""
    from suite import rundir
    from suite.runner import fresh_run_dir, next_free, refuse_under_ddp
    from suite.tasks import load_recipe, modality_for

    if nproc < 1 or nnodes < 1 or not 0 <= node_rank < nnodes:
        raise UserError(f"--nproc {nproc} --nnodes {nnodes} --node-rank {node_rank}: need nproc >= 1, nnodes >= 1 "
                        "and 0 <= node-rank < nnodes")
    if nnodes > 1 and not _host_port(rdzv_endpoint):
        raise UserError(f"--nnodes > 1 needs --rdzv-endpoint HOST:PORT (machine 0's address and a free port there), "
                        f"got {rdzv_endpoint or 'none'}")
    _check_gpus(device, nproc)
    worker = [sys.executable, "-m", "suite.cli", "run"]
    if resume:
        worker += ["--resume", str(resume)]
        saved = Path(resume) / rundir.RECIPE  # machine 0's; another machine's copy may be stale: rank 0's counts
        parsed = load_recipe(saved, overrides) if saved.is_file() and node_rank == 0 else None  # the workers check
    else:
        parsed = load_recipe(recipe, overrides)  # a recipe mistake stops here, before any process starts
    if parsed is not None:
        # before torchrun and --overwrite; on several machines the others' --nproc is theirs: the workers check
        refuse_under_ddp(parsed, modality_for(parsed.task), nproc if nnodes == 1 else None)
    if not resume:
        run_dir = Path(out) if out else next_free(Path("runs") / parsed.name)
        if node_rank == 0:
            fresh_run_dir(run_dir, overwrite)  # refuses (or, asked to, replaces) a finished run once, here
        worker += [str(recipe), "--out", str(run_dir)]
    again = f"suite run --resume {resume or run_dir} --nproc {nproc}" + (f" --device {device}" if device != "auto" else "")
    if nnodes > 1:
        again += f" --nnodes {nnodes} --node-rank {node_rank} --rdzv-endpoint {rdzv_endpoint}"
    for item in overrides:
        worker += ["-s", item]
    worker += ["--device", device]
    cmd = [sys.executable, "-m", "suite.launch", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}",
           f"--node-rank={node_rank}"]
    # several machines: static rendezvous, which keeps --node-rank (c10d ignores it and ranks the machines in the
    # order they join, so the run directory and checkpoints could land on any machine): node 0 hosts the store
    cmd += ["--standalone"] if nnodes == 1 else ["--rdzv-backend=static", f"--rdzv-endpoint={rdzv_endpoint}"]
    env = {**os.environ, RESUME: again}
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "300")  # torchrun's grace before SIGKILL (30 s): the stop's
    return _supervise([*cmd, *worker[1:]], env)              # checkpoint of a large model can take longer


def _check_gpus(device: str, nproc: int) -> None:
    """One process per GPU: more processes than this machine's GPUs would fail in every extra worker with CUDA's
    "invalid device ordinal"."""
    import torch

    if not (device == "auto" or device.startswith("cuda")) or not torch.cuda.is_available():
        return
    shown = torch.cuda.device_count()
    if nproc > shown:
        raise UserError(f"--nproc {nproc} on CUDA: this machine shows {shown} GPU{'s' * (shown != 1)} (one process "
                        f"each; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): use --nproc "
                        f"{shown}, or --device cpu for gloo processes")


def _supervise(cmd: list[str], env: dict[str, str]) -> int:
    """Run torchrun in a process group of its own and pass it each SIGINT/SIGTERM the launcher gets, so that
    every worker gets one signal (a Ctrl-C from the terminal no longer reaches the workers both directly and
    through torchrun, which each worker would take as the second, stop-at-once request): they finish the step,
    write the checkpoint, and rank 0 prints the command that continues. A hangup (the terminal closed) is passed
    on as SIGTERM; if the launcher dies (SIGKILL, Ctrl-\\), torchrun gets a SIGTERM too (Linux). The signals are
    blocked while torchrun starts, so none is lost in between. A signal the launcher was started ignoring
    (nohup's SIGHUP) stays ignored. Exit code: torchrun's, or 128 + the signal."""
    passed_on = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():  # no handlers here: torchrun on its own
        return subprocess.Popen(cmd, env=env, preexec_fn=_child_setup([])).wait()
    got: list[int] = []
    box: list[subprocess.Popen] = []

    def forward(signum, frame):
        got.append(signum)
        try:
            box[0].send_signal(passed_on[signum])
        except ProcessLookupError:
            pass

    caught = [s for s in passed_on if signal.getsignal(s) is not signal.SIG_IGN]
    signal.pthread_sigmask(signal.SIG_BLOCK, caught)  # from here to torchrun's start a signal waits (then forward)
    previous = {s: signal.signal(s, forward) for s in caught}
    try:
        box.append(subprocess.Popen(cmd, env=env, preexec_fn=_child_setup(caught)))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)  # one that came meanwhile is handled (passed on) here
        code = box[0].wait()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)
        for s, h in previous.items():
            signal.signal(s, h)
    return 128 + got[0] if got else code


def _child_setup(blocked: list[int]):
    """For torchrun's process, between fork and exec: the launcher's blocked signals unblocked, a process group
    of its own, and (Linux) SIGTERM when the launcher dies."""
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG

    return setup


def _host_port(endpoint: str | None) -> bool:
    host, _, port = (endpoint or "").rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def torchrun() -> int:
    """torchrun (torch.distributed.run's main), as `python -m suite.launch ARGS`: a stop signal or a worker that
    failed ends it with an exit code instead of torchrun's traceback (each worker has printed its own error: the
    one line of a mistake, exit 2, or the traceback of a bug). Exit code: the first failed worker's (128 + the
    signal that ended it), or 128 + the signal torchrun got."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed import DistNetworkError, DistStoreError
    from torch.distributed.run import main

    try:
        main()
    except SignalException as e:
        return 128 + int(e.sigval)
    except (DistNetworkError, DistStoreError) as e:  # the machines did not meet: a setup mistake, not a bug
        endpoint = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--rdzv-endpoint=")), "?")
        print(f"torchrun: the machines did not meet at --rdzv-endpoint {endpoint} ({type(e).__name__}: "
              f"{' '.join(str(e).split())[:200]}); start --node-rank 0 on that host, check the address and port, "
              "and start the others within 10 minutes", file=sys.stderr)
        return 2
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -N: killed by signal N
        if code != 2:  # 2: a mistake, its line already printed
            print(f"torchrun: worker rank {rank} exited with code {code} (its output is above)", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(torchrun())
