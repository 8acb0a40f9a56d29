"""YOLO through Ultralytics: our groups and freeze schedule, Ultralytics' trainer runs each stage.

Each stage of the recipe is one Ultralytics training run on the same live model, with

- ``freeze=`` set to the layer indices of the groups the stage does not train, so Ultralytics
  both stops their gradients and keeps their BatchNorm statistics fixed (``_model_train``);
- our optimizer groups (one LR per group: ``layer_decay``, ``lr_mult``) in place of its three;
- its LambdaLR for the LR shape within the stage (cosine or constant), its EMA, its losses,
  its augmentation (mosaic, HSV, flips, scale) and its validator after every epoch.

After a stage the EMA weights carry on into the next stage; frozen layers are copied back
from the raw model, so a frozen layer is bitwise the same before and after its stage.

Under ``suite run --nproc N`` (torchrun) every worker runs Ultralytics' trainer as one of its own DDP workers
(RANK/LOCAL_RANK in the environment, as its generated launch file does): its DistributedSampler, per-rank batch
``batch // N``, DDP wrap, validation gathered on rank 0 and stop broadcast. The suite's launch has already joined
the process group (gloo on CPU, NCCL on CUDA) and chosen the rank's device, so the trainer joins no group of its
own; rank 0 alone writes the run directory.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from suite.core import checkpoint, dist
from suite.core import weights as W
from suite.core.data import loader_workers
from suite.core.export import OnnxIO
from suite.core.groups import ParamGroup, group_names, make_groups, make_optimizer, optimizer_groups, set_trainable
from suite.core.loop import FitOptions, NonFinite, check_replicas, native_bf16
from suite.core.metrics import DetectionEvaluator, EvalResult
from suite.core.progress import on_terminal
from suite.core.schedule import Stage, group_lrs, trainable_groups
from suite.core.report import EPOCH_SECONDS
from suite.core.stages import BEST, LAST, Interrupted, Position, end_epoch, stop_requested
from suite.errors import UserError

os.environ.setdefault("YOLO_OFFLINE", "1")  # we resolve weights ourselves; training never reaches a hub
# Ultralytics' select_device() sets torch to cpu_count - 1 threads on CPU (1 of 2 cores here, to leave room
# for its dataloader workers); we keep the process's own setting: measured 4.5 -> see README for the figure
THREADS = torch.get_num_threads()


def _ultralytics() -> None:
    """Import Ultralytics, then undo its global PIL.Image.open patch: that one pip-installs pi-heif the first
    time a file is not an image, so a corrupt file in a user's data would start an install instead of being
    skipped and counted by our scans (suite.vision.data, suite.detection.data). Off a terminal its progress bars
    print plain lines."""
    from PIL import Image
    from ultralytics.utils import patches
    from ultralytics.utils import tqdm as bars

    Image.open = patches._image_open
    quiet = logging.getLogger("ultralytics")
    if not any(isinstance(f, _FreezeLines) for f in quiet.filters):
        quiet.addFilter(_FreezeLines())
    bars.is_noninteractive_console = _plain_bars


class _FreezeLines(logging.Filter):
    """Ultralytics logs "Freezing layer 'model.0.conv.weight'" once per frozen parameter (191 lines for YOLO11n's
    backbone and neck, at every stage); the suite prints one line per stage instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Freezing layer ")


def _plain_bars() -> bool:
    """Ultralytics' choice of its non-interactive bars (each bar's last line, no carriage return), asked by every
    bar: on GitHub Actions, as Ultralytics has it, and also whenever stdout is not a terminal (a log, CI), where its
    bars wrote a carriage-return frame every 0.1 s (395 in a 30-epoch run's log). Not in a notebook."""
    if "GITHUB_ACTIONS" in os.environ:
        return True
    return "ipykernel" not in sys.modules and not on_terminal(sys.stdout)

ARCH = re.compile(r"^yolo(v?\d+)[nslmx]$")
WEIGHTS_URL = "https://github.com/ultralytics/assets/releases/download/v8.3.0/{name}"
# Ultralytics' validator settings for mAP (its `yolo val` defaults)
VAL_CONF, VAL_IOU = 0.001, 0.7


