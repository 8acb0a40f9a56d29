"""`suite validate` and `suite eval`: recipes and datasets checked, saved runs re-evaluated."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from suite.recipe import load_recipe
from suite.runner import _model_and_groups
from suite.core.loop import resolve_device
from suite.errors import UserError
from suite.tasks import modality_for


def validate_recipe(path: str | Path, overrides: Sequence[str] = ()) -> str:
    """Schema, dataset scan, and the schedule against the model's groups (random init: no weights needed)."""
    recipe = load_recipe(path, overrides)
    mod = modality_for(recipe.task)
    data = mod.load_data(recipe)
    _, groups = _model_and_groups(mod, recipe, data, "none")
    return f"{len(data.labels)} classes, {len(groups)} groups, {len(recipe.schedule)} stages; data: {data.report.summary()}"


def evaluate_run(run_dir: Path, split: str, device: str = "auto", onnx: bool = False,
                 variant: str | None = None) -> dict[str, float]:
    from suite.exporting import load_run

    recipe, mod, data, model = load_run(run_dir)
    dev = resolve_device(device)
    if onnx:  # the exported bundle through onnxruntime, with the same evaluator
        from suite.core.export import OnnxModel
        from suite_runtime import Bundle

        if not (run_dir / "export" / "model.json").is_file():
            raise UserError(f"{run_dir} has no export/ bundle; run `suite export {run_dir}` first")
        bundle = Bundle.load(run_dir / "export", variant=variant)
        if hasattr(mod, "evaluate_bundle"):  # detection: the runtime's own pre/postprocessing end to end
            result = mod.evaluate_bundle(recipe, bundle, data, split)
            if result is None:
                raise UserError(f"the data of {run_dir} has no '{split}' split")
            return result
        model, dev = OnnxModel(bundle), resolve_device("cpu")
    result = mod.evaluate(recipe, model.to(dev), data, split, dev)
    if result is None:
        raise UserError(f"the data of {run_dir} has no '{split}' split")
    return result.prefixed(split)
