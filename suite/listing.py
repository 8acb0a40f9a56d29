"""What `suite ls` prints: bundled recipes, the models of every registered modality, a model's groups."""
from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from suite.errors import UserError
from suite.tasks import modalities


def recipes(root: Path) -> list[str]:
    rows = []
    for path in sorted(root.rglob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raw = {}
        model = raw.get("model", {}) if isinstance(raw, dict) else {}
        rows.append(f"{str(path.relative_to(root.parent)):50s} {raw.get('task', '?'):22s} {model.get('arch', '?')}")
    return rows or [f"no recipes under {root}"]


def models() -> list[str]:
    return [line for mod in modalities() for line in mod.models()]


def groups(arch: str, classes: int) -> list[str]:
    """The groups of ``arch`` at random init with a ``classes``-way head, as `suite ls groups` prints them."""
    from suite.core.groups import describe_groups
    from suite.recipe import DataCfg, ModelCfg, Recipe
    from suite.core.schedule import Stage

    found = [(mod, mod.task_for(arch)) for mod in modalities()]
    mod, task = next(((m, t) for m, t in found if t is not None), (None, None))
    if mod is None:
        names = [line.split()[0] for line in models()]
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise UserError(f"unknown model '{arch}'{hint}; `suite ls models` lists them")
    recipe = Recipe(name="ls", task=task, model=ModelCfg(arch=arch), data=DataCfg(format="none"),
                    schedule=(Stage(epochs=1, train="head", lr=1e-3),))
    labels = [f"class{i}" for i in range(classes)]
    rows = describe_groups(mod.groups(recipe, mod.build_model(recipe, labels, "none")))
    total = sum(n for _, n in rows)
    return [f"{name:18s} {n:>12,d} params" for name, n in rows] + [f"{'total':18s} {total:>12,d} params"]
