"""`train.compile` and `train.channels_last` against the default loop, side by side in one process on this machine:
seconds per epoch from each run's history.csv (training + validation), the first epoch (which pays for the
compilation) apart from the others.

    python benchmarks/bench_fastpath.py --epochs 4 --out /tmp/bench-fastpath

ResNet-18 from random init at --size px, 4 shape classes x 48 training and 16 validation images, batch 32,
AdamW with a cosine LR, no augmentation, cached features off, one stage training everything; the same recipe
with train.compile false / true (inductor) and train.channels_last false / true, in that order.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from suite.core.report import EPOCH_SECONDS, read_history
from suite.datasets.shapes import make_shapes
from suite.runner import run

RECIPE = """\
name: bench-fastpath
task: image-classification
model: {{arch: resnet18, weights: none}}
data: {{format: imagefolder, root: {root}, image_size: {size}, resize: {size}, augment: none}}
schedule: [{{epochs: {epochs}, train: all, lr: 1.0e-3, warmup: 0.0, scheduler: cosine}}]
optim: {{name: adamw, weight_decay: 0.01}}
train: {{batch_size: 32, cache_features: false, compile: {compile}, channels_last: {channels_last}, seed: 0}}
export: {{onnx: false}}
"""
SETTINGS = [("default", "false", "false"), ("channels_last", "false", "true"), ("compile", "true", "false"),
            ("compile + channels_last", "true", "true")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-fastpath"))
    a = ap.parse_args()
    root = a.out / "data"
    if not (root / "train").is_dir():
        make_shapes(root, ["circle", "square", "triangle", "star"], 48, 16, 0, size=a.size, seed=0)
    rows = []
    for name, compile_, channels_last in SETTINGS:
        recipe = a.out / f"{name.replace(' ', '').replace('+', '-')}.yaml"
        recipe.write_text(RECIPE.format(root=root, size=a.size, epochs=a.epochs, compile=compile_,
                                        channels_last=channels_last))
        began = time.perf_counter()
        result = run(recipe, out=a.out / recipe.stem, overwrite=True, device="cpu")
        wall = time.perf_counter() - began
        epochs = [r[EPOCH_SECONDS] for r in read_history(a.out / recipe.stem / "history.csv")]
        rows.append({"setting": name, "first_epoch_s": epochs[0], "later_epoch_s": statistics.median(epochs[1:]),
                     "run_s": round(wall, 1), "val_accuracy": result.metrics["val"]["val/accuracy"]})
    base = rows[0]["later_epoch_s"]
    for r in rows:
        r["later_epoch_speedup"] = base / r["later_epoch_s"]
    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__}, "epochs": a.epochs, "size": a.size, "rows": rows}
    (a.out / "bench_fastpath.json").write_text(json.dumps(doc, indent=2))
    print("| setting | first epoch s | later epochs s (median) | speed-up | run s | val accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['first_epoch_s']:.2f} | {r['later_epoch_s']:.2f} | "
              f"{r['later_epoch_speedup']:.2f}x | {r['run_s']} | {r['val_accuracy']:.4f} |")


if __name__ == "__main__":
    main()
