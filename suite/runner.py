"""`suite run`: one recipe end to end into the run directory (see DESIGN.md's contract)."""
from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from suite import rundir
from suite.core import checkpoint, dist, metrics, report
from suite.core.groups import check_groups, group_names
from suite.core.loop import FitOptions, fit, resolve_device, seed_everything
from suite.core.schedule import Stage, check_schedule, total_epochs
from suite.core.stages import BEST, LAST, Interrupted, Position, stop_requested, stop_signals
from suite.core.transfer import transfer_block, transfer_section
from suite.errors import UserError
from suite.recipe import CACHE_TASKS, PROBE_TASKS, SOURCE_TASKS, Recipe, dump_recipe
from suite.tasks import Modality, load_recipe, modality_for


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # the metrics.json document
    table: str  # fine-tuned vs baselines, markdown


def log(message: str) -> None:
    tqdm.write(message)


def fit_options(recipe: Recipe, default_metric: str) -> FitOptions:
    t, o = recipe.train, recipe.optim
    return FitOptions(
        optimizer=o.name, weight_decay=o.weight_decay, momentum=o.momentum, precision=t.precision,
        grad_accum=t.grad_accum, clip_grad=t.clip_grad, seed=t.seed,
        select_metric=t.early_stop.metric if t.early_stop else default_metric,
        early_stop_patience=t.early_stop.patience if t.early_stop else None,
        ema=t.ema, max_nonfinite=t.max_nonfinite, cache_features=t.cache_features, compile=t.compile,
        checkpoint_every_s=t.checkpoint_every_s)


def baseline_recipe(recipe: Recipe, name: str) -> Recipe:
    """The recipe of an ``eval.compare`` baseline: the schedule's whole budget in one stage at the first stage's
    LR (the head's, usually the largest), with the recipe's optimizer; a yardstick, so never exported.

    ``scratch``: the same model from random init, every group trained. ``linear_probe``: the same pre-trained
    weights frozen and a linear head (no hidden layers, no dropout) trained on their features, no augmentation.
    """
    if not recipe.schedule:
        raise UserError(f"eval.compare: [{name}] trains on the schedule's budget; with an empty schedule there is "
                        "none: remove the compare")
    probe = name == "linear_probe"
    head = dataclasses.replace(recipe.model.head, keep=False, **({"hidden": (), "dropout": 0.0} if probe else {}))
    model = dataclasses.replace(recipe.model, head=head, **({} if probe else {"weights": "none"}))
    return dataclasses.replace(
        recipe, name=f"{recipe.name}-{name}", model=model,
        schedule=(Stage(epochs=total_epochs(recipe.schedule), train="head" if probe else "all",
                        lr=recipe.schedule[0].lr),),
        data=dataclasses.replace(recipe.data, augment="none") if probe else recipe.data,
        eval=dataclasses.replace(recipe.eval, compare=(), source=None),
        export=dataclasses.replace(recipe.export, onnx=False))


def check_task_options(recipe: Recipe) -> None:
    """Before any work: a baseline, forgetting (eval.source) or cached features that do not apply to this task
    are an error now, not after training."""
    if recipe.eval.source is not None and recipe.task not in SOURCE_TASKS:
        raise UserError(f"eval.source (forgetting) is measured for {', '.join(SOURCE_TASKS)}; {recipe.task} does "
                        "not measure it yet: remove eval.source")
    if recipe.eval.source is not None and recipe.model.weights == "none":
        raise UserError("eval.source measures what the pre-trained weights forget, but model.weights is none")
    if recipe.train.cache_features == "true" and recipe.task not in CACHE_TASKS:
        raise UserError(f"train.cache_features: true applies to {', '.join(CACHE_TASKS)} (one feature vector per "
                        f"sample before the head); {recipe.task} heads take feature maps or frames: set it to auto")
    if "linear_probe" in recipe.eval.compare and recipe.task not in PROBE_TASKS:
        raise UserError(f"eval.compare: linear_probe applies to {' and '.join(PROBE_TASKS)} (a linear classifier "
                        f"on frozen features); {recipe.task} has no such head: remove it")
    if "linear_probe" in recipe.eval.compare and recipe.model.weights == "none":
        raise UserError("eval.compare: linear_probe probes pre-trained features, but model.weights is none")


