"""core/bench.py and benchmarks/bench_vision.py: timings, isolation, time cap, JSON, chart, table."""
from __future__ import annotations

import functools
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from suite.core import bench as B
from suite.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def tiny_onnx(path: Path) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, dynamic batch, built directly (no exporter)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in [("w", (8, 3, 3, 3)), ("b", (8,)), ("fc_w", (5, 8)), ("fc_b", (5,))]]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def check_rows(rows, runtime, precision, batches, threads):
    assert [(r.runtime, r.precision, r.batch) for r in rows] == [(runtime, precision, b) for b in batches]
    for r in rows:
        assert r.measured and math.isfinite(r.p50_ms) and math.isfinite(r.p95_ms)
        assert 0 < r.p50_ms <= r.p95_ms
        # items/s is batch / mean latency. Half the calls take at least p50, so the mean is at least p50 / 2 and
        # items/s at most 2 x batch / p50 (a unit slip, ms for s, breaks it by 1000x); no lower bound holds: one slow
        # call while the other pytest worker runs can put the mean at 4x p50 for sub-millisecond calls
        assert 0 < r.items_per_s <= 2 * r.batch / (r.p50_ms / 1e3) * (1 + 1e-9)
        assert r.threads == threads and r.peak_rss_mb > 0 and r.iters >= 1


def test_bench_torch_in_process_rows_and_restores_threads():
    before = torch.get_num_threads()
    model = TinyNet()
    rows = B.bench_torch(model, (3, 16, 16), [1, 3], threads=1, warmup=1, iters=5)
    check_rows(rows, "torch", "fp32", [1, 3], 1)
    expected_mb = sum(p.numel() * 4 for p in model.state_dict().values()) / 2**20
    assert rows[0].size_mb == pytest.approx(expected_mb)
    assert "in-process" in rows[0].note
    assert torch.get_num_threads() == before


