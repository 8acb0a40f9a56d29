"""Recipe schema: safe YAML, overrides, one-line errors naming key, line and suggestion."""
import textwrap

import pytest
import yaml

from suite.errors import UserError
from suite.recipe import apply_overrides, dump_recipe, parse_recipe
from suite.tasks import load_recipe  # the schema with the registry's task names

BASE = textwrap.dedent("""\
    name: demo
    task: image-classification
    model:
      arch: resnet18
      weights: none
    data:
      format: imagefolder
      root: data/x
    schedule:
      - {epochs: 2, train: head, lr: 1e-3}
      - {epochs: 3, train: {last: 2}, lr: 1.0e-4, layer_decay: 0.5}
    train: {batch_size: 8, early_stop: {metric: val/f1, patience: 2}}
    """)


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(BASE)
    return path


def test_loads_with_defaults_and_yaml11_floats(recipe_file):
    r = load_recipe(recipe_file)
    assert r.schedule[0].lr == pytest.approx(1e-3)  # "1e-3" is a string in YAML 1.1
    assert r.schedule[1].train == {"last": 2}
    assert r.optim.name == "adamw" and r.train.batch_size == 8
    assert r.stages()[0].scheduler == "cosine" and r.stages()[0].warmup == 0.0


def test_overrides_parse_values_as_yaml(recipe_file):
    r = load_recipe(recipe_file, ["schedule.1.lr=3e-4", "eval.compare=[scratch]", "model.head.hidden=[64, 32]",
                                  "train.clip_grad=null", "data.root=/tmp/other"])
    assert r.schedule[1].lr == pytest.approx(3e-4)
    assert r.eval.compare == ("scratch",)
    assert r.model.head.hidden == (64, 32)
    assert r.train.clip_grad is None and r.data.root == "/tmp/other"


def test_override_never_evaluates():
    raw = apply_overrides({"name": "x"}, ["name=__import__('os').system('echo hi')"])
    assert raw["name"] == "__import__('os').system('echo hi')"


@pytest.mark.parametrize("override, pattern", [
    ("model.wieghts=x", r"r.yaml:3: model.wieghts: unknown key; did you mean 'weights'\?"),
    ("trian.seed=1", r"trian: unknown key; did you mean 'train'\?"),
    ("schedule.0.epochs=0", r"r.yaml:10: schedule.0.epochs: must be >= 1"),
    ("train.precision=bf61", r"train.precision: 'bf61' is not valid \(did you mean 'bf16'\?\)"),
    ("schedule.0.lr=fast", r"schedule.0.lr: expected float"),
    ("schedule.0.train=5", r"schedule.0.train: expected head, all"),
    ("task=image-clasification", r"did you mean 'image-classification'"),
    ("eval.compare=[scrach]", r"did you mean 'scratch'"),
    ("train.batch_size=true", r"train.batch_size: expected int"),
    ("schedule.5.lr=1", r"'schedule' has 2 items"),
])
def test_errors_are_one_line_with_key_and_suggestion(recipe_file, override, pattern):
    with pytest.raises(UserError, match=pattern) as err:
        load_recipe(recipe_file, [override])
    assert "\n" not in str(err.value)


def test_missing_required_key_and_bad_yaml(tmp_path):
    raw = yaml.safe_load(BASE)
    del raw["model"]["arch"]
    with pytest.raises(UserError, match="model.arch: missing required key"):
        parse_recipe(raw)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match="bad.yaml.*not valid YAML"):
        load_recipe(bad)
    with pytest.raises(UserError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_resolved_recipe_round_trips(recipe_file, tmp_path):
    r = load_recipe(recipe_file, ["eval.compare=[scratch]"])
    out = tmp_path / "resolved.yaml"
    out.write_text(dump_recipe(r))
    assert load_recipe(out) == r


def test_recipe_is_frozen(recipe_file):
    r = load_recipe(recipe_file)
    with pytest.raises(AttributeError):
        r.name = "other"


def test_num_workers_is_auto_or_a_count(recipe_file):
    import torch

    from suite.core.data import loader_workers

    assert load_recipe(recipe_file).data.num_workers == "auto"
    assert load_recipe(recipe_file, ["data.num_workers=3"]).data.num_workers == 3
    with pytest.raises(UserError, match="num_workers.*must be auto or a number >= 0"):
        load_recipe(recipe_file, ["data.num_workers=many"])
    assert loader_workers(3) == 3
    assert loader_workers("auto") == (min(8, __import__("os").cpu_count()) if torch.cuda.is_available() else 0)
