"""`suite-runtime predict BUNDLE FILES...`: tab-separated lines or JSON, one per file (per box for detection and
cascade bundles).

argparse only, so the deploy package needs nothing beyond onnxruntime, numpy, Pillow, soundfile and soxr.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

from suite_runtime.bundle import Bundle, Prediction
from suite_runtime.cascade import Cascade, CascadeDetections
from suite_runtime.detection import Detections, draw


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="suite-runtime", description="Run an exported finetune-suite bundle.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="predict image or audio files with a bundle folder")
    p.add_argument("bundle", help="bundle folder written by `suite export` (holds model.json)")
    p.add_argument("files", nargs="+", help="image files, or audio files (any format soundfile reads)")
    p.add_argument("--top-k", type=int, default=1, help="labels to show per file (classification)")
    p.add_argument("--variant", help="fp32, int8-static, int8-dynamic (default: the bundle's default_variant)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all CPUs)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (per file)")
    p.add_argument("--conf", type=float, help="detection: keep boxes scoring above this; cascade: the detector's "
                                              "score threshold (the printed score is detector x classifier) "
                                              "(default: model.json's)")
    p.add_argument("--iou", type=float, help="detection, cascade: NMS IoU threshold (default: model.json's)")
    p.add_argument("--draw", metavar="DIR", help="detection, cascade: write each image with its boxes drawn to "
                                                 "DIR/NAME.png")
    return parser


def format_line(path: str, p: Prediction, as_json: bool) -> str:
    """`file<TAB>label<TAB>score`, `file<TAB>value` (regression), `file<TAB>transcript` (CTC), or one JSON object."""
    if as_json:
        fields = dataclasses.asdict(p)
        if fields["text"] is None:  # only speech recognition has it; other bundles' JSON stays as it was
            del fields["text"]
        return json.dumps({"file": path, **fields})
    if p.text is not None:
        return f"{path}\t{p.text}"
    if p.value is not None:
        return f"{path}\t{p.value:.6g}"
    # top-1 first; with --top-k the further label/score pairs follow on the same line
    return "\t".join([path, *(f"{label}\t{score:.6f}" for label, score in p.scores.items())])


def format_detections(path: str, d: Detections, as_json: bool) -> list[str]:
    """One JSON line for the file, or one `file<TAB>label<TAB>score<TAB>x1,y1,x2,y2` line per box."""
    if as_json:
        return [json.dumps({"file": path, "detections": d.to_dict()})]
    return [f"{path}\t{name}\t{score:.6f}\t{','.join(f'{v:.2f}' for v in box)}"
            for name, score, box in zip(d.names, d.scores, d.boxes.tolist())]


def format_cascade(path: str, d: CascadeDetections, as_json: bool) -> list[str]:
    """One JSON line for the file, or one `file<TAB>label<TAB>score<TAB>x1,y1,x2,y2<TAB>detector label<TAB>detector
    score` line per box: the fine label and combined score where detection has its label and score."""
    if as_json:
        return [json.dumps({"file": path, "detections": d.to_dicts()})]
    return [f"{path}\t{name}\t{score:.6f}\t{','.join(f'{v:.2f}' for v in box)}\t{det}\t{det_score:.6f}"
            for name, score, box, det, det_score in zip(d.names, d.scores, d.boxes.tolist(), d.det_names,
                                                        d.det_scores)]


def draw_targets(folder: str, files: Sequence[str]) -> list[Path]:
    """DIR/NAME.png for each input (NAME_2.png, ... when names repeat); refuses DIR holding an input."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--draw {folder} is a file; give a folder for the annotated images")
    for f in files:
        if Path(f).resolve().parent == out.resolve():
            raise ValueError(f"--draw {folder} holds the input {f}; choose another folder so inputs stay untouched")
    targets, seen = [], {}
    for f in files:
        stem = Path(f).stem
        seen[stem] = seen.get(stem, 0) + 1
        targets.append(out / (f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png"))
    return targets


def _error(e: Exception) -> int:
    print(f"suite-runtime: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        bundle = Bundle.load(args.bundle, variant=args.variant, threads=args.threads)
        if args.draw and not bundle.is_detector:
            raise ValueError(f"--draw needs a detection bundle; {args.bundle} is task '{bundle.meta.get('task')}'")
        targets = draw_targets(args.draw, args.files) if args.draw else []  # checked before any work
        if isinstance(bundle, Cascade):
            predictions = bundle.predict(args.files, conf=args.conf, iou=args.iou, batch_size=args.batch_size)
        else:
            predictions = bundle.predict(args.files, batch_size=args.batch_size, top_k=args.top_k, conf=args.conf,
                                         iou=args.iou)
    except (OSError, ValueError) as e:  # user errors: missing bundle/file, unreadable image, bad option
        return _error(e)
    for path, p in zip(args.files, predictions):
        if isinstance(p, CascadeDetections):
            lines = format_cascade(path, p, args.json)
        elif isinstance(p, Detections):
            lines = format_detections(path, p, args.json)
        else:
            lines = [format_line(path, p, args.json)]
        for line in lines:
            print(line)
    try:
        if targets:
            targets[0].parent.mkdir(parents=True, exist_ok=True)
        for path, p, target in zip(args.files, predictions, targets):
            draw(path, p).save(target)
    except (OSError, ValueError) as e:
        return _error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
