"""Image-classification backbones: build with a new head, load weights, split into freeze groups.

``build_model`` makes a torchvision (or ``timm:<name>``) model, swaps its final classifier ``Linear`` for a
fresh :class:`Head`, loads weights (torchvision enum or local file) and returns the model with the
:class:`~suite.vision.transforms.Preprocess` it expects.

``model_groups`` splits the model into named parameter groups, input to output, the last always ``"head"``.
Group representation: ``OrderedDict[str, list[nn.Module]]``. A group is a list of the model's own modules,
except for parameters owned *directly* by a module whose other parameters belong to other groups (ViT's
``class_token`` and ``encoder.pos_embedding``, timm's ``cls_token``/``pos_embed``): those are exposed by a
:class:`ParamHolder`, a detached view module whose ``parameters()`` returns the model's live Parameter
objects. Callers should not rely on the module lists directly but use :func:`group_parameters` (each
parameter exactly once) and :func:`group_modules` (the model's real modules, flattened, for BatchNorm/eval
handling). :func:`check_groups` asserts that the groups cover every parameter exactly once; ``model_groups``
always runs it.

Besides the registry in :func:`list_models`, any other torchvision classification model name is accepted
(e.g. ``resnet101``, ``vgg19_bn``, ``efficientnet_v2_s``, ``densenet121``); names of a known family use that
family's grouping, the rest fall back to top-level children with the final ``Linear`` as head.
"""
from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from suite.errors import UserError
from suite.vision.transforms import Preprocess

log = logging.getLogger(__name__)

# Curated names shown by `suite ls models`; value = family (which head/group functions apply).
_REGISTRY: dict[str, str] = {
    "resnet18": "resnet", "resnet34": "resnet", "resnet50": "resnet",
    "vgg11": "vgg", "vgg16": "vgg", "vgg16_bn": "vgg",
    "efficientnet_b0": "efficientnet", "efficientnet_b1": "efficientnet",
    "efficientnet_b2": "efficientnet", "efficientnet_b3": "efficientnet",
    "mobilenet_v3_small": "mobilenet_v3", "mobilenet_v3_large": "mobilenet_v3",
    "convnext_tiny": "convnext",
    "vit_b_16": "vit",
}
# Other torchvision names share a family's layout when they share its prefix (mobilenet_v2 is laid out like
# EfficientNet: features[0] stem conv, blocks, features[-1] 1x1 conv, classifier = [Dropout, Linear]).
_FAMILY_PREFIXES = (
    ("resnet", "resnet"), ("wide_resnet", "resnet"), ("resnext", "resnet"), ("vgg", "vgg"),
    ("efficientnet", "efficientnet"), ("mobilenet_v2", "efficientnet"), ("mobilenet_v3", "mobilenet_v3"),
    ("convnext", "convnext"), ("vit_", "vit"),
)
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
TIMM_PREFIX = "timm:"


# ----------------------------------------------------------------------------------------------- head


class Head(nn.Sequential):
    """The new classifier. A marker subclass so the head (and the weight-key prefix it replaced) can be
    found in any model without knowing its family."""


class HeadLinear(nn.Linear):
    """The new head when it is a single Linear: same marker role as Head, but its state-dict keys are the
    replaced layer's own (``fc.weight``), so a run's best.safetensors loads into plain torchvision."""


_HEADS = (Head, HeadLinear)


def make_head(in_features: int, hidden: Sequence[int], dropout: float, num_outputs: int) -> nn.Module:
    """[Dropout] + (Linear, ReLU, [Dropout]) per hidden size + Linear(prev, num_outputs)."""
    if not hidden and not dropout:
        return HeadLinear(in_features, num_outputs)
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    prev = in_features
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU(inplace=True)]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        prev = h
    layers.append(nn.Linear(prev, num_outputs))
    return Head(*layers)


