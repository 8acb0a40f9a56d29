"""Recipes: YAML (safe_load) into frozen, validated dataclasses, with ``-s key=value`` overrides.

Every mistake becomes one UserError line naming the file, the line where known, the key
and the closest valid key. Values are parsed as YAML, never evaluated. The schema imports no
modality and no registry: the valid task names are handed in (``suite.tasks.load_recipe``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from suite.core.schedule import SCHEDULERS, Stage
from suite.datasets import SENTENCE_STYLES
from suite.errors import FieldError, UserError

MAX_RECIPE_BYTES = 1 << 20
BALANCE = ("none", "sampler", "loss")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adam", "sgd")
BASELINES = ("scratch", "linear_probe")
PROBE_TASKS = ("image-classification", "speech-classification")  # where a linear head on features is a baseline
QUANTIZE = ("int8-dynamic", "int8-static")
RUNTIMES = ("torch", "torch.compile", "onnxruntime")
CACHE_MODES = ("auto", "true", "false")
COMPILE_MODES = ("false", "true", "inductor", "aot_eager")  # true: inductor; aot_eager traces without code generation
AUTO_MODES = ("auto", "true", "false")  # channels_last, sync_batchnorm
AUGMENT_LEVELS = ("none", "light", "standard")
SOURCE_FORMATS = ("imagefolder", "imagenet-photos")
SOURCE_TASKS = ("image-classification", "speech-classification")  # where eval.source (forgetting) is measured
CACHE_TASKS = ("image-classification", "image-regression", "speech-classification")  # one feature vector per sample


def _one_of(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise FieldError(name, f"'{value}' is not valid{hint}; choose one of: {', '.join(valid)}")


@dataclass(frozen=True)
class HeadCfg:
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    keep: bool = False  # `head: keep`: the weights' own classifier and its labels (ImageNet's), no new head

    def __post_init__(self):
        if self.keep and (self.hidden or self.dropout):
            raise FieldError("keep", "keeps the pre-trained classifier as it is: remove hidden and dropout")
        if any(h < 1 for h in self.hidden):
            raise FieldError("hidden", f"layer sizes must be >= 1, got {list(self.hidden)}")
        if not 0 <= self.dropout < 1:
            raise FieldError("dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class ModelCfg:
    arch: str
    weights: str = "none"
    head: HeadCfg = field(default_factory=HeadCfg)
    # load weights files that are pickles of Python objects (they can run code when loaded); only for files
    # whose origin you trust: by default only tensors load (weights_only=True, safetensors)
    trust_weights: bool = False
    # speech (Wav2Vec2): the encoder's dropout (hidden, attention, activation, feature projection); None keeps
    # the weights' own (0.1 in most). 0 makes the frozen encoder a fixed function, so head-only stages can cache
    encoder_dropout: float | None = None
    # speech (Whisper): the encoder's input window in seconds. None: Whisper's own 30 s (every clip is padded
    # to it). Shorter: the positional table is cut to the window (clips padded or cut to it), which costs
    # about 30/context_seconds times less compute on short clips; a multiple of 0.02 s, at most 30
    context_seconds: float | None = None

    def __post_init__(self):
        if self.encoder_dropout is not None and not 0 <= self.encoder_dropout < 1:
            raise FieldError("encoder_dropout", f"must be in [0, 1), got {self.encoder_dropout}")
        c = self.context_seconds
        if c is not None and not (0 < c <= 30 and abs(c * 50 - round(c * 50)) < 1e-6):
            raise FieldError("context_seconds", f"must be a multiple of 0.02 in (0, 30] (Whisper's encoder frames "
                                                f"are 20 ms), got {c}")


@dataclass(frozen=True)
class SyntheticCfg:
    classes: tuple[str, ...] = ("circle", "square", "triangle", "star")
    train_per_class: int = 20
    val_per_class: int = 20
    test_per_class: int = 0
    size: int = 64
    seed: int = 0
    max_objects: int = 4  # detection: shapes per image (1..max_objects); counts above are images per class
    sentences: int = 0  # speech-ctc: spoken sentences for training (validation gets max(10, sentences // 5))
    sentence_style: str = "mixed"  # speech-ctc: mixed (commands, statements, digits) or digits (connected digits)

    def __post_init__(self):
        if self.max_objects < 1:
            raise FieldError("max_objects", f"must be >= 1, got {self.max_objects}")
        if self.train_per_class < 1 or self.val_per_class < 1 or self.test_per_class < 0:
            raise FieldError("train_per_class", "train/val counts must be >= 1 and test >= 0")
        if self.size < 16:
            raise FieldError("size", f"must be >= 16, got {self.size}")
        _one_of("sentence_style", self.sentence_style, SENTENCE_STYLES)


@dataclass(frozen=True)
class DataCfg:
    format: str
    root: str = ""
    image_size: int | None = None  # final crop; overrides the size from the weights' metadata
    resize: int | None = None  # shorter side before the centre crop; default keeps the weights' ratio
    val_split: float = 0.2  # used when the data has no val split of its own
    balance: str = "none"  # none | sampler (weighted sampler) | loss (class-weighted loss)
    augment: str = "standard"  # none | light | standard
    # data loading processes: auto = min(8, cores) when a CUDA GPU is visible, 0 on CPU (workers only add copies
    # there); a number sets it
    num_workers: int | str = "auto"
    max_seconds: float | None = None  # speech: longer clips are cropped (keywords) or skipped (CTC; 30 s if unset)
    synthetic: SyntheticCfg = field(default_factory=SyntheticCfg)

    def __post_init__(self):
        _one_of("balance", self.balance, BALANCE)
        if not 0 < self.val_split < 1:
            raise FieldError("val_split", f"must be between 0 and 1, got {self.val_split}")
        if self.image_size is not None and self.image_size < 8:
            raise FieldError("image_size", f"must be >= 8, got {self.image_size}")
        if self.resize is not None and self.resize < (self.image_size or 8):
            raise FieldError("resize", f"must be >= image_size, got {self.resize}")
        if self.num_workers != "auto" and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise FieldError("num_workers", f"must be auto or a number >= 0, got {self.num_workers!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise FieldError("max_seconds", f"must be > 0, got {self.max_seconds}")


@dataclass(frozen=True)
class OptimCfg:
    name: str = "adamw"
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd only
    warmup: float = 0.0  # default warm-up fraction of each stage
    scheduler: str = "cosine"  # default per-stage schedule

    def __post_init__(self):
        _one_of("name", self.name, OPTIMIZERS)
        _one_of("scheduler", self.scheduler, SCHEDULERS)
        if not 0 <= self.warmup < 1:
            raise FieldError("warmup", f"must be in [0, 1), got {self.warmup}")
        if self.weight_decay < 0:
            raise FieldError("weight_decay", "must be >= 0")


@dataclass(frozen=True)
class EarlyStopCfg:
    metric: str = "val/loss"
    patience: int = 5

    def __post_init__(self):
        if "/" not in self.metric:
            raise FieldError("metric", f"must be a split-prefixed key like val/f1, got '{self.metric}'")
        if self.patience < 1:
            raise FieldError("patience", "must be >= 1")


@dataclass(frozen=True)
class TrainCfg:
    batch_size: int = 32
    eval_batch_size: int | None = None
    precision: str = "auto"
    grad_accum: int = 1
    clip_grad: float | None = None
    seed: int = 0
    early_stop: EarlyStopCfg | None = None  # ends the current stage when the metric stalls
    ema: float | None = None  # EMA decay of the weights, e.g. 0.999
    max_nonfinite: int = 10  # stop after this many non-finite losses in a row
    label_smoothing: float = 0.0
    # head-only stages without random augmentation train the head on the frozen part's outputs computed once:
    # auto (where valid; the log says why not), true (and a head-only stage that cannot is an error), false
    cache_features: bool | str = "auto"
    # torch.compile the training step's model (the suite's own loop; not Ultralytics' YOLO trainer): false, true
    # (inductor: generated kernels, compiled again for each stage) or aot_eager (traced, no code generation)
    compile: bool | str = False
    # channels_last memory format for convolutional image models: auto (on a CUDA GPU, where cuDNN's NHWC
    # kernels are faster), true, false
    channels_last: bool | str = "auto"
    # under --nproc, BatchNorm layers as SyncBatchNorm (statistics over the global batch, not each rank's slice):
    # auto (on CUDA, where torch supports it), true (an error on CPU/gloo), false
    sync_batchnorm: bool | str = "auto"
    # checkpoints/last.pt at an epoch's end once this many seconds passed since the last one (0: every epoch);
    # always at a stage's end and on SIGTERM/SIGINT. A hard kill (SIGKILL, power) loses at most this much training.
    checkpoint_every_s: float = 60.0

    def __post_init__(self):
        _one_of("precision", self.precision, PRECISIONS)
        for name, modes in (("cache_features", CACHE_MODES), ("compile", COMPILE_MODES),
                            ("channels_last", AUTO_MODES), ("sync_batchnorm", AUTO_MODES)):
            value = getattr(self, name)
            mode = str(value).lower() if isinstance(value, bool) else value
            _one_of(name, mode, modes)
            object.__setattr__(self, name, mode)
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_nonfinite < 1:
            raise FieldError("batch_size", "batch_size, grad_accum and max_nonfinite must be >= 1")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise FieldError("clip_grad", f"must be > 0 (or null to disable), got {self.clip_grad}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise FieldError("ema", f"must be in (0, 1), e.g. 0.999, got {self.ema}")
        if not 0 <= self.label_smoothing < 1:
            raise FieldError("label_smoothing", "must be in [0, 1)")
        if not 0 <= self.checkpoint_every_s < math.inf:  # the loader has checked it is a number
            raise FieldError("checkpoint_every_s", f"must be a number of seconds >= 0 (0: every epoch), "
                             f"got {self.checkpoint_every_s!r}")


@dataclass(frozen=True)
class TuneCfg:
    """`suite tune`'s search space (Optuna TPE). A range is [low, high]; null leaves that knob as the recipe has it.
    The recipe's own values are the first trial, so the search reports against them."""

    trials: int = 20  # `--trials` overrides
    seed: int = 0  # the sampler's
    metric: str | None = None  # default: the run's selection metric (train.early_stop.metric or the task's)
    lr: tuple[float, ...] | None = (0.2, 5.0)  # multipliers of each stage's lr, log scale, one parameter per stage
    weight_decay: tuple[float, ...] | None = (1.0e-4, 0.1)  # optim.weight_decay, log scale
    freeze_depth: bool = True  # the k of every `train: {last: k}` stage, from 1 to every group
    layer_decay: tuple[float, ...] | None = (0.5, 1.0)  # stages that set layer_decay
    augment: tuple[str, ...] = ()  # levels to choose from, e.g. [none, light, standard]; () keeps data.augment
    epochs: tuple[float, ...] | None = None  # multipliers of each stage's epochs (rounded, at least 1)
    prune: bool = True  # median pruning on the per-epoch validation metric
    startup_trials: int = 4  # trials that are never pruned (and that TPE samples at random)

    def __post_init__(self):
        if self.trials < 1 or self.startup_trials < 0:
            raise FieldError("trials", "trials must be >= 1 and startup_trials >= 0")
        for name in ("lr", "weight_decay", "layer_decay", "epochs"):
            r = getattr(self, name)
            if r is not None and (len(r) != 2 or not 0 < r[0] <= r[1]):
                raise FieldError(name, f"must be [low, high] with 0 < low <= high, got {list(r)}")
        if self.layer_decay is not None and self.layer_decay[1] > 1:
            raise FieldError("layer_decay", f"must lie in (0, 1], got {list(self.layer_decay)}")
        for level in self.augment:
            _one_of("augment", level, AUGMENT_LEVELS)


