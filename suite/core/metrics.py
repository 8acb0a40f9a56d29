"""Evaluation metrics: a thin, modality-free layer over torchmetrics (classification: one confusion matrix, with
torchmetrics' definitions and without its import).

Keys are lower-case; a split prefix with ``/`` is added only at the edge
(``EvalResult.prefixed("val")`` -> ``val/accuracy``), so training code, plots and
metrics.json all agree on one spelling.

Absent classes (checked against scikit-learn 1.9 / torchmetrics 1.9): macro precision,
recall and F1 are the mean over the classes that occur in the targets *or* the
predictions. A class that is never predicted but present in the targets counts with
precision 0 (``zero_division=0``), exactly as in sklearn. A class that appears in
neither is left out of the mean by torchmetrics; that equals sklearn's default
(``labels=None``, the union of observed labels), but NOT
``sklearn.metrics.f1_score(..., labels=range(C))``, which would average in a 0 for it.
The per-class table still lists every label (absent ones as 0 with support 0).
"""
from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from suite.core.checkpoint import atomic_write_text
from suite.errors import UserError

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "top5")
REGRESSION_METRICS = ("mse", "mae")
DETECTION_METRICS = ("map50", "map50_95", "map75", "mar100")
TRANSCRIPTION_METRICS = ("wer", "cer")
_VALID = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS,
          "detection": DETECTION_METRICS, "transcription": TRANSCRIPTION_METRICS}
# Every evaluator reports the loss it was given, so "loss"/"val/loss" is always a valid name
# (e.g. to monitor for early stopping); it is not in the tuples because it is not computed here.
_ALWAYS_VALID = ("loss",)
_SPLITS = ("train", "val", "test")
TOP_K = 5


def check_metric_names(
    names: Iterable[str], task_kind: str, *, num_classes: int | None = None
) -> None:
    """Raise UserError for a metric name the task cannot produce.

    Names may carry a split prefix (``val/f1``). With ``num_classes`` given, ``top5`` is
    refused when there are not more than 5 classes (it would always be 1.0).
    """
    if task_kind not in _VALID:
        raise ValueError(f"task_kind must be one of {sorted(_VALID)}, got {task_kind!r}")
    valid = _VALID[task_kind] + _ALWAYS_VALID
    for name in names:
        split, _, bare = name.rpartition("/")
        if split and split not in _SPLITS:
            raise UserError(
                f"metric {name!r}: split prefix must be one of {', '.join(_SPLITS)}"
            )
        if bare not in valid:
            close = difflib.get_close_matches(bare, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"unknown {task_kind} metric {name!r}.{hint} Valid: {', '.join(valid)}"
            )
        if bare == "top5" and num_classes is not None and num_classes <= TOP_K:
            raise UserError(
                f"metric 'top5' needs more than {TOP_K} classes; this task has {num_classes}"
            )


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] | None = None  # rows = true class, cols = predicted
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific data for plots (PR curves, ...)

    def prefixed(self, split: str) -> dict[str, float]:
        return {f"{split}/{k}": v for k, v in self.metrics.items()}


# One process evaluates (rank 0 under DDP): torchmetrics must not wait to gather the other ranks' states.
ONE_PROCESS = {"sync_on_compute": False}


class _LossMean:
    """The sample-weighted loss mean and sample count every evaluator keeps."""

    def _reset_loss(self) -> None:
        self._loss_sum = 0.0
        self._loss_n = 0
        self._n = 0

    def _count(self, batch: int, loss: float | Tensor | None, n: int | None) -> None:
        self._n += batch
        if loss is not None:
            weight = batch if n is None else int(n)
            self._loss_sum += float(loss) * weight
            self._loss_n += weight

    def _loss(self) -> dict[str, float]:
        if self._n == 0:
            raise UserError("no samples were evaluated: is the evaluation split empty?")
        return {"loss": self._loss_sum / self._loss_n} if self._loss_n else {}


