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


def check_groups(model: nn.Module, groups: Sequence[ParamGroup]) -> None:
    """Every parameter of the model belongs to exactly one group (an adapter bug otherwise)."""
    seen: dict[int, str] = {}
    for g in groups:
        for p in g.params:
            if id(p) in seen:
                raise RuntimeError(f"parameter in both groups '{seen[id(p)]}' and '{g.name}'")
            seen[id(p)] = g.name
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise RuntimeError(f"parameters in no group: {', '.join(missing[:5])}")


def group_names(groups: Sequence[ParamGroup]) -> list[str]:
    return [g.name for g in groups]


def set_trainable(groups: Sequence[ParamGroup], trainable: Sequence[str]) -> None:
    for g in groups:
        for p in g.params:
            p.requires_grad_(g.name in trainable)


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


def make_optimizer(name: str, param_groups: list[dict], momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(param_groups, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(param_groups)
    return torch.optim.AdamW(param_groups)
