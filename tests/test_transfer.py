"""The transfer report: negative transfer verdicts and the overfitting flag, from metrics and history rows."""
from suite.core.transfer import overfitting, transfer_block, transfer_section


def rows(accs, train_losses, val_losses):
    return [{"epoch": i + 1, "val/accuracy": a, "train/loss": t, "val/loss": v}
            for i, (a, t, v) in enumerate(zip(accs, train_losses, val_losses))]


def test_verdicts_follow_the_metric_direction():
    history = rows([0.5, 0.7], [1.0, 0.8], [1.1, 0.9])
    block = transfer_block("val/accuracy", {"val/accuracy": 0.70}, {"scratch": {"val": {"val/accuracy": 0.40}}},
                           history)
    c = block["comparisons"]["scratch"]
    assert c["gain"] == 0.7 - 0.4 and c["verdict"].startswith("transfer helped")
    worse = transfer_block("val/accuracy", {"val/accuracy": 0.40}, {"scratch": {"val": {"val/accuracy": 0.55}}},
                           history)
    assert worse["comparisons"]["scratch"]["verdict"].startswith("negative transfer")
    same = transfer_block("val/accuracy", {"val/accuracy": 0.500}, {"scratch": {"val": {"val/accuracy": 0.505}}},
                          history)
    assert same["comparisons"]["scratch"]["verdict"].startswith("no clear difference")
    cer = transfer_block("val/cer", {"val/cer": 0.10}, {"scratch": {"val": {"val/cer": 0.30}}}, [])
    assert cer["comparisons"]["scratch"]["gain"] > 0  # lower CER is better
    text = transfer_section(block)
    assert "transfer helped" in text and "forgetting: not measured" in text and block["forgetting"] is None


def test_overfitting_is_flagged_when_the_gap_grows_while_the_metric_falls():
    over = overfitting(rows([0.6, 0.8, 0.7, 0.65], [1.0, 0.5, 0.2, 0.05], [1.1, 0.7, 0.9, 1.2]), "val/accuracy")
    assert over["flag"] and over["best_epoch"] == 2 and over["note"].startswith("overfitting: after epoch 2")
    assert [round(g, 2) for g in over["gap"]] == [0.1, 0.2, 0.7, 1.15]
    rising = overfitting(rows([0.5, 0.6, 0.7], [1.0, 0.9, 0.8], [1.0, 0.9, 0.8]), "val/accuracy")
    assert not rising["flag"] and "still improving" in rising["note"]
    flat_gap = overfitting(rows([0.6, 0.8, 0.7], [1.0, 0.5, 0.45], [1.1, 0.6, 0.56]), "val/accuracy")
    assert not flat_gap["flag"] and "no growing train/val gap" in flat_gap["note"]
    detection = overfitting([{"val/map50_95": 0.1, "train/loss": 1.0}, {"val/map50_95": 0.05, "train/loss": 0.5}],
                            "val/map50_95")
    assert not detection["flag"] and detection["gap"] == [None, None] and "no val/loss" in detection["note"]


def test_linear_probe_baseline_trains_a_linear_head_on_frozen_features(tmp_path, suite_cli):
    import json

    import torch
    import torchvision
    import yaml
    from safetensors.torch import load_file

    torch.manual_seed(0)
    weights = tmp_path / "body.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), weights)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
name: probe
task: image-classification
model: {{arch: resnet18, weights: {weights}, head: {{hidden: [8], dropout: 0.2}}}}
data: {{format: synthetic:shapes, root: {tmp_path / 'data'}, image_size: 32, resize: 32, augment: light,
        synthetic: {{classes: [circle, square], train_per_class: 4, val_per_class: 2, size: 32}}}}
schedule:
  - {{epochs: 1, train: head, lr: 1.0e-3}}
  - {{epochs: 1, train: all, lr: 1.0e-4}}
