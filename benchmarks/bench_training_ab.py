"""Two checkouts of the suite and the hand-written loop, alternating fresh processes on bench_training.py's data and
recipe: whole-process and per-epoch medians side by side in one run (a noisy machine moves all three together).

    git worktree add /tmp/base <older commit>
    python benchmarks/bench_training.py --repeats 1 --out /tmp/bench-training   # writes the data and recipe
    python benchmarks/bench_training_ab.py --base /tmp/base --rounds 4 --out /tmp/bench-training
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def suite(tree: Path, out: Path, name: str) -> tuple[float, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # ahead of the editable install's finder
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "suite.cli", "run", str(out / "recipe.yaml"), "--out", str(out / name),
                    "--overwrite", "--device", "cpu"], env=env, check=True, capture_output=True)
    whole = time.perf_counter() - began
    with open(out / name / "history.csv", newline="") as f:
        return whole, [float(r["seconds"]) for r in csv.DictReader(f)]


def hand(out: Path, epochs: int, size: int) -> tuple[float, list[float]]:
    began = time.perf_counter()
    text = subprocess.run([sys.executable, str(HERE / "hand_loop.py"), str(out / "data"), "--epochs", str(epochs),
                           "--size", str(size)], check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - began, [float(x) for x in re.findall(r"seconds=([\d.]+)", text)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (a git worktree)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-training"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    if not (a.out / "recipe.yaml").is_file():
        sys.exit(f"{a.out}/recipe.yaml is missing: run benchmarks/bench_training.py --out {a.out} first")
    runs = {"base": [], "this": [], "hand": []}
    for _ in range(a.rounds):
        runs["hand"].append(hand(a.out, a.epochs, a.size))
        runs["base"].append(suite(a.base, a.out, "ab-base"))
        runs["this"].append(suite(HERE.parent, a.out, "ab-this"))
    for name, rows in runs.items():
        whole = [w for w, _ in rows]
        epochs = [s for _, e in rows for s in e]
        print(f"{name:5s} whole {[round(w, 2) for w in whole]} median {statistics.median(whole):.2f} s, "
              f"epoch median {statistics.median(epochs):.3f} s")


if __name__ == "__main__":
    main()
