#!/usr/bin/env python
"""Inference benchmark of torchvision classifiers: torch eager / torch.compile vs onnxruntime fp32 and int8.

For each model (random init, 1000 classes): export fp32 ONNX (dynamo exporter, TorchScript exporter
as fallback; dynamic batch axis; opset 18), run onnxruntime's quant_pre_process, make the int8
variants with onnxruntime.quantization, then `suite.core.bench.run_bench` (every runtime/precision
in its own worker process) and write RESULTS/<model>.json: rows, machine, settings, the command.

    python benchmarks/bench_vision.py --models resnet18,mobilenet_v3_large,efficientnet_b0 \\
        --batch-sizes 1,8 --size 224 --out benchmarks/results
    python benchmarks/bench_vision.py --report benchmarks/results     # the README tables from the JSON
    python benchmarks/bench_vision.py --quick --out /tmp/bench        # smoke run: resnet18, 64 px, 3 iters

Variants (the name is the row's precision):
  fp32                 the exported graph
  int8-static          QDQ, activations QUInt8, weights QInt8 per channel (U8S8), MinMax calibration
                       on random-normal images (what `suite export` ships as int8-static)
  int8-dynamic         quantize_dynamic, QInt8 weights, MatMul/Gemm only (what `suite export` ships)
  int8-dynamic-conv    quantize_dynamic, QInt8 weights, every op type it supports, convolutions included
  int8-static-qop      like int8-static but QOperator format (QLinearConv, ...)     } --formats models
  int8-static-s8s8     like int8-static but QInt8 activations (S8S8)                } (resnet18 by default)
  int8-static-pertensor like int8-static but per-tensor weight scales               }

The ONNX files live in a temporary folder: only the JSON results are kept.
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

from suite.core.bench import BenchRow, bench_payload, bench_table, machine_info, run_bench  # noqa: E402
from suite.core.checkpoint import atomic_write_text  # noqa: E402
from suite.core.export import QUANT_CHOICES, export_onnx, quantize  # noqa: E402

OPSET = 18
DEFAULT_MODELS = "resnet18,mobilenet_v3_large,efficientnet_b0"
# variant -> (the suite's quantization kind, its settings): the suite's two, and the formats they were chosen over
QUANT = {
    "int8-static": ("int8-static", QUANT_CHOICES["int8-static"]),
    "int8-dynamic": ("int8-dynamic", QUANT_CHOICES["int8-dynamic"]),
    "int8-dynamic-conv": ("int8-dynamic", {"weight": "QInt8", "op_types": None}),  # None: every op (Conv too)
    "int8-static-qop": ("int8-static", {**QUANT_CHOICES["int8-static"], "format": "QOperator"}),
    "int8-static-s8s8": ("int8-static", {**QUANT_CHOICES["int8-static"], "activation": "QInt8"}),
    "int8-static-pertensor": ("int8-static", {**QUANT_CHOICES["int8-static"], "per_channel": False}),
}
FORMAT_VARIANTS = ("int8-static-qop", "int8-static-s8s8", "int8-static-pertensor")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat; NaN elsewhere). Nothing of ours runs
    while it samples, so it is other processes' share: a benchmark on a shared 2-core box needs ~0."""
    def sample():
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return math.nan
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_idle(limit_s: float, threshold: float = 0.1) -> float:
    """Wait (up to limit_s) until other processes use < threshold of the CPUs; returns the last reading."""
    deadline = time.monotonic() + limit_s
    busy = cpu_busy()
    while busy >= threshold and time.monotonic() < deadline:
        log(f"other processes use {busy:.0%} of the CPUs; waiting for the machine to go idle")
        time.sleep(10)
        busy = cpu_busy()
    return busy


# ---------------------------------------------------------------- export and quantization


def model_factory(name: str):
    """Picklable zero-argument factory (the benchmark rebuilds the model in its worker process)."""
    import torchvision

    return functools.partial(torchvision.models.get_model, name, weights=None, num_classes=1000)