@dataclass(frozen=True)
class SourceCfg:
    """The source task's data, for forgetting: class folders named as the pre-trained head's labels."""

    root: str
    format: str = "imagefolder"  # or imagenet-photos: real photos packages ship, copied into root first

    def __post_init__(self):
        _one_of("format", self.format, SOURCE_FORMATS)


@dataclass(frozen=True)
class EvalCfg:
    metrics: tuple[str, ...] = ()  # () means every metric of the task
    compare: tuple[str, ...] = ()  # baselines with the same budget: scratch, linear_probe
    # forgetting: the source task's metric with the pre-trained head, before and after fine-tuning
    source: SourceCfg | None = None

    def __post_init__(self):
        for name in self.compare:
            _one_of("compare", name, BASELINES)


@dataclass(frozen=True)
class VerifyCfg:
    atol: float = 1.0e-4  # fp32 tensor parity, max abs diff
    max_metric_drop: float = 0.5  # fp32: points of the task metric (accuracy 0.5 = half a point)
    int8_max_metric_drop: float = 1.0  # int8 variants

    def __post_init__(self):
        if not self.atol > 0 or self.max_metric_drop < 0 or self.int8_max_metric_drop < 0:
            raise FieldError("atol", "atol must be > 0 and the metric drops >= 0")