def is_yolo(arch: str) -> bool:
    return bool(ARCH.match(arch))


def build_model(arch: str, labels: list[str], weights: str, trust: bool = False):
    """An Ultralytics DetectionModel from ``ARCH.yaml`` with ``len(labels)`` classes, pre-trained when asked."""
    _ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    quiet = logging.getLogger("ultralytics")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # "Overriding model.yaml nc=80 with nc=3" is the point of a new head
    try:
        model = DetectionModel(f"{arch}.yaml", nc=len(labels), verbose=False)
    except FileNotFoundError:
        raise UserError(f"model.arch '{arch}': Ultralytics has no {arch}.yaml; try yolo11n, yolo11s, yolov8n") from None
    finally:
        quiet.setLevel(level)
    model.names = dict(enumerate(labels))
    if weights != "none":
        _load_weights(model, weights, arch, trust)
    return model


def _load_weights(model, weights: str, arch: str, trust: bool = False) -> None:
    path = _resolve(weights)
    state = _checkpoint_state(path, trust) if path.suffix == ".pt" else W.read_state_dict(W.check_file(path), trust)
    W.load_state(model, state, head_prefixes(model), path, arch, head_each=True)


# What a checkpoint Ultralytics saved holds beyond tensors: its layers (pickled model objects), torch's layers,
# and a few plain data types. Classes are rebuilt without running their __init__ (pickle's NEWOBJ + state).
ALLOWED_PREFIXES = ("ultralytics.nn.modules.", "ultralytics.nn.tasks.", "torch.nn.modules.")
ALLOWED_DATA = ("ultralytics.utils.IterableSimpleNamespace", "types.SimpleNamespace", "pathlib.PosixPath",
                "pathlib.WindowsPath", "builtins.set")
DENIED = ("TorchVision",)  # a layer that loads other weights when built


def _allowed(name: str, obj) -> bool:
    if name in ALLOWED_DATA:
        return True
    return isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__name__ not in DENIED


def _checkpoint_state(path: Path, trust: bool) -> dict:
    """The weights of an Ultralytics .pt checkpoint (its EMA model if it has one), loaded with
    ``weights_only=True`` and Ultralytics' layer classes allowed by name, or anything with ``trust``."""
    _ultralytics()
    if trust:
        ckpt = W.read_pickle(path, trust=True)
    else:
        try:
            allowed = W.allowed_globals(path, ALLOWED_PREFIXES + ALLOWED_DATA, _allowed)
        except W.Untrusted as e:
            raise UserError(f"weights file {path} needs {e} to load, which is not a layer of an Ultralytics "
                            f"checkpoint, and unpickling it could run code: {W.TRUST_HINT}") from None
        except Exception as e:  # not a zip-format torch file at all
            raise UserError(f"cannot read weights file {path} ({type(e).__name__}); is it an Ultralytics .pt "
                            "checkpoint?") from None
        ckpt = W.read_pickle(path, allowed)
    source = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
    if isinstance(source, nn.Module):
        return {k: v.float() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    if isinstance(source, dict) and all(isinstance(v, torch.Tensor) for v in source.values()):
        return source
    raise UserError(f"weights file {path} holds no model weights (expected an Ultralytics checkpoint with 'model')")


def head_prefixes(model) -> list[str]:
    """State-dict prefixes of what depends on the number of classes: Detect's class branches (cv3, and
    one2one_cv3 in end-to-end heads), whose width follows the class count. They load tensor by tensor where
    the shapes match, as Ultralytics' own checkpoint loading does."""
    last = len(model.model) - 1
    return [f"model.{last}.{name}." for name in ("cv3", "one2one_cv3") if hasattr(model.model[-1], name)]


def weights_dir() -> Path:
    """Where Ultralytics keeps downloaded weights (its settings' weights_dir)."""
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["weights_dir"])


