"""`suite run` end to end on images: the run-directory contract, resume, awkward files, local weights."""
import csv
import json

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from suite.datasets.shapes import make_shapes
from suite.runner import run
from suite.core import checkpoint
from suite.core.report import read_history

TINY = ["data.image_size=32", "data.resize=32", "train.batch_size=8", "data.augment=light"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes(root / "ds", ["circle", "square", "triangle"], 8, 4, 2, size=32, seed=0)


def write_recipe(path, root, weights="none", extra=""):
    path.write_text(f"""\
name: tiny
task: image-classification
model: {{arch: resnet18, weights: {weights}}}
data: {{format: imagefolder, root: {root}}}
schedule:
  - {{epochs: 1, train: head, lr: 1.0e-3}}
  - {{epochs: 2, train: {{last: 2}}, lr: 1.0e-3, layer_decay: 0.5}}
{extra}""")
    return path


def test_run_directory_contract(tmp_path, shapes):
    recipe = write_recipe(tmp_path / "r.yaml", shapes, extra="eval: {compare: [scratch]}\n")
    out = tmp_path / "run"
    result = run(recipe, TINY, out)
    for name in ("recipe.yaml", "history.csv", "metrics.json", "report.md", "checkpoints/last.pt",
                 "checkpoints/best.safetensors", "plots/curves.png", "plots/confusion_val.png",
                 "baselines/scratch/metrics.json"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["task"] == "image-classification"
    assert {"val/accuracy", "val/precision", "val/recall", "val/f1"} <= set(doc["val"])
    assert {"test/accuracy", "test/f1"} <= set(doc["test"])  # the shapes set has a test split
    assert set(doc["per_class"]) == {"circle", "square", "triangle"}
    assert "val/accuracy" in doc["baselines"]["scratch"]["val"]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["stage"] for r in rows] == ["0", "1", "1"] and "val/f1" in rows[0]
    assert "| scratch |" in result.table and "| fine-tuned |" in result.table
    report = (out / "report.md").read_text()
    assert "plots/curves.png" in report and "scratch" in report
    # best.safetensors holds torchvision names, so `weights: PATH` loads it back
    assert "layer4.1.bn2.running_var" in load_file(out / "checkpoints" / "best.safetensors")


class Killed(Exception):
    pass


def test_resume_from_run_dir_matches_uninterrupted(tmp_path, shapes):
    recipe = write_recipe(tmp_path / "r.yaml", shapes)
    run(recipe, TINY, tmp_path / "full")

    def kill(pos):
        if pos.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        run(recipe, TINY, tmp_path / "cut", on_epoch_end=[kill])
    run(None, resume=tmp_path / "cut")
    full = checkpoint.load_state(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    cut = checkpoint.load_state(tmp_path / "cut" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert read_history(tmp_path / "cut" / "history.csv", times=False) == \
        read_history(tmp_path / "full" / "history.csv", times=False)


def _awkward_folder(root):
    """JPEGs and friends of mixed sizes and modes, one class per folder, plus broken files."""
    specs = {"ants": [("RGB", (120, 80)), ("L", (64, 64)), ("CMYK", (50, 90)), ("RGB", (5, 3)), ("RGB", (300, 40))],
             "bees": [("RGB", (90, 120)), ("RGBA", (70, 70)), ("P", (40, 60)), ("RGB", (200, 150)), ("1", (33, 33))]}
    for label, items in specs.items():
        folder = root / label
        folder.mkdir(parents=True)
        for i, (mode, size) in enumerate(items):
            img = Image.new(mode, size, color=(i * 40) % 255 if mode in ("L", "P", "1") else None)
            ext = "png" if mode in ("RGBA", "P", "1") else "jpg"
            img.save(folder / f"{i}.{ext}")
    good = (root / "ants" / "0.jpg").read_bytes()
    (root / "ants" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "bees" / "empty.jpg").write_bytes(b"")
    (root / "bees" / "notes.jpg").write_text("not an image")


def test_real_folder_of_mixed_images_with_local_pth(tmp_path, capsys):
    data = tmp_path / "photos"
    _awkward_folder(data)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # a torchvision state_dict, 1000-class head
    recipe = write_recipe(tmp_path / "r.yaml", data, weights=weights)
    result = run(recipe, [*TINY, "data.val_split=0.3", "train.batch_size=4", "data.balance=loss"], tmp_path / "run")
    log = capsys.readouterr()
    assert "3 skipped" in log.out + log.err
    assert result.metrics["val"]["val/accuracy"] >= 0
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before  # user's data untouched
    tuned = load_file(tmp_path / "run" / "checkpoints" / "best.safetensors")
    original = torch.load(weights, weights_only=True)
    # no stage trains the stem: it is still the pre-trained one, whichever epoch was best
    assert torch.equal(tuned["conv1.weight"], original["conv1.weight"])
    assert tuned["fc.weight"].shape == (2, 512)
    torchvision.models.resnet18(num_classes=2).load_state_dict(tuned)  # plain torchvision reads it (strict)


def test_regression_head_from_csv(tmp_path, shapes):
    rows = ["path,value"] + [f"{p},{i / 10}" for i, p in enumerate(sorted(shapes.rglob("*.png")))]
    rows.append("missing.png,oops")
    (tmp_path / "values.csv").write_text("\n".join(rows))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
name: reg
task: image-regression
model: {{arch: resnet18, weights: none, head: {{hidden: [16]}}}}
data: {{format: csv, root: {tmp_path / 'values.csv'}}}
schedule: [{{epochs: 2, train: all, lr: 1.0e-3}}]
""")
    result = run(recipe, TINY, tmp_path / "run")
    assert set(result.metrics["val"]) >= {"val/mse", "val/mae", "val/loss"}
    assert result.metrics["val"]["val/mse"] >= 0


def test_a_benchmark_or_plot_that_fails_never_fails_the_finished_run(tmp_path, shapes, monkeypatch):
    """After training, reporting that cannot run says why in report.md and bench.json; the run succeeds."""
    import suite.benching
    from suite.core import report

    def no_bench(*args, **kwargs):
        raise RuntimeError("no onnxruntime session for this graph")

    def no_curves(*args, **kwargs):
        raise ValueError("matplotlib backend gone")

    monkeypatch.setattr(suite.benching, "bench_run_dir", no_bench)
    monkeypatch.setattr(report, "plot_curves", no_curves)
    recipe = write_recipe(tmp_path / "r.yaml", shapes, extra="export: {onnx: true}\n")
    out = tmp_path / "run"
    result = run(recipe, [*TINY, "schedule.1.epochs=1"], out)
    assert json.loads((out / "export" / "verify.json").read_text())["passed"]
    text = (out / "report.md").read_text()
    assert "Not run: RuntimeError: no onnxruntime session for this graph" in text
    assert "training curves: ValueError: matplotlib backend gone" in text
    bench = json.loads((out / "bench.json").read_text())
    assert bench["rows"] == [] and "no onnxruntime session" in bench["error"]
    assert result.metrics["val"]["val/accuracy"] >= 0


def test_compile_and_channels_last_train_like_the_default_and_save_plain_weights(tmp_path, shapes, capsys):
    """train.compile (aot_eager: traced by dynamo and AOTAutograd, no code generation, so it stays fast here) and
    train.channels_last change how the step runs, not what it computes; checkpoints keep the plain names."""
    from torch._dynamo.utils import counters

    extra = "train: {seed: 0, cache_features: false, compile: %s, channels_last: %s}\n"
    short = [*TINY, "schedule.1.epochs=1"]
    plain = run(write_recipe(tmp_path / "a.yaml", shapes, extra=extra % ("false", "false")), short, tmp_path / "a")
    assert "channels_last memory format" not in capsys.readouterr().out
    graphs = counters["stats"]["unique_graphs"]
    fast = run(write_recipe(tmp_path / "b.yaml", shapes, extra=extra % ("aot_eager", "true")), short, tmp_path / "b")
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo traced the training step
    assert "channels_last memory format" in capsys.readouterr().out
    a, b = read_history(tmp_path / "a" / "history.csv"), read_history(tmp_path / "b" / "history.csv")
    # channels_last picks other convolution kernels: float rounding differs and compounds over the epochs
    assert [r["train/loss"] for r in b] == pytest.approx([r["train/loss"] for r in a], rel=5e-3)
    assert fast.metrics["val"]["val/accuracy"] == pytest.approx(plain.metrics["val"]["val/accuracy"], abs=0.13)
    saved = load_file(tmp_path / "b" / "checkpoints" / "best.safetensors")
    assert "layer4.1.bn2.running_var" in saved and not any("_orig_mod" in k for k in saved)


@pytest.mark.parametrize("ema", [False, True])
def test_the_last_epochs_validation_is_reused_when_it_scored_the_best_weights(tmp_path, shapes, monkeypatch, ema):
    """Best = the last epoch's weights, scored by the loop on the model itself: the run reports that validation
    instead of computing it again. With EMA the loop scored the average's copy, so the run evaluates again."""
    from suite.vision.task import VisionModality

    calls, real = [], VisionModality._evaluate  # evaluate's body: the loop's validation calls it directly

    def evaluate(self, recipe, model, data, split, device, loader):
        calls.append(split)
        return real(self, recipe, model, data, split, device, loader)

    monkeypatch.setattr(VisionModality, "_evaluate", evaluate)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
name: once
task: image-classification
model: {{arch: resnet18, weights: none}}
data: {{format: imagefolder, root: {shapes}}}
schedule: [{{epochs: 1, train: all, lr: 1.0e-3}}]
train: {{ema: {0.9 if ema else 'null'}}}
""")
    result = run(recipe, TINY, tmp_path / "run")
    assert calls.count("val") == (2 if ema else 1)
    row = read_history(tmp_path / "run" / "history.csv")[0]
    assert result.metrics["val"]["val/accuracy"] == pytest.approx(row["val/accuracy"])
    assert result.metrics["val"]["val/loss"] == pytest.approx(row["val/loss"])
