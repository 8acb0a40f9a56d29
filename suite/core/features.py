"""Cached feature extraction (``train.cache_features``): a stage that trains only the head, on data without
random augmentation, computes the frozen part's outputs once and trains the head on them.

The head's input is captured with a forward hook on the modality's cache point (the head module), so any
architecture whose head is one module works without a second forward path. The training order is the
uncached loader's own: the same sampler and generator drive an index loader, so epoch k sees the same
batches in both paths (and resume skips the same batches).

Valid only when the frozen part is a fixed function of the input during training. Checked before caching:
no random augmentation (the modality says), no BatchNorm in train mode and no active Dropout outside the
head, and two passes over one batch give bitwise equal features (catches functional dropout, stochastic
depth, SpecAugment-style masking, anything else random).
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from suite.core.progress import progress

MEMORY_LIMIT_BYTES = 2 << 30  # a larger cache is a memory-mapped file under the run directory
CACHE_DIR = "cache"


@dataclass
class CacheSpec:
    """The modality's side of cached features, for one model."""

    point: nn.Module  # its forward's first input is the feature cached; its output is the model's output
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets) -> scalar, as the uncached loss
    inputs: Callable[[object], object]  # a batch -> the model's input, on the device
    targets: Callable[[object], torch.Tensor]  # a batch -> its targets (CPU)
    val_loader: Callable[[], Iterable]  # the validation batches, in a fixed order
    val_metrics: Callable[[Sequence[tuple[torch.Tensor, torch.Tensor]]], dict[str, float]]  # (out, y) per batch
    blocker: str | None = None  # why the data forbids caching (random augmentation), None when it does not
    # the feature kept from the point's input (default: the input itself), e.g. pooled over time
    extract: Callable[[torch.Tensor, object], torch.Tensor] | None = None
    # cached features -> the model's outputs (default: the point itself)
    head: Callable[[torch.Tensor], torch.Tensor] | None = None

    def outputs(self, feats: torch.Tensor) -> torch.Tensor:
        return (self.head or self.point)(feats)


class Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def index_batches(loader: DataLoader) -> DataLoader:
    """The sample indices of ``loader``'s batches, drawn with its own sampler and generator (a fresh loader
    from the same seeded factory yields the same order as the data loader would)."""
    if loader.batch_size is None:
        return DataLoader(Indices(len(loader.dataset)), batch_sampler=loader.batch_sampler, generator=loader.generator)
    return DataLoader(Indices(len(loader.dataset)), batch_size=loader.batch_size, sampler=loader.sampler,
                      drop_last=loader.drop_last, generator=loader.generator)


def frozen_randomness(model: nn.Module, head: nn.Module) -> str | None:
    """Why the frozen part is not a fixed function in train mode (BatchNorm updating, Dropout active)."""
    inside = {id(m) for m in head.modules()}
    for name, m in model.named_modules():
        if id(m) in inside or not m.training:
            continue
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            return f"BatchNorm {name} is in train mode inside the frozen part (its statistics move)"
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return f"dropout {name} (p={m.p}) is active inside the frozen part, before the head"
    return None


class _Capture:
    """Records the cache point's input on each forward."""

    def __init__(self, point: nn.Module):
        self.value = None
        self.handle = point.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.value = args[0].detach()

    def close(self) -> None:
        self.handle.remove()


def features_of(model: nn.Module, spec: CacheSpec, batch, autocast: dict) -> torch.Tensor:
    capture = _Capture(spec.point)
    try:
        with torch.no_grad(), torch.autocast(**autocast):
            inputs = spec.inputs(batch)
            model(**inputs) if isinstance(inputs, dict) else model(inputs)
    finally:
        capture.close()
    if capture.value is None:
        raise RuntimeError("the cache point never ran: the modality's CacheSpec.point is not in the forward pass")
    value = capture.value if spec.extract is None else spec.extract(capture.value, batch)
    return value.float()


def repeatable(model: nn.Module, spec: CacheSpec, batch, autocast: dict) -> bool:
    """Two passes over one batch in train mode give bitwise the same features (RNG state kept as it was)."""
    state = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        return torch.equal(features_of(model, spec, batch, autocast), features_of(model, spec, batch, autocast))
    finally:
        torch.random.set_rng_state(state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@dataclass
class FeatureCache:
    train: torch.Tensor  # [N, ...] in dataset order (memory, or a memory-mapped file)
    targets: torch.Tensor  # [N, ...]
    val: list[tuple[torch.Tensor, torch.Tensor]]  # (features, targets) per validation batch
    files: list[Path]  # a memory-mapped cache's file, removed by close()

    def close(self) -> None:
        self.train = self.targets = None
        for f in self.files:
            with contextlib.suppress(OSError):
                f.unlink()


def _storage(n: int, shape: tuple, run_dir: Path, files: list[Path]) -> torch.Tensor:
    nbytes = n * math.prod(shape) * 4
    if nbytes <= MEMORY_LIMIT_BYTES:
        return torch.empty((n, *shape), dtype=torch.float32)
    (run_dir / CACHE_DIR).mkdir(parents=True, exist_ok=True)
    path = run_dir / CACHE_DIR / f"train-features-{os.getpid()}.npy"
    files.append(path)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *shape))
    return torch.from_numpy(array)


def build(model: nn.Module, spec: CacheSpec, loader: DataLoader, run_dir: Path, autocast: dict,
          device: torch.device) -> FeatureCache:
    """Features of every training sample (dataset order) and of the validation batches."""
    n, files, done = len(loader.dataset), [], 0
    bs = min(loader.batch_size or 1, n)
    # full batches only, the last one topped up from the start: CPU convolution kernels round differently by
    # batch size (not by which samples share a batch), so every feature comes out as in a full training batch
    order = [[i % n for i in range(start, start + bs)] for start in range(0, n, bs)]
    ordered = DataLoader(loader.dataset, batch_sampler=order, collate_fn=loader.collate_fn,
                         num_workers=loader.num_workers)
    train = targets = None
    for batch in progress(ordered, "caching features", unit="batch"):
        keep = min(bs, n - done)
        f, y = features_of(model, spec, batch, autocast).cpu()[:keep], spec.targets(batch)[:keep]
        if train is None:
            train = _storage(n, tuple(f.shape[1:]), run_dir, files)
            targets = torch.empty((n, *y.shape[1:]), dtype=y.dtype)
        train[done:done + keep], targets[done:done + keep] = f, y
        done += keep
    mode = model.training
    model.eval()
    try:
        val = [(features_of(model, spec, b, autocast).cpu(), spec.targets(b)) for b in spec.val_loader()]
    finally:
        model.train(mode)
    return FeatureCache(train.to(device) if not files else train, targets.to(device), val, files)


def head_batches(cache: FeatureCache, loader: DataLoader, device: torch.device) -> Iterable:
    """(features, targets) batches in ``loader``'s order."""
    for idx in index_batches(loader):
        yield cache.train[idx].to(device, non_blocking=True), cache.targets[idx.to(cache.targets.device)]


def validate(model: nn.Module, spec: CacheSpec, cache: FeatureCache, device: torch.device) -> dict[str, float]:
    """Validation metrics of ``model``'s head (``spec`` is of that model) on the cached validation features."""
    mode = model.training
    model.eval()
    try:
        with torch.inference_mode():
            scored = [(spec.outputs(f.to(device)).float().cpu(), y) for f, y in cache.val]
    finally:
        model.train(mode)
    return spec.val_metrics(scored)