def _resolve(weights: str) -> Path:
    source = W.parse(weights)
    path = Path(source.value)
    if path.is_file():
        return path
    cached = weights_dir() / path.name
    if cached.is_file():
        return cached
    url = WEIGHTS_URL.format(name=path.name) if path.suffix == ".pt" else "the run that produced it"
    raise UserError(f"model.weights: {weights} not found (looked in ./ and {cached.parent}); offline, fetch it "
                    f"from {url} and put it at {path} or {cached}, or use weights: none")


def groups(model) -> list[ParamGroup]:
    """``backbone.I`` for the backbone's layers, ``neck.I`` for the rest, ``head`` for Detect (I = layer index)."""
    n_backbone = len(model.yaml["backbone"])
    layers = list(model.model)
    names = ["head" if i == len(layers) - 1 else f"backbone.{i}" if i < n_backbone else f"neck.{i}"
             for i in range(len(layers))]
    return make_groups([(name, [layer], []) for name, layer in zip(names, layers)])  # Upsample, Concat dropped


def _layer_index(group: ParamGroup, model) -> int:
    return list(model.model).index(group.modules[0])


# ----- training: one Ultralytics run per stage ---------------------------------------------------

def _trainer_class():
    _ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer

    class SuiteTrainer(DetectionTrainer):
        """Ultralytics' detection trainer with our optimizer groups and non-finite-loss guard; the run dir
        and best weights are ours."""

        suite_groups: list[ParamGroup] = []
        suite_lrs: dict[str, float] = {}
        suite_opts: FitOptions = FitOptions()
        suite_guard: NonFinite = NonFinite(10)

        def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
            o = self.suite_opts
            # unfused, as Ultralytics' own: the fused kernels round differently, and from random init that moved
            # 30 epochs of bench_yolo.py (1 thread) from yolo train's mAP50-95 0.1109 to 0.0371
            return make_optimizer(o.optimizer, optimizer_groups(self.suite_groups, self.suite_lrs, o.weight_decay),
                                  o.momentum, fused=False)

        def optimizer_step(self):
            """Ultralytics' step (unscale, clip to norm 10, step, EMA), except that a step whose unscaled gradients
            are not finite changes neither the weights nor the EMA (what gathered since the last step is dropped).
            The scaler is updated either way: under fp16 AMP (Ultralytics' on CUDA) an overflow is what lowers its
            scale; skipping update() there kept the scale, so every later step overflowed and was skipped too."""
            self.scaler.unscale_(self.optimizer)  # a no-op when AMP is off
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)  # inf/nan: not finite
            if bool(torch.isfinite(norm)):  # one host sync
                self.scaler.step(self.optimizer)
                if self.ema:
                    self.ema.update(self.model)
            self.scaler.update()
            self.optimizer.zero_grad()

        suite_resume: dict | None = None  # Ultralytics' state inside a stage, from our last.pt

        def resume_training(self, ckpt):
            """Continue a stage that a stop signal ended early: its optimizer, EMA and next epoch."""
            state = self.suite_resume
            if state is None:
                return
            self.optimizer.load_state_dict(state["optimizer"])
            self.ema.ema.load_state_dict(state["ema"])
            self.ema.updates = state["updates"]
            if state.get("scaler"):  # empty without AMP; absent from an older last.pt
                self.scaler.load_state_dict(state["scaler"])
            self.start_epoch = state["epoch"]

        suite_device: torch.device | None = None  # under DDP: this rank's device, chosen by suite.core.dist.init

        def _setup_ddp(self):
            """Ultralytics' DDP setup without its process group (the suite's launch joined one already): this
            rank's device, which on CUDA is cuda:LOCAL_RANK as in Ultralytics' own workers."""
            if self.suite_device is not None and self.suite_device.type == "cuda":
                from ultralytics.utils.torch_utils import get_torch_device_backend

                self.device = self.suite_device
                self.accelerator = get_torch_device_backend(self.device)
                self.accelerator.set_device(self.device.index)

        def _setup_train(self):
            """Ultralytics' setup with two calls changed. On CPU ranks its DDP wrap passes ``device_ids=[None]``,
            which torch refuses for a CPU module: that call gets ``device_ids=None`` (what DDP takes on CPU). Its
            fp16 AMP check on CUDA loads yolo26n.pt from its weights folder with torch.load(weights_only=False),
            downloading it first when online: a pickle the user did not name, so it is not run (AMP as asked)."""
            ddp = _cpu_ddp() if self.world_size > 1 and self.device.type == "cpu" else contextlib.nullcontext()
            with ddp, _no_amp_check():
                return super()._setup_train()

        def save_model(self):  # the suite writes checkpoints/best.safetensors itself
            return False

        def final_eval(self):  # evaluation happens once, in the suite, on the best weights
            return None

    def guard(trainer) -> None:  # counts non-finite losses in a row; TrainingDiverged at max_nonfinite
        if trainer.loss is not None and not trainer.suite_guard.check(trainer.loss):
            trainer.loss = None  # Ultralytics' own NaN recovery would reload a last.pt that it does not write

    SuiteTrainer.guard = staticmethod(guard)
    return SuiteTrainer


