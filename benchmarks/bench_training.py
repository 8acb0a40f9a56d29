"""`suite run` against the hand-written loop (benchmarks/hand_loop.py) on the same data, model, epochs, batch and
image size, each as a whole fresh process, alternating, --repeats times: whole-process wall time and per-epoch time.

    python benchmarks/bench_training.py --repeats 3 --out /tmp/bench-training

ResNet-18 from random init at 64 px, 4 shape classes x 48 training and 16 validation images (192 + 64), 3 epochs,
batch 32, AdamW (weight decay 0.01) with a cosine LR, no augmentation, validation accuracy every epoch. The suite
run writes its whole run directory (history, checkpoints, metrics, report with plots); no export, no baselines.
"hand-tuned" is the same loop with the suite's three process-level changes (fused AdamW, torch imported with the
collector off, gc.freeze() before exit).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from suite.core.report import EPOCH_SECONDS, read_history
from suite.datasets.shapes import make_shapes

RECIPE = """\
name: bench-training
task: image-classification
model: {{arch: resnet18, weights: none}}
data: {{format: imagefolder, root: {root}, image_size: {size}, resize: {size}, augment: none}}
schedule: [{{epochs: {epochs}, train: all, lr: 1.0e-3, warmup: 0.0, scheduler: cosine}}]
optim: {{name: adamw, weight_decay: 0.01}}
train: {{batch_size: 32, cache_features: false}}
export: {{onnx: false}}
"""


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout


# `suite run` with one addition: the wall clock at the first optimizer step goes to stderr, then it exits
FIRST_STEP = """\
import sys, time
from suite import cli
cli.preload(sys.argv[1:])  # as entry() does, before anything imports torch
from suite.core import loop
def first(self):
    print(f"FIRST_STEP {time.time():.6f}", file=sys.stderr, flush=True)
    raise SystemExit(0)
loop._Trainer._step = first
from suite.cli import entry
sys.argv[0] = "suite"
entry()
"""
IMPORTS = "import sys, time, torch, torchvision; print(f'FIRST_STEP {time.time():.6f}', file=sys.stderr)"


def to_first_step(cmd: list[str], env: dict) -> float:
    """Seconds from starting ``cmd`` to the FIRST_STEP time it prints."""
    began = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    mark = re.search(r"FIRST_STEP ([\d.]+)", done.stderr)
    if mark is None:
        sys.exit(f"{' '.join(cmd[:3])} printed no FIRST_STEP ({done.returncode}):\n{done.stderr[-2000:]}")
    return float(mark.group(1)) - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-training"))
    a = ap.parse_args()
    root = a.out / "data"
    if not (root / "train").is_dir():
        make_shapes(root, ["circle", "square", "triangle", "star"], 48, 16, 0, size=a.size, seed=0)
    recipe = a.out / "recipe.yaml"
    recipe.write_text(RECIPE.format(root=root, size=a.size, epochs=a.epochs))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    suite = [sys.executable, "-m", "suite.cli", "run", str(recipe), "--out", str(a.out / "run"), "--overwrite",
             "--device", a.device]
    hand = [sys.executable, str(Path(__file__).with_name("hand_loop.py")), str(root), "--epochs", str(a.epochs),
            "--size", str(a.size), "--device", a.device]
    commands = {"hand": hand, "hand-tuned": [*hand, "--tuned"], "suite": suite}
    times = {name: [] for name in commands}
    epochs = {name: [] for name in commands}
    for _ in range(a.repeats):
        for name, cmd in commands.items():
            seconds, out = timed(cmd, env)
            times[name].append(seconds)
            if name == "suite":
                epochs[name] += [r[EPOCH_SECONDS] for r in read_history(a.out / "run" / "history.csv")]
            else:
                epochs[name] += [float(x) for x in re.findall(r"seconds=([\d.]+)", out)]
    first = {"import torch, torchvision": [], "suite run": []}
    for _ in range(a.repeats):
        first["import torch, torchvision"].append(to_first_step([sys.executable, "-c", IMPORTS], env))
        first["suite run"].append(to_first_step([sys.executable, "-c", FIRST_STEP, *suite[3:]], env))
    first_med = {k: statistics.median(v) for k, v in first.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    per = {k: statistics.median(v) for k, v in epochs.items()}
    print(json.dumps({"whole_process_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
                      "median_whole_s": {k: round(v, 2) for k, v in med.items()},
                      "whole_ratio": round(med["suite"] / med["hand"], 3),
                      "whole_ratio_vs_tuned": round(med["suite"] / med["hand-tuned"], 3),
                      "median_epoch_s": {k: round(v, 3) for k, v in per.items()},
                      "epoch_ratio": round(per["suite"] / per["hand"], 3),
                      "epoch_ratio_vs_tuned": round(per["suite"] / per["hand-tuned"], 3),
                      "to_first_step_s": {k: [round(x, 2) for x in v] for k, v in first.items()},
                      "first_step_minus_imports_s": round(first_med["suite run"] - first_med["import torch, torchvision"],
                                                          2)}, indent=1))


if __name__ == "__main__":
    main()