def _check_head_args(num_outputs: int, hidden: Sequence[int], dropout: float) -> None:
    if not (isinstance(num_outputs, int) and num_outputs >= 1):
        raise UserError(f"the head needs num_outputs >= 1 (got {num_outputs!r}): set the number of classes")
    if any(not isinstance(h, int) or h < 1 for h in hidden):
        raise UserError(f"head.hidden must be a list of positive integers (got {list(hidden)!r})")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"head.dropout must be in [0, 1) (got {dropout!r})")


def _last_linear_index(seq: nn.Sequential) -> int:
    idx = [i for i, m in enumerate(seq) if isinstance(m, nn.Linear)]
    if not idx:
        raise UserError("this model's classifier has no Linear layer to replace; pick another model.arch")
    return idx[-1]


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _replace_head(family: str, model: nn.Module, hidden: Sequence[int], dropout: float, n: int) -> None:
    """Swap the final classifier Linear for a Head; which Linear depends on the family's layout."""
    if family == "resnet":
        model.fc = make_head(model.fc.in_features, hidden, dropout, n)
    elif family == "vgg" and hidden:
        # A custom MLP replaces the whole 4096-4096 classifier (torchvision already flattens after avgpool).
        model.classifier = make_head(model.classifier[0].in_features, hidden, dropout, n)
    elif family in ("vgg", "efficientnet", "mobilenet_v3", "convnext"):
        i = _last_linear_index(model.classifier)
        model.classifier[i] = make_head(model.classifier[i].in_features, hidden, dropout, n)
    elif family == "vit":
        model.heads.head = make_head(model.heads.head.in_features, hidden, dropout, n)
    else:  # generic: the last Linear in definition order is the classifier
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise UserError("this model has no Linear classifier to replace; pick another model.arch")
        old = model.get_submodule(linears[-1])
        _set_submodule(model, linears[-1], make_head(old.in_features, hidden, dropout, n))


def head_prefixes_of(model: nn.Module) -> list[str]:
    """State-dict key prefixes of the new head, which are also those of the classifier it replaced."""
    return [f"{name}." for name, m in model.named_modules() if isinstance(m, _HEADS)]


# --------------------------------------------------------------------------------------------- groups


class ParamHolder(nn.Module):
    """A view of parameters owned directly by a module that is split across groups (ViT class token,
    position embedding). Not a submodule of the model and owns nothing: ``parameters()`` looks the live
    Parameters up on their owners each time, so it stays right after ``model.to(device)``."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self._refs = [(n, *n.rpartition(".")[::2]) for n in names]  # (qualified, owner path, attr)
        self._root = [model]  # a list so nn.Module does not register the model as a child

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        for qualified, owner, attr in self._refs:
            yield prefix + qualified, getattr(self._root[0].get_submodule(owner), attr)

    def extra_repr(self) -> str:
        return ", ".join(q for q, _, _ in self._refs)


def _modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    return [model.get_submodule(n) for n in names]


def _resnet_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    stem = _modules(model, ["conv1", "bn1", "relu", "maxpool"])
    return [("stem", stem)] + [(f"layer{i}", [model.get_submodule(f"layer{i}")]) for i in range(1, 5)]


def _vgg_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    # One group per resolution: conv blocks end at each MaxPool.
    groups, block = [], []
    for m in model.features:
        block.append(m)
        if isinstance(m, nn.MaxPool2d):
            groups.append((f"features.{len(groups)}", block))
            block = []
    if block:
        groups.append((f"features.{len(groups)}", block))
    if not isinstance(model.classifier, _HEADS):  # original 4096-4096 MLP kept in front of the new Linear
        groups.append(("classifier", [m for m in model.classifier if not isinstance(m, _HEADS)]))
    return groups


def _stem_blocks_top(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    # EfficientNet / MobileNet: features[0] is the stem conv, features[-1] the final 1x1 conv.
    f = model.features
    blocks = [(f"blocks.{i}", [m]) for i, m in enumerate(f[1:-1])]
    return [("stem", [f[0]])] + blocks + [("top", [f[-1]])]


def _mobilenet_v3_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    kept = [m for m in model.classifier if not isinstance(m, _HEADS)]  # Linear-Hardswish-Dropout
    return _stem_blocks_top(model) + [("classifier", kept)]


def _convnext_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    # features = [stem, stage1, down, stage2, down, stage3, down, stage4]; each downsample opens its stage.
    f = model.features
    stages = [("stage1", [f[1]])] + [(f"stage{k}", [f[2 * k - 2], f[2 * k - 1]]) for k in range(2, 5)]
    return [("stem", [f[0]])] + stages + [("norm", [model.classifier[0]])]


def _vit_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    raw = ParamHolder(model, ["class_token", "encoder.pos_embedding"])
    blocks = [(f"blocks.{i}", [m]) for i, m in enumerate(model.encoder.layers)]
    extra = [m for name, m in model.heads.named_children() if name != "head"]  # pre_logits, if any
    return [("stem", [model.conv_proj, raw])] + blocks + [("norm", [model.encoder.ln] + extra)]


def _generic_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Top-level children in order; a child containing the head is split into its own children."""
    groups: list[tuple[str, list[nn.Module]]] = []
    raw = [n for n, _ in model.named_parameters(recurse=False)]
    if raw:
        groups.append(("params", [ParamHolder(model, raw)]))

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}{name}"
            if any(isinstance(m, _HEADS) for m in child.modules()):
                if not isinstance(child, _HEADS):
                    visit(qualified + ".", child)
            elif any(True for _ in child.parameters()):
                groups.append((qualified, [child]))

    visit("", model)
    return groups