@contextlib.contextmanager
def _cpu_ddp():
    real = nn.parallel.DistributedDataParallel

    class CpuReplica(real):  # a subclass, so Ultralytics' isinstance checks (unwrap_model) still hold
        def __init__(self, module, device_ids=None, **kw):
            super().__init__(module, device_ids=None if device_ids == [None] else device_ids, **kw)

    nn.parallel.DistributedDataParallel = CpuReplica
    try:
        yield
    finally:
        nn.parallel.DistributedDataParallel = real


# Ultralytics' check_amp answers False for these GPUs (fp16 AMP gives NaN losses or zero mAP there) before it
# loads anything; the suite leaves them to it
UNSAFE_FP16 = re.compile(r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)",
                         re.IGNORECASE)


@contextlib.contextmanager
def _no_amp_check():
    import ultralytics.engine.trainer as ut

    real = ut.check_amp

    def trust_amp(model) -> bool:
        device = next(model.parameters()).device
        if device.type != "cuda" or UNSAFE_FP16.search(torch.cuda.get_device_name(device)):
            return real(model)  # False on CPU, MPS and the GPUs it knows fp16 breaks on, before it loads anything
        logging.getLogger("ultralytics").info(
            "AMP: fp16 with a GradScaler (train.precision auto or fp16; Ultralytics' check_amp, which would load "
            "yolo26n.pt as a pickle, is not run)")
        return True

    ut.check_amp = trust_amp
    try:
        yield
    finally:
        ut.check_amp = real


PROGRESS_EVERY_S = 10.0  # off a terminal, a line this often during an epoch (as the suite's own scans print)


class _ProgressLines:
    """Off a terminal Ultralytics' bars print each epoch once, at its end: a long epoch (a large dataset, a slow
    machine) would show nothing for minutes. This prints a plain line every PROGRESS_EVERY_S seconds meanwhile."""

    def __init__(self, stage: int):
        self.stage, self.done, self.began, self.last = stage, 0, 0.0, 0.0

    def start(self, trainer) -> None:
        self.done, self.began = 0, time.monotonic()
        self.last = self.began

    def batch(self, trainer) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            print(f"epoch {trainer.epoch + 1}/{trainer.epochs} (stage {self.stage}): {self.done}/"
                  f"{len(trainer.train_loader)} batches ({self.done / max(now - self.began, 1e-9):.3g} batches/s)",
                  file=sys.stderr, flush=True)


AUGMENT = {  # recipe data.augment -> Ultralytics hyper-parameters
    "none": dict(mosaic=0.0, fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0),
    "light": dict(mosaic=0.0, fliplr=0.5, translate=0.1, scale=0.25),
    "standard": {},  # Ultralytics defaults: mosaic, HSV, flips, translate 0.1, scale 0.5
}


