"""`suite lr-find`: the LR range test sweeps one stage, stops on divergence, suggests an LR, and leaves the model
(weights, buffers, trainable flags) and every RNG exactly as it found them."""
import json

import pytest
import torch
from torch import nn

from suite.core.groups import make_groups
from suite.core.loop import FitOptions, Hooks
from suite.core.metrics import EvalResult
from suite.core.lr_find import lr_find, suggest
from suite.core.schedule import Stage


def tiny():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1))
    head = nn.Linear(16, 3)
    model = nn.Sequential(body, head)
    groups = make_groups([("body", [body], []), ("head", [head], [])])
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)

    def loader(epoch):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
        return [(x[order[i:i + 8]], y[order[i:i + 8]]) for i in range(0, 64, 8)]

    hooks = Hooks(loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), evaluate=lambda m: EvalResult({}),
                  train_loader=loader)
    return model, groups, hooks


def test_sweep_restores_the_model_and_the_rng_and_stops_on_divergence():
    model, groups, hooks = tiny()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    stage = Stage(epochs=1, train="all", lr=1e-2, layer_decay=0.5)
    torch.manual_seed(5)
    result = lr_find(model, groups, stage, hooks, FitOptions(optimizer="sgd", weight_decay=0.0), torch.device("cpu"),
                     start_lr=1e-5, end_lr=1e4, steps=60)
    after_rng = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_rng, torch.rand(3))  # the global RNG is where it was
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # BN stats too
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert result.stopped.startswith("loss diverged") and len(result.lrs) < 60  # 1e4 is far past any sane LR
    assert result.lrs[0] == pytest.approx(1e-5) and all(a < b for a, b in zip(result.lrs, result.lrs[1:]))
    assert result.lrs[0] <= result.suggestion <= result.min_loss_lr < result.lrs[-1]


def test_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = [10.0 ** e for e in range(-6, 2)]
    losses = [2.0, 2.0, 1.9, 1.2, 0.9, 0.8, 1.5, 9.0]  # steepest between 1e-4 and 1e-3
    assert suggest(lrs, losses) == pytest.approx(1e-3)
    assert suggest(lrs, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == lrs[0]  # never falls: the lowest LR


def test_cli_writes_the_plot_and_values_and_names_a_bad_stage(tmp_path, suite_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
name: lrt
task: image-classification
model: {{arch: resnet18, weights: none}}
data: {{format: synthetic:shapes, root: {tmp_path / 'data'}, image_size: 32, resize: 32,
        synthetic: {{classes: [circle, square], train_per_class: 4, val_per_class: 1, size: 32}}}}
schedule:
  - {{epochs: 1, train: head, lr: 1.0e-3}}
  - {{epochs: 1, train: {{last: 2}}, lr: 1.0e-4, layer_decay: 0.5}}
train: {{batch_size: 4}}
""")
    code, _, err = suite_cli("lr-find", str(recipe), "--stage", "2")
    assert code == 2 and "--stage 2" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "data").exists()  # refused before any data was generated
    code, out, _ = suite_cli("lr-find", str(recipe), "--stage", "1", "--steps", "12", "--out", str(tmp_path / "lr"))
    assert code == 0
    doc = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert f"suggested lr for stage 1: {doc['suggestion']:.2e}" in out
    assert doc["stage"] == 1 and len(doc["lrs"]) == len(doc["losses"]) == len(doc["raw_losses"]) <= 12
    assert (tmp_path / "lr" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
