"""Wav2Vec2 through transformers: keyword spotting (sequence classification) and CTC, with our groups."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from suite.core import weights as W
from suite.core.groups import ParamGroup, make_groups
from suite.errors import UserError

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# model.arch -> Wav2Vec2Config overrides for `weights: none` (base = transformers' defaults = facebook/wav2vec2-base)
SIZES = {
    "wav2vec2-base": {},
    "wav2vec2-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           do_stable_layer_norm=True, feat_extract_norm="layer"),
    # small and tiny: the standard 7-layer conv stack (same 20 ms frames) with narrow layers, for offline
    # quickstarts and tests on a CPU
    "wav2vec2-small": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=768,
                           conv_dim=(128,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8,
                           classifier_proj_size=128),
    "wav2vec2-tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          classifier_proj_size=32),
}


def is_wav2vec2(arch: str) -> bool:
    return arch in SIZES


def _classes(ctc: bool):
    from transformers import Wav2Vec2ForCTC, Wav2Vec2ForSequenceClassification

    return Wav2Vec2ForCTC if ctc else Wav2Vec2ForSequenceClassification


ENCODER_DROPOUTS = ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout")


def _head_kwargs(ctc: bool, n: int, pad_id: int) -> dict:
    if ctc:  # mean loss, and a loss of 0 instead of inf for a clip too short for its transcript (transformers #10884)
        return dict(vocab_size=n, pad_token_id=pad_id, ctc_loss_reduction="mean", ctc_zero_infinity=True)
    return dict(num_labels=n)


def build_model(arch: str, n_outputs: int, weights: str, ctc: bool, pad_id: int = 0, mask_time_prob: float = 0.05,
                layerdrop: float = 0.0, trust: bool = False, dropout: float | None = None) -> nn.Module:
    """Wav2Vec2ForSequenceClassification / ForCTC with ``n_outputs`` classes or vocabulary tokens.

    ``weights``: ``none`` (random init, ``arch`` sets the size), a Hugging Face id (from the local HF cache),
    a folder saved with save_pretrained(), or a state_dict file (e.g. a suite run's best.safetensors; the
    encoder must fit, the head loads only when it is the same).
    """
    from transformers import Wav2Vec2Config
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized weights" for the head is the point of fine-tuning
    if arch not in SIZES:
        raise UserError(f"model.arch '{arch}' is not a speech model; use one of {', '.join(SIZES)}")
    cls = _classes(ctc)
    extra = dict(mask_time_prob=mask_time_prob, layerdrop=layerdrop, **_head_kwargs(ctc, n_outputs, pad_id))
    if dropout is not None:  # `model.encoder_dropout`; None: the config's (or the weights' config's) own
        extra.update({k: dropout for k in ENCODER_DROPOUTS})
    source = W.parse(weights)
    folder = Path(source.value)
    if source.kind == W.NONE or (source.kind == W.FILE and not folder.is_dir()):
        model = cls(Wav2Vec2Config(**SIZES[arch], **extra))
        if source.kind == W.FILE:
            W.load_file(model, source.value, head_prefixes(model), arch, trust)
        return model
    if source.kind == W.NAME:
        folder = W.hub_folder(source.value)
    if not trust and not any(folder.glob("*.safetensors")):  # pytorch_model.bin is a pickle
        raise UserError(f"model.weights {weights}: {folder} has no .safetensors weights (a pytorch_model.bin is a "
                        f"pickle, which can run code when loaded): {W.TRUST_HINT}")
    return cls.from_pretrained(str(folder), ignore_mismatched_sizes=True, use_safetensors=not trust, **extra)


def resolve_weights(weights: str) -> str:
    """Where ``weights`` come from (a file, a save_pretrained folder, the HF cache), or a UserError."""
    source = W.parse(weights)
    if source.kind == W.NONE:
        return "random init"
    if source.kind == W.FILE:
        return str(source.value if Path(source.value).is_dir() else W.check_file(source.value))
    if source.kind == W.PYPI:
        raise UserError(f"model.weights pypi:{source.value}: no speech model uses it; a Wav2Vec2 takes a Hugging "
                        "Face id, a save_pretrained folder or a state_dict file")
    return str(W.hub_folder(source.value))


def cache_spec_parts(model: nn.Module, use_mask: bool):
    """Cached features of a Wav2Vec2ForSequenceClassification: the encoder's hidden states averaged over the
    clip's frames (the projector is linear, so it commutes with the mean: equal to transformers' own pooling up
    to float rounding), and the head that maps them to logits. None and a reason where it does not apply."""
    if not hasattr(model, "projector"):
        return None, "CTC heads score every frame, not one vector per clip"
    if getattr(model.config, "use_weighted_layer_sum", False):
        return None, "use_weighted_layer_sum: the layer weights train with the head, so the features change"

    def extract(hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        if not use_mask:
            return hidden.mean(dim=1)
        frames = model._get_feature_vector_attention_mask(hidden.shape[1], batch["attention_mask"].to(hidden.device))
        return (hidden * frames.unsqueeze(-1)).sum(1) / frames.sum(1, keepdim=True)

    return (model.projector, extract, lambda f: model.classifier(model.projector(f))), None


def head_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of the task head: everything outside the ``wav2vec2`` encoder."""
    return [f"{name}." for name, _ in model.named_children() if name != "wav2vec2"] + \
        (["layer_weights"] if getattr(model, "layer_weights", None) is not None else [])


def groups(model: nn.Module) -> list[ParamGroup]:
    """feature_encoder (the conv stack), feature_projection (projection, positional conv, the masking
    embedding, the encoder's input norm), encoder.0 .. encoder.N-1, head (projector+classifier or lm_head)."""
    w = model.wav2vec2
    enc = w.encoder
    masked = [w.masked_spec_embed] if getattr(w, "masked_spec_embed", None) is not None else []
    layer_weights = [model.layer_weights] if getattr(model, "layer_weights", None) is not None else []
    return make_groups([
        ("feature_encoder", [w.feature_extractor], []),
        ("feature_projection", [w.feature_projection, enc.pos_conv_embed, enc.layer_norm], masked),
        *((f"encoder.{i}", [layer], []) for i, layer in enumerate(enc.layers)),
        ("head", [m for name, m in model.named_children() if name != "wav2vec2"], layer_weights),
    ])


class ExportWrapper(nn.Module):
    """The model's first input -> logits, nothing else: Wav2Vec2's input_values [batch, time] -> [batch, classes]
    or [batch, frames, vocab]; Whisper's input_features [batch, 80, frames] -> [batch, classes]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs).logits


def random_export_model(arch: str, n_outputs: int, ctc: bool, seed: int = 0) -> nn.Module:
    """A seeded random-init ExportWrapper at ``arch``'s size: a picklable factory for benchmark workers."""
    torch.manual_seed(seed)
    return ExportWrapper(build_model(arch, n_outputs, "none", ctc, mask_time_prob=0.0))