def stage_args(recipe, data_yaml: Path, stage: Stage, i: int, frozen: list[int], device: torch.device,
               run_dir: Path) -> dict:
    t = recipe.train
    if t.precision == "bf16" and not native_bf16(device):
        raise UserError(f"train.precision: bf16 for YOLO needs a CUDA GPU with native bf16 (Ultralytics' autocast "
                        f"refuses it on {device.type if device.type != 'cuda' else 'this GPU'}): use auto or fp32")
    warm = (stage.warmup if stage.warmup is not None else recipe.optim.warmup) or 0.0
    return dict(
        model=f"{recipe.model.arch}.yaml", data=str(data_yaml), epochs=stage.epochs, batch=t.batch_size,
        imgsz=recipe.data.image_size or 640, device="cpu" if device.type == "cpu" else str(device.index or 0),
        workers=loader_workers(recipe.data.num_workers), seed=t.seed + i, deterministic=True, freeze=frozen or None,
        lr0=stage.lr, lrf=1.0 if (stage.scheduler or recipe.optim.scheduler) == "constant" else 0.01,
        cos_lr=(stage.scheduler or recipe.optim.scheduler) != "constant",
        warmup_epochs=warm * stage.epochs, warmup_bias_lr=0.0, close_mosaic=0,
        amp={"fp32": False, "bf16": "bf16", "fp16": "fp16"}.get(t.precision, True),  # auto: Ultralytics' (fp16)
        project=str(run_dir.resolve() / "ultralytics"), name=f"stage{i}", exist_ok=True, plots=False, val=True,
        save=False, verbose=False, patience=stage.epochs + 1,  # early stopping is ours (train.early_stop)
        cache=False, **AUGMENT.get(recipe.data.augment, {}))


def train(recipe, data_yaml: Path, model, param_groups: list[ParamGroup], stages: list[Stage], opts: FitOptions,
          run_dir: Path, device: torch.device, resume: bool = False, on_epoch_end=()) -> Position:
    """Every stage through Ultralytics' trainer, with the suite's stage bookkeeping: history.csv, the best
    epoch by ``opts.select_metric`` (checkpoints/best.safetensors), early stopping, and checkpoints/last.pt
    at every stage boundary. ``resume`` continues from last.pt: a stage cut short by a kill runs again from
    its start; one stopped by SIGTERM/SIGINT (which Ultralytics lets finish its epoch) continues after that
    epoch with its optimizer and EMA (its data order differs from an uninterrupted run's).

    Under DDP each epoch's history row is rank 0's (its validation gathers every rank's predictions), with
    the train loss averaged over the ranks, so every rank records the same best epoch and early stop; a stop
    signal on any rank stops all at the same epoch's end; rank 0 alone writes."""
    Trainer = _trainer_class()
    names = group_names(param_groups)
    main, world = dist.is_main(), dist.world()
    pos, best, inside = Position(), {"state": None}, None
    if resume:
        pos, inside = _restore(model, run_dir, best, write=main)
    stop = stop_requested()
    for i in range(pos.stage, len(stages)):
        stage, where = stages[i], f"schedule stage {i}"
        trainable = trainable_groups(stage.train, names, where)
        frozen = sorted(_layer_index(g, model) for g in param_groups if g.name not in trainable)
        if main:
            tqdm.write(f"stage {i}: {len(frozen)} of {len(names)} groups frozen (Ultralytics freeze={frozen or None})")
        stale = run_dir.resolve() / "ultralytics" / f"stage{i}" / "results.csv"  # every rank's Trainer() deletes it
        dist.main_first(lambda: stale.unlink(missing_ok=True), "starting a stage")  # (exists, then unlink): first
        trainer = Trainer(overrides=stage_args(recipe, data_yaml, stage, i, frozen, device, run_dir))
        if world > 1:  # Ultralytics counts the devices it was given (0 on CPU); here the launch's processes
            trainer.world_size, trainer.suite_device = world, device
        trainer.suite_groups, trainer.suite_lrs = param_groups, group_lrs(stage, names, where)
        trainer.suite_opts, trainer.suite_guard = opts, NonFinite(opts.max_nonfinite)
        trainer.suite_resume, inside = inside, None
        torch.set_num_threads(THREADS)  # after select_device() in the trainer's __init__
        trainer.model = model
        set_trainable(param_groups, trainable)  # Ultralytics re-checks this against freeze= (and warns otherwise)
        halted = [False]  # a stop signal ended this stage at an epoch's end (the same epoch on every rank)

        def save_best(tr=trainer, trainable=trainable):
            best["state"] = _ema_weights(tr, trainable)
            checkpoint.save_weights(run_dir / BEST, best["state"])

        def on_fit_epoch_end(tr, i=i, stage=stage, save_best=save_best, halted=halted):
            row = _history_row(tr, pos.epoch + 1, i)
            if world > 1:  # every rank is here once per epoch: rank 0's validation, every rank's train loss
                total, count = dist.mean(row["train/loss"], 1)
                row = {**dist.broadcast(row), "train/loss": total / count}
            tr.stop |= end_epoch(pos, row, opts.selection, stage.epochs, run_dir,
                                 save_best if main else lambda: None, callbacks=on_epoch_end, write=main)
            if dist.any_rank(bool(stop)) and pos.stage_epoch < stage.epochs:  # Ultralytics owns the epoch: its end
                if main:
                    _save(run_dir, model, pos, best, tr)
                tr.stop = halted[0] = True

        trainer.add_callback("on_train_batch_end", trainer.guard)
        if main and _plain_bars():  # Ultralytics' plain bars print when an epoch ends; this, while it runs
            lines = _ProgressLines(i)
            trainer.add_callback("on_train_epoch_start", lines.start)
            trainer.add_callback("on_train_batch_end", lines.batch)
        trainer.add_callback("on_fit_epoch_end", on_fit_epoch_end)
        trainer.train()
        if halted[0]:
            raise Interrupted(stop.number(), run_dir, f"at the end of epoch {pos.epoch} (stage {i}; "
                              "Ultralytics runs the epochs, so YOLO stops at an epoch's end)")
        model.load_state_dict(_ema_weights(trainer, trainable))
        model.to(device)
        pos.next_stage()
        if main:
            _save(run_dir, model, pos, best)
        if dist.any_rank(bool(stop)):
            raise Interrupted(stop.number(), run_dir, f"at the end of stage {i}")
    if world > 1:
        check_replicas(model)
    return pos


