#!/usr/bin/env python
"""Inference benchmark of the detectors: YOLO and Faster R-CNN, torch eager vs onnxruntime fp32 and int8.

For each model and image size (random init, no downloads): export the ONNX graph `suite export`
ships, make the int8 variant that is valid for that graph, check the outputs once, then
`suite.core.bench.run_bench` (every runtime/precision in its own worker process) and write
RESULTS/detection-<model>-<size>.json: rows, machine, settings, output checks, the command.

    python benchmarks/bench_detection.py --models yolo11n,fasterrcnn_mobilenet_v3_large_320_fpn,\\
        fasterrcnn_resnet50_fpn_v2 --sizes 320,640 --batch-sizes 1,8 --out benchmarks/results
    python benchmarks/bench_detection.py --report benchmarks/results     # the tables from the JSON
    python benchmarks/bench_detection.py --quick --out /tmp/bench        # smoke run: 64 px, 3 iters

What is timed:
  YOLO (yolo11n, 80 classes)   `ExportHead`: the fused model, Detect in export mode, [B,3,S,S] ->
                               [B, 84, anchors]; the ONNX graph from `suite.core.export.export_onnx`
                               (dynamic batch). Box decoding and NMS run outside the graph (numpy, in
                               suite_runtime) and are timed on neither side. S must be a multiple of 32.
  Faster R-CNN (90 classes)    the torchvision model, min_size = S, on ONE image [3,S,S]: resize (a no-op
                               at S), normalisation, backbone, RPN, RoIAlign, box head, per-class NMS and
                               up to 100 detections, inside the graph (`frcnn.export_torchscript`, opset
                               18). The graph has no batch axis, so batch 1 only; see `with_batch_axis`.

Variants (the name is the row's precision):
  fp32          the exported graph
  int8-static   YOLO only: what `suite export` ships (QDQ, U8S8, per-channel, MinMax), calibrated on
                letterbox-like random images (uniform [0,1] with grey 114/255 bands), fine for speed,
                not for accuracy. Detect's box decoding and the output Concat stay float
                (`yolo.quant_exclude`), so boxes in px and scores in [0,1] do not share one uint8 scale
  int8-dynamic  Faster R-CNN only: what `suite export` ships (QInt8 weights, MatMul/Gemm only: the box
                head's fully connected layers)
The others are rows marked "not run" with the reason (NOT_VALID). The ONNX files live in a temporary
folder: only the JSON results are kept.

Random weights do not change the cost of the fixed-size work (backbone, RPN top-N proposals, RoIAlign
and box head over every proposal), but they do change how many boxes pass Faster R-CNN's score
threshold (0.05, as shipped) into the final NMS: at 320 px on the benchmark input the mobilenet model
returned none and resnet50_fpn_v2 the cap of 100. Each JSON records the count per runtime
(`output_check`), and repeats the check with score_thresh 0 (always 100 boxes, `output_check_dense`)
so that int8 is compared with fp32 on real detections. torch's OpenMP threads slow down many-fold
when another process holds a core (FRCNN 64 px: 31 ms on 1 thread, 700 ms on 2): use --wait-idle.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_vision import cpu_busy, load, log, wait_idle  # noqa: E402
from suite.core.bench import (BenchRow, bench_payload, bench_table, machine_info, make_ort_session,  # noqa: E402
                              run_bench)
from suite.core.checkpoint import atomic_write, atomic_write_text  # noqa: E402

DEFAULT_MODELS = "yolo11n,fasterrcnn_mobilenet_v3_large_320_fpn,fasterrcnn_resnet50_fpn_v2"
YOLO_LABELS = tuple(f"class{i}" for i in range(80))  # COCO's 80
FRCNN_LABELS = tuple(f"class{i}" for i in range(90))  # torchvision's COCO head: 91 = 90 + background
OPSET = 18  # YOLO; export_torchscript caps Faster R-CNN at 17
INT8 = {"yolo": "int8-static", "frcnn": "int8-dynamic"}  # the one valid int8 variant per family
NOT_VALID = {
    ("yolo", "int8-dynamic"): (
        "quantize_dynamic with MatMul/Gemm only (what suite export ships) has nothing to quantize here: the graph "
        "has {matmul} MatMul/Gemm holding {weights} weights (C2PSA attention multiplies activations) against "
        "{conv} Conv, so the file would stay fp32; dynamically quantized Conv ran 6-16x slower than fp32 in "
        "bench_vision"),
    ("frcnn", "int8-static"): (
        "static QDQ calibrates and quantizes every tensor, here including the RPN and RoI post-processing (anchor "
        "and box decoding in pixels, TopK, NonMaxSuppression, RoiAlign): int8 boxes change which boxes survive NMS, "
        "and onnxruntime has no int8 RoiAlign/NMS kernels, so those run in fp32 behind extra Q/DQ pairs; not run"),
}


# ---------------------------------------------------------------- inputs and graphs


def letterbox_like(n: int, size: int, seed: int) -> np.ndarray:
    """n uniform [0,1] images with grey (114/255) bands top and bottom, as a 4:3 picture letterboxed to a square."""
    x = np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)
    band = size // 8
    x[:, :, :band] = x[:, :, size - band:] = 114 / 255
    return x


def calibration_batches(size: int, n: int) -> list[np.ndarray]:
    x = letterbox_like(n, size, seed=0)
    return [x[i:i + 8] for i in range(0, n, 8)]


def with_batch_axis(src: Path, dst: Path) -> Path:
    """The graph behind a leading batch axis of 1: input [1,3,H,W] -> Squeeze(0) -> the exported input.

    `run_bench` feeds every runtime a batch [b, *item_shape]; the Faster R-CNN graph takes one image
    [3,H,W]. The torch model takes the same [1,3,H,W] tensor as a list of one image, so both sides time
    the same input, and the shipped graph's timing changes only by one Squeeze (a view in onnxruntime).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    old = graph.input[0]
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    new = helper.make_tensor_value_info(f"{old.name}_batch1", old.type.tensor_type.elem_type, [1, *dims])
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), f"{old.name}_batch_axis")
    squeeze = helper.make_node("Squeeze", [new.name, axes.name], [old.name], name=f"{old.name}_squeeze")
    graph.initializer.append(axes)
    graph.node.insert(0, squeeze)
    graph.input.remove(old)
    graph.input.insert(0, new)
    onnx.checker.check_model(model)
    return atomic_write(dst, lambda tmp: onnx.save(model, tmp))


