"""The `suite` command. Thin: parse, call one function, print. Heavy imports happen inside commands."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from suite.errors import UserError

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
@click.option("--resume", type=click.Path(file_okay=False, exists=True), help="Continue the run in DIR from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
def run(recipe, overrides, out, device, resume, overwrite):
    """Train RECIPE, evaluate it, compare with baselines, and write the run directory."""
    from suite.runner import run as run_recipe

    if not recipe and not resume:
        raise UserError("give a RECIPE to run, or --resume DIR")
    result = run_recipe(recipe, overrides, out, device, resume, overwrite)
    click.echo(f"\n{result.table}\n\nrun directory: {result.run_dir} (report.md, metrics.json, checkpoints/)")


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_set
def validate(recipes, overrides):
    """Check RECIPES and scan their datasets, without training."""
    from suite.validate import validate_recipe

    for path in recipes:
        click.echo(f"{path}: ok: {validate_recipe(path, overrides)}")


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def eval_(run_dir, split, device):
    """Evaluate the best checkpoint of RUN_DIR on a split."""
    from suite.validate import evaluate_run

    for key, value in evaluate_run(Path(run_dir), split, device).items():
        click.echo(f"{key:24s} {value:.4f}")


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


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="suite", standalone_mode=False)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