def _save(run_dir: Path, model, pos: Position, best: dict, trainer=None) -> None:
    """last.pt: at a stage boundary the model; inside a stage (a stop signal) also Ultralytics' optimizer and
    EMA, so the stage continues from the next epoch."""
    state = {"model": model.state_dict(), "position": pos.state(), "history": pos.history, "best": best["state"],
             "rng": checkpoint.rng_state(), "trainer": "ultralytics", "inside": None}
    if trainer is not None:
        state["inside"] = {"optimizer": trainer.optimizer.state_dict(), "ema": trainer.ema.ema.state_dict(),
                           "updates": trainer.ema.updates, "epoch": pos.stage_epoch,
                           "scaler": trainer.scaler.state_dict()}  # fp16 AMP: the scale it had come down to
    checkpoint.save_state(run_dir / LAST, state)


def _restore(model, run_dir: Path, best: dict, write: bool = True) -> tuple[Position, dict | None]:
    """The saved state: weights, position, history and best weights (a stage cut short by a kill may have
    written a later best.safetensors: it is put back to the checkpoint's); inside a stage, Ultralytics' state."""
    saved = dist.load_from_main(run_dir / LAST, checkpoint.load_state, "reading the checkpoint")  # machine 0's
    if saved.get("trainer") != "ultralytics":
        raise UserError(f"{run_dir / LAST} was not written by a YOLO run; start again with `suite run` and --overwrite")
    model.load_state_dict(saved["model"])
    best["state"] = saved["best"]
    if best["state"] is not None and write:
        checkpoint.save_weights(run_dir / BEST, best["state"])
    checkpoint.set_rng_state(saved["rng"])
    return Position(**saved["position"], history=list(saved["history"])), saved.get("inside")