def calibration_batches(size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """n random-normal images in batches of up to 8 (random data: fine for speed, not for accuracy)."""
    rng = np.random.default_rng(seed)
    sizes = [min(8, n - i) for i in range(0, n, 8)]
    return [rng.standard_normal((b, 3, size, size)).astype(np.float32) for b in sizes]


def make_variants(model, size: int, folder: Path, names: list[str], calib_n: int) -> tuple[dict[str, Path], dict]:
    """fp32 through the suite's exporter, then each int8 variant through the suite's quantizer."""
    import torch

    from suite.vision.task import EXPORT_IO

    info: dict = {}
    fp32 = folder / "model.onnx"
    start = time.perf_counter()
    example = torch.randn(2, 3, size, size)  # batch 2: a size-1 dim would be specialized by torch.export
    info["exporter"] = export_onnx(model, example, fp32, OPSET, EXPORT_IO)
    info["export_s"] = round(time.perf_counter() - start, 1)
    variants = {"fp32": fp32}
    if len(names) > 1:
        calib = calibration_batches(size, calib_n)
        info["calibration"] = f"{calib_n} random-normal images (seed 0)"
        info["quantize_s"], info["quantization"] = {}, {}
        for name in names[1:]:
            kind, choice = QUANT[name]
            start = time.perf_counter()
            info["quantization"][name] = quantize(fp32, kind, folder / f"model.{name}.onnx", calib, choice=choice)
            info["quantize_s"][name] = round(time.perf_counter() - start, 1)
            variants[name] = folder / f"model.{name}.onnx"
    return variants, info


# ---------------------------------------------------------------- one model


def sweep(factory, variants: dict[str, Path], size: int, threads: int, warmup: int, iters: int,
          repeats: int) -> list[dict]:
    """Batch 1 only: what the goals depend on. ORT graph optimization levels, and 1 thread vs `threads`."""
    out = []
    pair = {k: variants[k] for k in ("fp32", "int8-static") if k in variants}
    for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
        for r in run_bench(None, pair, (3, size, size), [1], threads, compile=False, warmup=warmup, iters=iters,
                           repeats=repeats, session_options={"graph_optimization_level": level}):
            out.append({"setting": f"graph_optimization_level={level}", **r.to_json()})
    if threads != 1:
        for r in run_bench(factory, pair, (3, size, size), [1], 1, compile=False, warmup=warmup, iters=iters,
                           repeats=repeats):
            out.append({"setting": "threads=1", **r.to_json()})
    return out


def bench_model(name: str, args, command: str) -> Path:
    import torch

    torch.manual_seed(0)
    factory = model_factory(name)
    model = factory().eval()
    names = ["fp32", "int8-static", "int8-dynamic"]
    if not args.quick:
        names.append("int8-dynamic-conv")
    if name in args.formats:
        names += FORMAT_VARIANTS
    busy = wait_idle(args.wait_idle) if args.wait_idle else cpu_busy(1.0)
    if busy >= 0.1:
        log(f"WARNING: other processes use {busy:.0%} of the CPUs: timings will be noisy")
    load_before = load()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        log(f"{name}: export + quantize ({', '.join(names)})")
        variants, info = make_variants(model, args.size, Path(tmp), names, args.calib)
        del model
        log(f"{name}: benchmark, batch {args.batch_sizes}, {args.threads} threads, {args.iters} iters, "
            f"{args.repeats} workers per configuration")
        rows = run_bench(factory, variants, (3, args.size, args.size), args.batch_sizes, args.threads,
                         compile=args.compile, isolate=True, warmup=args.warmup, iters=args.iters,
                         repeats=args.repeats,
                         compile_timeout_s=args.compile_timeout, progress=lambda m: log(f"{name}: {m}"))
        sweeps = []
        if name in args.sweep:
            log(f"{name}: sweep (ORT graph optimization levels, 1 thread), batch 1")
            sweeps = sweep(factory, variants, args.size, args.threads, args.warmup, args.iters, args.repeats)
    import torchvision

    payload = bench_payload(rows, model=name, image_size=args.size, batch_sizes=args.batch_sizes,
                            repeats=args.repeats, command=command, torchvision=torchvision.__version__,
                            weights="random init (seed 0)",
                            **info, compile_timeout_s=args.compile_timeout,
                            load_avg_1min={"before": round(load_before, 2), "after": round(load(), 2)},
                            other_cpu_busy_before=round(busy, 3),
                            wall_s=round(time.perf_counter() - start, 1), sweep=sweeps)
    path = atomic_write_text(Path(args.out) / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    print(f"\n## {name} ({args.size} px)\n\n{bench_table(rows)}\n", flush=True)
    log(f"{name}: wrote {path} ({payload['wall_s']} s)")
    return path


# ---------------------------------------------------------------- README tables


def _rows(payload: dict) -> list[BenchRow]:
    return [BenchRow.from_json(r) for r in payload["rows"]]


def _get(rows, runtime, precision, batch) -> BenchRow | None:
    return next((r for r in rows if (r.runtime, r.precision, r.batch) == (runtime, precision, batch)
                 and r.measured), None)


def _x(a: BenchRow | None, b: BenchRow | None) -> str:
    return "—" if a is None or b is None else f"{a.items_per_s / b.items_per_s:.2f}x"


def report(folder: Path) -> str:
    """Markdown tables (ratios of items/s measured in one run) from RESULTS/*.json."""
    # this script's files only: the folder also holds the detection, speech and training benchmarks' JSON
    payloads = [d for d in (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))
                if {"model", "batch_sizes", "rows"} <= d.keys() and d.get("task", "image-classification") ==
                "image-classification" and "clip_seconds" not in d]
    if not payloads:
        raise SystemExit(f"no results in {folder}")
    out = ["| model | batch | torch eager items/s | torch.compile / eager | ORT fp32 / eager | "
           "int8-static / ORT fp32 | int8-dynamic / ORT fp32 | int8-dynamic-conv / ORT fp32 | "
           "int8-static / eager |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in payloads:
        rows = _rows(p)
        for b in p["batch_sizes"]:
            eager, ort = _get(rows, "torch", "fp32", b), _get(rows, "onnxruntime", "fp32", b)
            comp = _get(rows, "torch.compile", "fp32", b)
            q = {n: _get(rows, "onnxruntime", n, b) for n in ("int8-static", "int8-dynamic", "int8-dynamic-conv")}
            ips = f"{eager.items_per_s:.1f}" if eager else "—"
            out.append(f"| {p['model']} | {b} | {ips} | {_x(comp, eager)} | {_x(ort, eager)} | "
                       f"{_x(q['int8-static'], ort)} | {_x(q['int8-dynamic'], ort)} | "
                       f"{_x(q['int8-dynamic-conv'], ort)} | {_x(q['int8-static'], eager)} |")
    out += ["", "| model | batch | runtime | precision | p50 ms | p95 ms | items/s | size MB | peak RSS MB | note |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for p in payloads:
        for r in sorted(_rows(p), key=lambda r: r.batch):
            f = (lambda v, d=1: "—" if v is None or not math.isfinite(v) else f"{v:.{d}f}")
            out.append(f"| {p['model']} | {r.batch} | {r.runtime} | {r.precision} | {f(r.p50_ms, 2)} | "
                       f"{f(r.p95_ms, 2)} | {f(r.items_per_s)} | {f(r.size_mb)} | {f(r.peak_rss_mb, 0)} | {r.note} |")
    for p in payloads:
        rows = _rows(p)
        if not any(r.precision in FORMAT_VARIANTS for r in rows):
            continue
        out += ["", f"{p['model']}: int8 formats (speed-up = items/s vs ORT fp32 at the same batch)", "",
                "| batch | variant | quantization | p50 ms | vs ORT fp32 |", "|---:|---|---|---:|---:|"]
        for b in p["batch_sizes"]:
            ort = _get(rows, "onnxruntime", "fp32", b)
            for n in ("fp32", "int8-static", *FORMAT_VARIANTS, "int8-dynamic", "int8-dynamic-conv"):
                r = _get(rows, "onnxruntime", n, b)
                if r is None:
                    continue
                q = p.get("quantization", {}).get(n, {})
                desc = ", ".join(f"{k}={v}" for k, v in q.items() if k != "method") or "—"
                out.append(f"| {b} | {n} | {desc} | {r.p50_ms:.2f} | {_x(r, ort)} |")
    for p in payloads:
        if not p.get("sweep"):
            continue
        out += ["", f"{p['model']}: batch-1 sweep", "", "| setting | runtime | precision | p50 ms | items/s |",
                "|---|---|---|---:|---:|"]
        for s in p["sweep"]:
            if s["p50_ms"] is None:
                out.append(f"| {s['setting']} | {s['runtime']} | {s['precision']} | — | — |")
                continue
            out.append(f"| {s['setting']} | {s['runtime']} | {s['precision']} | {s['p50_ms']:.2f} | "
                       f"{s['items_per_s']:.1f} |")
    goals = [p for p in payloads if p["model"] == "resnet18" and 1 in p["batch_sizes"]]
    for p in goals:
        rows = _rows(p)
        eager, ort, st = (_get(rows, "torch", "fp32", 1), _get(rows, "onnxruntime", "fp32", 1),
                          _get(rows, "onnxruntime", "int8-static", 1))
        if eager and ort and st:
            g1, g2 = ort.items_per_s / eager.items_per_s, st.items_per_s / ort.items_per_s
            out += ["", f"Goals (resnet18, {p['image_size']} px, batch 1): ORT fp32 / torch eager = {g1:.2f}x "
                        f"(goal >= 1.8x: {'met' if g1 >= 1.8 else 'NOT met'}); int8-static / ORT fp32 = {g2:.2f}x "
                        f"(goal >= 2.5x: {'met' if g2 >= 2.5 else 'NOT met'})"]
    return "\n".join(out)


# ---------------------------------------------------------------- command line


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip() and t.strip().lower() != "none"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help=f"comma-separated torchvision names (default {DEFAULT_MODELS})")
    ap.add_argument("--batch-sizes", help="comma-separated (default 1,8)")
    ap.add_argument("--size", type=int, help="image size in px (default 224)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch and ORT threads (default: all cores)")
    ap.add_argument("--warmup", type=int, help="untimed calls per row (default 5)")
    ap.add_argument("--iters", type=int, help="timed calls per row (default 30)")
    ap.add_argument("--repeats", type=int, help="fresh workers per configuration, run round-robin; the median "
                                                "by p50 is kept (default 3)")
    ap.add_argument("--calib", type=int, help="calibration images for int8-static (default 32)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", default=None, help="skip torch.compile")
    ap.add_argument("--compile-timeout", type=float, default=300.0,
                    help="cap in s on one model's torch.compile worker (all batch sizes) (default 300)")
    ap.add_argument("--formats", help="models that also get the QOperator / S8S8 / per-tensor int8-static "
                                      "variants (default resnet18; 'none' for none)")
    ap.add_argument("--sweep", help="models that get the batch-1 sweep of ORT graph optimization levels and "
                                    "1 thread (default resnet18; 'none' for none)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each model, wait up to S seconds for other processes to leave the CPUs idle")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for <model>.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: resnet18, 64 px, batch 1, 3 iters, no "
                                                         "torch.compile, fp32/int8-static/int8-dynamic only")
    ap.add_argument("--report", metavar="DIR", help="print the README tables from DIR/*.json and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(Path(args.report)))
        return 0

    quick = args.quick
    args.models = _csv(args.models or ("resnet18" if quick else DEFAULT_MODELS))
    args.batch_sizes = [int(b) for b in _csv(args.batch_sizes or ("1" if quick else "1,8"))]
    args.size = args.size or (64 if quick else 224)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 5)
    args.iters = args.iters or (3 if quick else 30)
    args.repeats = args.repeats or (1 if quick else 3)
    args.calib = args.calib or (4 if quick else 32)
    args.compile = (not quick) if args.compile is None else args.compile
    args.formats = _csv(args.formats if args.formats is not None else ("none" if quick else "resnet18"))
    args.sweep = _csv(args.sweep if args.sweep is not None else ("none" if quick else "resnet18"))
    command = shlex.join(["python", *([sys.argv[0]] if argv is None else ["benchmarks/bench_vision.py"]),
                          *(sys.argv[1:] if argv is None else argv)])

    import torchvision

    known = set(torchvision.models.list_models(module=torchvision.models))
    unknown = [m for m in args.models if m not in known]
    if unknown:
        ap.error(f"unknown torchvision classification model(s): {', '.join(unknown)}")
    info = machine_info()
    log(f"{info['cpu_model']}, {info['cpu_cores']} cores, torch {info.get('torch')}, onnxruntime "
        f"{info.get('onnxruntime')}; load average {load():.2f}")
    for name in args.models:
        bench_model(name, args, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
