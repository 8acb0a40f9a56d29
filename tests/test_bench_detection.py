"""benchmarks/bench_detection.py --quick: YOLO and Faster R-CNN rows, output checks, not-run rows, report."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_detection", ROOT / "benchmarks" / "bench_detection.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def measured(data: dict) -> dict[tuple[str, str], dict]:
    return {(r["runtime"], r["precision"]): r for r in data["rows"] if r["p50_ms"] is not None}


def test_bench_detection_quick_end_to_end(tmp_path):
    script = load_script()
    out = tmp_path / "results"
    # in-process and 1 thread: the smallest run that still goes through export, int8 and every runtime
    argv = ["--quick", "--sizes", "32", "--warmup", "0", "--iters", "2", "--threads", "1", "--in-process",
            "--out", str(out)]
    assert script.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["detection-fasterrcnn_mobilenet_v3_large_320_fpn-32.json",
                                                     "detection-yolo11n-32.json"]

    yolo = json.loads((out / "detection-yolo11n-32.json").read_text())
    assert yolo["task"] == "detection" and yolo["image_size"] == 32 and "--quick" in yolo["command"]
    rows = measured(yolo)
    assert set(rows) == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8-static")}
    assert all(r["p50_ms"] > 0 and r["items_per_s"] > 0 and r["batch"] == 1 and r["iters"] == 2 for r in rows.values())
    assert rows[("onnxruntime", "int8-static")]["size_mb"] < 0.4 * rows[("onnxruntime", "fp32")]["size_mb"]
    assert "letterbox-like" in yolo["calibration"]
    assert yolo["output_check"]["fp32"]["finite"] and yolo["output_check"]["fp32"]["scores_max_abs_diff"] < 1e-3
    skipped = [r for r in yolo["rows"] if r["p50_ms"] is None]
    assert [r["precision"] for r in skipped] == ["int8-dynamic"] and skipped[0]["note"].startswith("not run: ")

    frcnn = json.loads((out / "detection-fasterrcnn_mobilenet_v3_large_320_fpn-32.json").read_text())
    rows = measured(frcnn)
    assert set(rows) == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8-dynamic")}
    assert all(r["p50_ms"] > 0 and r["batch"] == 1 for r in rows.values()) and frcnn["batch_sizes"] == [1]
    assert "int8-static" in frcnn["not_valid"]
    dense = frcnn["output_check_dense"]  # score_thresh 0: every image returns the 100-box cap
    assert dense["torch fp32"]["detections"] == 100
    for name in ("onnxruntime fp32", "onnxruntime int8-dynamic"):
        assert dense[name]["detections"] == 100 and dense[name]["finite"] and dense[name]["inside_image"]
    assert dense["onnxruntime fp32"]["scores_sorted_max_abs_diff"] < 1e-4

    text = script.report(out)
    assert "| yolo11n | 32 | 1 |" in text and "int8-dynamic" in text and "Not run:" in text
