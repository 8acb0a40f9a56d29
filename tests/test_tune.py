"""`suite tune`: Optuna over the recipe's tune: space (freeze depth included), a run directory per trial, the study
in SQLite, a search killed mid-trial continues (the trial's values run again), best.yaml runs."""
import csv

import optuna
import pytest

from suite.errors import UserError
from suite.recipe import load_recipe
from suite.runner import run
from suite.tune import tune

RECIPE = """\
name: tiny-tune
task: image-classification
model: {{arch: resnet18, weights: none}}
data:
  format: synthetic:shapes
  root: {root}
  synthetic: {{classes: [circle, square, triangle], train_per_class: 4, val_per_class: 2, size: 32}}
  image_size: 32
  resize: 32
  augment: none
schedule:
  - {{epochs: 1, train: head, lr: 1.0e-2}}
  - {{epochs: 1, train: {{last: 2}}, lr: 1.0e-3, layer_decay: 0.7}}
train: {{batch_size: 6}}
eval: {{compare: [scratch]}}
tune: {{trials: 3, startup_trials: 3, augment: [none, light]}}
"""


def test_tune_writes_trials_resumes_a_killed_trial_and_best_yaml_runs(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path / "data"))
    out = tmp_path / "tune"
    first = tune(str(recipe), trials=2, out=str(out), device="cpu")
    assert first.trials == 2 and (out / "study.db").is_file()

    # what a SIGKILL in the middle of a trial leaves: the trial RUNNING in the database, with its values
    study = optuna.load_study(study_name="tiny-tune", storage=f"sqlite:///{out / 'study.db'}")
    killed = study.ask({"stage1.last": optuna.distributions.IntDistribution(1, 6)})
    killed_last = killed.params["stage1.last"]
    result = tune(str(recipe), out=str(out), device="cpu")  # tune.trials: 3 finished trials wanted

    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete", "fail", "complete"]
    assert rows[0]["note"] == "recipe's own values" and rows[0]["stage1.last"] == "2"
    assert rows[3]["note"] == "retry of trial 2" and rows[3]["stage1.last"] == str(killed_last)
    assert {"stage0.lr", "stage1.lr", "stage1.last", "stage1.layer_decay", "weight_decay", "augment"} <= set(rows[0])
    for n in range(4):
        assert (out / f"trial-{n}" / "recipe.yaml").is_file() or n == 2  # a normal run directory per trial
    assert (out / "trial-3" / "metrics.json").is_file() and not (out / "trial-3" / "baselines").exists()
    for name in ("report.md", "plots/history.png", "plots/depth.png", "plots/importances.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| recipe's own | trial 0: " in report and f"| best: trial {result.best_number}" in report

    best = load_recipe(out / "best.yaml")
    assert best.name == "tiny-tune" and best.eval.compare == ("scratch",)  # the recipe's own baselines and export
    assert best.schedule[1].train == {"last": int(rows[result.best_number]["stage1.last"])}
    done = run(out / "best.yaml", ["eval.compare=[]", "export.onnx=false"], tmp_path / "best-run")
    assert done.metrics["val"]["val/accuracy"] == pytest.approx(result.best_value)  # same recipe, same seed


def test_a_tune_section_that_searches_nothing_is_a_clear_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path / "data").replace(
        "tune: {trials: 3, startup_trials: 3, augment: [none, light]}",
        "tune: {lr: null, weight_decay: null, freeze_depth: false, layer_decay: null}"))
    with pytest.raises(UserError, match="searches nothing"):
        tune(str(recipe), out=str(tmp_path / "t"), device="cpu")
