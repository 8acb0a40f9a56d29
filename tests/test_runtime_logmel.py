"""suite_runtime's Whisper log-mel features: the numpy filter bank and spectrogram against transformers'
WhisperFeatureExtractor, the preprocess spec's checks, and a log-mel bundle served end to end from audio files
(a tiny hand-built ONNX graph, no torch export).

Measured max abs diff of ``log_mel`` against WhisperFeatureExtractor: 1.2e-7 against its numpy path (the
contract), 2.4e-5 against its torch path (``torch.stft`` in float32, what training uses with torch installed);
the filter banks are bit-identical. The asserted bound, 1e-4, sits above both.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import transformers.models.whisper.feature_extraction_whisper as whisper_fe
from onnx import TensorProto, helper, numpy_helper
from transformers import WhisperFeatureExtractor

from suite_runtime import AudioSpec, Bundle, preprocess_audio, read_audio, softmax
from suite_runtime.audio import log_mel, mel_filters

SR = 16000
LABELS = ["bird", "engine", "voice"]
LOG_MEL = {"type": "audio", "sample_rate": SR, "normalize": False, "features": "log_mel", "window_samples": 16000}
LEFT_OUT = "left out"  # a model.json key dropped from LOG_MEL


def spec(window: int = 16000, **extra) -> AudioSpec:
    return AudioSpec.from_dict({**LOG_MEL, "window_samples": window, **extra})


def whisper(x: np.ndarray, window: int, numpy_path: bool) -> np.ndarray:
    """WhisperFeatureExtractor's features for one clip, through its numpy path or (torch installed) its torch one."""
    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=SR, hop_length=160, n_fft=400, chunk_length=30)
    with pytest.MonkeyPatch.context() as mp:
        if numpy_path:
            mp.setattr(whisper_fe, "is_torch_available", lambda: False)
        return fe(x, sampling_rate=SR, padding="max_length", max_length=window, truncation=True,
                  return_tensors="np").input_features[0]


