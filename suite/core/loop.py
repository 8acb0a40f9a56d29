"""fit(): the freeze schedule run stage by stage, with AMP, accumulation, clipping,
a non-finite-loss guard, early stopping, EMA, atomic checkpoints and exact resume.

Knows no modality: the modality hands in a loss function, an evaluation function and a
loader factory.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from suite.core import checkpoint, dist, features
from suite.core.groups import ParamGroup, freeze_batchnorm, group_names, make_optimizer, optimizer_groups, set_trainable
from suite.core.schedule import Stage, group_lrs, lr_factor, trainable_groups
from suite.core.report import EPOCH_SECONDS
from suite.core.stages import BEST, LAST, Interrupted, Position, Selection, end_epoch, stop_requested, tensorboard
from suite.errors import TrainingDiverged, UserError

if TYPE_CHECKING:
    from suite.core.metrics import EvalResult


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible; use --device auto or cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device, auto: torch.dtype = torch.bfloat16) -> torch.dtype | None:
    """auto: on a GPU ``auto`` (the task's choice, bf16 by default) where the GPU runs it natively, else fp16;
    full fp32 on CPU (faster there). Emulated bf16 (torch's default answer on pre-Ampere GPUs) does not count."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if auto == torch.bfloat16 and native_bf16(device) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def native_bf16(device: torch.device) -> bool:
    """A CUDA device that runs bf16 itself (torch's plain is_bf16_supported() also says yes where it emulates it)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


@dataclass
class FitOptions:
    """What fit() needs from a recipe's optim/train sections (core does not read recipes)."""

    optimizer: str = "adamw"
    weight_decay: float = 0.01
    momentum: float = 0.9
    precision: str = "auto"
    grad_accum: int = 1
    clip_grad: float | None = None
    seed: int = 0
    select_metric: str = "val/loss"  # picks best.safetensors
    early_stop_patience: int | None = None  # per stage, on select_metric
    ema: float | None = None
    max_nonfinite: int = 10
    cache_features: str = "auto"  # head-only stages train on the frozen part's cached outputs: auto|true|false
    compile: str = "false"  # torch.compile the training step's model per stage: false | true (inductor) | a backend
    # last.pt (and a pending best.safetensors) at an epoch's end once this many seconds passed since the last
    # write; 0: every epoch. Always at a stage's end and on a stop signal, whatever the interval.
    checkpoint_every_s: float = 60.0

    @property
    def selection(self) -> Selection:
        return Selection(self.select_metric, self.early_stop_patience)


@dataclass
class Hooks:
    """The modality's side of the loop."""

    loss: Callable[[nn.Module, object], torch.Tensor]  # one batch -> scalar loss (moves the batch itself)
    evaluate: Callable[[nn.Module], EvalResult]  # the validation split's result; history gets .prefixed("val")
    # epoch -> loader (seeded per epoch, so resume is exact); return the same dataset object every epoch (with a
    # set_epoch method for per-epoch state), so that worker processes can be kept across epochs (_Workers)
    train_loader: Callable[[int], Iterable]
    on_epoch_end: Sequence[Callable[[Position], None]] = ()
    # model -> what cached feature extraction needs (suite.core.features); a string: why it does not apply
    cache: Callable[[nn.Module], features.CacheSpec] | str = "this task does not cache features"
    # the model before training, in place (e.g. channels_last for a CNN on a GPU); None: as it is
    prepare: Callable[[nn.Module], None] | None = None
    # what train.precision: auto trains in on a GPU (fp16 where it lacks native bf16): a task whose training
    # computes coordinates under autocast asks fp16 (bf16 rounds 800-1333 px boxes to 4-8 px steps)
    auto_amp: torch.dtype = torch.bfloat16
    # what fit calls when it ends, however it ends (e.g. stop the validation loader's kept worker processes)
    close: Callable[[], None] | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stage_optimizer(groups: Sequence[ParamGroup], stage: Stage, opts: FitOptions,
                    where: str = "schedule") -> tuple[list[str], torch.optim.Optimizer]:
    """Freeze what the stage does not train; a fresh optimizer with one LR per trainable group."""
    names = group_names(groups)
    trainable = trainable_groups(stage.train, names, where)
    set_trainable(groups, trainable)
    lrs = group_lrs(stage, names, where)
    return trainable, make_optimizer(opts.optimizer, optimizer_groups(groups, lrs, opts.weight_decay), opts.momentum)


def late_zero(device: torch.device) -> bool:
    """Where fit() drops the gradients. On the CPU just before each accumulation window's first backward, which
    then reuses the freed blocks: dropped after the step, the next forward's activations took them and every
    backward paid for fresh memory, 6-9 ms of a 121-142 ms ResNet-18 step on 2 cores. On a GPU right after the
    step: the caching allocator reuses blocks either way, and the forward then runs without a set of gradients
    held (peak memory lower by up to the trainable parameters' size)."""
    return device.type == "cpu"


class _Trainer:
    def __init__(self, model, groups, stages, hooks, opts, run_dir, device):
        self.model, self.groups, self.stages, self.hooks, self.o = model, groups, stages, hooks, opts
        self.dir, self.device = Path(run_dir), device
        self.net = model  # what the training step calls: the model, or its DDP wrapper (per stage)
        self.names = group_names(groups)
        self.amp = autocast_dtype(opts.precision, device, hooks.auto_amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.ema = None
        if opts.ema:
            self.ema = torch.optim.swa_utils.AveragedModel(
                model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(opts.ema), use_buffers=True)
        self.nonfinite = NonFinite(opts.max_nonfinite)
        self.stop = stop_requested()  # set by SIGTERM/SIGINT (suite.core.stages.stop_signals)
        self.resume_rng: dict | None = None  # the RNG state a checkpoint written inside an epoch saved
        self.best_weights: dict | None = None  # a best epoch's weights (CPU copy) not written yet; rank 0
        self.saved_at = time.monotonic()  # when last.pt was last written (or training began)
        self.late_zero = late_zero(device)
        self.workers = _Workers(opts.seed)  # the training loader's worker processes, kept across epochs

    # ----- one stage ---------------------------------------------------------------------
    def begin_stage(self, i: int, steps_per_epoch: int, saved: dict | None):
        stage = self.stages[i]
        self.trainable, self.opt = stage_optimizer(self.groups, stage, self.o, f"schedule stage {i}")
        self.net = dist.wrap(self.model, self.device)  # per stage: DDP registers the trainable parameters only
        # under DDP with train.grad_accum > 1, a micro-batch that ends no window keeps its gradients local
        # (no_sync) and the window's last backward all-reduces their sum: one all-reduce per step, not per batch.
        # Not in a stage's first window, where static_graph records the graph (no_sync there fails DDP's
        # "expect_autograd_hooks_" assert), nor under torch.compile (not run with it here). A run resumed inside a
        # stage therefore all-reduces its first window batch by batch: equal to the unstopped run to float rounding
        accumulating = self.o.grad_accum > 1 and self.o.compile == "false"
        self.ddp = self.net if accumulating and isinstance(self.net, nn.parallel.DistributedDataParallel) else None
        self.ddp_recorded = False
        if self.o.compile != "false":  # per stage too: the trainable set is part of what is traced
            self.net = torch.compile(self.net, backend="inductor" if self.o.compile == "true" else self.o.compile)
        total = stage.epochs * math.ceil(steps_per_epoch / self.o.grad_accum)
        warmup, kind = stage.warmup or 0.0, stage.scheduler or "cosine"
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: lr_factor(step, total, warmup, kind))
        if saved is not None:  # resume: same groups, so the saved optimizer state fits
            self.opt.load_state_dict(saved["optimizer"])
            self.sched.load_state_dict(saved["scheduler"])
            if saved["scaler"]:  # empty when saved without fp16 (resumed with -s train.precision=fp16: a new scale)
                self.scaler.load_state_dict(saved["scaler"])

    def train_epoch(self, loader, desc: str, pos: Position, loss_fn=None) -> tuple[float, float]:
        """One epoch from batch ``pos.batch`` on (0, or where a stop signal left it). After each optimizer
        step a pending stop request writes the checkpoint of this position and raises Interrupted.
        ``loss_fn``: (model, batch) -> loss, the modality's ``hooks.loss`` unless training on cached features."""
        loss_fn = loss_fn or self.hooks.loss
        self.model.train()
        freeze_batchnorm(self.groups, self.trainable)
        done = pos.batch  # after a stop inside the epoch, rank 0 carries the loss of every rank's part before it
        total, count = (pos.loss_sum, pos.loss_count) if dist.is_main() else (0.0, 0)
        self.opt.zero_grad(set_to_none=True)
        bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)
        for i, batch in enumerate(bar):
            if i < done:  # trained before the stop: drawn again (the same augmentation draws), not trained on
                if i + 1 == done:
                    checkpoint.set_rng_state(self.resume_rng)  # every RNG as it was after that step
                continue
            stepped = (i + 1) % self.o.grad_accum == 0 or i + 1 == len(loader)
            local = self.ddp.no_sync() if self.ddp is not None and self.ddp_recorded and not stepped else nullcontext()
            with local:
                with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                    loss = loss_fn(self.net, batch)
                if not self.nonfinite.check(loss):
                    self.opt.zero_grad(set_to_none=True)  # drop what this accumulation window gathered
                    continue
                if self.late_zero and i % self.o.grad_accum == 0:  # a window's first batch: the last step's go
                    self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss / self.o.grad_accum).backward()
            if stepped:
                self._step()
            total, count = total + self.nonfinite.value, count + 1  # read before backward: no second wait
            bar.set_postfix(loss=f"{total / count:.4f}")
            if stepped and self.stopping() and i + 1 < len(loader):
                pos.batch = i + 1
                pos.loss_sum, pos.loss_count = dist.mean(total, count)  # summed over the ranks (every rank is here)
                self.save_last(pos, force=True)
                raise Interrupted(self.stop.number(), self.dir, f"after batch {i + 1}/{len(loader)} of epoch "
                                  f"{pos.epoch + 1}; the checkpoint holds that position")
        self.opt.zero_grad(set_to_none=True)  # the last step's gradients are not kept through the evaluation
        pos.batch, pos.loss_sum, pos.loss_count = 0, 0.0, 0
        total, count = dist.mean(total, count)  # over the ranks: the epoch's loss over every sample
        return (total / count if count else float("nan")), self.opt.param_groups[-1]["lr"]

    def stopping(self) -> bool:
        """A stop signal reached this process (under DDP: any rank, so that all stop at the same step)."""
        return dist.any_rank(bool(self.stop))

    def _step(self) -> None:
        self.ddp_recorded = True
        if self.o.clip_grad:
            self.scaler.unscale_(self.opt)
            params = [p for g in self.opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.o.clip_grad)
        self.scaler.step(self.opt)
        self.scaler.update()
        if not self.late_zero:
            self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # ----- cached features (train.cache_features) ----------------------------------------------------
    @property
    def autocast(self) -> dict:
        return dict(device_type=self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def plan_cache(self, i: int, loader) -> features.CacheSpec | None:
        """The spec when stage ``i`` trains on cached features; None (and the log says why) when it does not."""
        if self.o.cache_features == "false":
            return None
        if dist.world() > 1:
            if self.trainable == self.names[-1:] and dist.is_main():
                tqdm.write(f"stage {i}: features not cached: {dist.world()} processes train it (DDP)")
            return None
        if self.trainable != self.names[-1:]:  # not a candidate: the frozen part is not all but the head
            return None
        spec, why = self._cacheable(loader)
        if why is None:
            return spec
        if self.o.cache_features == "true":
            raise UserError(f"train.cache_features is true, but schedule stage {i} cannot train on cached "
                            f"features: {why} (train.cache_features: auto trains such a stage uncached)")
        tqdm.write(f"stage {i}: features not cached: {why}")
        return None

    def _cacheable(self, loader) -> tuple[features.CacheSpec | None, str | None]:
        """The modality's spec, and why this stage cannot use it (None: it can)."""
        if isinstance(self.hooks.cache, str):
            return None, self.hooks.cache
        spec = self.hooks.cache(self.model)
        if spec.blocker:
            return spec, spec.blocker
        self.model.train()
        freeze_batchnorm(self.groups, self.trainable)
        why = features.frozen_randomness(self.model, spec.point)
        if why is None and len(loader.dataset):
            first = next(iter(DataLoader(loader.dataset, batch_size=min(4, len(loader.dataset)),
                                         collate_fn=loader.collate_fn)))
            if not features.repeatable(self.model, spec, first, self.autocast):
                why = "two passes over one batch give different features (randomness inside the frozen part)"
        return spec, why

    def cached_epoch(self, spec: features.CacheSpec, cache: features.FeatureCache, loader, desc: str,
                     pos: Position) -> tuple[float, float, dict[str, float]]:
        batches = _Sized(lambda: features.head_batches(cache, loader, self.device), len(loader))
        train_loss, lr = self.train_epoch(batches, desc, pos, lambda model, b: spec.loss(spec.outputs(b[0]), b[1]))
        scored = spec if self.ema is None else self.hooks.cache(self.eval_model)
        return train_loss, lr, features.validate(self.eval_model, scored, cache, self.device)

    # ----- checkpoints -------------------------------------------------------------------
    def save_last(self, pos: Position, force: bool = False) -> None:
        """last.pt, with the best weights not yet written, when ``force``d (a stop), at a stage's end, or when
        ``checkpoint_every_s`` passed since the last write: serializing ResNet-18 with AdamW's state (128 MB)
        took 0.15-0.35 s of a 2-core CPU, so writing it after every 1-second epoch cost ~20% of the epoch."""
        every = self.o.checkpoint_every_s
        due = force or pos.stage_epoch >= self.stages[pos.stage].epochs or every <= 0 or \
            time.monotonic() - self.saved_at >= every
        if not dist.broadcast(due):  # rank 0's clock decides, so every rank joins the same gather below
            return
        rngs = dist.gather(checkpoint.rng_state())  # every rank's RNG (its own augmentation draws), on rank 0
        if not dist.is_main():
            return
        best, self.best_weights = self.best_weights, None
        self.saved_at = time.monotonic()
        weights = (self.dir / BEST, best) if best is not None else None
        checkpoint.save_state(self.dir / LAST, background=True, weights=weights, state={
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "position": pos.state(),
            "history": pos.history,
            "rng": rngs[0],
            "rng_ranks": rngs if len(rngs) > 1 else None,
            "nonfinite": self.nonfinite.count,
        })

    def save_best(self) -> None:
        """Keep a copy of this best epoch's weights: written as best.safetensors with the next last.pt."""
        if dist.is_main():
            self.best_weights = checkpoint.weights_copy(self.eval_model.state_dict())

    def flush_best(self) -> None:
        """A best epoch not written yet (training ended by an error between checkpoints): write it now."""
        if self.best_weights is not None:
            best, self.best_weights = self.best_weights, None
            checkpoint.save_weights(self.dir / BEST, best, copied=True)


def _restore(trainer: _Trainer, saved: dict) -> Position:
    trainer.model.load_state_dict(saved["model"])
    if trainer.ema is not None and saved["ema"] is not None:
        trainer.ema.load_state_dict(saved["ema"])
    trainer.nonfinite.count = saved["nonfinite"]
    ranks = saved.get("rng_ranks")
    rng = ranks[dist.rank()] if ranks and len(ranks) == dist.world() else saved["rng"]
    checkpoint.set_rng_state(rng)
    trainer.resume_rng = rng
    return Position(**saved["position"], history=list(saved["history"]))


def fit(model: nn.Module, groups: Sequence[ParamGroup], stages: Sequence[Stage], hooks: Hooks,
        opts: FitOptions, run_dir: str | Path, device: torch.device, resume: bool = False,
        wait: bool = True) -> Position:
    """Run every stage in order; ``resume`` continues from ``run_dir/checkpoints/last.pt``.

    ``wait``: return once the last checkpoint (last.pt, best.safetensors) is on disk. False: it may still be
    being written in the background when fit returns; the caller calls ``checkpoint.wait_saves()`` before it
    reads them (the runner evaluates and plots meanwhile). A failing fit always waits."""
    if hooks.prepare is not None:
        hooks.prepare(model)
    trainer = _Trainer(model, groups, stages, hooks, opts, run_dir, device)
    saved = dist.load_from_main(Path(run_dir) / LAST, checkpoint.load_state, "reading the checkpoint") \
        if resume else None  # the first machine's: the others need no copy of the run directory
    pos = _restore(trainer, saved) if saved else Position()
    writer = tensorboard(Path(run_dir) / "tb", purge_step=pos.epoch) if dist.is_main() else None
    failed = True
    try:
        while pos.stage < len(stages):
            _run_stage(trainer, pos, saved, writer)
            saved = None
            pos.next_stage()
        failed = False
    finally:
        trainer.workers.close()
        if hooks.close is not None:
            hooks.close()
        if writer is not None:
            writer.close()
        if wait or failed:
            checkpoint.wait_saves()  # last.pt complete (or its write error raised) before fit returns
            trainer.flush_best()
    if dist.world() > 1:
        check_replicas(model)
    return pos


def check_replicas(model: nn.Module) -> None:
    """Every rank ends with the same weights (DDP keeps them so); a checksum per rank, compared on rank 0."""
    with torch.no_grad():
        sums = [float(p.detach().double().sum()) for p in model.parameters()]
    mine = torch.tensor(sums, dtype=torch.float64)
    every = dist.gather(mine)
    if dist.is_main():
        differ = [r for r, t in enumerate(every) if not torch.equal(t, every[0])]
        if differ:
            raise RuntimeError(f"DDP replicas disagree after training: ranks {differ} differ from rank 0")
        tqdm.write(f"{len(every)} ranks agree: {len(sums)} parameter tensors, the same checksums on every rank")


def _run_stage(t: _Trainer, pos: Position, saved: dict | None, writer) -> None:
    stage = t.stages[pos.stage]
    seed_everything(t.o.seed + pos.epoch)
    first = t.hooks.train_loader(pos.epoch)
    t.begin_stage(pos.stage, len(first), saved)
    spec, cache, build_s = t.plan_cache(pos.stage, first), None, 0.0
    if spec is not None:
        began = time.perf_counter()
        t.model.train()
        freeze_batchnorm(t.groups, t.trainable)
        cache = features.build(t.model, spec, first, t.dir, t.autocast, t.device)
        build_s = time.perf_counter() - began
        tqdm.write(f"stage {pos.stage}: head trained on cached features ({len(first.dataset)} samples, "
                   f"{tuple(cache.train.shape[1:])} each, built in {build_s:.1f} s)")
    try:
        _stage_epochs(t, pos, stage, spec, cache, build_s, writer)
    finally:
        if cache is not None:
            cache.close()


def _stage_epochs(t: _Trainer, pos: Position, stage: Stage, spec, cache, build_s: float, writer) -> None:
    while pos.stage_epoch < stage.epochs:
        seed_everything(t.o.seed + pos.epoch)
        loader = t.hooks.train_loader(pos.epoch)
        desc = f"stage {pos.stage} epoch {pos.stage_epoch + 1}/{stage.epochs}"
        began = time.perf_counter() - build_s  # the cache's build counts in the first epoch's time
        build_s = 0.0
        if cache is not None:
            train_loss, lr, metrics = t.cached_epoch(spec, cache, loader, desc, pos)
        else:
            train_loss, lr = t.train_epoch(t.workers.serve(dist.shard(loader), pos.epoch), desc, pos)
            # rank 0 validates, every rank gets its metrics (the same best epoch and early stop everywhere)
            metrics = dist.broadcast(t.hooks.evaluate(t.eval_model).prefixed("val") if dist.is_main() else None)
        seconds = round(time.perf_counter() - began, 3)  # training + evaluation (after a resume: its part)
        row = {"epoch": pos.epoch + 1, "stage": pos.stage, "lr": lr, EPOCH_SECONDS: seconds, "train/loss": train_loss,
               **metrics}
        stop = t.stopping()  # it came during the epoch's last step or its evaluation: this epoch's checkpoint
        end_epoch(pos, row, t.o.selection, stage.epochs, t.dir, t.save_best, lambda: t.save_last(pos, force=stop),
                  t.hooks.on_epoch_end, writer, write=dist.is_main())
        if stop or t.stopping():
            if not stop:  # it came while the epoch was being recorded
                t.save_last(pos, force=True)
            raise Interrupted(t.stop.number(), t.dir, f"after epoch {pos.epoch}")


class _Workers:
    """Loader worker processes kept from one epoch to the next (persistent_workers), with each epoch's randomness
    still a function of (seed, epoch), so that a resumed run draws what an uninterrupted one drew. The modality's
    loader for an epoch gives the batches (its seeded sampler, drawn here in the main process, as the loader
    itself would draw them) and the dataset; one DataLoader with persistent workers serves them, and each worker
    reseeds torch, random and numpy from (seed, epoch, rank, worker id) at its first sample of an epoch, and
    calls its copy's ``set_epoch(epoch)`` where the dataset has one (speech seeds its augmentation by epoch: the
    main process's call does not reach a worker's copy); other state a dataset keeps is its own to seed. Fresh
    workers every epoch cost the processes' start and the first batches' wait (benchmarks/bench_workers.py). A
    loader without workers is used as it is; a dataset made anew each epoch gets a new DataLoader that epoch."""

    OPTIONS = ("collate_fn", "num_workers", "pin_memory", "worker_init_fn", "timeout", "prefetch_factor",
               "multiprocessing_context")

    def __init__(self, seed: int):
        self.seed, self.loader, self.key = seed, None, None

    def serve(self, loader, epoch: int):
        if not isinstance(loader, DataLoader) or loader.num_workers == 0:
            return loader
        key = (loader.dataset, *(getattr(loader, k) for k in self.OPTIONS))
        if key != self.key:  # tuples compare items by identity first: the same dataset object, the same options
            self.close()
            self.batches = _EpochBatches()
            options = {k: getattr(loader, k) for k in self.OPTIONS}
            # its own generator: the iterator's base-seed draw (once, at the first epoch it serves) must not take
            # a number from the global RNG, which a run resumed at a later epoch would not draw there
            self.loader = DataLoader(_EpochSeeded(loader.dataset, self.seed * 1_009 + dist.rank()),
                                     batch_sampler=self.batches, persistent_workers=True,
                                     generator=torch.Generator().manual_seed(self.seed), **options)
            self.key = key
        self.batches.epoch, self.batches.batches = epoch, [b.tolist() for b in features.index_batches(loader)]
        return self.loader

    def close(self) -> None:
        """Stop the worker processes now (also when an exception's traceback still holds the loader)."""
        stop_workers(self.loader)
        self.loader = self.key = None


def stop_workers(loader) -> None:
    """End a DataLoader's worker processes, if it has any running (persistent ones stay until then)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        loader._iterator = None


class _EpochBatches(torch.utils.data.Sampler):
    def __init__(self):
        self.epoch, self.batches = 0, []

    def __iter__(self):
        return iter([[(self.epoch, i) for i in b] for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


class _EpochSeeded(torch.utils.data.Dataset):
    def __init__(self, dataset, seed: int):  # seed: the run's and this rank's
        self.dataset, self.seed, self.epoch = dataset, seed, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        worker = torch.utils.data.get_worker_info()
        if worker is not None and epoch != self.epoch:
            self.epoch = epoch
            seed = ((self.seed * 1_000_003 + epoch) * 1_013 + worker.id) % 2**63
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            if callable(set_epoch := getattr(self.dataset, "set_epoch", None)):  # this worker's copy of it
                set_epoch(epoch)
        return self.dataset[i]


class _Sized:
    """An iterable with a length, made afresh on each iteration."""

    def __init__(self, make: Callable[[], Iterable], n: int):
        self.make, self.n = make, n

    def __iter__(self):
        return iter(self.make())

    def __len__(self) -> int:
        return self.n


class NonFinite:
    """The non-finite-loss guard: skip such a batch; stop after ``limit`` in a row (TrainingDiverged)."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0
        self.value = math.nan  # the last loss checked, as a float (one device-to-host read a step)

    def check(self, loss) -> bool:
        """True when ``loss`` is finite (train on it); False to skip the batch; raises at the limit. Under DDP a
        batch is skipped when any rank's loss is not finite, so every rank skips the same step."""
        value = self.value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
        if dist.any_rank(not math.isfinite(value)):
            value = math.nan
        if math.isfinite(value):
            self.count = 0
            return True
        self.count += 1
        if self.count >= self.limit:
            raise TrainingDiverged(
                f"loss was {value} for {self.count} batches in a row: lower the stage's lr, "
                "set train.clip_grad, or check the data for bad labels")
        return False