def op_counts(path: Path) -> dict:
    """Conv and MatMul/Gemm nodes of a graph, and the weights (initializer elements) the MatMul/Gemm hold."""
    import onnx

    graph = onnx.load(str(path)).graph
    sizes = {t.name: math.prod(t.dims) for t in graph.initializer}
    mm = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    return {"conv": sum(n.op_type == "Conv" for n in graph.node), "matmul": len(mm),
            "weights": sum(sizes.get(i, 0) for n in mm for i in n.input)}


def output_step(path: Path) -> float | None:
    """The quantization step of the graph's first output, if a DequantizeLinear makes it (else None)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    node = next((n for n in graph.node if graph.output[0].name in n.output), None)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    scale = next((t for t in graph.initializer if t.name == node.input[1]), None)
    return None if scale is None else float(numpy_helper.to_array(scale).max())


def _try_quantize(fp32: Path, kind: str, out: Path, calibration: list[np.ndarray], info: dict,
                  exclude=None) -> Path | None:
    from suite.core.export import quantize

    start = time.perf_counter()
    try:
        info.setdefault("quantization", {})[kind] = quantize(fp32, kind, out, calibration, exclude)
    except Exception as e:  # a graph the quantizer cannot handle: a row that says so, not a crash
        info.setdefault("failed", {})[kind] = f"quantization failed: {type(e).__name__}: {str(e)[:300]}"
        return None
    info.setdefault("quantize_s", {})[kind] = round(time.perf_counter() - start, 1)
    return out


# ---------------------------------------------------------------- the two families


def prepare_yolo(arch: str, size: int, folder: Path, args) -> tuple[object, dict[str, Path], dict]:
    """fp32 + int8-static ONNX, a picklable torch factory (the model is pickled with it), output checks."""
    import torch

    from suite.core.export import export_onnx
    from suite.detection import yolo

    torch.manual_seed(0)
    model = yolo.build_model(arch, list(YOLO_LABELS), "none")
    head = yolo.ExportHead(model)
    fp32 = folder / "model.onnx"
    start = time.perf_counter()
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # batch 2: see export_onnx
    info = {"exporter": export_onnx(head, example, fp32, args.opset, yolo.EXPORT_IO), "opset": args.opset,
            "export_s": round(time.perf_counter() - start, 1),
            "calibration": f"{args.calib} letterbox-like random images: uniform [0,1] with 114/255 bands (seed 0)"}
    variants = {"fp32": fp32}
    # as `suite export` ships it: Detect's box decoding and the boxes+scores concat stay float
    if q := _try_quantize(fp32, "int8-static", folder / "model.int8-static.onnx",
                          calibration_batches(size, args.calib), info, yolo.quant_exclude):
        variants["int8-static"] = q
    info["not_valid"] = {"int8-dynamic": NOT_VALID[("yolo", "int8-dynamic")].format(**op_counts(fp32))}
    info["output_check"] = yolo_check(head, variants, size, args.threads)
    return functools.partial(yolo.ExportHead, model), variants, info


def yolo_check(head, variants: dict[str, Path], size: int, threads: int) -> dict:
    """Each variant vs torch fp32 on one letterbox-like image: max |diff| of the boxes (px) and class scores."""
    import torch

    x = letterbox_like(1, size, seed=1)  # not a calibration image
    with torch.inference_mode():
        ref = head(torch.from_numpy(x)).numpy()
    out = {}
    for name, path in variants.items():
        session, _ = make_ort_session(path, threads)
        y = session.run(None, {session.get_inputs()[0].name: x})[0]
        out[name] = {"vs": "torch fp32", "finite": bool(np.isfinite(y).all()),
                     "boxes_max_abs_diff_px": round(float(np.abs(y[:, :4] - ref[:, :4]).max()), 4),
                     "scores_max_abs_diff": round(float(np.abs(y[:, 4:] - ref[:, 4:]).max()), 4),
                     "scores_max": round(float(ref[:, 4:].max()), 6)}
        if (step := output_step(path)) is not None and step > 0.01:
            # boxes (px) and class scores ([0,1]) leave the graph through one Concat: one int8 scale for both
            out[name]["output_int8_step"] = round(step, 4)
            out[name]["caveat"] = (f"the output is quantized with one step of {step:.3g} for boxes in px and scores "
                                   f"in [0,1]: scores below ~{step / 2:.3g} read 0, so trained weights would lose "
                                   f"most detections; random-init scores are ~1e-4, so the diff above cannot show "
                                   f"it. The timing stands; the variant's accuracy does not")
    return out


def prepare_frcnn(arch: str, size: int, folder: Path, args) -> tuple[object, dict[str, Path], dict]:
    """fp32 + int8-dynamic ONNX (each behind `with_batch_axis`), the torch factory, output checks."""
    import torch

    from suite.detection import frcnn

    build = functools.partial(frcnn.build_model, arch, list(FRCNN_LABELS), "none", min_size=size)
    torch.manual_seed(0)  # as run_bench does before calling the factory: the worker rebuilds these weights
    model = build().eval()
    info = {"opset": min(args.opset, frcnn.EXPORT_IO.max_opset), "score_thresh": model.roi_heads.score_thresh,
            "detections_per_img": model.roi_heads.detections_per_img,
            "rpn_post_nms_top_n": model.rpn._post_nms_top_n["testing"],
            "graph_input": f"[3,{size},{size}] behind Squeeze(0) of [1,3,{size},{size}] (with_batch_axis)"}
    start = time.perf_counter()
    info["exporter"], variants = export_frcnn(model, size, folder, args.opset, info)
    info["export_s"] = round(time.perf_counter() - start, 1)
    info["int8_dynamic_ops"] = op_counts(folder / "model.onnx")
    info["not_valid"] = {"int8-static": NOT_VALID[("frcnn", "int8-static")]}
    info["output_check"] = frcnn_check(model, variants, size, args.threads)
    if "int8-dynamic" in variants:
        # random weights can leave no box above the shipped threshold (then the check above says nothing about
        # int8): the same weights with score_thresh 0 always return the 100-box cap
        shipped, model.roi_heads.score_thresh = model.roi_heads.score_thresh, 0.0
        _, dense = export_frcnn(model, size, folder / "dense", args.opset, {})
        info["output_check_dense"] = {"score_thresh": 0.0, **frcnn_check(model, dense, size, args.threads)}
        model.roi_heads.score_thresh = shipped
    return build, variants, info


def export_frcnn(model, size: int, folder: Path, opset: int, info: dict) -> tuple[str, dict[str, Path]]:
    """FOLDER/model.onnx as `suite export` writes it, and its int8-dynamic variant; each behind `with_batch_axis`."""
    import torch

    from suite.core.export import export_onnx
    from suite.detection import frcnn

    folder.mkdir(exist_ok=True)
    raw = folder / "model.onnx"
    example = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    exporter = export_onnx(frcnn.ExportWrapper(model), example, raw, opset, frcnn.EXPORT_IO)
    model.eval()  # torch.onnx.export put it back into the (training) mode of the wrapper it made
    shipped = {"fp32": raw}
    if q := _try_quantize(raw, "int8-dynamic", folder / "model.int8-dynamic.onnx", [], info):
        shipped["int8-dynamic"] = q
    return exporter, {n: with_batch_axis(p, folder / f"bench.{n}.onnx") for n, p in shipped.items()}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def frcnn_check(model, variants: dict[str, Path], size: int, threads: int) -> dict:
    """Detections per image on the timed inputs, and each variant's detections vs torch fp32 on ORT's input:
    finite, inside the image, the share matched by a torch box of the same class at IoU >= 0.5, scores."""
    import torch

    x_ort = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)  # as _onnx_rows
    x_torch = torch.randn((1, 3, size, size), generator=torch.Generator().manual_seed(0))  # as _torch_rows
    with torch.inference_mode():
        n_torch = len(model(x_torch)[0]["boxes"])
        ref = {k: v.numpy() for k, v in model(torch.from_numpy(x_ort))[0].items()}
    out = {"torch fp32": {"detections": n_torch}}
    for name, path in variants.items():
        session, _ = make_ort_session(path, threads)
        boxes, labels, scores = session.run(None, {session.get_inputs()[0].name: x_ort})
        iou = _iou(boxes, ref["boxes"]) * (labels[:, None] == ref["labels"][None])
        matched = float((iou.max(1) >= 0.5).mean()) if len(boxes) and len(ref["boxes"]) else None
        out[f"onnxruntime {name}"] = {
            "detections": len(boxes), "torch_detections_same_input": len(ref["boxes"]),
            "finite": bool(np.isfinite(boxes).all() and np.isfinite(scores).all()),
            "inside_image": bool(((boxes >= -1e-3) & (boxes <= size + 1e-3)).all()),
            "matched_torch_iou50": None if matched is None else round(matched, 3),
            # sorted: near-equal random-weight scores may come out in another order
            "scores_sorted_max_abs_diff": (round(float(np.abs(np.sort(scores) - np.sort(ref["scores"])).max()), 5)
                                           if len(scores) and len(scores) == len(ref["scores"]) else None),
            "max_score": round(float(scores.max()), 4) if len(scores) else None}
    return out


# ---------------------------------------------------------------- one model at one size


def family(arch: str) -> str:
    from suite.detection import frcnn, yolo

    if yolo.is_yolo(arch):
        return "yolo"
    if frcnn.is_frcnn(arch):
        return "frcnn"
    raise ValueError(arch)


def extra_rows(info: dict, batch_sizes: list[int], threads: int) -> list[BenchRow]:
    """Rows with no figures for the variants not run: invalid for the graph, or quantization failed."""
    why = {**{k: f"not run: {v}" for k, v in info.get("not_valid", {}).items()},
           **{k: f"skipped: {v}" for k, v in info.get("failed", {}).items()}}
    nan = math.nan
    return [BenchRow("onnxruntime", name, b, nan, nan, nan, None, nan, threads, note)
            for name, note in why.items() for b in batch_sizes]


def bench_one(arch: str, size: int, args, command: str) -> Path:
    fam = family(arch)
    batch_sizes = args.batch_sizes if fam == "yolo" else [1]
    busy = wait_idle(args.wait_idle) if args.wait_idle else cpu_busy(1.0)
    if busy >= 0.1:
        log(f"WARNING: other processes use {busy:.0%} of the CPUs: timings will be noisy")
    load_before, start = load(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{arch}-{size}-") as tmp:
        log(f"{arch} {size} px: export, {INT8[fam]}, output check")
        prepare = prepare_yolo if fam == "yolo" else prepare_frcnn
        factory, variants, info = prepare(arch, size, Path(tmp), args)
        log(f"{arch} {size} px: benchmark, batch {batch_sizes}, {args.threads} threads, {args.iters} iters, "
            f"{args.repeats} workers per configuration")
        rows = run_bench(factory, variants, (3, size, size), batch_sizes, args.threads, compile=args.compile,
                         isolate=not args.in_process, warmup=args.warmup, iters=args.iters, repeats=args.repeats,
                         compile_timeout_s=args.compile_timeout, progress=lambda m: log(f"{arch} {size}: {m}"))
    rows += extra_rows(info, batch_sizes, args.threads)
    import torchvision
    import ultralytics

    name = f"detection-{arch}-{size}"
    payload = bench_payload(rows, task="detection", model=arch, family=fam, image_size=size, batch_sizes=batch_sizes,
                            repeats=args.repeats, command=command, torchvision=torchvision.__version__,
                            ultralytics=ultralytics.__version__, weights="random init (seed 0)",
                            inputs="seeded random normals (run_bench), the same for every row of a runtime",
                            **info, compile_timeout_s=args.compile_timeout,
                            load_avg_1min={"before": round(load_before, 2), "after": round(load(), 2)},
                            other_cpu_busy_before=round(busy, 3), wall_s=round(time.perf_counter() - start, 1))
    path = atomic_write_text(Path(args.out) / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    print(f"\n## {arch} ({size} px)\n\n{bench_table(rows)}\n", flush=True)
    log(f"{arch} {size} px: wrote {path} ({payload['wall_s']} s)")
    return path


# ---------------------------------------------------------------- tables from the JSON


def _get(rows: list[BenchRow], runtime: str, precision: str, batch: int) -> BenchRow | None:
    return next((r for r in rows if (r.runtime, r.precision, r.batch) == (runtime, precision, batch)
                 and r.measured), None)


def _x(a: BenchRow | None, b: BenchRow | None) -> str:
    return "—" if a is None or b is None else f"{a.items_per_s / b.items_per_s:.2f}x"


def _ms(r: BenchRow | None) -> str:
    return "—" if r is None else f"{r.p50_ms:.2f}"


def _f(v, d: int = 1) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.{d}f}"


def _detections(p: dict) -> str:
    """Faster R-CNN's detections per image on the timed inputs: the postprocessing work in the timings."""
    if p.get("family") != "frcnn":
        return "—"
    n = {k: v.get("detections", "?") for k, v in p.get("output_check", {}).items()}
    return f"{n.get('torch fp32', '?')} / {n.get('onnxruntime fp32', '?')}"


