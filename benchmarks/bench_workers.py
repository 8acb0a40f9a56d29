"""Loader workers kept across epochs (the suite's default) against workers started every epoch (what the suite
did before: a new DataLoader per epoch for the training and the validation split), in one process, alternating.

    python benchmarks/bench_workers.py --workers 2 --repeats 3

ResNet-18 at 64 px, 192 generated train images (augment: light) and 64 val, batch 32, 4 epochs; the first epoch
of each run is left out (it starts the workers either way). Prints the median epoch seconds of each side.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from suite.core import loop
from suite.core.report import EPOCH_SECONDS, read_history
from suite.datasets.shapes import make_shapes
from suite.runner import run
from suite.vision.task import VisionModality


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-workers"))
    a = ap.parse_args()
    root = a.out
    if not (root / "data" / "train").is_dir():
        make_shapes(root / "data", ["circle", "square", "triangle", "star"], 48, 16, 0, size=64, seed=0)
    recipe = root / "r.yaml"
    recipe.write_text(f"""name: workers
task: image-classification
model: {{arch: resnet18, weights: none}}
data: {{format: imagefolder, root: {root / 'data'}, image_size: 64, resize: 64, augment: light,
        num_workers: {a.workers}}}
schedule: [{{epochs: 4, train: all, lr: 1.0e-3}}]
train: {{batch_size: 32, checkpoint_every_s: 0}}
export: {{onnx: false}}
""")
    kept_serve, kept_eval = loop._Workers.serve, VisionModality._eval_loader

    def fresh_eval(self, recipe, data, split, persistent=False):
        return kept_eval(self, recipe, data, split, False)

    sides = {"kept": (kept_serve, kept_eval), "every epoch": (lambda self, loader, epoch: loader, fresh_eval)}
    epochs: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(a.repeats):
        for name, (serve, eval_loader) in sides.items():
            loop._Workers.serve, VisionModality._eval_loader = serve, eval_loader
            run(recipe, [], root / "run", device="cpu", overwrite=True)
            epochs[name] += [r[EPOCH_SECONDS] for r in read_history(root / "run" / "history.csv")][1:]
    med = {k: statistics.median(v) for k, v in epochs.items()}
    print(json.dumps({"workers": a.workers, "epoch_s": {k: [round(x, 3) for x in v] for k, v in epochs.items()},
                      "median_epoch_s": {k: round(v, 3) for k, v in med.items()},
                      "every_epoch_over_kept": round(med["every epoch"] / med["kept"], 3)}, indent=1))


if __name__ == "__main__":
    main()