def _ema_weights(trainer, trainable: list[str]) -> dict[str, torch.Tensor]:
    """EMA weights, with frozen layers (params and BN stats) exactly as in the raw model."""
    model = dist.unwrap(trainer.model)  # the DDP replica's module under --nproc
    raw = model.state_dict()
    ema = trainer.ema.ema.state_dict() if trainer.ema else raw
    frozen = tuple(f"model.{_layer_index(g, model)}." for g in trainer.suite_groups if g.name not in trainable)
    return {k: (raw[k] if k.startswith(frozen) else ema[k]).detach().cpu().clone() for k in raw}


def _history_row(trainer, epoch: int, stage: int) -> dict:
    m = trainer.metrics or {}
    losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None else {}
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    row = {"epoch": epoch, "stage": stage, "lr": max(lrs) if lrs else 0.0,
           EPOCH_SECONDS: round(float(trainer.epoch_time or 0.0), 3),  # Ultralytics' own epoch timer
           "train/loss": float(sum(float(v) for v in losses.values())),
           "val/map50": float(m.get("metrics/mAP50(B)", 0.0)), "val/map50_95": float(m.get("metrics/mAP50-95(B)", 0.0)),
           "val/precision": float(m.get("metrics/precision(B)", 0.0)), "val/recall": float(m.get("metrics/recall(B)", 0.0))}
    row["val/loss"] = float(sum(float(v) for k, v in m.items() if k.startswith("val/") and k.endswith("_loss")))
    return row


# ----- evaluation: our mAP on the validator's own predictions -------------------------------------

def _validator_class():
    _ultralytics()
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import ops

    class CapturingValidator(DetectionValidator):
        """Ultralytics' validator that also hands every image's predictions and targets to our evaluator."""

        def init_metrics(self, model):
            torch.set_num_threads(THREADS)  # select_device() ran just before
            super().init_metrics(model)
            self.suite_preds, self.suite_targets, self.suite_files = [], [], []

        def update_metrics(self, preds, batch):
            super().update_metrics(preds, batch)
            for si, pred in enumerate(preds):
                pbatch = self._prepare_batch(si, batch)
                predn = self.scale_preds(self._prepare_pred(pred), pbatch)  # original image pixels
                gt = ops.scale_boxes(pbatch["imgsz"], pbatch["bboxes"].clone(), pbatch["ori_shape"],
                                     ratio_pad=pbatch["ratio_pad"])
                self.suite_preds.append({"boxes": predn["bboxes"].cpu(), "scores": predn["conf"].cpu(),
                                         "labels": predn["cls"].long().cpu()})
                self.suite_targets.append({"boxes": gt.cpu(), "labels": pbatch["cls"].long().cpu()})
                self.suite_files.append(pbatch["im_file"])

    return CapturingValidator


@contextlib.contextmanager
def _one_process():
    """Ultralytics' validator run by rank 0 alone (the run's final evaluation under --nproc): its modules read
    RANK/LOCAL_RANK from the environment at import, and with them it would wait at a barrier and gather
    predictions from ranks that have finished. Inside this block they say "no DDP" (-1), as in one process."""
    import importlib

    saved = []
    if dist.world() > 1:
        for name in ("ultralytics.engine.validator", "ultralytics.models.yolo.detect.val"):
            module = importlib.import_module(name)
            for key in ("RANK", "LOCAL_RANK"):
                saved.append((module, key, getattr(module, key)))
                setattr(module, key, -1)
    try:
        yield
    finally:
        for module, key, value in saved:
            setattr(module, key, value)


