"""The run directory (DESIGN.md's contract): its paths, and the one loader of a finished run used by
`suite eval`, `suite export`, `suite bench` and `suite predict`."""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.core.checkpoint import atomic_write_text
from suite.core.stages import BEST, HISTORY, LAST  # noqa: F401  (the run directory's paths, in one place)
from suite.errors import UserError
from suite.tasks import Modality, load_recipe, modality_for

RECIPE = "recipe.yaml"
LABELS = "labels.json"  # the head's labels in index order: a finished run rebuilds its model without the data
METRICS = "metrics.json"
REPORT = "report.md"
BENCH = "bench.json"
EXPORT = "export"  # the bundle: model.onnx (+ variants), model.json, verify.json


def write_labels(run_dir: Path, labels: Sequence[str]) -> None:
    atomic_write_text(run_dir / LABELS, json.dumps(list(labels)) + "\n")


@dataclass
class Run:
    """A finished run: its recipe and modality; data, labels and the best model are loaded when asked."""

    dir: Path
    recipe: Any
    modality: Modality
    _data: Any = field(default=None, repr=False)

    @property
    def data(self):
        """The recipe's data, scanned (once)."""
        if self._data is None:
            self._data = self.modality.load_data(self.recipe)
        return self._data

    @property
    def labels(self) -> list[str]:
        """From labels.json; a run from before it existed scans its data for them."""
        path = self.dir / LABELS
        if path.is_file():
            return list(json.loads(path.read_text(encoding="utf-8")))
        return list(self.data.labels)

    def model(self):
        """The best epoch's model, in eval mode on the CPU."""
        from safetensors.torch import load_file

        model = self.modality.build_model(self.recipe, self.labels, "none")
        model.load_state_dict(load_file(str(self.dir / BEST)))
        return model.eval()

    def export_module(self):
        """What the bundle holds (a wrapper or a fused copy of the best model): what bench times."""
        return self.modality.export_module(self.recipe, self.model())


def open_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> Run:
    """A finished `suite run` directory, or a UserError saying what is missing."""
    run_dir = Path(run_dir)
    if not (run_dir / BEST).is_file():
        raise UserError(f"{run_dir} has no {BEST}; is it a finished `suite run` directory?")
    recipe = load_recipe(run_dir / RECIPE, overrides)
    return Run(run_dir, recipe, modality_for(recipe.task))


def export_module(run_dir: str | Path):
    """Module-level, so a benchmark worker process can rebuild the bundle's torch side from a picklable
    ``functools.partial(export_module, run_dir)``."""
    return open_run(run_dir).export_module()


def torch_factory(run_dir: Path):
    return functools.partial(export_module, Path(run_dir).resolve())


def bundle_dir(path: str | Path) -> Path:
    """A bundle folder (holding model.json) given itself, a run directory, or a .onnx file inside it."""
    path = Path(path)
    for folder in (path.parent if path.suffix == ".onnx" else path, path / EXPORT):
        if (folder / "model.json").is_file():
            return folder
    raise UserError(f"no bundle at {path}: run `suite export RUN_DIR` first (or give a MODEL.onnx next to its "
                    "model.json)")
