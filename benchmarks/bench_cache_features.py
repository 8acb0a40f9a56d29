"""A head-only stage with and without cached features (`train.cache_features`), side by side in one process:
per-epoch wall time from each run's history.csv, and the validation accuracy of every epoch.

    python benchmarks/bench_cache_features.py --epochs 5 --size 224 --per-class 25 --out /tmp/bench-cache

ResNet-18 (random init: no ImageNet ResNet-18 is reachable offline; the time does not depend on the values) at
--size px on generated shapes (4 classes, --per-class training and validation images each), data.augment none,
one stage `{epochs: E, train: head}`, batch 16. The cached run's first epoch includes building the cache (one
pass of the frozen network over the training and validation images).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from suite.core.report import EPOCH_SECONDS, read_history
from suite.runner import run

RECIPE = """\
name: bench-cache
task: image-classification
model: {{arch: resnet18, weights: none}}
data:
  format: synthetic:shapes
  root: {root}
  synthetic: {{classes: [circle, square, triangle, star], train_per_class: {n}, val_per_class: {n}, size: {size}}}
  image_size: {size}
  resize: {size}
  augment: none
schedule:
  - {{epochs: {epochs}, train: head, lr: 1.0e-3}}
train: {{batch_size: 16, seed: 0}}
export: {{onnx: false}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--per-class", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-cache"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    recipe = a.out / "recipe.yaml"
    recipe.write_text(RECIPE.format(root=a.out / "data", n=a.per_class, size=a.size, epochs=a.epochs))
    rows = {}
    for mode in ("false", "true"):
        out = a.out / f"cache-{mode}"
        run(recipe, [f"train.cache_features={mode}"], out, device="cpu", overwrite=True)
        rows[mode] = read_history(out / "history.csv")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| epoch | uncached s | cached s | speed-up | val acc uncached | val acc cached |")
    print("|---|---|---|---|---|---|")
    for u, c in zip(rows["false"], rows["true"], strict=True):
        print(f"| {u['epoch']} | {u[EPOCH_SECONDS]:.2f} | {c[EPOCH_SECONDS]:.3f} | "
              f"{u[EPOCH_SECONDS] / c[EPOCH_SECONDS]:.0f}x | {u['val/accuracy']:.4f} | {c['val/accuracy']:.4f} |")
    later = [u[EPOCH_SECONDS] / c[EPOCH_SECONDS] for u, c in zip(rows["false"][1:], rows["true"][1:])]
    total = sum(r[EPOCH_SECONDS] for r in rows["false"]) / sum(r[EPOCH_SECONDS] for r in rows["true"])
    same = all(u["val/accuracy"] == c["val/accuracy"] for u, c in zip(rows["false"], rows["true"]))
    print(json.dumps({"epochs_2_on_min_speedup": round(min(later), 1) if later else None,
                      "stage_speedup": round(total, 2), "same_val_accuracy_every_epoch": same}))


if __name__ == "__main__":
    main()
