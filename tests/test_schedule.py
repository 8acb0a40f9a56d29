"""Schedule semantics as pure functions: no model, no torch."""
import math

import pytest

from suite.core.schedule import Stage, check_schedule, group_lrs, lr_factor, stage_at, trainable_groups
from suite.errors import FieldError, UserError

GROUPS = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


@pytest.mark.parametrize("selector, expected", [
    ("head", ["head"]),
    ("all", GROUPS),
    ({"last": 2}, ["layer4", "head"]),
    ({"last": 99}, GROUPS),
    (("head", "layer2"), ["layer2", "head"]),  # model order, whatever order the recipe used
    ("layer3", ["layer3"]),
])
def test_selectors(selector, expected):
    assert trainable_groups(selector, GROUPS) == expected


def test_unknown_group_lists_valid_groups_and_suggests():
    with pytest.raises(UserError, match=r"unknown group 'layr4'.*did you mean 'layer4'.*stem, layer1"):
        trainable_groups(["layr4"], GROUPS)


@pytest.mark.parametrize("selector", [{"last": 0}, {"first": 2}, []])
def test_stage_leaving_nothing_trainable_is_an_error(selector):
    with pytest.raises(UserError, match="stem"):
        trainable_groups(selector, GROUPS)


def test_layer_decay_is_geometric_from_the_output():
    lrs = group_lrs(Stage(epochs=1, train={"last": 3}, lr=1e-3, layer_decay=0.5), GROUPS)
    assert lrs == pytest.approx({"head": 1e-3, "layer4": 5e-4, "layer3": 2.5e-4})


def test_layer_decay_depends_on_position_not_on_what_else_is_unfrozen():
    a = group_lrs(Stage(epochs=1, train=["layer3"], lr=1e-3, layer_decay=0.5), GROUPS)
    assert a == pytest.approx({"layer3": 2.5e-4})


def test_lr_mult_multiplies_and_names_are_checked():
    lrs = group_lrs(Stage(epochs=1, train="all", lr=1e-3, lr_mult={"stem": 0.1}, layer_decay=0.9), GROUPS)
    assert lrs["stem"] == pytest.approx(1e-3 * 0.9**5 * 0.1)
    assert lrs["head"] == pytest.approx(1e-3)
    with pytest.raises(UserError, match="lr_mult.*'stme'"):
        group_lrs(Stage(epochs=1, train="all", lr=1e-3, lr_mult={"stme": 0.1}), GROUPS)


def test_stage_at_walks_the_schedule():
    stages = [Stage(epochs=2, train="head", lr=1), Stage(epochs=3, train="all", lr=1)]
    assert [stage_at(e, stages) for e in range(5)] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    with pytest.raises(ValueError):
        stage_at(5, stages)


def test_cosine_with_warmup():
    total, warm = 100, 0.1
    f = [lr_factor(s, total, warm, "cosine") for s in range(total)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay after warm-up
    assert 0 < f[-1] < 0.01


def test_onecycle_rises_then_falls():
    total = 50
    f = [lr_factor(s, total, 0.3, "onecycle") for s in range(total)]
    peak = max(range(total), key=f.__getitem__)
    assert peak == 15 and f[peak] == pytest.approx(1.0)
    assert f[0] == pytest.approx(1 / 25)
    assert f[-1] < 0.01


def test_constant_is_flat_after_warmup():
    assert [lr_factor(s, 10, 0.2, "constant") for s in range(2, 10)] == [1.0] * 8
    assert math.isclose(lr_factor(0, 10, 0.0, "constant"), 1.0)


@pytest.mark.parametrize("kwargs, field", [
    ({"epochs": 0}, "epochs"), ({"lr": 0.0}, "lr"), ({"layer_decay": 1.5}, "layer_decay"),
    ({"warmup": 1.0}, "warmup"), ({"scheduler": "cosin"}, "scheduler"),
])
def test_stage_values_are_validated(kwargs, field):
    args = {"epochs": 1, "train": "head", "lr": 1e-3, **kwargs}
    with pytest.raises(FieldError) as err:
        Stage(**args)
    assert err.value.field == field


def test_check_schedule_reports_the_stage_index():
    stages = [Stage(epochs=1, train="head", lr=1e-3), Stage(epochs=1, train=["layer9"], lr=1e-4)]
    with pytest.raises(UserError, match="stage 1"):
        check_schedule(stages, GROUPS)
    with pytest.raises(UserError, match="empty"):
        check_schedule([], GROUPS)


def test_block_prefix_selects_every_group_in_the_block():
    names = ["backbone.0", "backbone.1", "neck.2", "neck.3", "head"]
    assert trainable_groups(["neck", "head"], names) == ["neck.2", "neck.3", "head"]
    assert trainable_groups("backbone", names) == ["backbone.0", "backbone.1"]
    with pytest.raises(UserError, match=r"unknown group 'nek'.*did you mean 'neck'"):
        trainable_groups(["nek"], names)
    lrs = group_lrs(Stage(epochs=1, train="all", lr=1.0, lr_mult={"backbone": 0.1, "backbone.1": 0.5}), names)
    assert lrs == {"backbone.0": 0.1, "backbone.1": 0.5, "neck.2": 1.0, "neck.3": 1.0, "head": 1.0}
