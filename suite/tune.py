"""`suite tune RECIPE`: Optuna over the recipe's `tune:` space (LR per stage, weight decay, freeze depth, layer
decay, augmentation, epochs), every trial a normal run directory, the study in a database so that running the
same command again continues an interrupted search.

Layout of OUT (default runs/<name>-tune): study.db (SQLite, unless --storage names another database), trial-N/
(one run directory per trial), trials.csv, best.yaml (a complete recipe `suite run` takes), report.md and plots/.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from suite.core import checkpoint
from suite.core.loop import resolve_device
from suite.core.stages import Interrupted, Position, metric_mode, stop_signals
from suite.errors import UserError
from suite.recipe import Recipe, dump_recipe
from suite.runner import log, model_and_groups, run_recipe
from suite.tasks import load_recipe, modality_for

from suite.tune_report import RECIPE_ATTR, fmt, write_report  # the user attr marking the recipe's own values


@dataclasses.dataclass
class TuneResult:
    out: Path
    best_number: int
    best_value: float
    metric: str
    trials: int  # finished (complete or pruned) trials in the study


def _space(recipe: Recipe, n_groups: int) -> tuple[dict, dict]:
    """name -> (kind, args), and the recipe's own value of each (the first trial)."""
    t, space, own = recipe.tune, {}, {}
    for i, stage in enumerate(recipe.schedule):
        if t.lr is not None:
            space[f"stage{i}.lr"] = ("float", stage.lr * t.lr[0], stage.lr * t.lr[1], True)
            own[f"stage{i}.lr"] = stage.lr
        if t.freeze_depth and isinstance(stage.train, dict) and n_groups > 1:
            space[f"stage{i}.last"] = ("int", 1, n_groups, False)
            own[f"stage{i}.last"] = min(int(stage.train["last"]), n_groups)
        if t.layer_decay is not None and stage.layer_decay is not None:
            space[f"stage{i}.layer_decay"] = ("float", t.layer_decay[0], t.layer_decay[1], False)
            own[f"stage{i}.layer_decay"] = stage.layer_decay
        if t.epochs is not None:
            lo, hi = max(1, round(stage.epochs * t.epochs[0])), max(1, round(stage.epochs * t.epochs[1]))
            if hi > lo:
                space[f"stage{i}.epochs"] = ("int", lo, hi, False)
                own[f"stage{i}.epochs"] = stage.epochs
    if t.weight_decay is not None:
        space["weight_decay"] = ("float", t.weight_decay[0], t.weight_decay[1], True)
        own["weight_decay"] = recipe.optim.weight_decay
    if len(t.augment) > 1:
        space["augment"] = ("choice", tuple(t.augment))
        own["augment"] = recipe.data.augment
    if not space:
        raise UserError(f"{recipe.name}: tune: searches nothing (every range is null); give it lr, weight_decay, "
                        "freeze_depth, layer_decay, augment or epochs")
    return space, {k: v for k, v in own.items() if _inside(space[k], v)}


def _inside(spec: tuple, value) -> bool:
    if spec[0] == "choice":
        return value in spec[1]
    return spec[1] <= value <= spec[2]


def _suggest(trial, space: dict) -> dict:
    out = {}
    for name, spec in space.items():
        if spec[0] == "float":
            out[name] = trial.suggest_float(name, spec[1], spec[2], log=spec[3])
        elif spec[0] == "int":
            out[name] = trial.suggest_int(name, spec[1], spec[2])
        else:
            out[name] = trial.suggest_categorical(name, list(spec[1]))
    return out


def apply(recipe: Recipe, params: dict) -> Recipe:
    """The recipe with a trial's values."""
    stages = list(recipe.schedule)
    for i, stage in enumerate(stages):
        change = {}
        if f"stage{i}.lr" in params:
            change["lr"] = float(params[f"stage{i}.lr"])
        if f"stage{i}.last" in params:
            change["train"] = {"last": int(params[f"stage{i}.last"])}
        if f"stage{i}.layer_decay" in params:
            change["layer_decay"] = float(params[f"stage{i}.layer_decay"])
        if f"stage{i}.epochs" in params:
            change["epochs"] = int(params[f"stage{i}.epochs"])
        stages[i] = dataclasses.replace(stage, **change)
    optim = dataclasses.replace(recipe.optim, weight_decay=float(params.get("weight_decay",
                                                                            recipe.optim.weight_decay)))
    data = dataclasses.replace(recipe.data, augment=params.get("augment", recipe.data.augment))
    return dataclasses.replace(recipe, schedule=tuple(stages), optim=optim, data=data)


def _trial_recipe(recipe: Recipe, params: dict, number: int) -> Recipe:
    """A trial trains and validates: no baselines, no export (best.yaml keeps the recipe's own)."""
    tuned = apply(recipe, params)
    return dataclasses.replace(tuned, name=f"{recipe.name}-trial-{number}",
                               eval=dataclasses.replace(tuned.eval, compare=(), source=None),
                               export=dataclasses.replace(tuned.export, onnx=False))


