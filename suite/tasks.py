"""The modality contract and the one explicit registry of modalities.

A modality is a plain object satisfying `Modality`; the runner talks to nothing else.
Modalities are imported on first use, so `suite --help` does not pay for torchvision.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from suite.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from suite.core.export import ExportSpec
    from suite.core.groups import ParamGroup
    from suite.core.loop import Hooks
    from suite.core.metrics import EvalResult
    from suite.recipe import Recipe


class Modality(Protocol):
    """What the runner needs from image classification, detection or speech."""

    def load_data(self, recipe: Recipe) -> Any:
        """Scan and split the data; the result has ``labels`` and ``report.summary()``."""

    def build_model(self, recipe: Recipe, data: Any, weights: str) -> nn.Module:
        """The model with its new head, ``weights`` loaded (``none``: random init)."""

    def groups(self, recipe: Recipe, model: nn.Module) -> list[ParamGroup]:
        """Named parameter groups in input-to-output order; the last is the new head."""

    def hooks(self, recipe: Recipe, data: Any, device: torch.device) -> Hooks:
        """The training step's loss, per-epoch validation, and the seeded train loader."""

    def evaluate(self, recipe: Recipe, model: nn.Module, data: Any, split: str, device: torch.device) -> EvalResult | None:
        """Metrics on a split (``val`` or ``test``); None when the data has no such split."""

    def default_metric(self, recipe: Recipe) -> str:
        """The metric that picks the best checkpoint when the recipe names none."""

    def plots(self, result: EvalResult, data: Any, plot_dir: Path) -> list[Path]:
        """Task-specific plots (confusion matrix, PR curves, ...)."""

    def export_spec(self, recipe: Recipe, data: Any, model: nn.Module) -> ExportSpec:
        """Bundle metadata (labels, pre/postprocessing), an example input, calibration and evaluation."""

    # Optional, found with getattr:
    # own_loop(recipe, data) -> None, or fn(model, groups, run_dir, device, select_metric, on_epoch_end) when
    #     a library's trainer runs the stages (Ultralytics); it writes history.csv and checkpoints/best.safetensors.
    # report_sections(result) -> [(title, markdown)] added to report.md (e.g. the mAP cross-check).


def _vision() -> Modality:
    from suite.vision.task import VisionModality

    return VisionModality()


def _detection() -> Modality:
    from suite.detection.task import DetectionModality

    return DetectionModality()


def _speech() -> Modality:
    from suite.speech.task import SpeechModality

    return SpeechModality()


# task name -> factory of the modality that handles it
REGISTRY: dict[str, Callable[[], Modality]] = {
    "image-classification": _vision,
    "image-regression": _vision,
    "detection": _detection,
    "speech-classification": _speech,
    "speech-ctc": _speech,
}


def modality_for(task: str) -> Modality:
    if task not in REGISTRY:
        close = difflib.get_close_matches(task, list(REGISTRY), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown task '{task}'{hint}; valid tasks: {', '.join(REGISTRY)}")
    return REGISTRY[task]()
