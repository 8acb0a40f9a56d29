"""suite_runtime speech: audio reading and resampling against torchaudio's algorithm, normalisation equal to
Wav2Vec2FeatureExtractor's, greedy CTC decoding, and tiny Wav2Vec2 keyword / CTC bundles predicting what their
torch models predict, through the API and the CLI, also with torch made unimportable.

Measured resampling agreement to 16 kHz (soxr HQ vs torchaudio's sinc_interp_hann, width 6, rolloff 0.99;
1.3 s clips peaking near 0.8, 12.5 ms left out at each end where the two filters' tails differ): tones and a
300-2900 Hz sweep from 8 kHz -> max abs diff 1.9e-3, correlation 0.9999993; from 22.05 / 44.1 / 48 kHz
1.8e-4 to 3.7e-4, 0.9999999. With white noise added (std 0.08, energy up to Nyquist where the filters'
transition bands differ): 1.5e-2 to 4.7e-2, correlation 0.99928 to 0.99977. The asserted bounds sit just above.
"""
from __future__ import annotations

import json
import os
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                          Wav2Vec2ForSequenceClassification)

from suite_runtime import (AudioSpec, Bundle, Prediction, ctc_greedy, normalize, pad_batch, preprocess_audio,
                           read_audio)
from suite_runtime.cli import main as cli_main

try:  # the training side's resampler; when torchaudio is absent, the same algorithm transcribed below
    from torchaudio.functional import resample as torchaudio_resample
except ImportError:
    torchaudio_resample = None

SR = 16000
KEYWORDS = ["yes", "no", "up", "down"]
VOCAB = ["<pad>", "<unk>", "|", "a", "b", "e", "n", "o", "s", "t"]
CTC_POST = {"type": "ctc_greedy", "blank": "<pad>", "word_delimiter": "|", "unk": "<unk>"}
AUDIO_SPEC = {"type": "audio", "sample_rate": SR, "normalize": True, "max_seconds": None}
# tiny dims, but the standard 7-layer conv stack, so frames come every 320 samples as in real checkpoints
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(16,) * 7,
            conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), num_feat_extract_layers=7,
            do_stable_layer_norm=False, feat_extract_norm="group", num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2, classifier_proj_size=16)
EDGE = 200  # output samples left out at each end when comparing resamplers


def sinc_hann_resample(x: torch.Tensor, orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99):
    """torchaudio.functional.resample's default method (``_get_sinc_resample_kernel`` and
    ``_apply_sinc_resample_kernel``, pytorch/audio src/torchaudio/functional/functional.py), line for line."""
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=x.dtype)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=x.dtype)[:, None, None] / new + idx) * base
    t = t.clamp_(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t *= math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t) * window * (base / orig)
    n = x.shape[-1]
    padded = torch.nn.functional.pad(x.reshape(1, -1), (width, width + orig))
    y = torch.nn.functional.conv1d(padded[:, None], kernel, stride=orig).transpose(1, 2).reshape(1, -1)
    return y[0, :math.ceil(new * n / orig)]


def reference_resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    fn = torchaudio_resample or sinc_hann_resample
    return fn(t, orig, new).numpy()