train: {{batch_size: 4}}
eval: {{compare: [linear_probe]}}
""")
    code, _, err = suite_cli("validate", str(recipe), "-s", "model.weights=none")
    assert code == 2 and "linear_probe probes pre-trained features" in err
    code, _, err = suite_cli("validate", str(recipe), "-s", "task=detection", "-s", "model.arch=yolo11n")
    assert code == 2 and "linear_probe applies to image-classification and speech-classification" in err
    code, out, _ = suite_cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert code == 0 and "| linear_probe |" in out
    probe = tmp_path / "run" / "baselines" / "linear_probe"
    sub = yaml.safe_load((probe / "recipe.yaml").read_text())
    assert sub["model"]["head"]["hidden"] == [] and sub["data"]["augment"] == "none"
    assert [(s["epochs"], s["train"]) for s in sub["schedule"]] == [(2, "head")]  # the whole budget, head only
    best, body = load_file(str(probe / "checkpoints" / "best.safetensors")), torch.load(weights, weights_only=True)
    assert torch.equal(best["layer4.1.conv2.weight"], body["layer4.1.conv2.weight"])  # the features stayed frozen
    assert sorted(k for k in best if k.startswith("fc")) == ["fc.bias", "fc.weight"]  # one linear layer, no hidden
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(doc["transfer"]["comparisons"]) == {"linear_probe"}


def test_forgetting_scores_the_source_head_before_and_after(tmp_path):
    """Weights from a suite run: its head and labels score its validation images; a head-only fine-tune leaves
    the backbone as it was (no forgetting, to the bit), training everything moves the source metrics."""
    import json

    import pytest

    from suite.errors import UserError
    from suite.runner import check_task_options, run
    from suite.tasks import load_recipe

    recipe = tmp_path / "pre.yaml"
    recipe.write_text(f"""\
name: pre
task: image-classification
model: {{arch: resnet18, weights: none}}
data: {{format: synthetic:shapes, root: {tmp_path / 'source'}, image_size: 32, resize: 32, augment: none,
        synthetic: {{classes: [circle, square, triangle], train_per_class: 4, val_per_class: 3, size: 32}}}}
schedule: [{{epochs: 2, train: all, lr: 1.0e-3}}]
train: {{batch_size: 6}}
""")
    pre = run(recipe, [], tmp_path / "pre")
    weights = tmp_path / "pre" / "checkpoints" / "best.safetensors"
    target = [f"model.weights={weights}", "name=target", f"data.root={tmp_path / 'target'}",
              "data.synthetic.classes=[star, ring]", f"eval.source={{root: {tmp_path / 'source' / 'val'}}}"]
    head_only = run(recipe, [*target, "schedule=[{epochs: 1, train: head, lr: 1.0e-2}]"], tmp_path / "head")
    kept = head_only.metrics["transfer"]["forgetting"]
    assert kept["samples"] == 9 and kept["classes"] == 3 and kept["before"] == kept["after"]
    assert kept["before"]["accuracy"] == pytest.approx(pre.metrics["val"]["val/accuracy"])  # the same 9 images
    assert kept["before"]["loss"] == pytest.approx(pre.metrics["val"]["val/loss"], rel=1e-5)
    assert kept["verdict"].startswith("source accuracy kept")
    moved = run(recipe, [*target, "schedule=[{epochs: 2, train: all, lr: 5.0e-2}]"], tmp_path / "all")
    f = json.loads((tmp_path / "all" / "metrics.json").read_text())["transfer"]["forgetting"]
    assert f["before"] == kept["before"] and f["after"]["loss"] != f["before"]["loss"]
    assert f["drop"]["loss"] == pytest.approx(f["after"]["loss"] - f["before"]["loss"])
    assert "| source task |" in (tmp_path / "all" / "report.md").read_text()

    with pytest.raises(UserError, match="eval.source .* is measured for image-classification"):
        check_task_options(load_recipe("recipes/quickstart/detect-shapes.yaml", ["eval.source={root: x}"]))
    with pytest.raises(UserError, match="model.weights is none"):
        check_task_options(load_recipe(recipe, ["eval.source={root: x}"]))
