"""`suite tune`'s report.md and plots: Optuna's optimisation history and parameter importances, the metric
against each searched freeze depth, and the best trial's metrics beside the recipe's own."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from suite.core import report
from suite.core.checkpoint import atomic_write
from suite.recipe import Recipe

RECIPE_ATTR = "recipe's own"


def _optuna_png(draw, study, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():  # "experimental" API, "importances will be equal" on a few trials
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        ax = draw(study)
    fig = ax.figure
    fig.set_size_inches(7, 4.5)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def plot_depth(study, names: list[str], metric: str, path: Path) -> Path | None:
    """The metric against the `{last: k}` of each searched stage: finished trials filled, pruned ones hollow
    at their last reported value."""
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    depths = [n for n in names if n.endswith(".last")]
    if not depths:
        return None
    fig = Figure(figsize=(4.5 * len(depths), 3.5), layout="constrained")
    for ax, name in zip(fig.subplots(1, len(depths), squeeze=False).ravel(), depths):
        for state, style in ((TrialState.COMPLETE, dict(color="C0")), (TrialState.PRUNED, dict(facecolors="none",
                                                                                                 edgecolors="C1"))):
            points = [(t.params[name], t.value if t.value is not None else t.intermediate_values[
                max(t.intermediate_values)]) for t in study.trials
                if t.state == state and name in t.params and (t.value is not None or t.intermediate_values)]
            if points:
                xs, ys = zip(*points)
                ax.scatter(xs, ys, label=state.name.lower(), **style)
        ax.set_xlabel(f"{name}: trainable groups, counted from the head")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return report._save_png(fig, path)


def _metrics(trial) -> dict:
    run_dir = trial.user_attrs.get("run_dir")
    path = Path(run_dir) / "metrics.json" if run_dir else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text()).get("val", {})


def write_report(study, recipe: Recipe, names: list[str], metric: str, folder: Path, best) -> Path:
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    plots, missing = [], []
    for what, draw, file in (("optimisation history", lambda: _optuna_png(
            ovm.plot_optimization_history, study, folder / "plots" / "history.png"), "history"),
            ("parameter importances", lambda: _optuna_png(
                ovm.plot_param_importances, study, folder / "plots" / "importances.png"), "importances"),
            ("metric against freeze depth", lambda: plot_depth(study, names, metric, folder / "plots" / "depth.png"),
             "depth")):
        try:
            drawn = draw()
        except Exception as e:  # a plot that cannot be drawn (e.g. importances of a single trial) is said, not fatal
            missing.append(f"- {what}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            continue
        if drawn is not None:
            plots.append(drawn)
    states = {s: sum(t.state == s for t in study.trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                    TrialState.FAIL)}
    own = next((t for t in study.trials if t.user_attrs.get(RECIPE_ATTR) and t.state == TrialState.COMPLETE), None)
    same = own is not None and own.number == best.number
    rows = {f"best: trial {best.number}" + (" (the recipe's own values)" if same else ""): _metrics(best)}
    if own is not None and not same:
        rows[f"recipe's own: trial {own.number}"] = _metrics(own)
    wanted = [f"val/{m}" for m in recipe.eval.metrics] or None
    params = ["| parameter | best | recipe's own |", "|---|---|---|"]
    params += [f"| {n} | {fmt(best.params.get(n))} | {fmt(own.params.get(n)) if own else '–'} |" for n in names]
    ranked = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value,
                    reverse=study.direction.name == "MAXIMIZE")
    top = ["| trial | " + metric + " | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    top += [f"| {t.number} | {t.value:.4f} | " + " | ".join(fmt(t.params.get(n)) for n in names) + " |"
            for t in ranked[:10]]
    sections = [("Best trial against the recipe's own values", report.comparison_table(rows, wanted)),
                ("Parameters", "\n".join(params)),
                ("Trials (best 10 finished)", "\n".join(top)),
                ("Next", f"`suite run {folder / 'best.yaml'}` trains the best values with the recipe's own "
                         "baselines and export.")]
    if missing:
        sections.append(("Plots not drawn", "\n".join(missing)))
    summary = {"recipe": recipe.name, "metric": f"{metric} ({study.direction.name.lower()})",
               "trials": f"{states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
                         f"{states[TrialState.FAIL]} failed",
               "best": f"trial {best.number}: {best.value:.4f}",
               "recipe's own": f"trial {own.number}: {own.value:.4f}" if own else "not finished"}
    return report.write_report(folder / "report.md", title=f"Tuning {recipe.name}", summary=summary,
                               sections=sections, plots=plots)


def fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if isinstance(v, float) else str(v)
