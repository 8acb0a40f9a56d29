"""`suite validate` and `suite eval`: recipes and datasets checked, saved runs re-evaluated."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from suite import rundir
from suite.core.loop import resolve_device
from suite.errors import UserError
from suite.runner import check_task_options, model_and_groups
from suite.tasks import load_recipe, modality_for


def validate_recipe(path: str | Path, overrides: Sequence[str] = ()) -> str:
    """Schema, dataset scan, and the schedule against the model's groups (random init: no weights needed)."""
    from suite.recipe import read_task

    if read_task(path) == "cascade":
        from suite.cascade import validate_cascade

        return validate_cascade(path, overrides)
    recipe = load_recipe(path, overrides)
    check_task_options(recipe)
    mod = modality_for(recipe.task)
    mod.resolve_weights(recipe)  # the same check (and message) as `suite run`, before any data is read
    data = mod.load_data(recipe)
    _, groups = model_and_groups(mod, recipe, data.labels, "none")
    return f"{len(data.labels)} classes, {len(groups)} groups, {len(recipe.schedule)} stages; data: {data.report.summary()}"


def evaluate_run(run_dir: Path, split: str, device: str = "auto", onnx: bool = False,
                 variant: str | None = None) -> dict[str, float]:
    """The best checkpoint's metrics on ``split``; with ``onnx``, the exported bundle's through suite_runtime."""
    run = rundir.open_run(run_dir)
    if onnx:
        from suite_runtime import Bundle

        if not (run.dir / rundir.EXPORT / "model.json").is_file():
            raise UserError(f"{run_dir} has no export/ bundle; run `suite export {run_dir}` first")
        bundle = Bundle.load(run.dir / rundir.EXPORT, variant=variant)
        metrics = run.modality.evaluate_bundle(run.recipe, bundle, run.data, split)
    else:
        dev = resolve_device(device)
        result = run.modality.evaluate(run.recipe, run.model().to(dev), run.data, split, dev)
        metrics = None if result is None else result.prefixed(split)
    if metrics is None:
        raise UserError(f"the data of {run_dir} has no '{split}' split")
    return metrics
