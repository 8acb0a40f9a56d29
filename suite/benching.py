"""`suite bench DIR|MODEL.onnx`: torch eager (and torch.compile) vs onnxruntime fp32 and int8, side by side."""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

from suite.errors import UserError


def rebuild_model(run_dir: Path):
    """The run's best model, rebuilt from its files (module-level, so a benchmark subprocess can call it)."""
    from suite.recipe import load_recipe
    from suite.tasks import modality_for

    run_dir = Path(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    labels = json.loads((run_dir / "export" / "model.json").read_text())["labels"]
    best = run_dir / "checkpoints" / "best.safetensors"
    mod = modality_for(recipe.task)
    model = mod.build_model(recipe, SimpleNamespace(labels=labels), str(best)).eval()
    # what was exported (e.g. YOLO fused, Detect in export mode), so both sides time the same network
    return getattr(mod, "export_module", lambda recipe, model: model)(recipe, model)


def _bundle(path: Path) -> tuple[Path, dict]:
    folder = path.parent if path.suffix == ".onnx" else path / "export"
    meta_file = folder / "model.json"
    if not meta_file.is_file():
        raise UserError(f"no bundle at {folder}: run `suite export RUN_DIR` first (or give a MODEL.onnx next to its model.json)")
    return folder, json.loads(meta_file.read_text())


def bench_run_dir(target: str | Path, batch_sizes: Sequence[int] = (1, 8), threads: int | None = None,
                  compile: bool = False, warmup: int = 5, iters: int = 30) -> tuple[str, Path]:
    """Benchmark a run directory's bundle (all variants, plus torch) or one .onnx file; write DIR/bench.json."""
    from suite.core.bench import bench_table, run_bench, write_bench

    target = Path(target)
    folder, meta = _bundle(target)
    if target.suffix == ".onnx":
        variants = {name: folder / v["file"] for name, v in meta["variants"].items() if v["file"] == target.name}
        variants = variants or {"fp32": target}
        torch_model, out_dir = None, folder
    else:
        variants = {name: folder / v["file"] for name, v in meta["variants"].items()}
        # a picklable factory: the benchmark rebuilds the model in its own process (clean peak RSS)
        torch_model, out_dir = functools.partial(rebuild_model, target.resolve()), target
    if meta["input"].get("batch") == 1:  # Faster R-CNN: one [3, H, W] image per call, no batch axis
        raise UserError(f"{folder} takes one image of any size per call (no batch axis); benchmark it with "
                        "`python benchmarks/bench_detection.py` (see benchmarks/README.md)")
    shape = tuple(meta["input"]["shape"][1:])
    if (meta.get("preprocess") or {}).get("type") == "audio":  # [batch, time]: time it on 1 s clips
        shape = (int(meta["preprocess"]["sample_rate"]),)
    rows = run_bench(torch_model, variants, shape, list(batch_sizes), threads=threads, compile=compile,
                     warmup=warmup, iters=iters)
    _, png = write_bench(rows, out_dir)
    return bench_table(rows), png