def run(recipe_path: str | Path | None, overrides: Sequence[str] = (), out: str | Path | None = None,
        device: str = "auto", resume: str | Path | None = None, overwrite: bool = False,
        on_epoch_end: Sequence[Callable[[Position], None]] = ()) -> RunResult:
    """Train, evaluate, compare with baselines, write the run directory."""
    dev = dist.init(resolve_device(device))  # under torchrun: join the process group, this rank's device
    try:
        return _run(recipe_path, overrides, out, dev, resume, overwrite, on_epoch_end)
    finally:
        dist.finish()  # each rank leaves the group before its interpreter shuts down


def _run(recipe_path, overrides, out, dev: torch.device, resume, overwrite: bool, on_epoch_end) -> RunResult:
    if resume is not None:
        run_dir = Path(resume)
        recipe = dist.from_main(lambda: _resumed_recipe(run_dir, overrides), "reading the run to resume")
    else:
        recipe = load_recipe(recipe_path, overrides)
        if not dist.is_main() and out:  # the launcher chose and checked the folder; rank 0 fills it
            run_dir = Path(out)
        else:
            run_dir = fresh_run_dir(Path(out), overwrite) if out else next_free(Path("runs") / recipe.name)
    with stop_signals():  # SIGTERM/SIGINT: finish the step, write a checkpoint, raise Interrupted
        try:
            return run_recipe(recipe, run_dir, dev, resume is not None, on_epoch_end)
        except Interrupted as e:  # e.g. inside the scratch baseline: --resume takes the whole run's folder
            raise Interrupted(e.signum, run_dir, e.where) from None


def _resumed_recipe(run_dir: Path, overrides: Sequence[str]) -> Recipe:
    """The recipe of the run in ``run_dir``, which must hold a checkpoint to continue from. Under DDP rank 0 reads
    it (dist.from_main): the run directory is on the first machine only."""
    if not (run_dir / LAST).is_file():
        raise UserError(f"cannot resume {run_dir}: no {LAST} there; start it with `suite run RECIPE`")
    return load_recipe(run_dir / rundir.RECIPE, overrides)


def next_free(path: Path) -> Path:
    """runs/NAME, else runs/NAME-2, -3, ... (as Ultralytics does): a new run never overwrites an old one."""
    i = 1
    while path.with_name(path.name if i == 1 else f"{path.name}-{i}").exists():
        i += 1
    return path.with_name(path.name if i == 1 else f"{path.name}-{i}")


def fresh_run_dir(path: Path, overwrite: bool) -> Path:
    if not (path / rundir.RECIPE).exists():
        return path
    if not overwrite:
        raise UserError(f"{path} already holds a run: continue it with --resume {path}, "
                        "pick another --out, or pass --overwrite to replace it")
    shutil.rmtree(path)  # only a folder that holds a run's recipe.yaml, and only when asked
    return path