def tones(rate: int, seconds: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Two tones and a 300-2900 Hz sweep (plus white noise): band-limited like speech."""
    t = np.arange(int(round(rate * seconds))) / rate
    x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 1234.5 * t + 1)
    x += 0.2 * np.sin(2 * np.pi * (300 + 1000 * t) * t)
    x += noise * np.random.default_rng(seed).standard_normal(len(t))
    return (x * 0.8).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    assert len(ours) == len(ref)
    a, b = ours[EDGE:-EDGE], ref[EDGE:-EDGE]
    return float(np.abs(a - b).max()), float(np.corrcoef(a, b)[0, 1])


# ----------------------------------------------------------------------------- reading and resampling

FILES = [  # (rate, channels, format, subtype)
    (8000, 2, "WAV", "PCM_16"),  # telephone-rate stereo int16
    (44100, 1, "FLAC", "PCM_24"),  # FLAC holds integers only: float data written as 24-bit
    (22050, 3, "WAV", "FLOAT"),
]


def write_clip(path: Path, rate: int, channels: int, fmt: str, subtype: str, noise: float = 0.0) -> np.ndarray:
    mono = tones(rate, 1.3, noise)
    data = np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1)  # channels differ in loudness
    if subtype == "PCM_16":
        data = np.round(data * 32767).astype(np.int16)
    sf.write(str(path), data, rate, format=fmt, subtype=subtype)
    decoded, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return decoded.mean(axis=1)  # what the training side reads: soundfile's floats, channels averaged


@pytest.mark.parametrize("rate,channels,fmt,subtype", FILES)
def test_read_audio_resamples_files_to_16k_mono(tmp_path, rate, channels, fmt, subtype):
    path = tmp_path / f"clip.{fmt.lower()}"
    decoded = write_clip(path, rate, channels, fmt, subtype)
    x = read_audio(path, SR)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == math.ceil(len(decoded) * SR / rate) == 20800  # 1.3 s, torchaudio's length
    assert abs(peak_hz(x, SR) - 440) < 2  # the loudest tone stays where it was
    # the channel mean's amplitude: 0.4 * (mean of the channel gains)
    assert np.abs(x[EDGE:-EDGE]).max() == pytest.approx(np.abs(decoded).max(), rel=0.02)
    diff, corr = agreement(x, reference_resample(decoded, rate, SR))
    assert diff < 3e-3 and corr > 0.999999, (diff, corr)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_resampling_agrees_with_torchaudio_on_broadband_audio(tmp_path, rate):
    decoded = write_clip(tmp_path / "noisy.wav", rate, 1, "WAV", "FLOAT", noise=0.1)
    diff, corr = agreement(read_audio(tmp_path / "noisy.wav", SR), reference_resample(decoded, rate, SR))
    assert diff < 0.06 and corr > 0.999, (diff, corr)


def test_arrays_pairs_and_files_read_the_same(tmp_path):
    rng = np.random.default_rng(3)
    pcm = np.round(rng.uniform(-0.5, 0.5, (4000, 2)) * 32767).astype(np.int16)
    sf.write(str(tmp_path / "x.wav"), pcm, 8000, subtype="PCM_16")
    from_file = read_audio(tmp_path / "x.wav", SR)
    assert np.array_equal(read_audio((pcm, 8000), SR), from_file)  # int16 (frames, channels) + its rate
    assert np.allclose(read_audio((pcm.astype(np.float32) / 32768, 8000), SR), from_file, atol=1e-7)
    mono16 = from_file.copy()
    assert np.array_equal(read_audio(mono16, SR), mono16)  # an array is taken to be at the model's rate already
    assert np.array_equal(read_audio(str(tmp_path / "x.wav"), SR), from_file)


def test_bad_audio_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        read_audio(np.zeros(0, np.float32), SR)
    sf.write(str(tmp_path / "empty.wav"), np.zeros((0, 1), np.float32), SR)
    with pytest.raises(ValueError, match="empty.wav: the audio clip is empty"):
        read_audio(tmp_path / "empty.wav", SR)
    for bad in (np.nan, np.inf):
        clip = np.ones(800, np.float32)
        clip[10] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            read_audio(clip, SR)
    with pytest.raises(ValueError, match=r"\(frames, channels\).*\(2, 16000\).*transpose"):
        read_audio(np.zeros((2, 16000), np.float32), SR)
    with pytest.raises(ValueError, match="1-D .* or 2-D"):
        read_audio(np.zeros((1, 2, 3), np.float32), SR)
    with pytest.raises(ValueError, match="positive integer"):
        read_audio((np.zeros(100, np.float32), 0), SR)
    with pytest.raises(TypeError, match="path, a numpy array"):
        read_audio([0.1, 0.2], SR)
    with pytest.raises(ValueError, match="cannot read audio .*missing.wav: no such file"):
        read_audio(tmp_path / "missing.wav", SR)
    (tmp_path / "junk.wav").write_bytes(b"RIFF but not really a wave file")
    with pytest.raises(ValueError, match="cannot read audio .*junk.wav: "):
        read_audio(tmp_path / "junk.wav", SR)
    with pytest.raises(ValueError, match=r"0\.0187 s long; the model needs at least 0\.0250 s \(400 samples"):
        preprocess_audio(np.ones(300, np.float32), AUDIO_SPEC)
    with pytest.raises(ValueError, match="max_seconds must be > 0"):
        AudioSpec.from_dict({**AUDIO_SPEC, "max_seconds": 0})


# ----------------------------------------------------------------------------- normalisation, padding, CTC


def test_normalize_matches_wav2vec2_feature_extractor():
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True)
    rng = np.random.default_rng(1)
    clips = [tones(SR, 0.7), 0.3 + 0.1 * rng.standard_normal(5000).astype(np.float32),
             np.round(rng.uniform(-1, 1, 12345) * 32767).astype(np.int16) / np.float32(32768),
             np.zeros(1600, np.float32)]  # silence: zeros, not NaN
    for clip in clips:
        ref = fe(clip, sampling_rate=SR, return_tensors="np").input_values[0]
        ours = normalize(clip)
        assert ours.dtype == np.float32 and np.isfinite(ours).all()
        assert np.abs(ours - ref).max() < 1e-5
    assert abs(normalize(clips[1]).mean()) < 1e-6 and normalize(clips[1]).std() == pytest.approx(1, abs=1e-4)
    # preprocess_audio = read, then truncate to max_seconds, then normalise (the feature extractor's order)
    spec = {**AUDIO_SPEC, "max_seconds": 0.25}
    assert np.array_equal(preprocess_audio(clips[0], spec), normalize(clips[0][:4000]))
    assert np.array_equal(preprocess_audio(clips[0], {**AUDIO_SPEC, "normalize": False}), clips[0])


def test_pad_batch_zero_pads_at_the_end():
    out = pad_batch([np.ones(3, np.float32), np.full(5, 2, np.float32)])
    assert out.dtype == np.float32 and out.tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]]
    with pytest.raises(ValueError, match="at least one clip"):
        pad_batch([])


def one_hot(ids: list[int], vocab: int = len(VOCAB)) -> np.ndarray:
    logits = np.full((len(ids), vocab), -3.0, np.float32)
    logits[np.arange(len(ids)), ids] = 5.0
    return logits


def test_ctc_greedy_collapses_repeats_drops_blanks_and_maps_the_delimiter():
    t = {tok: i for i, tok in enumerate(VOCAB)}
    # "<pad> b b <pad> b e | | s <unk> s <pad> | <pad>": a blank keeps equal letters apart, repeats collapse,
    # <unk> is dropped after collapsing, delimiters become one space, trailing space stripped
    first = [t[c] for c in ["<pad>", "b", "b", "<pad>", "b", "e", "|", "|", "s", "<unk>", "s", "<pad>", "|", "<pad>"]]
    second = [t[c] for c in ["|", "<pad>", "|", "n", "o", "|", "|", "<pad>", "|"]]
    batch = np.stack([one_hot(first), one_hot(second[:len(second)] + [0] * (len(first) - len(second)))])
    assert ctc_greedy(batch, VOCAB) == ["bbe ss", "no"]
    assert ctc_greedy(one_hot(first), VOCAB) == ["bbe ss"]  # [frames, vocab] is one clip
    assert ctc_greedy(one_hot(second), VOCAB, delimiter=None, unk=None) == ["||no||"]
    assert ctc_greedy(one_hot([0, 0, 0]), VOCAB) == [""]
    with pytest.raises(ValueError, match=r"\[batch, frames, 10\]"):
        ctc_greedy(np.zeros((1, 4, 7)), VOCAB)
    with pytest.raises(ValueError, match="blank token '_'"):
        ctc_greedy(one_hot(first), VOCAB, blank="_")


# ----------------------------------------------------------------------------- bundles from tiny Wav2Vec2 models


def export(model: torch.nn.Module, path: Path) -> None:
    """The exporter that works for Wav2Vec2 with torch 2.14 / transformers 5.x: dynamo, opset 18, batch and
    time dynamic (time >= 400 samples, one frame)."""
    batch, time = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("time", min=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 8000),), str(path), input_names=["input_values"],
                          output_names=["logits"], opset_version=18, dynamo=True,
                          dynamic_shapes=({0: batch, 1: time},), external_data=False, verbose=False)


def write_bundle(folder: Path, model: torch.nn.Module, task: str, labels: list[str], post: dict) -> Path:
    folder.mkdir(parents=True)
    export(model, folder / "model.onnx")
    meta = {"format_version": 1, "task": task, "labels": labels,
            "input": {"name": "input_values", "shape": ["batch", "time"], "dtype": "float32"},
            "preprocess": AUDIO_SPEC, "postprocess": post, "variants": {"fp32": {"file": "model.onnx"}},
            "default_variant": "fp32", "exporter": "torch.onnx dynamo", "opset": 18}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def keyword(tmp_path_factory):
    torch.manual_seed(1)
    model = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**TINY, num_labels=len(KEYWORDS))).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(200)  # logits of order 1, so labels are far from ties
    return write_bundle(tmp_path_factory.mktemp("kws") / "export", model, "speech-classification", KEYWORDS,
                        {"type": "softmax"}), model


@pytest.fixture(scope="module")
def ctc(tmp_path_factory):
    torch.manual_seed(1)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**TINY, vocab_size=len(VOCAB), pad_token_id=0)).eval()
    with torch.no_grad():
        model.lm_head.bias[VOCAB.index("<unk>")] = -1.0  # never <unk>: Hugging Face's decoder would print it
    return write_bundle(tmp_path_factory.mktemp("ctc") / "export", model, "speech-ctc", VOCAB, CTC_POST), model


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    """0.5 s at 8 kHz stereo int16, 1.3 s at 44.1 kHz FLAC, 0.5 s at 16 kHz: two lengths, one shared. Unlike
    sounds (tones and noise, a 5 kHz whistle, a 150 Hz buzz), so even a random model tells them apart."""
    folder = tmp_path_factory.mktemp("clips")

    def whistle(rate: int, seconds: float) -> np.ndarray:
        t = np.arange(int(rate * seconds)) / rate
        return (0.6 * np.sin(2 * np.pi * (5000 + 300 * np.sin(2 * np.pi * 3 * t)) * t)).astype(np.float32)

    def buzz(rate: int, seconds: float) -> np.ndarray:
        return (0.4 * np.sign(np.sin(2 * np.pi * 150 * np.arange(int(rate * seconds)) / rate))).astype(np.float32)

    specs = [("a.wav", 8000, 2, "WAV", "PCM_16", 0.5, lambda r, s: 0.5 * tones(r, s, noise=0.3)),
             ("b.flac", 44100, 1, "FLAC", "PCM_24", 1.3, whistle), ("c.wav", SR, 1, "WAV", "FLOAT", 0.5, buzz)]
    paths = []
    for i, (name, rate, channels, fmt, subtype, seconds, sound) in enumerate(specs):
        x = sound(rate, seconds)
        envelope = 0.2 + np.abs(np.sin(np.linspace(0, np.pi * (2 + i), len(x))))  # syllable-like loudness
        data = np.repeat((envelope * x)[:, None], channels, axis=1)
        if subtype == "PCM_16":
            data = np.round(data.clip(-1, 1) * 32767).astype(np.int16)
        sf.write(str(folder / name), data, rate, format=fmt, subtype=subtype)
        paths.append(str(folder / name))
    return paths


def torch_logits(model: torch.nn.Module, clip: np.ndarray) -> np.ndarray:
    """The training side's path: Wav2Vec2FeatureExtractor's normalisation, then the torch model, one clip."""
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True)
    with torch.inference_mode():
        return model(fe(clip, sampling_rate=SR, return_tensors="pt").input_values).logits[0].numpy()


def test_keyword_bundle_matches_torch(keyword, clips):
    folder, model = keyword
    bundle = Bundle.load(folder)
    refs = [torch_logits(model, read_audio(p, SR)) for p in clips]
    preds = bundle.predict(clips, top_k=4)
    for p, ref in zip(preds, refs):
        probs = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
        order = np.argsort(-probs)
        assert p.label == KEYWORDS[order[0]] and list(p.scores) == [KEYWORDS[i] for i in order]
        assert np.allclose(list(p.scores.values()), probs[order], atol=1e-4) and p.text is None
    assert len({p.label for p in preds}) > 1  # a constant model would pass the comparison trivially
    for path, ref in zip(clips, refs):
        assert np.abs(bundle.run(bundle.preprocess(path)[None])[0] - ref).max() < 1e-4


def test_ctc_bundle_matches_torch_and_hugging_face_decoding(ctc, clips, tmp_path):
    folder, model = ctc
    refs = [torch_logits(model, read_audio(p, SR)) for p in clips]
    assert [r.shape for r in refs] == [(24, len(VOCAB)), (64, len(VOCAB)), (24, len(VOCAB))]  # 320 samples a frame
    (tmp_path / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(VOCAB)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    hf = [" ".join(t.split()) for t in tokenizer.batch_decode([r.argmax(-1) for r in refs])]
    bundle = Bundle.load(folder)
    preds = bundle.predict(clips)
    assert [p.text for p in preds] == hf == [ctc_greedy(r, VOCAB)[0] for r in refs]
    assert all(p.label is None and p.score is None for p in preds)
    assert all(len(t) > 3 for t in hf) and len(set(hf)) == 3 and any(" " in t for t in hf)  # not a trivial model
    for path, ref in zip(clips, refs):
        assert np.abs(bundle.run(bundle.preprocess(path)[None])[0] - ref).max() < 1e-4


def test_only_clips_of_equal_length_share_a_run(keyword, clips, monkeypatch):
    folder, _ = keyword
    bundle = Bundle.load(folder)
    alone = [bundle.predict(c, top_k=4)[0] for c in clips]
    shapes = []
    run = bundle.run
    monkeypatch.setattr(bundle, "run", lambda batch: shapes.append(batch.shape) or run(batch))
    together = bundle.predict(clips, top_k=4, batch_size=8)
    assert shapes == [(2, 8000), (1, 20800)]  # a.wav and c.wav (0.5 s each) together, b.flac alone
    for a, b in zip(alone, together):
        assert a.label == b.label and np.allclose(list(a.scores.values()), list(b.scores.values()), atol=1e-6)
    shapes.clear()
    assert [p.label for p in bundle.predict(clips, top_k=4, batch_size=1)] == [p.label for p in alone]
    assert shapes == [(1, 8000), (1, 20800), (1, 8000)]
    # why: zero-padding the short clip to the long one's length changes its output (no attention mask)
    short, long = bundle.preprocess(clips[0]), bundle.preprocess(clips[1])
    padded = run(pad_batch([short, long]))[0]
    assert np.abs(padded - run(short[None])[0]).max() > 1e-4


def test_arrays_and_pairs_predict_like_files(ctc, clips):
    folder, _ = ctc
    bundle = Bundle.load(folder)
    from_files = [p.text for p in bundle.predict(clips)]
    data, rate = sf.read(clips[0], dtype="int16")  # (frames, 2) int16 at 8 kHz
    assert bundle.predict((data, rate))[0].text == from_files[0]  # one (array, rate) pair is one clip
    at_16k = np.stack([read_audio(clips[0], SR), read_audio(clips[2], SR)])
    assert [p.text for p in bundle.predict(at_16k)] == [from_files[0], from_files[2]]  # 2-D array: a batch
    assert [p.text for p in bundle.predict(list(at_16k))] == [from_files[0], from_files[2]]


def edited(folder: Path, out: Path, **changes) -> Path:
    """A bundle in ``out`` sharing ``folder``'s ONNX file (a hard link: a symlink out of a bundle is refused),
    with model.json keys replaced."""
    out.mkdir()
    os.link(folder / "model.onnx", out / "model.onnx")
    (out / "model.json").write_text(json.dumps({**json.loads((folder / "model.json").read_text()), **changes}))
    return out


def test_max_seconds_keeps_the_start_of_long_clips(keyword, clips, tmp_path):
    folder, model = keyword
    bundle = Bundle.load(edited(folder, tmp_path / "cut", preprocess={**AUDIO_SPEC, "max_seconds": 0.75}))
    ref = torch_logits(model, read_audio(clips[1], SR)[:12000])
    p = bundle.predict(clips[1], top_k=4)[0]
    assert p.label == KEYWORDS[int(ref.argmax())]
    assert np.abs(bundle.run(bundle.preprocess(clips[1])[None])[0] - ref).max() < 1e-4


def test_graphs_with_a_fixed_batch_or_length(keyword, clips, tmp_path):
    """The TorchScript exporter works for Wav2Vec2 too; without dynamic axes its graph fixes batch or length."""
    folder, model = keyword
    expected = Bundle.load(folder).predict(clips, top_k=4)
    for name, axes in (("batch1", {"input_values": {1: "time"}}), ("fixed", {})):
        out = edited(folder, tmp_path / name)
        (out / "model.onnx").unlink()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated exporter; tracer warnings about bool conversions
            torch.onnx.export(model, (torch.randn(1, 8000),), str(out / "model.onnx"), input_names=["input_values"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=18, dynamo=False)
        bundle = Bundle.load(out)
        assert bundle.session.get_inputs()[0].shape == ([1, "time"] if name == "batch1" else [1, 8000])
        if name == "batch1":  # equal-length clips then run one at a time
            got = bundle.predict(clips, top_k=4)
            assert [p.label for p in got] == [p.label for p in expected]
            assert np.allclose([list(p.scores.values()) for p in got], [list(p.scores.values()) for p in expected],
                               atol=1e-5)
        else:
            assert bundle.predict(clips[0])[0].label == expected[0].label
            with pytest.raises(ValueError, match=r"exactly 8000 samples \(0.5 s at 16000 Hz\).*dynamic time axis"):
                bundle.predict(clips)


def test_speech_bundle_errors_name_the_problem(keyword, ctc, clips, tmp_path):
    kws, _ = keyword
    with pytest.raises(ValueError, match="missing.wav: no such file"):
        Bundle.load(kws).predict([clips[0], tmp_path / "missing.wav"])
    with pytest.raises(ValueError, match="NaN"):
        Bundle.load(kws).predict(np.full(800, np.nan, np.float32))
    bad_blank = Bundle.load(edited(ctc[0], tmp_path / "blank", postprocess={**CTC_POST, "blank": "_"}))
    with pytest.raises(ValueError, match="blank token '_'"):
        bad_blank.predict(clips[0])
    wrong_vocab = Bundle.load(edited(ctc[0], tmp_path / "vocab", labels=VOCAB[:5]))
    with pytest.raises(ValueError, match="5 vocabulary tokens"):
        wrong_vocab.predict(clips[0])
    yolo_post = Bundle.load(edited(kws, tmp_path / "yolo", postprocess={"type": "yolo"}))
    with pytest.raises(ValueError, match="does not apply to audio"):
        yolo_post.predict(clips[0])


# ----------------------------------------------------------------------------- CLI, and without torch


def test_cli_prints_labels_and_transcripts(keyword, ctc, clips, capsys):
    assert cli_main(["predict", str(keyword[0]), *clips]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    expected = Bundle.load(keyword[0]).predict(clips)
    assert [(f, label) for f, label, _ in lines] == [(c, p.label) for c, p in zip(clips, expected)]
    assert [float(s) for _, _, s in lines] == pytest.approx([p.score for p in expected], abs=1e-5)
    assert cli_main(["predict", str(keyword[0]), clips[0], "--json"]) == 0
    assert "text" not in json.loads(capsys.readouterr().out)  # image and keyword JSON keep their keys
    texts = [p.text for p in Bundle.load(ctc[0]).predict(clips)]
    assert cli_main(["predict", str(ctc[0]), *clips, "--batch-size", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{c}\t{t}" for c, t in zip(clips, texts)]
    assert cli_main(["predict", str(ctc[0]), clips[1], "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["file"] == clips[1] and row["text"] == texts[1]


BLOCK_TORCH = """
import importlib.abc, json, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "torchaudio", "transformers"):
            raise ImportError(f"{name} is blocked: suite_runtime must not need it")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=60)