@dataclass(frozen=True)
class ExportCfg:
    onnx: bool = False
    opset: int = 18
    quantize: tuple[str, ...] = ()
    calibration_samples: int = 128  # training samples for int8-static calibration
    verify: VerifyCfg = field(default_factory=VerifyCfg)

    def __post_init__(self):
        for q in self.quantize:
            _one_of("quantize", q, QUANTIZE)
        if not 7 <= self.opset <= 23:
            raise FieldError("opset", f"must be between 7 and 23, got {self.opset}")
        if self.calibration_samples < 1:
            raise FieldError("calibration_samples", "must be >= 1")


@dataclass(frozen=True)
class BenchCfg:
    batch_sizes: tuple[int, ...] = (1, 8)  # [] skips the benchmark at the end of `suite run`
    runtimes: tuple[str, ...] = ("torch", "onnxruntime")  # add torch.compile to time it too
    warmup: int = 5
    iters: int = 30

    def __post_init__(self):
        for r in self.runtimes:
            _one_of("runtimes", r, RUNTIMES)
        if any(b < 1 for b in self.batch_sizes) or self.warmup < 0 or self.iters < 1:
            raise FieldError("batch_sizes", "batch sizes and iters must be >= 1, warmup >= 0")


@dataclass(frozen=True)
class Recipe:
    name: str
    task: str
    model: ModelCfg
    data: DataCfg
    schedule: tuple[Stage, ...]
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    export: ExportCfg = field(default_factory=ExportCfg)
    bench: BenchCfg = field(default_factory=BenchCfg)
    tune: TuneCfg = field(default_factory=TuneCfg)

    def __post_init__(self):
        if self.model.encoder_dropout is not None and not self.task.startswith("speech"):
            raise FieldError("model", "encoder_dropout applies to speech models (Wav2Vec2) only: remove it")
        if not self.schedule and not self.model.head.keep:
            raise FieldError("schedule", "needs at least one stage, e.g. {epochs: 3, train: head, lr: 1.0e-3} "
                                         "(an empty schedule only with model.head: keep, to evaluate and export "
                                         "the pre-trained model as it is)")

    def stages(self) -> list[Stage]:
        """The schedule with the optimizer's warm-up and scheduler filled in where a stage is silent."""
        fill = {"warmup": self.optim.warmup, "scheduler": self.optim.scheduler}
        return [dataclasses.replace(s, **{k: v for k, v in fill.items() if getattr(s, k) is None}) for s in self.schedule]

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----- loading -----------------------------------------------------------------------------