class _Evaluator(_LossMean):
    """Shared bookkeeping: a torchmetrics collection plus a sample-weighted loss mean."""

    def __init__(self, metrics: dict, device: str | torch.device, groups: list[list[str]] | bool = False) -> None:
        from torchmetrics import MetricCollection

        self.device = torch.device(device)
        # ``groups``: metrics that truly share one set of states, named explicitly. torchmetrics' automatic
        # grouping (compute_groups=True) merges metrics whose states happen to be equal after the first batch
        # (top-5 accuracy followed top-1 whenever the first batch was all correct).
        self._metrics = MetricCollection(metrics, compute_groups=groups).to(self.device)
        self.reset()

    def reset(self) -> None:
        self._metrics.reset()
        self._reset_loss()

    def _update(self, preds: Tensor, target: Tensor, loss: float | Tensor | None, n: int | None) -> None:
        self._metrics.update(preds.detach().to(self.device), target.detach().to(self.device))
        self._count(int(target.shape[0]), loss, n)

    def _compute(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        out = self._loss()
        return out, self._metrics.compute()


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den is 0 (torchmetrics' and sklearn's zero_division=0), in float32 as torchmetrics."""
    num, den = num.float(), den.float()
    return torch.where(den != 0, num / den, torch.zeros_like(num))


class ClassificationEvaluator(_LossMean):
    """Accuracy (micro), macro precision/recall/F1, top-5 when C > 5, confusion, per-class.

    Every figure comes from one confusion matrix (plus a top-5 hit count), with torchmetrics' Multiclass*
    definitions (tests/test_metrics.py checks them against torchmetrics and scikit-learn). Not through torchmetrics
    itself: its import loads every domain it has (scipy.signal, transformers through BERTScore), which was 3.3 s
    of an 18 s classification run on 2 cores (benchmarks/README.md, bench_training.py). Detection, regression
    and transcription metrics stay torchmetrics'.
    """

    def __init__(self, labels: Sequence[str], device: str | torch.device = "cpu") -> None:
        self.labels = [str(label) for label in labels]
        c = len(self.labels)
        if c < 2:
            raise ValueError(f"classification needs at least 2 labels, got {c}")
        if len(set(self.labels)) != c:
            raise ValueError("labels must be unique (they key the per-class table)")
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        c = len(self.labels)
        self._confusion = torch.zeros(c * c, dtype=torch.long, device=self.device)
        self._top5 = torch.zeros((), dtype=torch.long, device=self.device)
        self._reset_loss()

    def update(
        self, logits: Tensor, target: Tensor, loss: float | Tensor | None = None, n: int | None = None
    ) -> None:
        """Add a batch: ``logits`` [N, C] (scores, any scale), ``target`` [N] class indices."""
        c = len(self.labels)
        if logits.ndim != 2 or logits.shape[1] != c:
            raise ValueError(f"logits must be [N, {c}], got {list(logits.shape)}")
        logits = logits.detach().to(self.device)
        target = target.detach().to(self.device).long().reshape(-1)
        if target.shape[0] != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} logits rows but {target.shape[0]} targets")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
            raise ValueError(f"targets must be class indices in [0, {c}), got {int(target.min())}..{int(target.max())}")
        self._confusion += torch.bincount(target * c + logits.argmax(1), minlength=c * c)
        if c > TOP_K:
            self._top5 += (logits.topk(TOP_K, dim=1).indices == target[:, None]).any(1).sum()
        self._count(int(target.shape[0]), loss, n)

    def compute(self) -> EvalResult:
        out = self._loss()
        c = len(self.labels)
        confusion = self._confusion.view(c, c).cpu()  # rows = true class, cols = predicted
        tp = confusion.diag()
        fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
        scores = {"precision": _safe_divide(tp, tp + fp), "recall": _safe_divide(tp, tp + fn),
                  "f1": _safe_divide(2 * tp, 2 * tp + fp + fn)}
        seen = (tp + fp + fn > 0).float()  # a class in neither targets nor predictions leaves the macro mean
        out["accuracy"] = _scalar(_safe_divide(tp.sum(), confusion.sum()))
        for key, score in scores.items():
            out[key] = _scalar(_safe_divide((score * seen).sum(), seen.sum()))
        if c > TOP_K:
            out["top5"] = _scalar(_safe_divide(self._top5.cpu(), confusion.sum()))
        support = confusion.sum(dim=1)
        per_class = {label: {**{key: _scalar(score[i]) for key, score in scores.items()}, "support": int(support[i])}
                     for i, label in enumerate(self.labels)}
        return EvalResult(metrics=out, per_class=per_class, confusion=confusion.tolist())


class RegressionEvaluator(_Evaluator):
    """Mean squared and mean absolute error of a single scalar output."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

        super().__init__({"mse": MeanSquaredError(**ONE_PROCESS), "mae": MeanAbsoluteError(**ONE_PROCESS)}, device)

    def update(
        self, pred: Tensor, target: Tensor, loss: float | Tensor | None = None, n: int | None = None
    ) -> None:
        """Add a batch: ``pred`` [N] or [N, 1], ``target`` [N] or [N, 1]."""
        pred, target = _flatten_column(pred, "pred"), _flatten_column(target, "target")
        if pred.shape != target.shape:
            raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} differ")
        self._update(pred.float(), target.float(), loss, n)

    def compute(self) -> EvalResult:
        out, raw = self._compute()
        out["mse"] = _scalar(raw["mse"])
        out["mae"] = _scalar(raw["mae"])
        return EvalResult(metrics=out)


