"""benchmarks/bench_speech.py --quick: torch vs onnxruntime fp32 and int8-dynamic rows for a tiny Wav2Vec2."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bench_speech", ROOT / "benchmarks" / "bench_speech.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # it puts the repository root on sys.path, as when run from a checkout
    return script


def test_quick_speech_benchmark_writes_rows(tmp_path, capsys):
    assert _script().main(["--quick", "--heads", "keywords", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "speech-wav2vec2-tiny-keywords.json").read_text())
    got = {(r["runtime"], r["precision"]) for r in doc["rows"]}
    assert got == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8-dynamic")}
    assert all(r["p50_ms"] > 0 and r["batch"] == 1 for r in doc["rows"])
    assert doc["clip_seconds"] == [1.0] and "int8-dynamic" in capsys.readouterr().out
    assert [r["clip_s"] for r in doc["rows"]] == [1.0] * 3
    assert "wav2vec2-tiny keywords, 1 s clips" in _script().report(tmp_path)