_GROUP_FUNCS: dict[str, Callable[[nn.Module], list[tuple[str, list[nn.Module]]]]] = {
    "resnet": _resnet_groups,
    "vgg": _vgg_groups,
    "efficientnet": _stem_blocks_top,
    "mobilenet_v3": _mobilenet_v3_groups,
    "convnext": _convnext_groups,
    "vit": _vit_groups,
    "generic": _generic_groups,
}


def _head_group(model: nn.Module, taken: set[int]) -> list[nn.Module]:
    """The Head plus its parameter-free siblings (classifier Dropout/Flatten) that no earlier group took,
    so the whole tail of the classifier is 'head'."""
    name = head_prefixes_of(model)[0][:-1]
    parent = model.get_submodule(name.rpartition(".")[0])
    head = model.get_submodule(name)
    if parent is model or not isinstance(parent, nn.Sequential):
        return [head]
    return [m for m in parent if m is head or (id(m) not in taken and not any(True for _ in m.parameters()))]


def model_groups(arch: str, model: nn.Module) -> "OrderedDict[str, list[nn.Module]]":
    """Named groups, input to output; the last is ``"head"`` (the new Head). Covers every parameter once."""
    family = _family(arch)
    if not head_prefixes_of(model):
        raise UserError(f"this {arch} model has no suite Head: build it with suite.vision.models.build_model")
    if family == "timm":
        body = _timm_groups(model)
    else:
        body = _GROUP_FUNCS[family](model)
    groups = OrderedDict(body)
    taken = {id(m) for _, modules in body for m in modules}
    groups["head"] = _head_group(model, taken)
    check_groups(model, groups)
    return groups


def _iter_group_params(modules: Sequence[nn.Module]) -> Iterator[nn.Parameter]:
    for m in modules:
        yield from m.parameters()


def group_parameters(groups: "OrderedDict[str, list[nn.Module]]") -> "OrderedDict[str, list[nn.Parameter]]":
    """Each group's parameters; a parameter appears once overall (first group wins, duplicates dropped)."""
    seen: set[int] = set()
    out: OrderedDict[str, list[nn.Parameter]] = OrderedDict()
    for name, modules in groups.items():
        out[name] = []
        for p in _iter_group_params(modules):
            if id(p) not in seen:
                seen.add(id(p))
                out[name].append(p)
    return out