def test_bench_onnx_in_process(tmp_path):
    path = tiny_onnx(tmp_path / "tiny.onnx")
    rows = B.bench_onnx(path, (3, 16, 16), [1, 4], threads=1, precision="fp32", warmup=1, iters=5)
    check_rows(rows, "onnxruntime", "fp32", [1, 4], 1)
    assert rows[0].size_mb == pytest.approx(path.stat().st_size / 2**20)
    overridden = B.bench_onnx(path, (3, 16, 16), [1], 1, "fp32", 0, 2,
                              session_options={"graph_optimization_level": "ORT_ENABLE_BASIC"})
    assert "ORT_ENABLE_BASIC" in overridden[0].note
    _, settings = B.make_ort_session(path, 2)
    assert settings["intra_op_num_threads"] == 2 and settings["inter_op_num_threads"] == 1
    assert settings["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert settings["execution_mode"] == "ORT_SEQUENTIAL"


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        B.run_bench(None, {"fp32": tmp_path / "missing.onnx"}, (3, 16, 16), [1])
    with pytest.raises(UserError, match="batch sizes"):
        B.bench_onnx(tiny_onnx(tmp_path / "t.onnx"), (3, 16, 16), [0], 1, "fp32")
    with pytest.raises(UserError, match="threads"):
        B.bench_torch(TinyNet(), (3, 16, 16), [1], threads=0)


def test_repeats_keep_the_median_run(tmp_path):
    path = tiny_onnx(tmp_path / "tiny.onnx")
    rows = B.run_bench(TinyNet, {"fp32": path}, (3, 16, 16), [1, 2], threads=1, compile=False, isolate=False,
                       warmup=0, iters=3, repeats=3)
    assert [(r.runtime, r.batch) for r in rows] == [("torch", 1), ("torch", 2), ("onnxruntime", 1), ("onnxruntime", 2)]
    for r in rows:
        assert "median of 3 runs by p50" in r.note
        low, high = (float(v) for v in r.note.split("(p50 ")[1].split(" ms")[0].split("-"))
        assert low - 0.005 <= r.p50_ms <= high + 0.005  # the note rounds to 0.01 ms
    slow, mid, fast = (B.BenchRow("torch", "fp32", 1, p, p * 1.1, 1e3 / p, 1.0, rss, 1) for p, rss in
                       [(30.0, 100.0), (20.0, 300.0), (10.0, 200.0)])
    picked = B._median_row([slow, fast, mid], 3)
    assert picked.p50_ms == 20.0 and picked.peak_rss_mb == 300.0 and "10.00-30.00 ms" in picked.note


def test_failing_torch_compile_becomes_a_skipped_row(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    rows = B.bench_torch(TinyNet(), (3, 16, 16), [1, 2], threads=1, warmup=0, iters=2, compile=True)
    assert [(r.runtime, r.batch, r.measured) for r in rows] == [("torch.compile", 1, False),
                                                                ("torch.compile", 2, False)]
    assert all(r.note.startswith("skipped:") and "no C++ compiler" in r.note for r in rows)
    assert B.BenchRow.from_json(json.loads(json.dumps(rows[0].to_json()))).note == rows[0].note


def test_isolated_workers_measure_their_own_peak_and_obey_the_compile_cap(tmp_path):
    path = tiny_onnx(tmp_path / "tiny.onnx")
    factory = functools.partial(nn.Conv2d, 3, 4, 3)  # picklable: rebuilt in the worker
    rows = B.run_bench(factory, {"fp32": path}, (3, 16, 16), [1], threads=1, compile=True, isolate=True,
                       warmup=1, iters=3, compile_timeout_s=1.0)  # importing torch alone takes longer
    by = {r.runtime: r for r in rows}
    assert set(by) == {"torch", "torch.compile", "onnxruntime"}
    check_rows([by["onnxruntime"]], "onnxruntime", "fp32", [1], 1)
    check_rows([by["torch"]], "torch", "fp32", [1], 1)
    assert "in-process" not in by["onnxruntime"].note and "in-process" not in by["torch"].note
    # the onnxruntime worker never imports torch: its own peak is far below this process's (which has torch)
    assert by["onnxruntime"].peak_rss_mb < 0.8 * B._peak_rss_mb()
    assert by["torch"].size_mb == pytest.approx((4 * 3 * 3 * 3 + 4) * 4 / 2**20)
    compiled = by["torch.compile"]
    assert not compiled.measured and "1 s cap" in compiled.note


def test_write_bench_json_png_and_table(tmp_path):
    rows = [B.BenchRow("torch", "fp32", 1, 10.0, 12.0, 100.0, 44.6, 300.0, 2),
            B.BenchRow("torch.compile", "fp32", 1, math.nan, math.nan, math.nan, 44.6, math.nan, 2,
                       "skipped: did not finish within the 300 s cap"),
            B.BenchRow("onnxruntime", "fp32", 1, 5.5, 6.0, 180.0, 44.6, 150.0, 2),
            B.BenchRow("onnxruntime", "int8-static", 1, 2.0, 2.5, 450.0, 11.2, 120.0, 2),
            B.BenchRow("torch", "fp32", 8, 80.0, 90.0, 100.0, 44.6, 400.0, 2),
            B.BenchRow("onnxruntime", "fp32", 8, 40.0, 44.0, 200.0, 44.6, 200.0, 2)]
    js, png = B.write_bench(rows, tmp_path / "run")
    assert js == tmp_path / "run" / "bench.json" and png == tmp_path / "run" / "plots" / "bench.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 2000
    data = json.loads(js.read_text())  # strict JSON: NaN was written as null
    assert data["machine"]["cpu_cores"] >= 1 and data["machine"]["cpu_model"]
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["onnxruntime"]
    assert data["ort_session"]["intra_op_num_threads"] == 2 and data["ort_session"]["inter_op_num_threads"] == 1
    assert data["threads"] == [2] and len(data["rows"]) == 6
    assert data["rows"][1]["p50_ms"] is None
    assert [B.BenchRow.from_json(r).items_per_s for r in data["rows"]][2] == 180.0

    table = B.bench_table(rows)
    assert "vs torch eager fp32" in table and "vs ORT fp32" in table
    lines = {(c[1].strip(), c[2].strip(), c[3].strip()): c for c in (l.split("|") for l in table.splitlines()[2:])}
    assert lines[("onnxruntime", "fp32", "1")][7].strip() == "1.80x"  # vs torch eager, same batch
    assert lines[("onnxruntime", "int8-static", "1")][8].strip() == "2.50x"  # vs ORT fp32
    assert lines[("onnxruntime", "fp32", "8")][7].strip() == "2.00x"
    assert lines[("torch", "fp32", "1")][8].strip() == "—"
    assert "skipped" in lines[("torch.compile", "fp32", "1")][12]
    assert [l.split("|")[3].strip() for l in table.splitlines()[2:]] == ["1"] * 4 + ["8"] * 2  # grouped by batch


def test_bench_vision_quick_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_vision", ROOT / "benchmarks" / "bench_vision.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "results"
    assert script.main(["--quick", "--size", "32", "--iters", "2", "--warmup", "0", "--out", str(out)]) == 0
    data = json.loads((out / "resnet18.json").read_text())
    assert data["model"] == "resnet18" and data["image_size"] == 32 and data["command"].startswith("python ")
    assert "--quick" in data["command"] and data["exporter"].startswith("torch.onnx")
    got = {(r["runtime"], r["precision"]) for r in data["rows"]}
    assert got == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8-static"),
                   ("onnxruntime", "int8-dynamic")}
    assert all(r["p50_ms"] > 0 and r["batch"] == 1 and r["iters"] == 2 for r in data["rows"])
    sizes = {r["precision"]: r["size_mb"] for r in data["rows"] if r["runtime"] == "onnxruntime"}
    assert sizes["int8-static"] < 0.4 * sizes["fp32"]  # int8 weights really are a quarter of the bytes
    assert data["quantization"]["int8-static"]["activation"] == "QUInt8"
    dynamic, static = data["quantization"]["int8-dynamic"]["covers"], data["quantization"]["int8-static"]["covers"]
    assert (dynamic["int8_ops"], dynamic["weighted_ops"]) == (1, 21) and "convolutions stay fp32" in dynamic["note"]
    assert static["int8_ops"] == 21 and static["note"] == ""  # 20 convolutions and the Gemm
    assert "resnet18" in script.report(out) and list(out.iterdir()) == [out / "resnet18.json"]
