"""`suite-runtime predict BUNDLE FILES...`: one line per file, tab-separated or JSON.

argparse only, so the deploy package needs nothing beyond onnxruntime, numpy and Pillow.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from suite_runtime.bundle import Bundle, Prediction


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="suite-runtime", description="Run an exported finetune-suite bundle.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="predict image files with a bundle folder")
    p.add_argument("bundle", help="bundle folder written by `suite export` (holds model.json)")
    p.add_argument("files", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=1, help="labels to show per file (classification)")
    p.add_argument("--variant", help="fp32, int8-static, int8-dynamic (default: the bundle's default_variant)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all CPUs)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def format_line(path: str, p: Prediction, as_json: bool) -> str:
    if as_json:
        return json.dumps({"file": path, **dataclasses.asdict(p)})
    if p.value is not None:
        return f"{path}\t{p.value:.6g}"
    # top-1 first; with --top-k the further label/score pairs follow on the same line
    return "\t".join([path, *(f"{label}\t{score:.6f}" for label, score in p.scores.items())])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        bundle = Bundle.load(args.bundle, variant=args.variant, threads=args.threads)
        predictions = bundle.predict(args.files, batch_size=args.batch_size, top_k=args.top_k)
    except (OSError, ValueError) as e:  # user errors: missing bundle/file, unreadable image, bad option
        print(f"suite-runtime: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    for path, p in zip(args.files, predictions):
        print(format_line(path, p, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