def group_modules(groups: "OrderedDict[str, list[nn.Module]]") -> "OrderedDict[str, list[nn.Module]]":
    """Each group's real model modules, flattened with all descendants (ParamHolder views left out), so a
    caller can find BatchNorm layers with ``isinstance`` or put a frozen group in eval mode."""
    out: OrderedDict[str, list[nn.Module]] = OrderedDict()
    for name, modules in groups.items():
        seen: dict[int, nn.Module] = {}
        for m in modules:
            for sub in m.modules():
                if not isinstance(sub, ParamHolder):
                    seen.setdefault(id(sub), sub)
        out[name] = list(seen.values())
    return out


def check_groups(model: nn.Module, groups: "OrderedDict[str, list[nn.Module]]") -> None:
    """Raise AssertionError unless every model parameter is in exactly one group and nothing else is."""
    names = {id(p): n for n, p in model.named_parameters()}
    where: dict[int, list[str]] = {}
    for gname, modules in groups.items():
        for p in {id(p): p for p in _iter_group_params(modules)}.values():
            where.setdefault(id(p), []).append(gname)
    twice = [f"{names.get(i, '?')} in {g}" for i, g in where.items() if len(g) > 1]
    missing = [n for i, n in names.items() if i not in where]
    foreign = [g[0] for i, g in where.items() if i not in names]
    if twice or missing or foreign or list(groups)[-1:] != ["head"]:
        raise AssertionError(
            f"bad parameter groups: in several groups {twice[:5]}, in none {missing[:5]}, "
            f"not in the model (groups {foreign[:5]}), last group {list(groups)[-1:]} (must be 'head')"
        )


def describe_groups(arch: str, model: nn.Module | None = None) -> list[tuple[str, int]]:
    """(group name, parameter count) in order, for `suite ls groups MODEL`. Builds a random-init model with
    a 1000-way head when none is given."""
    if model is None:
        model, _ = build_model(arch, 1000)
    params = group_parameters(model_groups(arch, model))
    return [(name, sum(p.numel() for p in ps)) for name, ps in params.items()]


# ------------------------------------------------------------------------------------------- registry


def list_models() -> list[str]:
    """The curated model names; ``timm:<name>`` and other torchvision classification names also build."""
    return list(_REGISTRY)


def _torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _family(arch: str) -> str:
    if arch.startswith(TIMM_PREFIX):
        return "timm"
    if arch in _REGISTRY:
        return _REGISTRY[arch]
    if arch in _torchvision_names():
        return next((fam for prefix, fam in _FAMILY_PREFIXES if arch.startswith(prefix)), "generic")
    candidates = list(dict.fromkeys(list_models() + _torchvision_names()))  # registry names come first
    close = difflib.get_close_matches(arch, candidates, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserError(
        f"unknown model.arch '{arch}': {hint}known: {', '.join(list_models())}, any torchvision "
        f"classification model, or timm:<name> (see `suite ls models`)"
    )


# -------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class LoadReport:
    loaded: int  # tensors copied into the model (the head's too when the file's head matched it)
    head_skipped: int  # tensors of the file's old classifier/head left out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from .safetensors, or a .pth/.pt/.bin state_dict (possibly under "model"/"state_dict")."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: fix model.weights (a file path, 'none' or DEFAULT)")
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            obj = safetensors.torch.load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled code refused by weights_only, ...
        raise UserError(f"cannot read weights file {path} ({e}); save it with torch.save(model.state_dict(), f)")
    for key in ("model", "state_dict"):  # training checkpoints often wrap the state_dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} does not hold a state_dict of tensors; save model.state_dict()")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _few(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights_file(
    model: nn.Module, path: str | os.PathLike, head_prefixes: Sequence[str] | None = None, arch: str = "this model"
) -> LoadReport:
    """Load a state_dict file into ``model``. Every non-head tensor must be there with its shape, and no
    other non-head key may be in the file (else it is for another architecture -> UserError). The head
    (keys under ``head_prefixes``, default: the Head's) is all-or-nothing: loaded only when the file's head
    keys and shapes equal the model's (same task, e.g. a run's best.safetensors); otherwise all are skipped
    and the new head keeps its fresh init, so no layer of an old classifier leaks in by a name collision."""
    state = read_state_dict(path)
    prefixes = tuple(head_prefixes if head_prefixes is not None else head_prefixes_of(model))
    own = model.state_dict()

    def is_head(k: str) -> bool:
        return bool(prefixes) and k.startswith(prefixes)

    body = {k: v for k, v in state.items() if not is_head(k)}
    # num_batches_tracked is absent from old checkpoints and is not a weight.
    missing = [k for k in own if k not in body and not is_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in body if k not in own]
    shape = [f"{k} {list(v.shape)} vs {list(own[k].shape)}" for k, v in body.items() if k in own
             and v.shape != own[k].shape]
    if missing or unexpected or shape:
        parts = [f"{label} {_few(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shape", shape)) if keys]
        raise UserError(f"weights file {path} does not fit arch {arch}: {'; '.join(parts)} — check model.arch")
    head_file = {k: v.shape for k, v in state.items() if is_head(k)}
    head_own = {k: v.shape for k, v in own.items() if is_head(k)}
    load = state if head_file == head_own else body
    model.load_state_dict(load, strict=False)
    report = LoadReport(loaded=len(load), head_skipped=len(state) - len(load))
    log.info("loaded %d tensors from %s; %d old head tensors skipped", report.loaded, path, report.head_skipped)
    return report


