"""The modality contract and the one registry of modalities.

A modality (image classification, detection, speech) is a plain object satisfying ``Modality``: the generic
layer (runner, rundir, exporting, benching, validate, listing) calls every member declared here and nothing
else. A modality with nothing to add for a member returns the neutral value its docstring names (None, [],
the model itself). ``tests/test_contract.py`` checks every registry entry against this Protocol.

Modalities are imported on first use, so `suite --help` does not pay for torchvision or transformers.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from suite.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from suite.core.data import ScanReport
    from suite.core.export import ExportSpec
    from suite.core.groups import ParamGroup
    from suite.core.loop import FitOptions, Hooks
    from suite.core.metrics import EvalResult
    from suite.core.schedule import Stage
    from suite.core.stages import Position
    from suite.recipe import Recipe


class Data(Protocol):
    """What the generic layer reads of a modality's loaded data."""

    labels: list[str]  # class names in index order (CTC: the vocabulary's tokens; regression: ["value"])
    report: ScanReport


class StageTrainer(Protocol):
    """A library-owned trainer (Ultralytics for YOLO) that runs the schedule's stages itself, with the same
    bookkeeping as ``suite.core.loop.fit`` (``suite.core.stages``: history, best, last.pt, callbacks)."""

    def __call__(self, model: nn.Module, groups: list[ParamGroup], stages: list[Stage], opts: FitOptions,
                 run_dir: Path, device: torch.device, resume: bool,
                 on_epoch_end: Sequence[Callable[[Position], None]]) -> Position: ...


@runtime_checkable
class Modality(Protocol):
    """What the generic layer needs from image classification, detection or speech."""

    def resolve_weights(self, recipe: Recipe) -> str:
        """Where ``model.weights`` will come from (a file, a cache entry, a package), checked before any data is
        read, or a UserError saying what is missing and where to put it."""

    def load_data(self, recipe: Recipe) -> Data:
        """Find, scan and split the data (a ``synthetic:`` format is generated first)."""

    def build_model(self, recipe: Recipe, labels: list[str], weights: str) -> nn.Module:
        """The model with a new head for ``labels``, ``weights`` loaded (``none``: random init)."""

    def groups(self, recipe: Recipe, model: nn.Module) -> list[ParamGroup]:
        """Named parameter groups in input-to-output order; the last is the new head."""

    def hooks(self, recipe: Recipe, data: Any, device: torch.device) -> Hooks:
        """The training step's loss, per-epoch validation, and the seeded train loader (for core.loop.fit)."""

    def trainer(self, recipe: Recipe, data: Any) -> StageTrainer | None:
        """A library's own trainer that runs the stages; None: the suite's loop (core.loop.fit) runs them."""

    def own_trainer(self, recipe: Recipe) -> str | None:
        """The library whose trainer runs this recipe's stages (``trainer`` is not None), told from the recipe
        alone, e.g. "Ultralytics"; None: the suite's loop."""

    def evaluate(self, recipe: Recipe, model: nn.Module, data: Any, split: str,
                 device: torch.device) -> EvalResult | None:
        """Metrics on a split (``val`` or ``test``); None when the data has no such split."""

    def evaluate_source(self, recipe: Recipe, model: nn.Module, device: torch.device) -> dict | None:
        """Forgetting (``eval.source``): the source task's metrics with the pre-trained head, ``{"before": {...},
        "after": {...}, "samples": n, "classes": k, "source": root}``; None when the recipe names no source (the
        generic layer refuses eval.source before any work for tasks outside recipe.SOURCE_TASKS)."""

    def default_metric(self, recipe: Recipe) -> str:
        """The metric that picks the best checkpoint when the recipe names none."""

    def plots(self, result: EvalResult, data: Any, plot_dir: Path) -> list[Path]:
        """Task-specific plots (confusion matrix, PR curves, ...); [] when there are none."""

    def report_sections(self, recipe: Recipe, result: EvalResult) -> list[tuple[str, str]]:
        """More (title, markdown) sections for report.md (e.g. the mAP cross-check); [] when none."""

    def export_module(self, recipe: Recipe, model: nn.Module) -> nn.Module:
        """What is exported, verified and benchmarked (a wrapper, a fused copy); the model itself when the same."""

    def export_spec(self, recipe: Recipe, data: Any, model: nn.Module) -> ExportSpec:
        """Bundle metadata, the graph's names and axes, an example input, calibration and evaluation."""

    def evaluate_bundle(self, recipe: Recipe, bundle: Any, data: Any, split: str) -> dict[str, float] | None:
        """Split-prefixed metrics of an exported bundle through suite_runtime; None when there is no such split."""

    def models(self) -> list[str]:
        """Lines for `suite ls models`: the model names (and name patterns) this modality builds."""

    def task_for(self, arch: str) -> str | None:
        """The task this modality builds ``arch`` for by default (`suite ls groups`); None if not its model."""


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


def modalities() -> list[Modality]:
    """One instance of each registered modality, in registry order."""
    return [factory() for factory in dict.fromkeys(REGISTRY.values())]


def load_recipe(path: str | Path, overrides: Sequence[str] = (), tasks: Collection[str] = tuple(REGISTRY)) -> Recipe:
    """A recipe whose task the registry knows (the schema itself imports no registry)."""
    from suite.recipe import load_recipe as load

    return load(path, overrides, tasks=tasks)
