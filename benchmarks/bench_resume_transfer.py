"""Peak host memory of a rank that receives a checkpoint it cannot read itself (another machine's run directory):
dist.load_from_main (the file's bytes, then torch.load) against broadcast_object_list of the loaded state, each in
2 fresh gloo processes, rank 1 without the file. Peak RSS (ru_maxrss) above the RSS before the transfer.

    python benchmarks/bench_resume_transfer.py --mb 400
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as td
import torch.multiprocessing as mp


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def worker(rank: int, port: int, folder: str, how: str, out: str) -> None:
    from suite.core import checkpoint, dist

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    path = Path(folder) / ("last.pt" if rank == 0 else "elsewhere/last.pt")  # rank 1: no such file there
    before, began = rss_mb(), time.perf_counter()
    if how == "bytes":
        state = dist.load_from_main(path, checkpoint.load_state, "reading the checkpoint")
    else:
        state = dist.from_main(lambda: checkpoint.load_state(path), "reading the checkpoint")
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    td.destroy_process_group()
    if rank == 1:
        mb = sum(t.numel() * t.element_size() for t in state["model"].values()) / 2**20
        Path(out).write_text(json.dumps({"state_mb": round(mb), "rss_before_mb": round(before),
                                         "peak_above_before_mb": round(peak - before), "seconds": round(seconds, 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=400, help="checkpoint size in MB")
    args = ap.parse_args()
    folder = tempfile.mkdtemp()
    n = args.mb * 2**20 // 4
    torch.save({"model": {"w": torch.randn(n)}, "position": {"epoch": 1}}, Path(folder) / "last.pt")
    results = {}
    for how in ("bytes", "pickled-state"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = Path(folder) / f"{how}.json"
        mp.spawn(worker, args=(port, folder, how, str(out)), nprocs=2)
        results[how] = json.loads(out.read_text())
    results["command"] = " ".join(["python", *sys.argv])
    results["machine"] = f"{os.cpu_count()} cores, torch {torch.__version__}"
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