def sound(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "noise":  # 1 s of white noise
        return (0.1 * rng.standard_normal(SR)).astype(np.float32)
    if kind == "sine":  # 0.7 s, zero-padded to the window
        return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(0.7 * SR)) / SR)).astype(np.float32)
    if kind == "silence":
        return np.zeros(SR // 2, np.float32)
    t = np.arange(int(2.5 * SR)) / SR  # "long": 2.5 s, cut to the window
    return (0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


# ----------------------------------------------------------------------------- parity with WhisperFeatureExtractor


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_whisper_feature_extractors(n_mels):
    ours = mel_filters(SR, 400, n_mels)
    ref = WhisperFeatureExtractor(feature_size=n_mels).mel_filters
    assert ours.shape == ref.shape == (201, n_mels)
    assert np.abs(ours - ref).max() <= 1e-6
    assert mel_filters(SR, 400, n_mels) is ours and not ours.flags.writeable  # cached, so read-only


@pytest.mark.parametrize("kind", ["noise", "sine", "silence", "long"])
def test_log_mel_equals_whisper_feature_extractor(kind):
    x = sound(kind)
    ours = log_mel(x, spec())
    assert ours.dtype == np.float32 and ours.shape == (80, 100)
    for numpy_path in (True, False):
        ref = whisper(x, 16000, numpy_path)
        assert ref.shape == ours.shape
        assert np.abs(ours - ref).max() <= 1e-4, (kind, numpy_path)
    if kind == "long":  # cut to the window: the rest of the clip changes nothing
        assert np.array_equal(ours, log_mel(x[:16000], spec()))
    if kind == "silence":
        assert np.all(ours == ours[0, 0])  # everything at the floor: log10(1e-10), (-10 + 4) / 4
        assert ours[0, 0] == pytest.approx(-1.5)
    else:
        assert ours.std() > 0.05


def test_log_mel_with_whispers_30_second_window():
    x = sound("long")
    ours = log_mel(x, spec(480000))
    assert ours.shape == (80, 3000)
    for numpy_path in (True, False):
        assert np.abs(ours - whisper(x, 480000, numpy_path)).max() <= 1e-4


# ----------------------------------------------------------------------------- the preprocess spec


def test_waveform_specs_keep_their_meaning():
    old = AudioSpec.from_dict({"type": "audio", "sample_rate": SR, "normalize": True, "max_seconds": None})
    assert old.features is None and old.window_samples is None and old.frames is None
    x = sound("noise")
    assert preprocess_audio(x, old).shape == (SR,)  # still the normalised waveform
    s = spec()
    assert (s.features, s.n_mels, s.n_fft, s.hop_length, s.window_samples, s.frames) == ("log_mel", 80, 400, 160,
                                                                                         16000, 100)
    assert np.array_equal(preprocess_audio(x, s), log_mel(x, s))
    assert np.array_equal(preprocess_audio(sound("long"), spec(max_seconds=0.5)), log_mel(sound("long")[:8000], s))
    with pytest.raises(ValueError, match="log_mel needs an AudioSpec with features"):
        log_mel(x, old)


@pytest.mark.parametrize("changes,message", [
    ({"features": "mfcc"}, r"features must be null \(the waveform\) or \"log_mel\" \(got 'mfcc'\)"),
    ({"window_samples": None}, r"needs window_samples, a positive multiple of hop_length 160"),
    ({"window_samples": 16001}, r"positive multiple of hop_length 160 .*got 16001"),
    ({"window_samples": 0}, r"positive multiple of hop_length"),
    ({"window_samples": 320, "hop_length": 0}, r"hop_length must be a positive integer"),
    ({"n_mels": 0}, r"n_mels must be a positive integer"),
    ({"n_mels": True}, r"n_mels must be a positive integer"),
    ({"n_fft": 401}, r"n_fft must be a positive even integer"),
    ({"normalize": True}, r"takes the raw waveform, so normalize must be false"),
    ({"normalize": LEFT_OUT}, r"normalize must be false \(it defaults to true\)"),
    ({"features": None}, r"window_samples \(16000\) applies only with features \"log_mel\""),
])
def test_bad_log_mel_specs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        AudioSpec.from_dict({k: v for k, v in {**LOG_MEL, **changes}.items() if v != LEFT_OUT})


# ----------------------------------------------------------------------------- a log-mel bundle end to end

WEIGHT = np.random.default_rng(1).standard_normal((80, 3)).astype(np.float32) * 0.3  # logits of order 1


def write_bundle(folder: Path, dims: list, preprocess: dict = LOG_MEL) -> Path:
    """input_features [batch, 80, 100] -> ReduceMean over frames -> MatMul [80, 3] -> logits, built directly
    (for 2-D ``dims``, [batch, n] -> MatMul [n, 3]: a waveform-shaped graph)."""
    folder.mkdir()
    if len(dims) == 2:
        inits = [numpy_helper.from_array(np.ones((dims[1], 3), np.float32), "w")]
        nodes = [helper.make_node("MatMul", ["input_features", "w"], ["logits"])]
    else:
        inits = [numpy_helper.from_array(np.array([2], np.int64), "axes"), numpy_helper.from_array(WEIGHT, "w")]
        nodes = [helper.make_node("ReduceMean", ["input_features", "axes"], ["pooled"], keepdims=0),
                 helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny_whisper",
                              [helper.make_tensor_value_info("input_features", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    meta = {"format_version": 1, "task": "speech-classification", "labels": LABELS,
            "input": {"name": "input_features", "shape": dims, "dtype": "float32"},
            "preprocess": preprocess, "postprocess": {"type": "softmax"},
            "variants": {"fp32": {"file": "model.onnx"}}, "default_variant": "fp32"}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def clips(tmp_path) -> list[str]:
    """A 0.6 s tone with noise at 16 kHz, and a 1.5 s sweep at 8 kHz int16 (resampled, then cut to 1 s)."""
    t16, t8 = np.arange(int(0.6 * SR)) / SR, np.arange(int(1.5 * 8000)) / 8000
    a = 0.4 * np.sin(2 * np.pi * 440 * t16) + 0.05 * np.random.default_rng(2).standard_normal(len(t16))
    b = 0.5 * np.sin(2 * np.pi * (100 + 600 * t8) * t8)
    sf.write(str(tmp_path / "a.wav"), a.astype(np.float32), SR, subtype="FLOAT")
    sf.write(str(tmp_path / "b.wav"), np.round(b * 32767).astype(np.int16), 8000, subtype="PCM_16")
    return [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]


def expected_scores(path: str) -> np.ndarray:
    """The graph's math in numpy on the runtime's own features, then softmax."""
    return softmax(log_mel(read_audio(path, SR), spec()).mean(axis=1, dtype=np.float64) @ WEIGHT)


def test_log_mel_bundle_predicts_from_files(tmp_path, clips, monkeypatch):
    bundle = Bundle.load(write_bundle(tmp_path / "export", ["batch", 80, 100]))
    shapes = []
    run = bundle.run
    monkeypatch.setattr(bundle, "run", lambda batch: shapes.append(batch.shape) or run(batch))
    preds = bundle.predict(clips, top_k=3)
    assert shapes == [(2, 80, 100)]  # one shape, one run
    for pred, path in zip(preds, clips):
        ref = expected_scores(path)
        order = np.argsort(-ref, kind="stable")
        assert pred.label == LABELS[order[0]] and list(pred.scores) == [LABELS[i] for i in order]
        assert np.abs(np.array(list(pred.scores.values())) - ref[order]).max() <= 1e-5
    assert preds[0].label != preds[1].label and max(p.score for p in preds) < 0.9  # not saturated: 1e-5 means something
    assert bundle.preprocess(clips[1]).shape == (80, 100)
    shapes.clear()
    alone = [bundle.predict(c, top_k=3)[0] for c in clips]
    assert shapes == [(1, 80, 100)] * 2 and [p.label for p in alone] == [p.label for p in preds]


def test_log_mel_graph_with_a_fixed_batch(tmp_path, clips, monkeypatch):
    """A fixed batch of 2 and three clips: the last run is zero-padded to two rows, one of which is dropped."""
    bundle = Bundle.load(write_bundle(tmp_path / "export", [2, 80, 100]))
    shapes = []
    run = bundle.run
    monkeypatch.setattr(bundle, "run", lambda batch: shapes.append(batch.shape) or run(batch))
    preds = bundle.predict([*clips, clips[0]], top_k=3)
    assert shapes == [(2, 80, 100), (2, 80, 100)]
    assert [p.scores for p in preds] == [preds[0].scores, preds[1].scores, preds[0].scores]
    assert np.abs(np.array([preds[1].scores[x] for x in LABELS]) - expected_scores(clips[1])).max() <= 1e-5


def test_log_mel_shape_mismatches_name_the_problem(tmp_path, clips):
    frames = Bundle.load(write_bundle(tmp_path / "frames", ["batch", 80, 100], {**LOG_MEL, "window_samples": 32000}))
    with pytest.raises(ValueError, match=r"takes \[batch, n_mels, frames\] = \['batch', 80, 100\] but .*model.json "
                                         r"gives \[80, 200\] \(n_mels 80; window_samples 32000 // hop_length 160 = "
                                         r"200 frames\); make preprocess match the graph"):
        frames.predict(clips)
    mels = Bundle.load(write_bundle(tmp_path / "mels", [1, 80, "frames"], {**LOG_MEL, "n_mels": 64}))
    with pytest.raises(ValueError, match=r"= \[1, 80, 'frames'\] but .* gives \[64, 100\] \(n_mels 64;"):
        mels.predict(clips)
    waveform = {"type": "audio", "sample_rate": SR, "normalize": True}
    no_features = Bundle.load(write_bundle(tmp_path / "wave", ["batch", 80, 100], waveform))
    with pytest.raises(ValueError, match=r"\[batch, time\] input.*needs preprocess.features \"log_mel\""):
        no_features.predict(clips)
    flat = Bundle.load(write_bundle(tmp_path / "flat", ["batch", 16000], LOG_MEL))
    with pytest.raises(ValueError, match=r"log-mel features.*\[batch, n_mels, frames\]"):
        flat.predict(clips)


def test_log_mel_bundle_works_with_torch_unimportable(tmp_path, clips):
    folder = write_bundle(tmp_path / "export", ["batch", 80, 100])
    code = f"""
import importlib.abc, json, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchaudio", "transformers"):
            raise ImportError(f"{{name}} is blocked: suite_runtime must not need it")
sys.meta_path.insert(0, _NoTorch())
from suite_runtime import Bundle
preds = Bundle.load({str(folder)!r}).predict({clips!r}, top_k=3)
print(json.dumps([p.scores for p in preds]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for scores, path in zip(json.loads(proc.stdout), clips):
        assert np.abs(np.array([scores[x] for x in LABELS]) - expected_scores(path)).max() <= 1e-5