class _Where:
    """File name and YAML node tree, to point an error at the right line."""

    def __init__(self, source: str, text: str | None):
        self.source = source
        self.root = yaml.compose(text) if text else None

    def line(self, path: Sequence[str | int]) -> int | None:
        node, line = self.root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if k.value == str(part)]
                if not match:
                    break
                line, node = match[0][0].start_mark.line + 1, match[0][1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, path: Sequence[str | int], message: str) -> UserError:
        line = self.line(path)
        at = f"{self.source}:{line}" if line else self.source
        key = ".".join(str(p) for p in path)
        return UserError(f"{at}: {key}: {message}" if key else f"{at}: {message}")


def _build(cls, raw, path: list, where: _Where):
    if cls is HeadCfg and raw == "keep":  # `head: keep`
        raw = {"keep": True}
    if not isinstance(raw, Mapping):
        raise where.error(path, f"expected a mapping of {cls.__name__} keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise where.error([*path, key], f"unknown key; {hint}(valid: {', '.join(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], [*path, f.name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.error([*path, f.name], "missing required key")
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise where.error([*path, e.field], e.message) from None


def _coerce(tp, value, path: list, where: _Where):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, path, where)
        if set(inner) == {bool, str}:  # a switch with a third word (cache_features: true | false | auto)
            if not isinstance(value, (bool, str)):
                raise where.error(path, f"expected true, false or a word, got {value!r}")
            return value
        if set(inner) == {int, str}:  # a count or a word (num_workers: auto | N)
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise where.error(path, f"expected a whole number or a word, got {value!r}")
            return value
        return _stage_train(value, path, where)  # the only multi-type field
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, path, where)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(args[0], v, [*path, i], where) for i, v in enumerate(items))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise where.error(path, f"expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, [*path, k], where) for k, v in value.items()}
    return _scalar(tp, value, path, where)


def _scalar(tp, value, path, where):
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    ok = {
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        hint = " (YAML reads yes/no/on/off as booleans: quote the word, e.g. \"yes\")" \
            if tp is str and isinstance(value, bool) else ""
        raise where.error(path, f"expected {tp.__name__}, got {value!r}{hint}")
    return float(value) if tp is float else value


def _stage_train(value, path, where):
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if isinstance(value, Mapping):
        return dict(value)  # {last: k}, checked against the model's groups by the schedule
    raise where.error(path, f"expected head, all, a list of group names or {{last: k}}, got {value!r}")


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """``-s model.head.dropout=0.2``, ``-s schedule.0.lr=1e-4``: values are parsed as YAML."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' must look like key.sub=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as e:
            raise UserError(f"override '{item}': value is not valid YAML ({e.problem})") from None
        node, parts = raw, key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise UserError(f"override '{item}': '{'.'.join(parts[:i])}' has {len(node)} items; use an index 0..{len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict):
                raise UserError(f"override '{item}': '{'.'.join(parts[:i])}' is not a mapping")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
    return raw


# ----- cascades: a detector feeding a classifier ------------------------------------------------


@dataclass(frozen=True)
class CropCfg:
    margin: float = 0.15  # each side of a box widened by this fraction of its width/height before the crop

    def __post_init__(self):
        if not 0 <= self.margin <= 2:
            raise FieldError("margin", f"must be between 0 and 2, got {self.margin}")


@dataclass(frozen=True)
class CascadeRecipe:
    """``task: cascade``: a detection dataset labelled with the FINE classes; ``classes`` maps each detector
    class to the fine classes it covers. The detector trains on the data with every fine class replaced by its
    detector class, the classifier on crops of the ground-truth boxes labelled with their fine class."""

    name: str
    task: str
    data: DataCfg  # detection data (yolo | coco | synthetic:shapes) with the fine classes
    classes: dict[str, tuple[str, ...]]  # detector class -> the fine classes it covers
    detector: str  # a detection recipe (its data is replaced by the detector-class view) or a finished run
    classifier: str  # an image-classification recipe (its data is replaced by the crops) or a finished run
    crop: CropCfg = field(default_factory=CropCfg)
    conf: float = 0.05  # detector score threshold inside the cascade (every kept box is classified)
    iou: float = 0.7  # the detector's NMS IoU
    compare: tuple[str, ...] = ("direct",)  # direct: the detector recipe trained on the fine classes, same budget
    export: ExportCfg = field(default_factory=lambda: ExportCfg(onnx=True))
    bench: BenchCfg = field(default_factory=BenchCfg)

    def __post_init__(self):
        if self.task != "cascade":
            raise FieldError("task", f"a cascade recipe has task: cascade, got {self.task}")
        if not self.classes:
            raise FieldError("classes", "map each detector class to its fine classes, e.g. {shape: [circle, square]}")
        fine = [f for group in self.classes.values() for f in group]
        if len(set(fine)) != len(fine) or not all(self.classes.values()):
            raise FieldError("classes", "every fine class belongs to exactly one detector class, and every "
                                        "detector class has at least one")
        for c in self.compare:
            _one_of("compare", c, ("direct",))
        if not 0 < self.conf < 1 or not 0 < self.iou <= 1:
            raise FieldError("conf", f"conf must be in (0, 1) and iou in (0, 1], got {self.conf}, {self.iou}")

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def read_task(path: str | Path) -> str | None:
    """The ``task`` a recipe file names (None when it names none), read before the full parse."""
    raw, _ = _read_raw(Path(path))
    return str(raw.get("task")) if raw.get("task") is not None else None


def load_cascade(path: str | Path, overrides: Sequence[str] = ()) -> CascadeRecipe:
    path = Path(path)
    raw, text = _read_raw(path)
    return _build(CascadeRecipe, apply_overrides(raw, overrides), [], _Where(str(path), text))


def parse_recipe(raw, source: str = "<recipe>", text: str | None = None, tasks: Collection[str] = ()) -> Recipe:
    """The recipe; with ``tasks`` (the registry's names), an unknown task is an error naming its line."""
    where = _Where(source, text)
    if tasks and isinstance(raw, Mapping) and "task" in raw:
        try:
            _one_of("task", str(raw["task"]), list(tasks))
        except FieldError as e:
            raise where.error(["task"], e.message) from None
    return _build(Recipe, raw, [], where)


def load_recipe(path: str | Path, overrides: Sequence[str] = (), tasks: Collection[str] = ()) -> Recipe:
    path = Path(path)
    raw, text = _read_raw(path)
    return parse_recipe(apply_overrides(raw, overrides), str(path), text, tasks)


def _read_raw(path: Path) -> tuple[dict, str]:
    """The recipe file's YAML mapping and its text, or a UserError naming the file and what is wrong."""
    if not path.is_file():
        raise UserError(f"recipe {path} not found; `suite ls recipes` lists the bundled ones")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:  # a recipe is a page of YAML; parsing megabytes of it would only hang
        raise UserError(f"recipe {path} is {size / 2**20:.1f} MiB; a recipe is a few KB of YAML (at most "
                        f"{MAX_RECIPE_BYTES // 2**10} KiB): is it the right file?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"recipe {path} is not UTF-8 text ({e.reason}); is it the right file?") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{at}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a mapping of keys (name, task, model, data, schedule, ...)")
    return raw, text


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