def run_recipe(recipe: Recipe, run_dir: Path, device: torch.device, resume: bool = False,
               on_epoch_end: Sequence[Callable[[Position], None]] = ()) -> RunResult:
    start = time.perf_counter()
    check_task_options(recipe)
    dist.wants_sync_batchnorm(recipe.train.sync_batchnorm, device)  # true on CPU: the error before any data work
    main = dist.is_main()  # under DDP only rank 0 writes the run directory (the other machines have none)
    if main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the run directory {run_dir} ({e.strerror or e}); choose another --out") \
                from None
        checkpoint.atomic_write_text(run_dir / rundir.RECIPE, dump_recipe(recipe))
    mod = modality_for(recipe.task)
    if dist.world() > 1:  # torchrun started without `suite run --nproc`, whose launcher checks this first
        refuse_under_ddp(recipe, mod, dist.world())
    where = mod.resolve_weights(recipe)  # missing weights: stop before any data work
    if main:
        log(f"[{recipe.name}] weights: {where}")
    data = dist.main_first(lambda: mod.load_data(recipe), "loading the data")  # rank 0 generates and scans first
    if main:
        log(f"[{recipe.name}] data: {data.report.summary()}")
        rundir.write_labels(run_dir, data.labels)
    seed_everything(recipe.train.seed)  # the new head's init: same recipe, same run
    model, groups = model_and_groups(mod, recipe, data.labels, recipe.model.weights)
    model.to(device)
    synced, kept = (0, []) if mod.own_trainer(recipe) else dist.sync_batchnorm(model, groups,
                                                                               recipe.train.sync_batchnorm, device)
    opts = fit_options(recipe, mod.default_metric(recipe))
    if main:
        ranks = f" x {dist.world()} processes (DDP, global batch {recipe.train.batch_size})" if dist.world() > 1 else ""
        ranks += f", {synced} SyncBatchNorm layers" if synced else ""
        ranks += f" ({', '.join(kept)} layers stay per rank: no synchronized twin)" if kept else ""
        log(f"[{recipe.name}] training on {device}{ranks}: groups {', '.join(group_names(groups))}")
    trainer = mod.trainer(recipe, data)
    last_val = None
    if not recipe.schedule:  # `head: keep` with no stage: the pre-trained model as it is
        if main:
            log(f"[{recipe.name}] empty schedule: evaluating and exporting the weights as loaded")
            checkpoint.save_weights(run_dir / BEST, model.state_dict())
            report.write_history(run_dir / rundir.HISTORY, [])
    elif trainer is not None:  # the library's trainer runs each stage (Ultralytics), with our groups and LRs
        trainer(model, groups, recipe.stages(), opts, run_dir, device, resume, on_epoch_end)
    else:
        memo = _LastValidation(model)
        hooks = mod.hooks(recipe, data, device)
        hooks = dataclasses.replace(hooks, evaluate=memo.wrap(hooks.evaluate), on_epoch_end=[memo.stamp, *on_epoch_end])
        memo.pos = fit(model, groups, recipe.stages(), hooks, opts, run_dir, device, resume, wait=False)
        last_val = memo.result()
    try:
        return _after_training(recipe, mod, data, model, opts, run_dir, device, resume, start, last_val)
    finally:
        checkpoint.wait_saves()  # the last checkpoint fit left writing; its error raised here


def refuse_under_ddp(recipe: Recipe, mod: Modality, world: int | None) -> None:
    """What `--nproc` cannot do with this recipe on ``world`` processes (None: not known yet, as for a machine of
    several, whose others may run another --nproc; their workers check it), before any process starts. The suite's
    loop slices each global batch over the ranks, so a batch needs one sample per rank; a library's own trainer
    (Ultralytics) gives each rank ``batch_size // world``, so the batch must split evenly, and it keeps each
    rank's BatchNorm (as `yolo train` does), so ``train.sync_batchnorm: true``, a setting of the suite's loop, is
    refused for it."""
    batch, library = recipe.train.batch_size, mod.own_trainer(recipe)
    if world is not None and (batch < world or (library and batch % world)):
        need = "a multiple of" if library else "at least"
        raise UserError(f"train.batch_size {batch} does not split over {world} processes (each rank trains its share "
                        f"of the global batch): use {need} {world}, or fewer processes")
    if library and recipe.train.sync_batchnorm == "true":
        owner = f"{library}'" if library.endswith("s") else f"{library}'s"
        raise UserError(f"train.sync_batchnorm: true applies to the suite's own loop; {recipe.model.arch} trains "
                        f"under {owner} DDP, with BatchNorm per rank: set it to auto or false")


