"""Run a cascade bundle on every image in a folder and write {image file name: [boxes]} to a JSON file.

    python export/examples/cascade_to_json.py runs/c/export photos/ boxes.json [--conf 0.25]

Needs only suite_runtime (onnxruntime, numpy, Pillow); the JSON is written atomically (temp file, fsync, rename).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from suite_runtime import Bundle, Cascade

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="cascade bundle folder (model.json with task: cascade)")
    parser.add_argument("images", help="folder of .jpg/.jpeg/.png/.bmp images")
    parser.add_argument("output", help="JSON file to write")
    parser.add_argument("--conf", type=float, help="detector score threshold (default: model.json's)")
    args = parser.parse_args()
    cascade = Bundle.load(args.bundle)
    if not isinstance(cascade, Cascade):
        raise SystemExit(f"{args.bundle} is a '{cascade.meta.get('task')}' bundle, not a cascade")
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    start, timings = time.perf_counter(), {}
    results = {p.name: d.to_dicts() for p, d in zip(files, cascade.predict(files, conf=args.conf, timings=timings))}
    out = Path(args.output).resolve()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"{len(files)} images, {sum(map(len, results.values()))} boxes ({timings.get('crops', 0)} crops "
          f"classified) in {time.perf_counter() - start:.2f} s -> {out}")


if __name__ == "__main__":
    main()
