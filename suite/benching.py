"""`suite bench DIR|MODEL.onnx`: torch eager (and torch.compile) vs onnxruntime fp32 and int8, side by side."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from suite import rundir
from suite.errors import UserError


def bench_run_dir(target: str | Path, batch_sizes: Sequence[int] = (1, 8), threads: int | None = None,
                  compile: bool = False, warmup: int = 5, iters: int = 30) -> tuple[str, Path]:
    """Benchmark a run directory's bundle (all variants, plus torch) or one .onnx file; write bench.json beside."""
    from suite.core.bench import bench_table, run_bench, write_bench

    target = Path(target)
    folder = rundir.bundle_dir(target)
    meta = json.loads((folder / "model.json").read_text())
    if meta.get("task") == "cascade":
        raise UserError(f"{folder} is a cascade bundle: `suite bench` times it per stage (suite.cascade.bench_cascade)")
    run = folder.parent
    if target.suffix == ".onnx":
        variants = {name: folder / v["file"] for name, v in meta["variants"].items() if v["file"] == target.name}
        variants = variants or {"fp32": target}
        torch_model, out_dir = None, folder
    elif (run / rundir.BEST).is_file():  # the bundle of a run: torch's side too, from the run's best weights
        variants = {name: folder / v["file"] for name, v in meta["variants"].items()}
        # a picklable factory: the benchmark rebuilds the model in its own process (clean peak RSS)
        torch_model, out_dir = rundir.torch_factory(run), run
    else:  # a bundle on its own
        variants = {name: folder / v["file"] for name, v in meta["variants"].items()}
        torch_model, out_dir = None, folder
    bench = meta.get("bench") or {}
    if not bench.get("item_shape"):
        raise UserError(f"{folder}/model.json predates `suite bench` metadata: re-export it with `suite export`")
    batch_axis = bench.get("batch_axis", True)
    sizes = list(batch_sizes) if batch_axis else [1]  # one item per call (a torchvision detector): batch 1
    rows = run_bench(torch_model, variants, tuple(bench["item_shape"]), sizes, threads=threads,
                     compile=compile, warmup=warmup, iters=iters, batch_axis=batch_axis)
    for row in rows:  # what an int8 variant covers (a CNN's int8-dynamic: the final Gemm only), in bench.json
        covers = meta["variants"].get(row.precision, {}).get("quantization", {}).get("covers") \
            if row.runtime == "onnxruntime" else None
        if covers and covers.get("note"):
            row.note = "; ".join(n for n in (row.note, covers["note"]) if n)
    _, png = write_bench(rows, out_dir)
    return bench_table(rows), png
