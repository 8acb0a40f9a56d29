"""Every registry entry satisfies the Modality Protocol: each member exists with the declared parameters, and
the members the generic layer calls without data (models, task_for, build_model, groups, export_module,
trainer's choice) behave for a tiny model of each task."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from suite.core.groups import check_groups
from suite.tasks import REGISTRY, Modality, load_recipe, modality_for

MEMBERS = [name for name, value in vars(Modality).items() if inspect.isfunction(value) and not name.startswith("_")]
# the smallest model of each task, built at random init
TINY = {"image-classification": "resnet18", "image-regression": "resnet18", "detection": "yolo11n",
        "speech-classification": "wav2vec2-tiny", "speech-ctc": "wav2vec2-tiny"}


def test_every_member_the_generic_layer_calls_is_declared():
    assert {"load_data", "build_model", "groups", "hooks", "trainer", "evaluate", "default_metric", "plots",
            "report_sections", "export_module", "export_spec", "evaluate_bundle", "models", "task_for"} <= set(MEMBERS)
    assert set(TINY) == set(REGISTRY)


@pytest.mark.parametrize("task", list(REGISTRY))
def test_registry_entry_satisfies_the_protocol(task):
    mod = modality_for(task)
    assert isinstance(mod, Modality)
    for name in MEMBERS:
        declared = list(inspect.signature(getattr(Modality, name)).parameters)[1:]
        got = list(inspect.signature(getattr(mod, name)).parameters)
        assert got == declared, f"{type(mod).__name__}.{name}{got} differs from Modality.{name}{declared}"


@pytest.fixture
def recipe_for(tmp_path):
    def make(task: str, arch: str):
        path = tmp_path / f"{task}.yaml"
        path.write_text(f"name: contract\ntask: {task}\nmodel: {{arch: {arch}}}\n"
                        "data: {format: none, image_size: 64}\nschedule: [{epochs: 1, train: head, lr: 1.0e-3}]\n")
        return load_recipe(path)

    return make


@pytest.mark.parametrize("task", list(REGISTRY))
def test_tiny_model_of_each_task_builds_groups_and_exports_a_module(task, recipe_for):
    mod = modality_for(task)
    arch = TINY[task]
    recipe = recipe_for(task, arch)
    assert mod.models() and all(isinstance(line, str) for line in mod.models())
    assert mod.task_for(arch) is not None and mod.task_for("no-such-model") is None
    torch.manual_seed(0)
    model = mod.build_model(recipe, ["a", "b", "c"], "none")
    groups = mod.groups(recipe, model)
    check_groups(model, groups)  # every parameter once, the new head last
    assert groups[-1].name == "head" and len(groups) >= 3
    assert isinstance(mod.export_module(recipe, model), nn.Module)
    assert mod.default_metric(recipe).startswith("val/")
    assert mod.report_sections(recipe, _empty_result()) == []
    if task != "detection":  # YOLO's trainer (Ultralytics) is covered by tests/test_detection_yolo.py
        assert mod.trainer(recipe, None) is None  # the suite's loop runs the epochs
    else:
        assert mod.trainer(recipe_for(task, "fasterrcnn_mobilenet_v3_large_320_fpn"), None) is None


def _empty_result():
    from suite.core.metrics import EvalResult

    return EvalResult(metrics={})
