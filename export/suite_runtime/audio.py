"""Speech bundles with numpy, soundfile and soxr only (no torch): read, resample, normalise or log-mel, pad,
CTC-decode.

The contract a speech bundle keeps (written by ``suite export`` for the speech tasks):

- graph: exported from transformers' ``Wav2Vec2ForSequenceClassification`` or ``Wav2Vec2ForCTC``. Input
  ``input_values`` float32 [batch, time], both axes dynamic: a raw mono waveform at ``sample_rate``,
  normalised per clip to zero mean and unit variance, ``(x - mean) / sqrt(var + 1e-7)`` as
  ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does. No attention mask: clips batched together are
  zero-padded *after* normalisation. Output ``logits``: [batch, classes] for keyword models, [batch, frames,
  vocab] for CTC models.
- model.json: ``"task": "speech-classification" | "speech-ctc"``; ``"labels"``: the class names, or for
  CTC the vocabulary tokens in id order; ``"preprocess": {"type": "audio", "sample_rate": 16000,
  "normalize": true, "max_seconds": null | float}`` (optional ``"min_samples"``, default 400: the standard
  Wav2Vec2 feature encoder's receptive field, 25 ms at 16 kHz; shorter clips give no frame at all);
  ``"postprocess": {"type": "softmax"}`` for keywords, or ``{"type": "ctc_greedy", "blank": "<pad>",
  "word_delimiter": "|", "unk": "<unk>"}`` for CTC.
- Whisper bundles (``"features": "log_mel"`` in ``preprocess``): graph exported from transformers'
  ``WhisperForAudioClassification``. Input ``input_features`` float32 [batch, n_mels, frames], frames fixed at
  ``window_samples // hop_length``: Whisper's log-mel spectrogram of the raw (not normalised) waveform,
  zero-padded at the end or cut to exactly ``window_samples`` samples first, equal to
  ``WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=sample_rate, hop_length=hop_length,
  n_fft=n_fft)(x, padding="max_length", max_length=window_samples, truncation=True)`` (see ``log_mel``).
  ``"preprocess": {"type": "audio", "sample_rate": 16000, "normalize": false, "features": "log_mel",
  "window_samples": 480000}`` (Whisper's 30 s; a shortened-context model uses fewer, e.g. 16000), optional
  ``"n_mels": 80`` (128 for large-v3), ``"n_fft": 400``, ``"hop_length": 160``; ``max_seconds`` and
  ``min_samples`` apply as for waveforms. Output ``logits`` [batch, classes], ``"postprocess": {"type":
  "softmax"}``. Every clip gives the same shape, so clips always share a run.

How a clip becomes the model's input (``preprocess_audio``): read with soundfile (any format, rate and
channel count it reads; integer PCM scaled to -1..1), channels averaged, resampled with soxr (``HQ``) to
``sample_rate``, cut to the first ``max_seconds`` when set (as ``Wav2Vec2FeatureExtractor(truncation=True)``
keeps the start), then normalised, or for Whisper bundles turned into log-mel features (``log_mel``).
Resampling differs from ``torchaudio.functional.resample`` (the training side's) only in the filter: on
band-limited signals the two agree within 2e-3 (from 8 kHz; 4e-4 from 22.05 kHz and up) with a correlation
of 0.9999993 or more; broadband noise differs more near Nyquist, correlation above 0.999
(tests/test_runtime_audio.py measures both). The output length is torchaudio's,
``ceil(n * sample_rate / rate_in)``.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, fields
from typing import Sequence, Union

import numpy as np

EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm's
MIN_SAMPLES = 400  # Wav2Vec2's conv stack (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2) needs 400 for one frame
MAX_CHANNELS = 64  # a 2-D "clip" with more columns than this is a channels-first array or a batch, not audio
FEATURES = (None, "log_mel")  # None: the waveform itself; log_mel: Whisper's log-mel spectrogram
MEL_MAX_HZ = 8000.0  # WhisperFeatureExtractor's filter bank tops out here whatever the rate (Nyquist at 16 kHz)
LOG_MEL_FLOOR = 1e-10  # mel power clamped here before log10
LOG_MEL_RANGE = 8.0  # log10 units kept below each clip's peak (80 dB)

AudioInput = Union[str, os.PathLike, np.ndarray, tuple[np.ndarray, int]]


@dataclass(frozen=True)
class AudioSpec:
    """The validated ``preprocess`` block of model.json for ``type: audio``."""

    sample_rate: int = 16000
    normalize: bool = True
    max_seconds: float | None = None
    min_samples: int = MIN_SAMPLES
    features: str | None = None  # None: the (normalised) waveform; "log_mel": Whisper's log-mel spectrogram
    n_mels: int = 80  # log_mel only: mel bands (128 for Whisper large-v3)
    n_fft: int = 400  # log_mel only: STFT size, 25 ms at 16 kHz
    hop_length: int = 160  # log_mel only: samples per frame, 10 ms at 16 kHz
    window_samples: int | None = None  # log_mel only: every clip padded or cut to this many samples (480000: 30 s)

    @classmethod
    def from_dict(cls, spec: dict) -> "AudioSpec":
        known = {k: spec[k] for k in (f.name for f in fields(cls)) if k in spec}  # unknown keys are ignored
        out = cls(**known)
        if not _positive_int(out.sample_rate):
            raise ValueError(f"bad audio spec: sample_rate must be a positive integer (got {out.sample_rate!r})")
        if out.max_seconds is not None and not out.max_seconds > 0:
            raise ValueError(f"bad audio spec: max_seconds must be > 0 or null (got {out.max_seconds!r})")
        if not _positive_int(out.min_samples):
            raise ValueError(f"bad audio spec: min_samples must be an integer >= 1 (got {out.min_samples!r})")
        if out.features not in FEATURES:
            raise ValueError(f"bad audio spec: features must be null (the waveform) or \"log_mel\" (got "
                             f"{out.features!r}); upgrade finetune-suite-runtime if the bundle is newer")
        if out.features is None:
            if out.window_samples is not None:
                raise ValueError(f"bad audio spec: window_samples ({out.window_samples!r}) applies only with "
                                 f"features \"log_mel\"; remove it or set features")
            return out
        for name in ("n_mels", "hop_length"):
            if not _positive_int(getattr(out, name)):
                raise ValueError(f"bad audio spec: {name} must be a positive integer (got {getattr(out, name)!r})")
        if not (_positive_int(out.n_fft) and out.n_fft % 2 == 0):
            raise ValueError(f"bad audio spec: n_fft must be a positive even integer (got {out.n_fft!r})")
        if not (_positive_int(out.window_samples) and out.window_samples % out.hop_length == 0):
            raise ValueError(f"bad audio spec: features \"log_mel\" needs window_samples, a positive multiple of "
                             f"hop_length {out.hop_length} (480000 for Whisper's 30 s at 16 kHz), got "
                             f"{out.window_samples!r}")
        if out.normalize:
            raise ValueError("bad audio spec: features \"log_mel\" takes the raw waveform, so normalize must be "
                             "false (it defaults to true); set \"normalize\": false")
        return out

    @property
    def frames(self) -> int | None:
        """log_mel frames per clip, ``window_samples // hop_length``; None for waveform specs."""
        return self.window_samples // self.hop_length if self.features == "log_mel" else None


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _name(item) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else "audio array"


