#!/usr/bin/env python
"""Inference benchmark of Wav2Vec2: torch eager vs onnxruntime fp32 and int8-dynamic, on 1 s and 5 s clips.

Models are random init at their real size (transformers' Wav2Vec2Config; weights do not change the speed),
keyword head (Wav2Vec2ForSequenceClassification, 35 classes) and CTC head (Wav2Vec2ForCTC, 32 tokens).
Export: `suite.speech.task.export_onnx` (dynamo, dynamic batch and time); int8-dynamic: what `suite export`
ships (onnxruntime quantize_dynamic, QInt8 weights, MatMul/Gemm only). Each runtime runs in its own worker
process (`suite.core.bench.run_bench`). Writes RESULTS/speech-<arch>-<head>.json.

    python benchmarks/bench_speech.py --arch wav2vec2-base --seconds 1,5 --out benchmarks/results
    python benchmarks/bench_speech.py --report benchmarks/results
    python benchmarks/bench_speech.py --quick --out /tmp/bench      # wav2vec2-tiny, 1 s, 3 iters
"""
from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_vision import log, wait_idle  # noqa: E402
from suite.core.bench import bench_payload, bench_table, run_bench  # noqa: E402
from suite.core.checkpoint import atomic_write_text  # noqa: E402

SAMPLE_RATE = 16000
HEADS = {"keywords": (False, 35), "ctc": (True, 32)}


def build(arch: str, head: str):
    """A picklable factory (module-level in suite.speech.wav2vec2): each worker rebuilds the seeded model."""
    from suite.speech import wav2vec2

    ctc, n = HEADS[head]
    return functools.partial(wav2vec2.random_export_model, arch, n, ctc)


def bench_one(arch: str, head: str, seconds: list[float], args) -> dict:
    import torch

    from suite.core.export import export_onnx, quantize
    from suite.speech.task import EXPORT_IO

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "model.onnx", Path(tmp) / "model.int8-dynamic.onnx"
        start = time.perf_counter()
        exporter = export_onnx(build(arch, head)(), torch.randn(2, SAMPLE_RATE), fp32, 18, EXPORT_IO)
        quantize(fp32, "int8-dynamic", int8, [])
        info = {"exporter": exporter, "export_and_quantize_s": round(time.perf_counter() - start, 1)}
        rows, clip_s = [], []
        for s in seconds:
            if args.wait_idle:
                wait_idle(args.wait_idle)
            log(f"{arch} {head} {s:g} s clips")
            rows += run_bench(build(arch, head), {"fp32": fp32, "int8-dynamic": int8},
                              (int(s * SAMPLE_RATE),), args.batch_sizes, threads=args.threads, compile=False,
                              warmup=args.warmup, iters=args.iters, repeats=args.repeats, progress=log)
            clip_s += [s] * (len(rows) - len(clip_s))
    payload = bench_payload(rows, model=arch, head=head, clip_seconds=seconds, **info,
                            command="python " + " ".join(shlex.quote(a) for a in sys.argv))
    for row, s in zip(payload["rows"], clip_s):
        row["clip_s"] = s
    return payload


def report(folder: Path) -> str:
    out = []
    for path in sorted(folder.glob("speech-*.json")):
        doc = json.loads(path.read_text())
        from suite.core.bench import BenchRow

        by_clip: dict = {}  # one table per clip length: speed-ups compare rows of the same input only
        for r in doc["rows"]:
            by_clip.setdefault(r.get("clip_s"), []).append(BenchRow.from_json(r))
        for s, rows in by_clip.items():
            clip = f"{s:g} s clips" if s is not None else "all clip lengths (older file: no clip_s per row)"
            out.append(f"## {doc['model']} {doc['head']}, {clip} ({SAMPLE_RATE} Hz)\n\n{bench_table(rows)}\n")
    return "\n".join(out) or f"no speech-*.json in {folder}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="wav2vec2-base")
    ap.add_argument("--heads", default="keywords,ctc")
    ap.add_argument("--seconds", default="1,5")
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--wait-idle", type=float, default=0.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="wav2vec2-tiny, 1 s, batch 1, 3 iters, 1 repeat")
    ap.add_argument("--report", metavar="DIR")
    args = ap.parse_args(argv)
    if args.report:
        print(report(Path(args.report)))
        return 0
    if args.quick:
        args.arch, args.seconds, args.iters, args.warmup, args.repeats = "wav2vec2-tiny", "1", 3, 1, 1
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    seconds = [float(s) for s in args.seconds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for head in args.heads.split(","):
        payload = bench_one(args.arch, head, seconds, args)
        path = out / f"speech-{args.arch}-{head}.json"
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        log(f"wrote {path}")
        print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