def evaluate(model, labels: list[str], data_yaml: Path, split: str, imgsz: int, batch: int,
             device: torch.device) -> EvalResult:
    """mAP by our evaluation core and by Ultralytics' validator, on the same predictions."""
    Validator = _validator_class()
    args = dict(data=str(data_yaml), imgsz=imgsz, batch=batch, conf=VAL_CONF, iou=VAL_IOU, split=split,
                plots=False, verbose=False, save_json=False, workers=0,
                device="cpu" if device.type == "cpu" else str(device.index or 0))
    v = Validator(args=args)
    # AutoBackend fuses Conv+BN in place: validate a copy so the live model keeps its BatchNorm layers
    with _one_process():
        stats = v(model=copy.deepcopy(model).float())
    ev = DetectionEvaluator(labels)
    ev.update(v.suite_preds, v.suite_targets)
    result = ev.compute()
    ours50, ours = result.metrics["map50"], result.metrics["map50_95"]
    theirs50, theirs = float(stats["metrics/mAP50(B)"]), float(stats["metrics/mAP50-95(B)"])
    result.extra.update({
        "ultralytics": {"map50": theirs50, "map50_95": theirs,
                        "precision": float(stats["metrics/precision(B)"]), "recall": float(stats["metrics/recall(B)"])},
        "agree": max(abs(ours50 - theirs50), abs(ours - theirs)) <= 0.01,
        "predictions": list(zip(v.suite_files, v.suite_preds, v.suite_targets)),
    })
    return result


AGREEMENT_NOTE = (
    "Both numbers come from the same predictions (Ultralytics' validator at conf 0.001, IoU 0.7). "
    "They can differ: COCO (pycocotools) matches each prediction per IoU threshold greedily by score and "
    "interpolates precision at 101 recall points, while Ultralytics matches once per threshold by IoU and "
    "integrates the interpolated curve; with few images or weak models that moves AP by more than 0.01.")


def agreement_section(result: EvalResult) -> tuple[str, str]:
    u = result.extra.get("ultralytics")
    if not u:
        return "", ""
    m = result.metrics
    rows = ["| metric | suite (torchmetrics/pycocotools) | Ultralytics validator | delta |", "|---|---:|---:|---:|"]
    for key, label in (("map50", "mAP50"), ("map50_95", "mAP50-95")):
        rows.append(f"| {label} | {m[key]:.4f} | {u[key]:.4f} | {m[key] - u[key]:+.4f} |")
    verdict = ("They agree within 0.01." if result.extra.get("agree") else
               "They differ by more than 0.01. " + AGREEMENT_NOTE)
    return "mAP cross-check", "\n".join(rows) + "\n\n" + verdict


# ----- export ------------------------------------------------------------------------------------

class ExportHead(nn.Module):
    """The fused model with Detect in export mode: one output [B, 4 + nc, anchors] (cx, cy, w, h, scores)."""

    def __init__(self, model):
        super().__init__()
        _ultralytics()
        from ultralytics.nn.modules import Detect

        self.model = copy.deepcopy(model).float().eval().fuse()
        for m in self.model.modules():
            if isinstance(m, Detect):
                m.export, m.format, m.dynamic = True, "onnx", True

    def forward(self, x):
        y = self.model(x)
        return y[0] if isinstance(y, (tuple, list)) else y


EXPORT_IO = OnnxIO(input="images", outputs=("logits",))  # letterboxed [batch, 3, S, S] -> [batch, 4 + nc, anchors]
FINAL_CONV = re.compile(r"\.cv[23]\.\d+\.2\.weight$")  # Detect's last 1x1 conv of each box / class branch


def quant_exclude(path: Path) -> list[str]:
    """Every node after Detect's final convolutions: the box decoding (DFL softmax, anchors, strides) and the
    concat of pixel boxes with 0..1 scores must stay float, or one uint8 scale for both erases the scores."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier = [o for n in graph.node if n.op_type == "Conv" and len(n.input) > 1 and FINAL_CONV.search(n.input[1])
                for o in n.output]
    seen: dict[str, None] = {}
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name not in seen:
                seen[node.name] = None
                frontier.extend(node.output)
    return list(seen)


def export_meta(labels: list[str], imgsz: int) -> dict:
    return {"task": "detection", "labels": list(labels),
            "preprocess": {"type": "letterbox", "size": imgsz, "pad_value": 114, "scale": 255.0,
                           "channel_order": "RGB", "scaleup": True},
            "postprocess": {"type": "yolo", "conf_threshold": 0.25, "iou_threshold": VAL_IOU, "max_det": 300,
                            "agnostic": False, "max_wh": 7680}}


def stride_multiple(size: int, stride: int = 32) -> int:
    return max(stride, int(math.ceil(size / stride) * stride))
