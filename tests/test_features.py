"""Cached feature extraction (train.cache_features): the head trained on cached features is the head trained
the usual way (bitwise on CPU for images: same batches, same dropout draws), and invalid stages say why."""
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from suite.core import features
from suite.core.report import read_history
from suite.datasets.shapes import make_shapes
from suite.errors import UserError
from suite.runner import check_task_options, run
from suite.tasks import load_recipe

RECIPE = """\
name: cache
task: image-classification
model: {{arch: resnet18, weights: none, head: {{hidden: [16], dropout: 0.3}}}}
data: {{format: imagefolder, root: {root}, image_size: 32, resize: 32, augment: {augment}}}
schedule:
  - {{epochs: 2, train: head, lr: 1.0e-2}}
  - {{epochs: 1, train: {{last: 2}}, lr: 1.0e-3}}
train: {{batch_size: 5, seed: 3}}
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "ds", ["circle", "square", "triangle"], 7, 4, 0, size=32,
                       seed=1)


def _recipe(tmp_path, root, augment="none"):
    path = tmp_path / f"r-{augment}.yaml"
    path.write_text(RECIPE.format(root=root, augment=augment))
    return path


def test_head_on_cached_features_is_bitwise_the_uncached_head(tmp_path, shapes, capsys, monkeypatch):
    recipe = _recipe(tmp_path, shapes)
    runs = {}
    for mode in ("false", "true"):
        runs[mode] = tmp_path / mode
        run(recipe, [f"train.cache_features={mode}", "export.onnx=false"], runs[mode])
    log = capsys.readouterr()
    assert "stage 0: head trained on cached features (21 samples, (512,) each" in log.out + log.err
    monkeypatch.setattr(features, "MEMORY_LIMIT_BYTES", 0)  # the memory-mapped file under the run directory
    runs["mapped"] = tmp_path / "mapped"
    run(recipe, ["train.cache_features=true", "export.onnx=false"], runs["mapped"])
    assert not list((runs["mapped"] / features.CACHE_DIR).iterdir())  # removed after its stage

    plain = read_history(runs["false"] / "history.csv", times=False)
    assert len(plain) == 3
    weights = load_file(runs["false"] / "checkpoints" / "best.safetensors")
    for mode in ("true", "mapped"):
        assert read_history(runs[mode] / "history.csv", times=False) == plain, mode  # same losses and metrics, every epoch
        other = load_file(runs[mode] / "checkpoints" / "best.safetensors")
        assert all(torch.equal(weights[k], other[k]) for k in weights), mode


def test_stages_that_cannot_cache_say_why(tmp_path, shapes, capsys):
    with pytest.raises(UserError, match=r"cache_features is true, but schedule stage 0 .*data.augment is light"):
        run(_recipe(tmp_path, shapes, "light"), ["train.cache_features=true", "schedule.0.epochs=1"], tmp_path / "a")
    detection = load_recipe("recipes/quickstart/detect-shapes.yaml", ["train.cache_features=true"])
    with pytest.raises(UserError, match="cache_features: true applies to image-classification"):
        check_task_options(detection)


def test_randomness_inside_the_frozen_part_is_found():
    head = nn.Linear(4, 2)
    batchnorm = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), head).train()
    assert "BatchNorm 1 is in train mode" in features.frozen_randomness(batchnorm, head)
    dropout = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1), head).train()
    assert "dropout 1 (p=0.1)" in features.frozen_randomness(dropout, head)
    assert features.frozen_randomness(dropout.eval(), head) is None

    class Functional(nn.Module):  # dropout no module scan sees
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(nn.functional.dropout(self.body(x), 0.5, self.training))

    model = Functional().train()
    spec = features.CacheSpec(point=model.head, loss=None, inputs=lambda b: b, targets=None, val_loader=None,
                              val_metrics=None)
    cpu = dict(device_type="cpu", dtype=torch.float32, enabled=False)
    state = torch.random.get_rng_state()
    assert not features.repeatable(model, spec, torch.ones(8, 3), cpu)
    assert torch.equal(torch.random.get_rng_state(), state)  # the check draws nothing the training would
    assert features.repeatable(model.eval(), spec, torch.ones(8, 3), cpu)


def test_index_batches_follow_the_loader_order():
    def loader():
        return DataLoader(list(range(23)), batch_size=4, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(7))

    assert [b.tolist() for b in features.index_batches(loader())] == [b.tolist() for b in loader()]