def _to_float(a: np.ndarray, name: str) -> np.ndarray:
    """Integer PCM -> float32 in -1..1 (soundfile's and torchaudio's scaling); floats are kept as they are."""
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return (a.astype(np.float32) - 128) / 128
    if a.dtype.kind == "i":
        return (a / float(-np.iinfo(a.dtype).min)).astype(np.float32)
    raise ValueError(f"{name}: audio arrays must be float or integer PCM, got dtype {a.dtype}")


def _mono(a: np.ndarray, name: str) -> np.ndarray:
    """1-D as is; 2-D is (frames, channels), soundfile's layout, averaged over channels."""
    if a.ndim == 1:
        return a
    if a.ndim == 2:
        if a.shape[1] > a.shape[0] or a.shape[1] > MAX_CHANNELS:
            raise ValueError(f"{name}: a 2-D clip must be (frames, channels) as soundfile.read returns, got shape "
                             f"{a.shape}; transpose channels-first audio, or pass several clips as a list")
        return a.mean(axis=1, dtype=np.float64).astype(np.float32)
    raise ValueError(f"{name}: audio must be 1-D (mono) or 2-D (frames, channels), got shape {a.shape}")


def _load(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    import soundfile as sf  # imported here: image-only users of suite_runtime need not have libsndfile

    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    # libsndfile reports missing files, unknown formats and truncated data as its own error types
    except Exception as e:
        reason = "no such file" if not os.path.exists(path) else f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot read audio {os.fspath(path)}: {reason}") from None
    return data, int(rate)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """soxr's HQ resampler, with torchaudio's output length ``ceil(len(x) * rate_out / rate_in)``."""
    if rate_in == rate_out:
        return x
    import soxr

    n_out = math.ceil(len(x) * rate_out / rate_in)
    # soxr's length can be one short of torchaudio's; trailing zeros (torchaudio pads with them too) leave
    # soxr's outputs unchanged and let it produce that last one
    tail = np.zeros(math.ceil(rate_in / rate_out) + 1, dtype=np.float32)
    y = soxr.resample(np.concatenate([x, tail]), rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(y[:n_out], dtype=np.float32)


def read_audio(item: AudioInput, sample_rate: int) -> np.ndarray:
    """A file path, a (array, rate) pair, or an array already at ``sample_rate`` -> mono float32 at ``sample_rate``.

    Arrays are 1-D, or 2-D (frames, channels); integer arrays are PCM and scaled to -1..1.
    """
    name = _name(item)
    if isinstance(item, (str, os.PathLike)):
        data, rate = _load(item)
    elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], np.ndarray):
        data, rate = item
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"{name}: the sample rate in an (array, rate) pair must be a positive integer, "
                             f"got {rate!r}")
    elif isinstance(item, np.ndarray):
        data, rate = item, sample_rate
    else:
        raise TypeError(f"cannot read audio from {type(item).__name__}; pass a path, a numpy array or an "
                        f"(array, sample_rate) pair")
    data = np.asarray(data)
    check_clip(data, name)
    x = _mono(_to_float(data, name), name)
    return resample(x, int(rate), sample_rate)


