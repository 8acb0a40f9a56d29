"""`suite lr-find RECIPE`: the learning-rate range test on one stage of a recipe, a plot and a suggested LR."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from suite.core import checkpoint, report
from suite.core.loop import resolve_device, seed_everything
from suite.core.lr_find import LRFindResult, lr_find
from suite.errors import UserError
from suite.runner import fit_options, log, model_and_groups
from suite.tasks import load_recipe, modality_for


def lr_find_recipe(path: str, overrides: Sequence[str] = (), stage: int = 0, out: str | None = None,
                   device: str = "auto", steps: int = 100, start_lr: float = 1e-7,
                   end_lr: float = 10.0) -> tuple[LRFindResult, Path]:
    """Build the recipe's model with its weights, sweep the LR over stage ``stage``'s trainable groups, write
    ``OUT/lr_find.json`` and ``OUT/lr_find.png`` (default ``runs/<name>-lr-find``). Nothing of the model is kept."""
    recipe = load_recipe(path, overrides)
    if not recipe.schedule:
        raise UserError(f"{path}: the schedule is empty, so there is no stage to find an LR for")
    if not 0 <= stage < len(recipe.schedule):
        raise UserError(f"--stage {stage}: {path} has stages 0..{len(recipe.schedule) - 1}")
    if not 0 < start_lr < end_lr:
        raise UserError(f"--start-lr {start_lr} and --end-lr {end_lr}: need 0 < start < end")
    if steps < 5:
        raise UserError(f"--steps {steps}: the range test needs at least 5 steps")
    mod = modality_for(recipe.task)
    log(f"[{recipe.name}] weights: {mod.resolve_weights(recipe)}")
    data = mod.load_data(recipe)
    log(f"[{recipe.name}] data: {data.report.summary()}")
    if mod.trainer(recipe, data) is not None:
        raise UserError(f"lr-find runs on the suite's own training loop; {recipe.model.arch} trains inside its "
                        "library's loop (Ultralytics), so the range test is not offered for it")
    dev = resolve_device(device)
    seed_everything(recipe.train.seed)
    model, groups = model_and_groups(mod, recipe, data.labels, recipe.model.weights)
    model.to(dev)
    stages = recipe.stages()
    log(f"[{recipe.name}] lr-find on stage {stage} ({stages[stage].train}): {steps} steps from {start_lr:.0e} to "
        f"{end_lr:.0e}")
    result = lr_find(model, groups, stages[stage], mod.hooks(recipe, data, dev), fit_options(
        recipe, mod.default_metric(recipe)), dev, start_lr, end_lr, steps)
    folder = Path(out) if out else Path("runs") / f"{recipe.name}-lr-find"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder} ({e.strerror or e}); choose another --out") from None
    doc = {"recipe": str(path), "stage": stage, "recipe_lr": stages[stage].lr, **result.to_json()}
    checkpoint.atomic_write_text(folder / "lr_find.json", json.dumps(doc, indent=1))
    report.plot_lr_find(result.lrs, result.losses, result.raw_losses, result.suggestion, folder / "lr_find.png")
    return result, folder
