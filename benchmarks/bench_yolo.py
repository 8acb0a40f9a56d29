"""The suite's YOLO path against plain `yolo train` on the same data, model, epochs, batch, image size and optimizer,
each as a whole fresh process, alternating, --repeats times: whole-process wall time and validation mAP50-95.

    python benchmarks/bench_yolo.py --epochs 20 --repeats 2 --out /tmp/bench-yolo

YOLO11n from its model YAML (random init, YOLO_OFFLINE=1), generated shape scenes (4 classes, --scenes training
and a quarter as many validation scenes, 1-3 shapes each) at 128 px, batch 16, AdamW at lr 2e-3 (beta1 0.9,
weight decay 5e-4), cosine to 1% of it, no warm-up, Ultralytics' standard augmentation with mosaic to the end,
seed 0, CPU. `suite run` trains one stage (`train: all`) through Ultralytics' trainer with its own bookkeeping
(history, best/last checkpoints, report, plots; no export, no baselines); `yolo train` is Ultralytics' CLI.
mAP50-95 is each one's best epoch on the validation scenes (the suite's history.csv; Ultralytics' results.csv).

--nproc N adds a third side: the same recipe under `suite run --nproc N --device cpu` (torchrun, gloo, Ultralytics'
DDP workers, per-rank batch 16 / N). Its figures are not a speed claim for CPUs (N processes share the same cores);
they show that the DDP path trains to a comparable mAP50-95.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from suite.core.report import read_history
from suite.datasets.shapes_det import make_shapes_detection

RECIPE = """\
name: bench-yolo
task: detection
model: {{arch: yolo11n, weights: none}}
data: {{format: yolo, root: {data}, image_size: 128, augment: standard}}
schedule: [{{epochs: {epochs}, train: all, lr: 2.0e-3, warmup: 0.0, scheduler: cosine}}]
optim: {{name: adamw, weight_decay: 5.0e-4}}
train: {{batch_size: 16, seed: 0, precision: fp32}}
export: {{onnx: false}}
"""


def timed(cmd: list[str], env: dict) -> float:
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{(done.stderr or done.stdout)[-3000:]}")
    return time.perf_counter() - began


def plain_map(results: Path) -> float:
    rows = list(csv.DictReader(results.open()))
    key = next(k for k in rows[0] if k.strip() == "metrics/mAP50-95(B)")
    return max(float(r[key]) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--scenes", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-yolo"))
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both processes (Ultralytics itself uses "
                                               "cpu_count - 1 torch threads on a CPU; the suite keeps the process's)")
    ap.add_argument("--nproc", type=int, default=0, help="also run `suite run --nproc N` (0: skip)")
    a = ap.parse_args()
    data = make_shapes_detection(a.out / "data", ["circle", "square", "triangle", "star"], a.scenes, a.scenes // 4,
                                 size=128, max_objects=3, seed=0)
    recipe = a.out / "recipe.yaml"
    recipe.write_text(RECIPE.format(data=data, epochs=a.epochs))
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {})}
    yolo = str(Path(sys.executable).with_name("yolo"))
    suite_cmd = [sys.executable, "-m", "suite.cli", "run", str(recipe), "--out", str(a.out / "suite"), "--overwrite",
                 "--device", "cpu"]
    plain_cmd = [yolo, "train", "model=yolo11n.yaml", f"data={data}", f"epochs={a.epochs}", "imgsz=128", "batch=16",
                 "optimizer=AdamW", "lr0=0.002", "momentum=0.9", "weight_decay=0.0005", "cos_lr=True", "lrf=0.01",
                 "warmup_epochs=0", "warmup_bias_lr=0.0", "close_mosaic=0", "seed=0", "deterministic=True",
                 "workers=0", "device=cpu", "amp=False", "plots=False", "val=True", f"project={a.out}",
                 "name=plain", "exist_ok=True"]
    ddp_cmd = [sys.executable, "-m", "suite.cli", "run", str(recipe), "--out", str(a.out / "suite-ddp"), "--overwrite",
               "--device", "cpu", "--nproc", str(a.nproc)]
    ddp = f"suite --nproc {a.nproc}"
    times: dict[str, list[float]] = {"suite": [], "yolo train": [], **({ddp: []} if a.nproc else {})}
    maps: dict[str, list[float]] = {name: [] for name in times}
    for _ in range(a.repeats):
        times["yolo train"].append(timed(plain_cmd, env))
        maps["yolo train"].append(plain_map(a.out / "plain" / "results.csv"))
        times["suite"].append(timed(suite_cmd, env))
        maps["suite"].append(max(r["val/map50_95"] for r in read_history(a.out / "suite" / "history.csv")))
        if a.nproc:
            times[ddp].append(timed(ddp_cmd, env))
            maps[ddp].append(max(r["val/map50_95"] for r in read_history(a.out / "suite-ddp" / "history.csv")))
    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version()},
           "epochs": a.epochs, "scenes": a.scenes, "repeats": a.repeats, "omp_num_threads": a.threads, "wall_s": times, "map50_95": maps,
           "ratio_median_wall": statistics.median(times["suite"]) / statistics.median(times["yolo train"]),
           "commands": {"suite": " ".join(suite_cmd), "yolo train": " ".join(plain_cmd),
                        **({ddp: " ".join(ddp_cmd)} if a.nproc else {})}}
    (a.out / "bench_yolo.json").write_text(json.dumps(doc, indent=2))
    for name in times:
        print(f"{name:16s} wall {statistics.median(times[name]):7.1f} s (runs {', '.join(f'{t:.1f}' for t in times[name])})"
              f"  best mAP50-95 {', '.join(f'{m:.4f}' for m in maps[name])}")
    print(f"suite / yolo train (median wall): {doc['ratio_median_wall']:.3f}x")


if __name__ == "__main__":
    main()