def check_clip(x: np.ndarray, name: str = "audio array") -> None:
    """Empty or non-finite audio would reach the model as garbage (NaN logits, or no frame): refuse it."""
    if x.size == 0:
        raise ValueError(f"{name}: the audio clip is empty")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{name}: the audio clip contains NaN or infinite samples")


def normalize(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance: ``(x - mean) / sqrt(var + 1e-7)``, Wav2Vec2FeatureExtractor's formula.

    Computed in float64 and returned as float32; a silent clip becomes zeros.
    """
    a = np.asarray(x, dtype=np.float64)
    return ((a - a.mean()) / np.sqrt(a.var() + EPS)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Whisper's mel filter bank, float64 [n_fft // 2 + 1, n_mels], read-only (it is cached).

    Slaney-scale triangles from 0 to 8000 Hz (``MEL_MAX_HZ``, as ``WhisperFeatureExtractor`` sets it),
    area-normalised: ``transformers.audio_utils.mel_filter_bank(norm="slaney", mel_scale="slaney")``.
    """
    def to_mel(hz):  # linear below 1 kHz, logarithmic above
        return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) * (27.0 / np.log(6.4)),
                        3.0 * hz / 200.0)

    def to_hz(mel):
        return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (np.maximum(mel, 15.0) - 15.0)),
                        200.0 * mel / 3.0)

    edges = to_hz(np.linspace(to_mel(0.0), to_mel(MEL_MAX_HZ), n_mels + 2))  # band i spans edges[i]..edges[i+2]
    bins = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    slopes = edges[None, :] - bins[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    bank = np.maximum(0.0, np.minimum(down, up)) * (2.0 / (edges[2:] - edges[:-2]))[None, :]
    bank.flags.writeable = False
    return bank


def log_mel(x: np.ndarray, spec: AudioSpec) -> np.ndarray:
    """A mono waveform at ``spec.sample_rate`` -> Whisper's log-mel features, float32 [n_mels, frames].

    The clip is zero-padded at the end or cut to ``window_samples``; then a centred STFT (reflect padding
    ``n_fft // 2``, periodic Hann window), power spectrum, ``mel_filters``, ``log10(max(mel, 1e-10))``, the
    last frame dropped (frames = ``window_samples // hop_length``), values raised to at least the clip's
    max - 8, and ``(v + 4) / 4``: ``WhisperFeatureExtractor``'s numpy path, vectorised.
    """
    if spec.features != "log_mel":
        raise ValueError(f"log_mel needs an AudioSpec with features \"log_mel\" (got {spec.features!r})")
    n, pad = spec.window_samples, spec.n_fft // 2
    wave = np.zeros(n, dtype=np.float64)
    wave[:min(len(x), n)] = x[:n]
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(wave, pad, mode="reflect"), spec.n_fft)
    frames = frames[::spec.hop_length][:-1]  # Whisper drops the last frame
    stft = np.fft.rfft(frames * np.hanning(spec.n_fft + 1)[:-1], axis=-1)  # periodic Hann window
    power = stft.real ** 2 + stft.imag ** 2  # [frames, n_fft // 2 + 1]
    mel = mel_filters(spec.sample_rate, spec.n_fft, spec.n_mels).T @ power.T
    out = np.log10(np.maximum(mel, LOG_MEL_FLOOR)).astype(np.float32)
    out = np.maximum(out, out.max() - LOG_MEL_RANGE)
    return (out + 4.0) / 4.0