def report(folder: Path) -> str:
    """Markdown tables (p50 in ms; ratios of items/s measured in one run) from RESULTS/detection-*.json."""
    payloads = [json.loads(p.read_text()) for p in sorted(folder.glob("detection-*.json"))]
    if not payloads:
        raise SystemExit(f"no detection results in {folder}")
    payloads.sort(key=lambda p: (p["model"], p["image_size"]))
    out = ["| model | size | batch | torch eager ms | ORT fp32 ms | ORT fp32 / eager | int8 | int8 ms | "
           "int8 / ORT fp32 | int8 / eager | detections/image torch / ORT |",
           "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for p in payloads:
        rows, int8 = [BenchRow.from_json(r) for r in p["rows"]], INT8[p["family"]]
        for b in p["batch_sizes"]:
            eager, ort, q = (_get(rows, "torch", "fp32", b), _get(rows, "onnxruntime", "fp32", b),
                             _get(rows, "onnxruntime", int8, b))
            out.append(f"| {p['model']} | {p['image_size']} | {b} | {_ms(eager)} | {_ms(ort)} | {_x(ort, eager)} | "
                       f"{int8} | {_ms(q)} | {_x(q, ort)} | {_x(q, eager)} | {_detections(p)} |")
    out += ["", "| model | size | batch | runtime | precision | p50 ms | p95 ms | items/s | size MB | peak RSS MB "
                "| note |", "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for p in payloads:
        for r in sorted((BenchRow.from_json(r) for r in p["rows"]), key=lambda r: r.batch):
            note = r.note if len(r.note) < 80 else r.note[:77] + "..."
            out.append(f"| {p['model']} | {p['image_size']} | {r.batch} | {r.runtime} | {r.precision} | "
                       f"{_f(r.p50_ms, 2)} | {_f(r.p95_ms, 2)} | {_f(r.items_per_s)} | {_f(r.size_mb)} | "
                       f"{_f(r.peak_rss_mb, 0)} | {note} |")
    out += ["", "Output checks (one input; vs torch fp32; dense: Faster R-CNN with score_thresh 0):", ""]
    for p in payloads:
        for key in ("output_check", "output_check_dense"):
            for what, check in p.get(key, {}).items():
                if isinstance(check, dict):
                    out.append(f"- {p['model']} {p['image_size']} px{', dense' if key.endswith('dense') else ''}, "
                               f"{what}: " + ", ".join(f"{k}={v}" for k, v in check.items()))
    reasons: dict[tuple[str, str], str] = {}
    for p in payloads:
        for variant, why in p.get("not_valid", {}).items():
            reasons.setdefault((p["model"], variant), why)
    out += ["", "Not run:", ""] + [f"- {m} {v}: {why}" for (m, v), why in reasons.items()]
    return "\n".join(out)


# ---------------------------------------------------------------- command line


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help=f"comma-separated (default {DEFAULT_MODELS})")
    ap.add_argument("--sizes", help="comma-separated image sizes in px; YOLO needs multiples of 32 (default 320,640)")
    ap.add_argument("--batch-sizes", help="comma-separated, YOLO only; Faster R-CNN runs batch 1 (default 1,8)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch and ORT threads (default: all cores)")
    ap.add_argument("--warmup", type=int, help="untimed calls per row (default 5)")
    ap.add_argument("--iters", type=int, help="timed calls per row (default 30)")
    ap.add_argument("--repeats", type=int, help="fresh workers per configuration, run round-robin; the median "
                                                "by p50 is kept (default 3)")
    ap.add_argument("--calib", type=int, help="calibration images for YOLO int8-static (default 16)")
    ap.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET}; Faster R-CNN <= 17)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (off by default: the item "
                    "compares torch with onnxruntime, and inductor compiles take minutes here)")
    ap.add_argument("--compile-timeout", type=float, default=300.0,
                    help="cap in s on one torch.compile worker (all batch sizes) (default 300)")
    ap.add_argument("--in-process", action="store_true",
                    help="run every row in this process (no worker per runtime; peak RSS is then the process's)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each model and size, wait up to S seconds for other processes to leave the CPUs idle")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                    help="folder for detection-<model>-<size>.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: yolo11n and fasterrcnn_mobilenet_v3_large_320_fpn,"
                                                         " 64 px, batch 1, 1 warm-up, 3 iters, 4 calibration images")
    ap.add_argument("--report", metavar="DIR", help="print the tables from DIR/detection-*.json and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(Path(args.report)))
        return 0

    quick = args.quick
    args.models = _csv(args.models or ("yolo11n,fasterrcnn_mobilenet_v3_large_320_fpn" if quick else DEFAULT_MODELS))
    args.sizes = [int(s) for s in _csv(args.sizes or ("64" if quick else "320,640"))]
    args.batch_sizes = [int(b) for b in _csv(args.batch_sizes or ("1" if quick else "1,8"))]
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 5)
    args.iters = args.iters or (3 if quick else 30)
    args.repeats = args.repeats or (1 if quick else 3)
    args.calib = args.calib or (4 if quick else 16)
    for name in args.models:
        try:
            fam = family(name)
        except ValueError:
            ap.error(f"unknown detector {name!r}: a YOLO name (yolo11n, yolov8n, ...) or one of "
                     f"fasterrcnn_mobilenet_v3_large_320_fpn, fasterrcnn_resnet50_fpn_v2, ...")
        if fam == "yolo" and any(s % 32 for s in args.sizes):
            ap.error(f"YOLO needs sizes that are multiples of 32; got {args.sizes}")
    command = shlex.join(["python", *([sys.argv[0]] if argv is None else ["benchmarks/bench_detection.py"]),
                          *(sys.argv[1:] if argv is None else argv)])
    info = machine_info()
    log(f"{info['cpu_model']}, {info['cpu_cores']} cores, torch {info.get('torch')}, onnxruntime "
        f"{info.get('onnxruntime')}; load average {load():.2f}")
    for name in args.models:
        for size in args.sizes:
            bench_one(name, size, args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