def _resolve_enum(arch: str, weights: str):
    """'DEFAULT', 'IMAGENET1K_V1' or 'ResNet18_Weights.IMAGENET1K_V1' -> the torchvision weights enum."""
    try:
        enum_cls = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise UserError(f"{arch} has no torchvision weights; set model.weights to a file or 'none'") from None
    cls_name, _, member = weights.rpartition(".")
    valid = list(enum_cls.__members__)
    if cls_name and cls_name != enum_cls.__name__:
        raise UserError(f"weights {weights} are not for {arch}: use {enum_cls.__name__}.<one of {', '.join(valid)}>")
    if member not in enum_cls.__members__:
        raise UserError(
            f"unknown weights '{weights}' for {arch}: use one of {', '.join(valid)}, 'none', or a .pth/.safetensors path"
        )
    return enum_cls[member]


def _download(url: str, dest: Path) -> None:
    """Fetch into the hub cache; torch.hub looked up at call time so tests can replace it."""
    match = torch.hub.HASH_REGEX.search(dest.name)  # torchvision file names carry a sha256 prefix
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), match.group(1) if match else None, progress=True)


def _cached_enum_file(arch: str, enum) -> Path:
    """The enum's file in the torch hub cache, downloaded first when absent (UserError when offline)."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(urlparse(enum.url).path)
    if path.is_file():
        return path
    try:
        _download(enum.url, path)
    except Exception as e:  # URLError, HTTPError, hash mismatch, timeout, ...
        log.debug("download of %s failed: %s", enum.url, e)
        raise UserError(
            f"weights {enum} for {arch} are not in the torch hub cache and could not be downloaded (offline?): "
            f"download {enum.url} and put it in {folder}/ (or set model.weights to a local .pth)"
        ) from None
    return path


def _enum_preprocess(enum) -> Preprocess:
    t = enum.transforms()
    interp = getattr(getattr(t, "interpolation", None), "value", "bilinear")
    return Preprocess(
        size=int(t.crop_size[0]), resize=int(t.resize_size[0]), mean=tuple(t.mean), std=tuple(t.std),
        interpolation=interp if interp in ("nearest", "bilinear", "bicubic") else "bilinear",
    )


def _is_file_spec(weights: str) -> bool:
    return weights.lower().endswith(WEIGHT_FILE_SUFFIXES) or "/" in weights or os.sep in weights


# ---------------------------------------------------------------------------------------------- build


def build_model(
    arch: str, num_outputs: int, weights: str = "none", hidden: Sequence[int] = (), dropout: float = 0.0
) -> tuple[nn.Module, Preprocess]:
    """The model with a new Head of ``num_outputs`` and loaded ``weights``, plus its Preprocess.

    weights: "none" (random init), a torchvision enum name ("DEFAULT", "IMAGENET1K_V1",
    "ResNet18_Weights.IMAGENET1K_V1"; read from the torch hub cache, else downloaded), or a local
    .pth/.pt/.bin/.safetensors state_dict (e.g. a run's best.safetensors; a head of another size is skipped).
    """
    family = _family(arch)
    hidden = tuple(hidden or ())
    _check_head_args(num_outputs, hidden, dropout)
    if family == "timm":
        return _build_timm(arch[len(TIMM_PREFIX):], num_outputs, weights, hidden, dropout)
    weights = "none" if weights is None else str(weights).strip()
    enum = None
    if weights.lower() != "none" and not _is_file_spec(weights):
        enum = _resolve_enum(arch, weights)
    elif weights.lower() != "none":
        _check_weights_file(weights)  # before building: a VGG takes seconds to initialise
    kwargs = {}
    if family == "vit" and enum is not None and "min_size" in enum.meta:
        kwargs["image_size"] = enum.meta["min_size"][0]  # SWAG weights are for 384 px: size pos_embedding
    # Always built without weights: torchvision would size the old head to 1000 classes and download.
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    _replace_head(family, model, hidden, dropout, num_outputs)
    if enum is not None:
        load_weights_file(model, _cached_enum_file(arch, enum), arch=arch)
        return model, _enum_preprocess(enum)
    if weights.lower() != "none":
        load_weights_file(model, weights, arch=arch)
    return model, Preprocess()


def preprocess_for(arch: str, weights: str = "none") -> Preprocess:
    """The Preprocess that build_model would return, without building or loading anything heavy.

    The data pipeline needs it before the model exists (the head size comes from the data)."""
    weights = "none" if weights is None else str(weights).strip()
    if _family(arch) == "timm":
        return _timm_preprocess(_import_timm().create_model(arch[len(TIMM_PREFIX):], pretrained=False))
    if weights.lower() == "none" or _is_file_spec(weights):
        return Preprocess()
    return _enum_preprocess(_resolve_enum(arch, weights))


def _check_weights_file(weights: str) -> None:
    if not weights.lower().endswith(WEIGHT_FILE_SUFFIXES):
        raise UserError(f"weights file {weights} must end with one of {', '.join(WEIGHT_FILE_SUFFIXES)}")
    if not Path(weights).is_file():
        raise UserError(f"weights file {weights} does not exist: fix model.weights (a file path, 'none' or DEFAULT)")


# ----------------------------------------------------------------------------------------------- timm


def _import_timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm:<name> models need timm: pip install 'finetune-suite[timm]'") from None
    return timm


def _build_timm(name: str, num_outputs: int, weights: str, hidden: Sequence[int], dropout: float):
    """timm model; weights: 'none', 'DEFAULT'/'pretrained' (timm's own hub download), or a local file."""
    timm = _import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown timm model '{name}': {hint}names are those of timm.list_models()")
    weights = "none" if weights is None else str(weights).strip()
    pretrained = weights.upper() in ("DEFAULT", "PRETRAINED")
    from_file = weights.lower() != "none" and not pretrained
    if from_file and not _is_file_spec(weights):
        raise UserError(f"timm models take weights 'none', 'DEFAULT' or a file path (got '{weights}')")
    if from_file:
        _check_weights_file(weights)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_outputs)
    except Exception as e:
        if not pretrained:
            raise
        raise UserError(f"could not get pretrained weights for timm:{name} ({e}) (offline?): set "
                        "model.weights to a local file or 'none'") from None
    _replace_timm_head(model, hidden, dropout, num_outputs)
    if from_file:
        load_weights_file(model, weights, arch=f"{TIMM_PREFIX}{name}")
    return model, _timm_preprocess(model)


def _replace_timm_head(model: nn.Module, hidden: Sequence[int], dropout: float, n: int) -> None:
    """timm already made a fresh ``num_classes`` classifier (``reset_classifier``); it is swapped for a Head
    in place, so keys stay under timm's classifier name and no wrapper module changes the layout."""
    path = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    if not isinstance(path, str):  # distilled models name two heads; only one is supported
        raise UserError("this timm model has no single classifier to replace; pick another model.arch")
    old = model.get_submodule(path)
    if isinstance(old, nn.Linear):
        _set_submodule(model, path, make_head(old.in_features, hidden, dropout, n))
    elif hidden or dropout:
        raise UserError(f"timm classifier {path} is a {type(old).__name__}, not Linear: head.hidden/dropout "
                        "are not supported for it; leave them empty")
    else:  # e.g. a 1x1 conv classifier: keep timm's layer, marked as the head
        _set_submodule(model, path, Head(old))


def _timm_preprocess(model: nn.Module) -> Preprocess:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    interp = cfg.get("interpolation", "bilinear")
    return Preprocess(
        size=size, resize=max(size, math.floor(size / cfg.get("crop_pct", 0.875))),
        mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
        interpolation=interp if interp in ("nearest", "bilinear", "bicubic") else "bilinear",
    )


def _timm_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """stem / blocks.i / top from timm's coarse group_matcher (regex dict); top-level children otherwise.
    timm merges its 'neck' entries into the last block for layer decay; here they form 'top'."""
    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        matcher = None
    if not isinstance(matcher, dict):
        return _generic_groups(model)
    rules = []
    for order, (gname, spec) in enumerate(matcher.items()):
        if spec:  # a spec is one regex, or a list of (regex, suffix) pairs
            specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
            rules += [(re.compile(regex), order, gname, suffix) for regex, suffix in specs]
    heads = tuple(head_prefixes_of(model))
    keyed: dict[tuple, list[str]] = {}
    for pname, _ in model.named_parameters():
        if not pname.startswith(heads):
            key, label = _timm_key(pname, rules)
            keyed.setdefault((key, label), []).append(pname)
    named: OrderedDict[str, list[str]] = OrderedDict()
    for (_, label), pnames in sorted(keyed.items(), key=lambda kv: kv[0][0]):
        named.setdefault(label, []).extend(pnames)
    return [(label, _cover(model, pnames)) for label, pnames in named.items()]


def _timm_key(pname: str, rules) -> tuple[tuple[float, ...], str]:
    """Sort key and group label of a parameter, following timm's matcher rules (first match wins)."""
    for regex, order, gname, suffix in rules:
        m = regex.match(pname)
        if m:
            nums = tuple(float(g) for g in m.groups() if g is not None)
            if suffix is not None:  # timm's "neck" entries, e.g. ViT's final norm: (99999,)
                return (order, *nums, *suffix), "top"
            label = "stem" if gname == "stem" else ".".join([gname, *(str(int(x)) for x in nums)])
            return (order, *nums), label
    return (math.inf,), "top"  # unmatched: neck layers before the classifier


def _cover(model: nn.Module, pnames: Sequence[str]) -> list[nn.Module]:
    """The largest modules whose parameters all lie in ``pnames``; parameters left over (owned directly by
    a module with parameters elsewhere) go into a ParamHolder."""
    wanted, covered, chosen = set(pnames), set(), []
    for mname, m in model.named_modules():
        if m is model or any(mname.startswith(c + ".") for c, _ in chosen):
            continue
        own = {f"{mname}.{p}" for p, _ in m.named_parameters()}
        if own and own <= wanted:
            chosen.append((mname, m))
            covered |= own
    rest = [p for p in pnames if p not in covered]
    return ([ParamHolder(model, rest)] if rest else []) + [m for _, m in chosen]