def test_speech_bundles_work_with_torch_unimportable(keyword, ctc, clips):
    code = f"""
from suite_runtime import Bundle, read_audio
kws = Bundle.load({str(keyword[0])!r}).predict({clips!r}, top_k=4)
texts = [p.text for p in Bundle.load({str(ctc[0])!r}).predict({clips!r})]
try:
    import torch
    blocked = False
except ImportError:
    blocked = True
print(json.dumps({{"kws": [p.__dict__ for p in kws], "texts": texts, "blocked": blocked,
                   "loaded": sorted(m for m in ("torch", "torchaudio", "transformers") if m in sys.modules)}}))
"""
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["blocked"] and out["loaded"] == []
    assert out["texts"] == [p.text for p in Bundle.load(ctc[0]).predict(clips)]
    here = Bundle.load(keyword[0]).predict(clips, top_k=4)
    assert [Prediction(**p).label for p in out["kws"]] == [p.label for p in here]
    assert np.allclose([list(p["scores"].values()) for p in out["kws"]], [list(p.scores.values()) for p in here])
    cli = ("import runpy; sys.argv = ['suite-runtime', 'predict', {!r}, *{!r}]; "
           "runpy.run_module('suite_runtime.cli', run_name='__main__')")
    proc = run_without_torch(cli.format(str(ctc[0]), clips))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{c}\t{t}" for c, t in zip(clips, out["texts"])]
    proc = run_without_torch(cli.format(str(ctc[0]), [clips[0], clips[0] + ".missing"]))
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert "a.wav.missing: no such file" in proc.stderr