def tune(path: str, overrides: Sequence[str] = (), trials: int | None = None, storage: str | None = None,
         timeout: float | None = None, out: str | None = None, device: str = "auto") -> TuneResult:
    import optuna

    recipe = load_recipe(path, overrides)
    if not recipe.schedule:
        raise UserError(f"{path}: the schedule is empty: there is nothing to tune")
    mod = modality_for(recipe.task)
    folder = Path(out) if out else Path("runs") / f"{recipe.name}-tune"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {folder} ({e.strerror or e}); choose another --out") from None
    log(f"[{recipe.name}] weights: {mod.resolve_weights(recipe)}")
    _, groups = model_and_groups(mod, recipe, ["a", "b"], "none")  # the group count, for the freeze depth
    space, own = _space(recipe, len(groups))
    metric = recipe.tune.metric or (recipe.train.early_stop.metric if recipe.train.early_stop
                                    else mod.default_metric(recipe))
    direction = "maximize" if metric_mode(metric) == "max" else "minimize"
    url = storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=recipe.tune.startup_trials, n_warmup_steps=1) \
        if recipe.tune.prune else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(study_name=recipe.name, storage=url, direction=direction, pruner=pruner,
                                    load_if_exists=True)
    except (ImportError, ValueError, optuna.exceptions.OptunaError) as e:
        raise UserError(f"--storage {url}: cannot open the study ({type(e).__name__}: {e}); give a SQLAlchemy URL "
                        "such as sqlite:///tune.db") from None
    if study.direction.name.lower() != direction:
        raise UserError(f"the study '{recipe.name}' in {url} {study.direction.name.lower()}s, but {metric} is to "
                        f"{direction}: use another --out or --storage")
    _recover(study, space)
    # seeded by the trials so far too: a continued search does not draw the first search's values again
    study.sampler = optuna.samplers.TPESampler(seed=recipe.tune.seed + len(study.trials),
                                               n_startup_trials=recipe.tune.startup_trials)
    if not study.trials:
        study.enqueue_trial(own, user_attrs={RECIPE_ATTR: True})
    wanted = trials or recipe.tune.trials
    done = _finished(study)
    dev = resolve_device(device)
    if done < wanted:
        log(f"[{recipe.name}] tune: {wanted - done} trial(s) to run ({done} of {wanted} done), {metric} to "
            f"{direction}, study in {url}")
        objective = _objective(recipe, space, metric, folder, dev)
        with stop_signals():
            try:
                study.optimize(objective, n_trials=wanted - done, timeout=timeout, catch=())
            except Interrupted as e:  # the trial's values run again first when the same command runs again
                raise Interrupted(e.signum, folder, f"{e.where} (a trial of the search)",
                                  again=f"the same `suite tune` command (study in {url})") from None
    return _write_outputs(study, recipe, space, metric, folder)


def _finished(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def _recover(study, space: dict) -> None:
    """A trial a stop signal ended (failed, marked interrupted) or a kill left RUNNING runs again first, with the
    same values (one process per study: a RUNNING trial is taken for a dead one)."""
    from optuna.trial import TrialState

    retried = set(study.user_attrs.get("retried", []))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if t.number in retried or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")):
            continue
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
        attrs = {k: v for k, v in t.user_attrs.items() if k in (RECIPE_ATTR,)}
        study.enqueue_trial({k: v for k, v in t.params.items() if k in space}, user_attrs={**attrs, "retry_of": t.number})
        retried.add(t.number)
        log(f"trial {t.number} was interrupted: its values run again first")
    study.set_user_attr("retried", sorted(retried))


def _objective(recipe: Recipe, space: dict, metric: str, folder: Path, device):
    import optuna

    def objective(trial: optuna.Trial) -> float:
        params = _suggest(trial, space)
        sub = _trial_recipe(recipe, params, trial.number)
        run_dir = folder / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        shown = ", ".join(f"{k}={fmt(v)}" for k, v in params.items())
        log(f"[{recipe.name}] trial {trial.number}: {shown}")

        def report(pos: Position) -> None:
            value = pos.history[-1].get(metric)
            if value is None or not math.isfinite(float(value)):
                return
            trial.report(float(value), pos.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{metric}={value:.4g} at epoch {pos.epoch}: below the median")

        if run_dir.exists():  # a trial number is never reused; a folder left by a removed study is
            shutil.rmtree(run_dir)
        began = time.perf_counter()
        try:
            result = run_recipe(sub, run_dir, device, on_epoch_end=[report])
        except optuna.TrialPruned:
            log(f"[{recipe.name}] trial {trial.number} pruned after {time.perf_counter() - began:.0f} s")
            raise
        except Interrupted:
            trial.set_user_attr("interrupted", True)
            raise
        value = result.metrics["val"].get(metric)
        if value is None:
            raise UserError(f"tune.metric {metric} is not among the run's metrics: "
                            f"{', '.join(sorted(result.metrics['val']))}")
        log(f"[{recipe.name}] trial {trial.number}: {metric}={value:.4f} ({time.perf_counter() - began:.0f} s)")
        return float(value)

    return objective


def _write_outputs(study, recipe: Recipe, space: dict, metric: str, folder: Path) -> TuneResult:
    from optuna.trial import TrialState

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise UserError(f"no trial of the study '{recipe.name}' finished; see the trial folders under {folder}")
    best = study.best_trial
    names = list(space)
    retried = set(study.user_attrs.get("retried", []))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trial", "state", metric, *names, "seconds", "run_dir", "note"])
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else ""
        note = "; ".join([*(["recipe's own values"] if t.user_attrs.get(RECIPE_ATTR) else []),
                          *([f"retry of trial {t.user_attrs['retry_of']}"] if "retry_of" in t.user_attrs else []),
                          *(["interrupted"] if t.user_attrs.get("interrupted") or t.number in retried else [])])
        w.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value,
                    *[t.params.get(n, "") for n in names], f"{seconds:.1f}" if seconds != "" else "",
                    t.user_attrs.get("run_dir", ""), note])
    checkpoint.atomic_write_text(folder / "trials.csv", buf.getvalue())
    best_recipe = apply(recipe, best.params)
    checkpoint.atomic_write_text(folder / "best.yaml", f"# suite tune: trial {best.number} of {len(study.trials)}, "
                                 f"{metric}={best.value:.4f}\n" + dump_recipe(best_recipe))
    write_report(study, recipe, names, metric, folder, best)
    return TuneResult(folder, best.number, float(best.value), metric, _finished(study))
