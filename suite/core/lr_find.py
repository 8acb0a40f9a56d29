"""The learning-rate range test (Smith 2017; fastai's lr_find) on one stage's trainable groups.

The LR grows exponentially step by step while the loss is smoothed; the test stops when the smoothed loss
exceeds ``diverge`` times its minimum or a loss is not finite. The stage's per-group LRs (layer decay, lr_mult)
keep their ratios: every group's LR is scaled by one factor, which torch-lr-finder's ExponentialLR does not do (it
moves every group to the same end LR), and the modality's loss hook takes a whole batch, not (outputs, labels).
The model's weights, buffers, trainable flags and every RNG state are restored afterwards.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from suite.core import checkpoint
from suite.core.groups import ParamGroup, freeze_batchnorm, has_grad_flag
from suite.core.loop import FitOptions, Hooks, autocast_dtype, stage_optimizer
from suite.core.schedule import Stage
from suite.errors import UserError


@dataclass
class LRFindResult:
    lrs: list[float]  # the stage's reference LR (its `lr`, the head's) at each step
    losses: list[float]  # smoothed, bias-corrected
    raw_losses: list[float]
    suggestion: float  # where the smoothed loss falls fastest (steepest slope against log LR)
    min_loss_lr: float  # the LR of the lowest smoothed loss; one tenth of it is the other usual pick
    stopped: str  # why the sweep ended

    def to_json(self) -> dict:
        return asdict(self)


def lr_find(model: nn.Module, groups: Sequence[ParamGroup], stage: Stage, hooks: Hooks, opts: FitOptions,
            device: torch.device, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            smooth: float = 0.98, diverge: float = 4.0) -> LRFindResult:
    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr-find needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < 5:
        raise ValueError(f"lr-find needs at least 5 steps, got {steps}")
    saved = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    module_flags = [(m, m._requires_grad) for m in model.modules() if has_grad_flag(m)]  # set_trainable turns them
    rng = checkpoint.rng_state()
    was_training = model.training
    try:
        return _sweep(model, groups, stage, hooks, opts, device, start_lr, end_lr, steps, smooth, diverge)
    finally:
        model.load_state_dict(saved)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        for m, flag in module_flags:
            m._requires_grad = flag
        checkpoint.set_rng_state(rng)
        model.train(was_training)


def _sweep(model, groups, stage, hooks, opts, device, start_lr, end_lr, steps, smooth, diverge) -> LRFindResult:
    trainable, opt = stage_optimizer(groups, stage, opts, "lr-find stage")
    base = [g["lr"] / stage.lr for g in opt.param_groups]  # each group's LR relative to the stage's
    amp = autocast_dtype(opts.precision, device, hooks.auto_amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)  # as fit() does; a no-op otherwise
    model.train()
    freeze_batchnorm(groups, trainable)
    lrs, raw, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, f"completed {steps} steps"
    batches = itertools.chain.from_iterable(hooks.train_loader(epoch) for epoch in itertools.count())
    for i, batch in zip(range(steps), batches):
        lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
        for group, rel in zip(opt.param_groups, base):
            group["lr"] = lr * rel
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = hooks.loss(model, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            stopped = f"loss not finite at step {i + 1} (LR {lr:.2e})"
            break
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if opts.clip_grad:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], opts.clip_grad)
        scaler.step(opt)
        scaler.update()
        avg = smooth * avg + (1 - smooth) * value
        debiased = avg / (1 - smooth ** (i + 1))
        lrs.append(lr)
        raw.append(value)
        smoothed.append(debiased)
        best = min(best, debiased)
        if debiased > diverge * best:
            stopped = f"loss diverged at step {i + 1} (LR {lr:.2e}: smoothed loss {debiased:.3g} > {diverge:g}x " \
                      f"its minimum {best:.3g})"
            break
    if len(lrs) < 3:
        raise UserError(f"lr-find stopped after {len(lrs)} steps ({stopped}); start from a lower --start-lr")
    skip = max(1, len(lrs) // 10)  # the first smoothed values rest on a handful of batches
    low = skip + int(np.argmin(smoothed[skip:]))
    return LRFindResult(lrs, smoothed, raw, suggest(lrs, smoothed, skip), lrs[low], stopped)


def suggest(lrs: Sequence[float], losses: Sequence[float], skip: int = 0) -> float:
    """The LR where the smoothed loss falls fastest against log LR, between ``skip`` and its minimum (fastai's
    'steep'); the lowest LR considered when the loss never falls."""
    end = skip + int(np.argmin(losses[skip:])) + 1
    if end - skip < 3:
        return float(lrs[skip])
    slope = np.gradient(np.asarray(losses[skip:end]), np.log(np.asarray(lrs[skip:end])))
    return float(lrs[skip + int(np.argmin(slope))])
