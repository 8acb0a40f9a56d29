"""The freeze schedule: which groups train in which stage, at which learning rate.

Pure functions of group names, stage settings and step counts, so every rule here is
testable without torch. `groups.py` applies the result to a model.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from suite.errors import FieldError, UserError

SCHEDULERS = ("cosine", "onecycle", "constant")

# `train:` selectors besides a list of names.
HEAD, ALL = "head", "all"


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule, as the recipe states it."""

    epochs: int
    train: str | tuple[str, ...] | Mapping[str, int]
    lr: float
    lr_mult: Mapping[str, float] = field(default_factory=dict)
    layer_decay: float | None = None
    warmup: float | None = None  # fraction of the stage's optimizer steps; None: optim.warmup
    scheduler: str | None = None  # None: optim.scheduler

    def __post_init__(self):
        if self.epochs < 1:
            raise FieldError("epochs", f"must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise FieldError("lr", f"must be > 0, got {self.lr}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise FieldError("layer_decay", f"must be in (0, 1], got {self.layer_decay}")
        if self.warmup is not None and not 0 <= self.warmup < 1:
            raise FieldError("warmup", f"must be in [0, 1), got {self.warmup}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise FieldError("scheduler", f"must be one of {', '.join(SCHEDULERS)}, got '{self.scheduler}'")
        if any(not m >= 0 for m in self.lr_mult.values()):
            raise FieldError("lr_mult", "multipliers must be >= 0")


def _unknown_group(name: str, valid: Sequence[str], where: str) -> UserError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UserError(f"{where}: unknown group '{name}'{hint}; valid groups: {', '.join(valid)}")


def _expand(name: str, names: Sequence[str], where: str) -> list[str]:
    """A group name, or a block prefix: ``backbone`` selects ``backbone.0``, ``backbone.1``, ..."""
    if name in names:
        return [name]
    block = [n for n in names if n.startswith(name + ".")]
    if not block:
        blocks = sorted({n.split(".")[0] for n in names if "." in n})
        raise _unknown_group(name, [*names, *blocks], where)
    return block


def trainable_groups(selector, group_names: Sequence[str], where: str = "schedule") -> list[str]:
    """The groups a stage trains, in model order. ``head``, ``all``, ``{last: k}`` or names.

    A name may be a block prefix: ``backbone`` means every ``backbone.N`` (YOLO layers, ...).
    """
    names = list(group_names)
    if selector == HEAD:
        chosen = [names[-1]]
    elif selector == ALL:
        chosen = names
    elif isinstance(selector, Mapping):
        k = selector.get("last")
        if set(selector) != {"last"} or not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserError(f"{where}: 'train' as a mapping must be {{last: k}} with k >= 1, got {dict(selector)}; "
                            f"groups: {', '.join(names)}")
        chosen = names[-k:]
    else:
        wanted = [selector] if isinstance(selector, str) else list(selector)
        picked = {n for name in wanted for n in _expand(name, names, where)}
        chosen = [n for n in names if n in picked]
    if not chosen:
        raise UserError(f"{where} leaves no group trainable; name at least one of: {', '.join(names)}")
    return chosen


def group_lrs(stage: Stage, group_names: Sequence[str], where: str = "schedule") -> dict[str, float]:
    """Base LR of each trainable group.

    ``layer_decay`` is geometric by position from the output over *all* groups (the head
    gets ``lr``, the group before it ``lr * decay``, ...), so a group's LR does not depend
    on how many others happen to be unfrozen. ``lr_mult`` then multiplies per group.
    """
    names = list(group_names)
    mult = {}
    for key, m in stage.lr_mult.items():  # a block prefix sets every group in it; an exact name wins
        for name in _expand(key, names, f"{where} lr_mult"):
            if name not in mult or key == name:
                mult[name] = m
    lrs = {}
    for name in trainable_groups(stage.train, names, where):
        depth = len(names) - 1 - names.index(name)
        lr = stage.lr * (stage.layer_decay**depth if stage.layer_decay is not None else 1.0)
        lrs[name] = lr * mult.get(name, 1.0)
    return lrs


def stage_at(epoch: int, stages: Sequence[Stage]) -> tuple[int, int]:
    """(stage index, epoch within that stage) for a global epoch of an uninterrupted run."""
    start = 0
    for i, stage in enumerate(stages):
        if epoch < start + stage.epochs:
            return i, epoch - start
        start += stage.epochs
    raise ValueError(f"epoch {epoch} is past the schedule's {start} epochs")


def total_epochs(stages: Sequence[Stage]) -> int:
    return sum(s.epochs for s in stages)


def lr_factor(step: int, total: int, warmup: float, kind: str) -> float:
    """Multiplier of a stage's base LR at optimizer step ``step`` of ``total``.

    cosine: linear warm-up over ``warmup * total`` steps, then half a cosine to 0.
    onecycle: torch's OneCycleLR shape (from 1/25 up to 1 over ``warmup`` (default 0.3)
    of the steps, then down to 1/25e4), as a function of the step alone.
    constant: warm-up, then 1.
    """
    if total <= 0:
        return 1.0
    if kind == "onecycle":
        pct = warmup if warmup > 0 else 0.3
        up = max(1, round(pct * total))
        start, end = 1 / 25, 1 / 25e4
        if step < up:
            return start + (1 - start) * (1 - math.cos(math.pi * step / up)) / 2
        t = (step - up) / max(1, total - up)
        return end + (1 - end) * (1 + math.cos(math.pi * min(t, 1.0))) / 2
    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / (warm + 1)
    if kind == "constant":
        return 1.0
    if kind != "cosine":
        raise UserError(f"unknown scheduler '{kind}'; valid: {', '.join(SCHEDULERS)}")
    t = (step - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def check_schedule(stages: Sequence[Stage], group_names: Sequence[str]) -> list[dict[str, float]]:
    """Validate every stage against the model's groups before training; the LRs per stage."""
    if not stages:
        raise UserError("schedule is empty: add at least one stage, e.g. {epochs: 3, train: head, lr: 1.0e-3}")
    return [group_lrs(s, group_names, f"schedule stage {i}") for i, s in enumerate(stages)]