class _LastValidation:
    """The training loop's last validation of ``model`` itself, so that the run does not evaluate the same weights
    again at the end (0.15 s alone, 0.6-0.8 s beside the plots and the last checkpoint on 2 cores): it applies when
    the best epoch is the last one and its validation went through the hooks' evaluate on this very model (not an
    EMA copy, not a head on cached features)."""

    def __init__(self, model):
        self.model, self.pos = model, None
        self.last, self.fresh, self.epoch = None, False, None

    def wrap(self, evaluate: Callable):
        """The hooks' evaluate, remembering each result with the model it scored."""
        def remembered(model):
            result = evaluate(model)
            self.last, self.fresh = (model, result), True
            return result
        return remembered

    def stamp(self, pos: Position) -> None:
        """on_epoch_end: the epoch whose validation ``last`` is, if this epoch validated through evaluate."""
        self.epoch, self.fresh = (pos.epoch if self.fresh else None), False

    def result(self):
        pos = self.pos
        if pos is None or self.last is None or self.last[0] is not self.model:
            return None
        return self.last[1] if self.epoch == pos.epoch == pos.best_epoch else None


def _after_training(recipe: Recipe, mod: Modality, data, model, opts: FitOptions, run_dir: Path,
                    device: torch.device, resume: bool, start: float, last_val=None) -> RunResult:
    """Baselines, then on rank 0: the best weights evaluated, metrics.json, export and the report. The plots are
    drawn on a thread while the run evaluates and its last checkpoint is written (matplotlib's import and the
    drawing took 0.8 s of a 3-epoch ResNet-18 run on 2 cores)."""
    main = dist.is_main()
    plots = _Plots(recipe.name)
    history = report.read_history(run_dir / rundir.HISTORY) if main else []
    if history:
        plots.draw("training curves", lambda: [report.plot_curves(history, run_dir / "plots" / "curves.png")])
    _check_stop("after training")
    if recipe.eval.compare:
        plots.settle()  # the baselines draw their own plots
    baselines = {name: _baseline(name, recipe, run_dir, device, resume) for name in recipe.eval.compare}
    if not main:  # the other ranks trained (the baselines too); rank 0 evaluates and writes the rest
        return RunResult(run_dir, {}, "")

    model.load_state_dict(checkpoint.load_weights(run_dir / BEST))  # fit's last write may still be under way
    val = last_val if last_val is not None else mod.evaluate(recipe, model, data, "val", device)  # already scored
    test = mod.evaluate(recipe, model, data, "test", device)
    plots.draw("task plots", lambda: mod.plots(val, data, run_dir / "plots"))
    _check_stop("before the export")
    document = metrics.metrics_document(recipe.task, val, test, baselines)
    source = mod.evaluate_source(recipe, model, device) if recipe.eval.source is not None else None
    document["transfer"] = transfer_block(opts.select_metric, document["val"], baselines, history, source)
    metrics.write_metrics_json(run_dir / rundir.METRICS, document)
    table = _comparison(recipe, val, baselines)
    sections, extra = [], []
    if recipe.export.onnx:
        from suite.exporting import export_and_bench

        plots.settle()  # the export draws the benchmark's plots
        sections, extra = export_and_bench(recipe, mod, data, model.cpu().eval(), run_dir)
    sections = [("Transfer", transfer_section(document["transfer"])), *sections]
    drawn, missing = plots.collect()
    _write_report(recipe, run_dir, mod, val, data, table, time.perf_counter() - start, sections,
                  [*drawn, *extra], missing)
    return RunResult(run_dir, document, table)


