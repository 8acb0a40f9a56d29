"""The `suite` command. Thin: parse, call one function, print. Heavy imports happen inside commands."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from suite.errors import PeerStopped, UserError
from suite.datasets import SENTENCE_STYLES

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Fine-tune pre-trained models from YAML recipes (see `suite ls recipes`)."""


_set = click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                    help="Override a recipe key, e.g. -s data.root=my/data -s schedule.0.lr=1e-4 (value parsed as YAML).")


@cli.command()
@click.argument("recipe", required=False, type=click.Path(dir_okay=False))
@_set
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default runs/<name>).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--resume", type=click.Path(file_okay=False),
              help="Continue the run in DIR from its last checkpoint (on several machines: DIR on machine 0).")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
@click.option("--trust-weights", is_flag=True,
              help="Load weights files that pickle Python objects (they can run code): only files you trust.")
@click.option("--nproc", default=1, show_default=True,
              help="Processes per machine (torchrun + DDP; one per GPU, or gloo on CPU). The global batch stays "
                   "train.batch_size.")
@click.option("--nnodes", default=1, show_default=True, help="Machines (with --node-rank and --rdzv-endpoint).")
@click.option("--node-rank", default=0, show_default=True)
@click.option("--rdzv-endpoint", help="HOST:PORT of the first machine, for --nnodes > 1.")
def run(recipe, overrides, out, device, resume, overwrite, trust_weights, nproc, nnodes, node_rank, rdzv_endpoint):
    """Train RECIPE, evaluate it, compare with baselines, and write the run directory."""
    from suite.runner import run as run_recipe

    if not recipe and not resume:
        raise UserError("give a RECIPE to run, or --resume DIR")
    overrides = (*overrides, "model.trust_weights=true") if trust_weights else overrides
    from suite.recipe import read_task

    if recipe and not resume and read_task(recipe) == "cascade":  # two stage runs and the pipeline around them
        from suite.cascade import run_cascade

        if trust_weights:
            raise UserError("--trust-weights applies to one model's weights; a cascade's stages are recipes of their "
                            "own: set model.trust_weights in the stage recipe that needs it")
        if nproc > 1 or nnodes > 1:
            raise UserError("a cascade runs its stages one after the other in one process: drop --nproc/--nnodes "
                            "(run a stage recipe with --nproc on its own and point the cascade at its run)")
        result = run_cascade(recipe, overrides, out, device, overwrite)
        click.echo(f"\n{result.table}\n\nrun directory: {result.run_dir} (report.md, metrics.json, export/)")
        return
    if (nproc > 1 or nnodes > 1) and "LOCAL_RANK" not in os.environ:  # not yet inside a torchrun worker
        from suite.launch import launch

        sys.exit(launch(recipe, overrides, out, device, resume, overwrite, nproc, nnodes, node_rank, rdzv_endpoint))
    result = run_recipe(recipe, overrides, out, device, resume, overwrite)
    if result.table:  # empty on DDP ranks other than 0
        click.echo(f"\n{result.table}\n\nrun directory: {result.run_dir} (report.md, metrics.json, checkpoints/)")


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_set
def validate(recipes, overrides):
    """Check RECIPES and scan their datasets, without training."""
    from suite.validate import validate_recipe

    for path in recipes:
        click.echo(f"{path}: ok: {validate_recipe(path, overrides)}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@_set
@click.option("--trials", type=int, help="Finished trials wanted in the study (default: the recipe's tune.trials).")
@click.option("--storage", help="SQLAlchemy URL of the study (default sqlite:///OUT/study.db).")
@click.option("--timeout", type=float, help="Stop starting new trials after this many seconds.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for trials and results (default runs/<name>-tune).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def tune(recipe, overrides, trials, storage, timeout, out, device):
    """Search the recipe's tune: space with Optuna (run it again to continue an interrupted search)."""
    from suite.tune import tune as tune_recipe

    result = tune_recipe(recipe, overrides, trials, storage, timeout, out, device)
    click.echo(f"best: trial {result.best_number}, {result.metric}={result.best_value:.4f} "
               f"({result.trials} trials finished)")
    click.echo(f"{result.out / 'best.yaml'} (suite run it), trials.csv, report.md in {result.out}")


@cli.command(name="lr-find")
@click.argument("recipe", type=click.Path(dir_okay=False))
@_set
@click.option("--stage", default=0, show_default=True, help="The schedule stage whose trainable groups are swept.")
@click.option("--steps", default=100, show_default=True)
@click.option("--start-lr", default=1e-7, show_default=True)
@click.option("--end-lr", default=10.0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), help="Folder for lr_find.png/json (default runs/<name>-lr-find).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def lr_find(recipe, overrides, stage, steps, start_lr, end_lr, out, device):
    """The LR range test on one stage of RECIPE: a plot and a suggested LR; the model is not kept."""
    from suite.lrfind import lr_find_recipe

    result, folder = lr_find_recipe(recipe, overrides, stage, out, device, steps, start_lr, end_lr)
    click.echo(f"suggested lr for stage {stage}: {result.suggestion:.2e} (steepest descent of the smoothed loss; "
               f"lowest loss at {result.min_loss_lr:.2e}); {result.stopped}")
    click.echo(f"plot: {folder / 'lr_find.png'}, values: {folder / 'lr_find.json'}")


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--onnx", is_flag=True, help="Evaluate the exported bundle through onnxruntime instead.")
@click.option("--variant", help="With --onnx: fp32 (default), int8-static, int8-dynamic.")
def eval_(run_dir, split, device, onnx, variant):
    """Evaluate the best checkpoint of RUN_DIR (or its ONNX bundle) on a split."""
    from suite.validate import evaluate_run

    for key, value in evaluate_run(Path(run_dir), split, device, onnx, variant).items():
        click.echo(f"{key:24s} {value:.4f}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--quantize", multiple=True, type=click.Choice(["int8-dynamic", "int8-static"]),
              help="Quantized variants to add (default: the recipe's export.quantize).")
@click.option("--opset", type=int, help="ONNX opset (default: the recipe's export.opset, 18).")
def export(run_dir, quantize, opset):
    """Export RUN_DIR's best weights to RUN_DIR/export (model.onnx, model.json) and verify them."""
    from suite.exporting import export_run

    report = export_run(run_dir, quantize or None, opset)
    for name, v in report["variants"].items():
        t = v["task"]
        diff = max(r["max_abs_diff"] for r in v["tensor"]["shapes"])
        click.echo(f"{name:14s} {t['metric']} torch {t['torch']:.4f} onnxruntime {t['onnxruntime']:.4f} "
                   f"(delta {t['delta']:+.4f}), max abs diff {diff:.2e}: {'ok' if v['passed'] else 'FAILED'}")
    click.echo(f"bundle: {Path(run_dir) / 'export'} (verify.json)")


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--variant", help="fp32 (default), int8-static, int8-dynamic.")
@click.option("--top-k", default=1, show_default=True)
@click.option("--conf", type=float, help="Detection: minimum score (default: the bundle's, 0.25 for YOLO).")
def predict(bundle, inputs, variant, top_k, conf):
    """Predict INPUTS with an exported BUNDLE or a run directory's bundle (the torch-free suite_runtime's code)."""
    from suite.rundir import bundle_dir
    from suite_runtime import Bundle, Cascade
    from suite_runtime.cli import format_cascade, format_detections

    b = Bundle.load(bundle_dir(bundle), variant=variant)
    if isinstance(b, Cascade):  # boxes with fine labels: detector score x classifier probability
        try:
            predictions = b.predict(list(inputs), conf=conf)
        except ValueError as e:
            raise UserError(str(e)) from None
        for path, p in zip(inputs, predictions):
            for line in format_cascade(path, p, as_json=False) or [f"{path}\t(no detections)"]:
                click.echo(line)
        return
    try:
        predictions = b.predict(list(inputs), top_k=top_k, **({"conf": conf} if b.is_detector else {}))
    except ValueError as e:
        raise UserError(str(e)) from None
    for path, p in zip(inputs, predictions):
        if b.is_detector:
            for line in format_detections(path, p, as_json=False) or [f"{path}	(no detections)"]:
                click.echo(line)
            continue
        if p.text is not None:  # CTC transcript
            click.echo(f"{path}\t{p.text}")
            continue
        shown = f"{p.value:.6g}" if p.value is not None else "  ".join(f"{k} {v:.4f}" for k, v in p.scores.items())
        click.echo(f"{path}\t{shown}")


@cli.command()
@click.argument("target", type=click.Path(exists=True))
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--threads", type=int, help="Threads for torch and onnxruntime (default: all cores).")
@click.option("--no-compile", is_flag=True, help="Skip torch.compile (slow to warm up on small CPUs).")
def bench(target, batch_sizes, threads, no_compile):
    """Latency and throughput of TARGET (a run directory or MODEL.onnx): torch vs onnxruntime fp32/int8."""
    from suite.benching import bench_run_dir

    sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    from suite import rundir

    folder = rundir.bundle_dir(target)
    if json.loads((folder / "model.json").read_text()).get("task") == "cascade":  # per stage, on real images
        from suite.cascade import bench_cascade

        table, path = bench_cascade(folder, threads)
        click.echo(f"{table}\n\nwritten: {path}")
        return
    table, png = bench_run_dir(target, sizes, threads, compile=not no_compile)
    click.echo(f"{table}\n\nchart: {png}")


@cli.command(name="ls")
@click.argument("what", type=click.Choice(["recipes", "models", "groups"]), default="recipes")
@click.argument("model", required=False)
@click.option("--classes", default=10, show_default=True, help="Head size used when listing groups.")
def ls(what, model, classes):
    """List bundled recipes, known models, or the parameter groups of MODEL."""
    from suite import listing

    if what == "groups":
        if not model:
            raise UserError("`suite ls groups MODEL` needs a model name; `suite ls models` lists them")
        lines = listing.groups(model, classes)
    else:
        lines = listing.recipes(RECIPES_DIR) if what == "recipes" else listing.models()
    click.echo("\n".join(lines))


@cli.group()
def data():
    """Offline datasets."""


@data.group(name="make")
def make():
    """Generate a seeded offline dataset."""


@make.command(name="shapes")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--classes", default="circle,square,triangle,star", show_default=True, help="Comma-separated shape names.")
@click.option("--train-per-class", default=100, show_default=True)
@click.option("--val-per-class", default=30, show_default=True)
@click.option("--test-per-class", default=0, show_default=True)
@click.option("--size", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
def make_shapes(out, classes, train_per_class, val_per_class, test_per_class, size, seed):
    """Coloured geometric shapes on textured backgrounds, as an imagefolder (train/ val/ [test/])."""
    from suite.datasets.shapes import make_shapes as generate

    names = [c.strip() for c in classes.split(",") if c.strip()]
    path = generate(out, names, train_per_class, val_per_class, test_per_class, size=size, seed=seed, progress=True)
    click.echo(f"shapes dataset ({', '.join(names)}) in {path}")


@make.command(name="shapes-detection")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--classes", default="circle,square,triangle,star", show_default=True, help="Comma-separated shape names.")
@click.option("--train", "train_images", default=200, show_default=True, help="Training scenes.")
@click.option("--val", "val_images", default=50, show_default=True)
@click.option("--test", "test_images", default=0, show_default=True)
@click.option("--size", default=128, show_default=True)
@click.option("--max-objects", default=4, show_default=True)
@click.option("--seed", default=0, show_default=True)
def make_shapes_detection(out, classes, train_images, val_images, test_images, size, max_objects, seed):
    """Scenes of 1..max-objects shapes with exact boxes, in YOLO format (data.yaml, images/, labels/)."""
    from suite.datasets.shapes_det import make_shapes_detection as generate

    names = [c.strip() for c in classes.split(",") if c.strip()]
    path = generate(out, names, train_images, val_images, test_images, size=size, max_objects=max_objects, seed=seed,
                    progress=True)
    click.echo(f"detection shapes ({', '.join(names)}): {path}")


@make.command(name="shapes-cascade")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--classes", default="circle,square,triangle,star", show_default=True,
              help="Comma-separated shape names: the classifier's fine classes; the detector sees one class, shape.")
@click.option("--train", "train_images", default=160, show_default=True, help="Training scenes.")
@click.option("--val", "val_images", default=40, show_default=True)
@click.option("--size", default=128, show_default=True)
@click.option("--max-objects", default=3, show_default=True)
@click.option("--margin", default=0.15, show_default=True, help="Crop margin, a fraction of the box's side.")
@click.option("--seed", default=3, show_default=True)
def make_shapes_cascade(out, classes, train_images, val_images, size, max_objects, margin, seed):
    """Scenes with the fine classes (YOLO, scenes/), the detector's view with one class 'shape' (detector/), and
    the crops of every box by fine class (crops/, an image folder): each stage of a cascade, ready to train."""
    from suite.cascade import make_shapes_cascade as generate

    names = [c.strip() for c in classes.split(",") if c.strip()]
    paths = generate(out, names, train_images, val_images, size, max_objects, margin, seed)
    click.echo("shapes cascade: " + ", ".join(f"{k} {v}" for k, v in paths.items()))


@make.command(name="speech")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--words", default=None, help="Comma-separated words (default: yes,no,up,down,left,right,on,off,stop,go "
                                          "and the digits zero..nine, like Speech Commands).")
@click.option("--train-per-word", default=40, show_default=True)
@click.option("--val-per-word", default=10, show_default=True)
@click.option("--test-per-word", default=0, show_default=True)
@click.option("--sentences", default=0, show_default=True, help="Also this many training sentences for CTC.")
@click.option("--sentence-style", type=click.Choice(SENTENCE_STYLES), default="mixed", show_default=True,
              help="mixed: commands, statements, answers, digit strings; digits: connected digits only.")
@click.option("--sample-rate", default=16000, show_default=True)
@click.option("--seed", default=0, show_default=True)
def make_speech(out, words, train_per_word, val_per_word, test_per_word, sentences, sentence_style, sample_rate, seed):
    """Spoken words (espeak-ng: many voices, speeds, pitches, background noise) as an audiofolder of 1 s clips,
    plus sentences/{train,val}.csv manifests for CTC."""
    from suite.datasets.speech import DIGITS, KEYWORDS
    from suite.datasets.speech import make_speech as generate

    names = [w.strip() for w in words.split(",") if w.strip()] if words else [*KEYWORDS, *DIGITS]
    path = generate(out, names, train_per_word, val_per_word, test_per_word, sentences=sentences,
                    sample_rate=sample_rate, seed=seed, progress=True, sentence_style=sentence_style)
    click.echo(f"speech dataset ({len(names)} words{f', {sentences} sentences' if sentences else ''}) in {path}")


@data.command(name="convert")
@click.argument("source_format", type=click.Choice(["yolo", "coco", "pennfudan"]))
@click.argument("source", type=click.Path(exists=True))
@click.argument("target_format", type=click.Choice(["yolo", "coco"]))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--copy", is_flag=True, help="Copy images instead of symlinking them.")
def convert(source_format, source, target_format, out, copy):
    """Convert a detection dataset (SOURCE is never modified): e.g. `suite data convert yolo data.yaml coco out/`."""
    from suite.detection import data as ddata

    if source_format == "pennfudan":
        loaded = ddata.load_pennfudan(source)
    else:
        loaded = ddata.load_detection(source_format, source)
    click.echo(f"{source}: {loaded.report.summary()}")
    write = ddata.write_yolo if target_format == "yolo" else ddata.write_coco
    click.echo(f"{target_format}: {write(loaded, out, link=not copy)}")


def main(argv=None) -> None:
    from suite.core.stages import Interrupted

    try:
        cli.main(args=argv, prog_name="suite", standalone_mode=False)
    except Interrupted as e:
        from suite.launch import RESUME

        if os.environ.get("RANK", "0") == "0":  # under `suite run --nproc`: rank 0, with the launch's own command
            click.echo(f"interrupted; continue with: {os.environ.get(RESUME, e.again)}", err=True)
        sys.exit(e.exit_code)
    except PeerStopped:  # rank 0 has printed the error
        sys.exit(2)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


# Commands that import torch and torchvision anyway (`predict` is torch-free; `ls` and `validate` do not train)
TORCH_COMMANDS = frozenset({"run", "tune", "lr-find", "eval", "export", "bench"})


def preload(argv: list[str]) -> bool:
    """For a command in TORCH_COMMANDS (not its --help): import torch and torchvision with the cyclic collector
    off, then freeze what they made and turn it back on. Their ~550k objects otherwise set off six full
    collections during the import, each walking every object made so far: 2.6-2.9 s with them against 1.9-2.5 s
    without on 2 cores (benchmarks/README.md), for ~8 MB of import-time garbage kept. Later collections skip the
    frozen objects. True when it imported."""
    import gc

    if not argv or argv[0] not in TORCH_COMMANDS or {"-h", "--help"} & set(argv):
        return False
    enabled = gc.isenabled()
    gc.disable()
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return True


def entry() -> None:
    """The `suite` console script (and `python -m suite.cli`): torch's import without the collector (preload),
    main(), then a quick exit. Python's shutdown garbage-collects every object the imports made (torch's alone:
    1.2 s of the exit on 2 cores, against 0.2 s with them frozen); as the process ends anyway, they are frozen
    (gc.freeze) instead. In-process callers (tests, notebooks) use main(), which leaves the collector alone."""
    import gc

    try:
        preload(sys.argv[1:])
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    entry()