def preprocess_audio(item: AudioInput, spec: dict | AudioSpec) -> np.ndarray:
    """One clip -> the model's input: read, mono, resample, cut to max_seconds, then normalise (a 1-D float32
    waveform), or with ``features: log_mel`` Whisper's log-mel features (float32 [n_mels, frames])."""
    s = spec if isinstance(spec, AudioSpec) else AudioSpec.from_dict(spec)
    x = read_audio(item, s.sample_rate)
    if s.max_seconds is not None:
        x = x[:max(1, int(round(s.max_seconds * s.sample_rate)))]
    if len(x) < s.min_samples:
        raise ValueError(f"{_name(item)}: the clip is {len(x) / s.sample_rate:.4f} s long; the model needs at least "
                         f"{s.min_samples / s.sample_rate:.4f} s ({s.min_samples} samples at {s.sample_rate} Hz)")
    if s.features == "log_mel":
        return log_mel(x, s)
    return normalize(x) if s.normalize else x


def pad_batch(clips: Sequence[np.ndarray]) -> np.ndarray:
    """1-D clips -> [batch, longest] float32, zero-padded at the end.

    Pad after normalising. The graph has no attention mask, so a padded clip's output differs from the same
    clip run alone: the feature encoder's group norm and the attention see the zeros, and a keyword model's
    mean pooling averages the padded frames too (1.0 in the logits of the tiny test model; Hugging Face batches
    wav2vec2-base this way and accepts the difference). ``Bundle.predict`` only batches clips of equal length.
    """
    if not len(clips):
        raise ValueError("pad_batch needs at least one clip")
    longest = max(len(c) for c in clips)
    out = np.zeros((len(clips), longest), dtype=np.float32)
    for row, clip in zip(out, clips):
        row[:len(clip)] = clip
    return out


def ctc_greedy(logits: np.ndarray, tokens: Sequence[str], blank: str = "<pad>", delimiter: str | None = "|",
               unk: str | None = "<unk>") -> list[str]:
    """Greedy CTC decoding of [batch, frames, vocab] (or [frames, vocab]) logits -> one transcript each.

    Best token per frame, repeats collapsed, then blanks and ``unk`` dropped (after collapsing, so a blank
    between two equal tokens keeps both), ``delimiter`` turned into a space, spaces collapsed and stripped.
    Hugging Face's ``Wav2Vec2CTCTokenizer.batch_decode`` gives the same text, except that it keeps
    ``<unk>`` literally unless asked to skip special tokens, and can leave double spaces.
    """
    a = np.asarray(logits)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != len(tokens):
        raise ValueError(f"CTC logits must be [batch, frames, {len(tokens)}] for {len(tokens)} vocabulary tokens, "
                         f"got shape {a.shape}")
    vocab = list(tokens)
    if blank not in vocab:
        raise ValueError(f"the CTC blank token {blank!r} is not in the vocabulary")
    blank_id = vocab.index(blank)
    dropped = {blank_id} | ({vocab.index(unk)} if unk in vocab else set())
    out = []
    for ids in a.argmax(axis=-1):
        keep = np.ones(len(ids), dtype=bool)
        keep[1:] = ids[1:] != ids[:-1]  # collapse runs of the same token
        text = "".join(" " if vocab[i] == delimiter else vocab[i] for i in ids[keep] if i not in dropped)
        out.append(" ".join(text.split()))
    return out