class DetectionEvaluator:
    """COCO-style box mAP through torchmetrics' MeanAveragePrecision (pycocotools backend).

    ``update`` takes per-image dicts in absolute xyxy pixels with 0-based ``labels``:
    predictions ``{boxes, scores, labels}``, targets ``{boxes, labels}``. ``map50_95`` is
    COCO's AP@[.50:.95], ``map50``/``map75`` at one IoU, ``mar100`` recall at 100
    detections; per-class AP50-95 and the IoU=0.5 precision/recall curves come too.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        self.labels = [str(label) for label in labels]
        self._map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                         extended_summary=True, backend="pycocotools", **ONE_PROCESS)
        self._map.warn_on_many_detections = False  # low-confidence boxes (conf 0.001) are how mAP is measured
        self._n = 0
        self._loss_sum, self._loss_n = 0.0, 0

    def update(self, preds: Sequence[dict], targets: Sequence[dict], loss: float | None = None) -> None:
        def as_tensors(d: dict, keys) -> dict:
            return {k: torch.as_tensor(np.asarray(d[k]) if not isinstance(d[k], Tensor) else d[k].detach().cpu())
                    for k in keys}

        p = [as_tensors(d, ("boxes", "scores", "labels")) for d in preds]
        t = [as_tensors(d, ("boxes", "labels")) for d in targets]
        for d in (*p, *t):
            d["boxes"] = d["boxes"].float().reshape(-1, 4)
            d["labels"] = d["labels"].long().reshape(-1)
        for d in p:
            d["scores"] = d["scores"].float().reshape(-1)
        self._map.update(p, t)
        self._n += len(t)
        if loss is not None:
            self._loss_sum += float(loss) * len(t)
            self._loss_n += len(t)

    def compute(self) -> EvalResult:
        if self._n == 0:
            raise UserError("no images were evaluated: is the evaluation split empty?")
        raw = self._map.compute()
        out = {"map50": _scalar(raw["map_50"]), "map50_95": _scalar(raw["map"]),
               "map75": _scalar(raw["map_75"]), "mar100": _scalar(raw["mar_100"])}
        out = {k: max(v, 0.0) for k, v in out.items()}  # pycocotools says -1 when no class has a target
        if self._loss_n:
            out["loss"] = self._loss_sum / self._loss_n
        classes = raw["classes"].reshape(-1).tolist()
        per_ap = raw["map_per_class"].reshape(-1).tolist()
        per_class = {name: {"ap50_95": 0.0, "present": 0.0} for name in self.labels}
        for c, ap in zip(classes, per_ap):
            if 0 <= c < len(self.labels):
                per_class[self.labels[c]] = {"ap50_95": max(float(ap), 0.0), "present": 1.0}
        # precision [T, R, K, A, M]: IoU .50, all recall points, every class, area "all", 100 detections
        precision = raw["precision"][0, :, :, 0, -1]
        curves = {self.labels[c]: precision[:, k].clamp(min=0).tolist()
                  for k, c in enumerate(classes) if 0 <= c < len(self.labels)}
        return EvalResult(metrics=out, per_class=per_class, extra={"pr_curves": curves})


class TranscriptionEvaluator:
    """Word and character error rates (torchmetrics) of predicted vs reference transcripts, corpus-level:
    total edits over total reference words / characters, as jiwer and the HF `evaluate` metrics compute them."""

    def __init__(self, examples: int = 5) -> None:
        from torchmetrics.text import CharErrorRate, WordErrorRate

        self._wer, self._cer = WordErrorRate(**ONE_PROCESS), CharErrorRate(**ONE_PROCESS)
        self._n, self._loss_sum, self._loss_n = 0, 0.0, 0
        self.samples: list[tuple[str, str]] = []  # the first few (reference, prediction) pairs, for the report
        self._keep = examples

    def update(self, predictions: Sequence[str], references: Sequence[str], loss: float | None = None) -> None:
        preds, refs = list(predictions), list(references)
        if len(preds) != len(refs):
            raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
        self._wer.update(preds, refs)
        self._cer.update(preds, refs)
        self._n += len(refs)
        self.samples += list(zip(refs, preds))[: max(0, self._keep - len(self.samples))]
        if loss is not None:
            self._loss_sum += float(loss) * len(refs)
            self._loss_n += len(refs)

    def compute(self) -> EvalResult:
        if self._n == 0:
            raise UserError("no clips were evaluated: is the evaluation split empty?")
        out = {"wer": _scalar(self._wer.compute()), "cer": _scalar(self._cer.compute())}
        if self._loss_n:
            out["loss"] = self._loss_sum / self._loss_n
        return EvalResult(metrics=out, extra={"samples": list(self.samples)})


def _scalar(t: Tensor) -> float:
    """A Python float; float32 results become their shortest round-tripping decimal
    (0.06, not 0.05999999865889549) so metrics.json and the report stay readable."""
    if t.dtype == torch.float32:
        return float(str(np.float32(t.item())))
    return float(t)


def _flatten_column(x: Tensor, name: str) -> Tensor:
    if x.ndim == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{name} must be [N] or [N, 1], got {list(x.shape)}")
    return x


def metrics_document(
    task: str,
    val: EvalResult,
    test: EvalResult | None = None,
    baselines: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """The metrics.json structure.

    ``test`` is ``{}`` when no test split was evaluated and ``confusion`` is ``None`` for
    regression, so readers can index every key without checking the task kind.
    ``per_class`` keys are in label order; ``confusion`` rows/cols follow that order.
    """
    return {
        "task": task,
        "val": val.prefixed("val"),
        "test": test.prefixed("test") if test is not None else {},
        "per_class": val.per_class,
        "confusion": val.confusion,
        "baselines": dict(baselines or {}),
    }


def write_metrics_json(path: str | os.PathLike, document: dict) -> Path:
    """Write atomically with indent=2. Tensors/numpy scalars become plain numbers and
    NaN/inf become null, because bare NaN is not valid JSON and breaks other readers."""
    text = json.dumps(_plain(document), indent=2, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # tensors and numpy arrays/scalars -> Python numbers
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
