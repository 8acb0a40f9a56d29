"""Named parameter groups on a live model: freezing, the BatchNorm policy, optimizer groups."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class ParamGroup:
    """One named group: its parameters, and the modules whose BatchNorm layers it owns."""

    name: str
    params: list[nn.Parameter]
    modules: list[nn.Module]


def make_groups(spec: Sequence[tuple[str, Sequence[nn.Module], Sequence[nn.Parameter]]]) -> list[ParamGroup]:
    """Groups from (name, modules, parameters owned directly by a module split across groups), input to
    output. A parameter reached twice counts in its first group only; groups left without any are dropped."""
    seen: set[int] = set()
    out = []
    for name, modules, raw in spec:
        params = []
        for p in [*(p for m in modules for p in m.parameters()), *raw]:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        if params:
            out.append(ParamGroup(name, params, list(modules)))
    return out


def check_groups(model: nn.Module, groups: Sequence[ParamGroup]) -> None:
    """Every parameter of the model is in exactly one group, nothing else is, and the last group is the new
    head (the schedule's ``head`` selector). A violation is an adapter bug, not a user error."""
    names = {id(p): n for n, p in model.named_parameters()}
    where: dict[int, list[str]] = {}
    for g in groups:
        for p in {id(p): p for p in g.params}.values():
            where.setdefault(id(p), []).append(g.name)
    twice = [f"{names.get(i, '?')} in {', '.join(g)}" for i, g in where.items() if len(g) > 1]
    missing = [n for i, n in names.items() if i not in where]
    foreign = [g[0] for i, g in where.items() if i not in names]
    last = [g.name for g in groups][-1:]
    if twice or missing or foreign or last != ["head"]:
        raise RuntimeError(f"bad parameter groups: in several groups {twice[:5]}, in none {missing[:5]}, "
                           f"not in the model (groups {foreign[:5]}), last group {last} (must be 'head')")


def describe_groups(groups: Sequence[ParamGroup]) -> list[tuple[str, int]]:
    """(name, parameter count) per group, for `suite ls groups`."""
    return [(g.name, sum(p.numel() for p in g.params)) for g in groups]


def group_names(groups: Sequence[ParamGroup]) -> list[str]:
    return [g.name for g in groups]


def set_trainable(groups: Sequence[ParamGroup], trainable: Sequence[str]) -> None:
    """requires_grad per group. A module with transformers' ``_requires_grad`` flag (Wav2Vec2's and HuBERT's
    feature encoder) follows its group too: with the flag left on, a frozen conv stack still sends gradients to
    its input on every step, which only its own parameters use (wav2vec2-base, batch 4 x 1 s, 2 CPU threads:
    1.041 s against 0.912 s a step, 1.14x)."""
    for g in groups:
        on = g.name in trainable
        for p in g.params:
            p.requires_grad_(on)
        for module in g.modules:
            if has_grad_flag(module):
                module._requires_grad = on


def has_grad_flag(module: nn.Module) -> bool:
    """transformers' flag on a module that asks for its input's gradient while it is set (``_requires_grad``)."""
    return isinstance(getattr(module, "_requires_grad", None), bool)


def freeze_batchnorm(groups: Sequence[ParamGroup], trainable: Sequence[str]) -> None:
    """Put BatchNorm layers of frozen groups in eval mode, so their running stats stay fixed.

    Call after every ``model.train()``, which would switch them back (torchvision #2164).
    """
    for g in groups:
        if g.name in trainable:
            continue
        for module in g.modules:
            for m in module.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()


def optimizer_groups(groups: Sequence[ParamGroup], lrs: Mapping[str, float], weight_decay: float) -> list[dict]:
    """One optimizer group per (named group, decay or not): biases and norm weights get no weight decay."""
    out = []
    for g in groups:
        if g.name not in lrs:
            continue
        decay = [p for p in g.params if p.ndim > 1]
        no_decay = [p for p in g.params if p.ndim <= 1]
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if params:
                out.append({"params": params, "lr": lrs[g.name], "weight_decay": wd, "name": g.name + suffix})
    return out


def make_optimizer(name: str, param_groups: list[dict], momentum: float = 0.9,
                   fused: bool | None = None) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW, with torch's fused kernel where every parameter allows it (floating
    point, on CPU or CUDA): one kernel per step instead of a Python loop over the parameters. AdamW's step on
    ResNet-18 took 6.8 ms fused against 22-33 ms by default on 2 CPU cores (benchmarks/README.md).
    ``fused=False``: torch's default implementation, step for step what a plain script computes."""
    kwargs = {"fused": True} if fused is not False and _fusable(param_groups) else {}
    if name == "sgd":
        return torch.optim.SGD(param_groups, momentum=momentum, **kwargs)
    if name == "adam":
        return torch.optim.Adam(param_groups, **kwargs)
    return torch.optim.AdamW(param_groups, **kwargs)


_FUSED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _fusable(param_groups: list[dict]) -> bool:
    params = [p for g in param_groups for p in g["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params)