class _Plots:
    """A run's plots, drawn in order on one shared thread (matplotlib draws one figure at a time: code that
    draws on the main thread calls ``settle()`` first). A plot that fails is reported, never fails the run."""

    _pool: ThreadPoolExecutor | None = None

    def __init__(self, name: str):
        self.name, self.jobs = name, []

    def draw(self, what: str, make: Callable[[], list[Path]]) -> None:
        if _Plots._pool is None:
            _Plots._pool = ThreadPoolExecutor(1, thread_name_prefix="suite-plots")
        self.jobs.append((what, _Plots._pool.submit(make)))

    def settle(self) -> None:
        wait([job for _, job in self.jobs])

    def collect(self) -> tuple[list[Path], list[str]]:
        """The files drawn, and a line for each plot that failed."""
        drawn, missing = [], []
        for what, job in self.jobs:
            try:
                drawn += job.result()
            except Exception as e:  # reporting only: the run's model and metrics are already written
                missing.append(f"- {what}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
                log(f"[{self.name}] {what} not drawn ({type(e).__name__}); the run itself succeeded")
        return drawn, missing


def _check_stop(where: str) -> None:
    """A stop signal that came after the last checkpoint-worthy point: nothing more to save; stop here."""
    request = stop_requested()
    if request:
        raise Interrupted(request.signum, Path("."), where)


def model_and_groups(mod: Modality, recipe: Recipe, labels: list[str], weights: str):
    model = mod.build_model(recipe, labels, weights)
    groups = mod.groups(recipe, model)
    check_groups(model, groups)
    if recipe.schedule:
        check_schedule(recipe.stages(), group_names(groups))
    return model, groups


def _baseline(name: str, recipe: Recipe, run_dir: Path, device: torch.device, resume: bool) -> dict:
    sub = baseline_recipe(recipe, name)
    sub_dir = run_dir / "baselines" / name
    start = "from random init" if name == "scratch" else f"of a linear head on {recipe.model.weights}'s frozen features"
    if dist.is_main():  # under --nproc every rank trains the baseline; one says so
        log(f"[{recipe.name}] baseline '{name}': {sub.schedule[0].epochs} epochs {start}")
    again = resume and dist.from_main(lambda: (sub_dir / LAST).is_file(), "looking for the baseline's checkpoint")
    result = run_recipe(sub, sub_dir, device, again)
    return {split: result.metrics[split] for split in ("val", "test") if result.metrics.get(split)}  # {}: rank > 0


def _comparison(recipe: Recipe, val, baselines: dict) -> str:
    wanted = [f"val/{m}" for m in recipe.eval.metrics] or None
    rows = {"fine-tuned": val.prefixed("val")}
    rows.update({name: b["val"] for name, b in baselines.items()})
    return report.comparison_table(rows, wanted)


def _write_report(recipe: Recipe, run_dir: Path, mod: Modality, val, data, table: str, seconds: float,
                  extra_sections=(), plots=(), missing=()) -> None:
    history = report.read_history(run_dir / rundir.HISTORY)
    summary = {"task": recipe.task, "model": recipe.model.arch, "weights": recipe.model.weights,
               "data": f"{recipe.data.format} {recipe.data.root}".strip(), "classes": str(len(data.labels)),
               "epochs": str(len(history)), "wall time": f"{seconds:.1f} s"}
    task_sections = mod.report_sections(recipe, val)
    sections = [("Data", data.report.summary()),
                ("Schedule", "\n".join(f"- stage {i}: {_describe(s)}" for i, s in enumerate(recipe.stages()))),
                ("Validation metrics", table), *task_sections, *extra_sections]
    if missing:
        sections.append(("Plots not drawn", "\n".join(missing)))
    report.write_report(run_dir / rundir.REPORT, title=f"Run {recipe.name}", summary=summary,
                        sections=sections, plots=plots)


def _describe(stage: Stage) -> str:
    parts = [f"{stage.epochs} epochs", f"train {stage.train}", f"lr {stage.lr:g}", stage.scheduler]
    if stage.layer_decay is not None:
        parts.append(f"layer_decay {stage.layer_decay:g}")
    if stage.lr_mult:
        parts.append(f"lr_mult {dict(stage.lr_mult)}")
    if stage.warmup:
        parts.append(f"warm-up {stage.warmup:.0%}")
    return ", ".join(parts)
