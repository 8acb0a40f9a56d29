"""YOLO under the freeze schedule: Ultralytics trains each stage; frozen layers stay bitwise fixed."""
import json
from pathlib import Path

import pytest
import torch

from suite.core.loop import FitOptions
from suite.core.report import read_history
from suite.detection import yolo
from suite.detection.task import DetectionModality
from suite.errors import TrainingDiverged, UserError
from suite.runner import run
from suite.tasks import load_recipe

RECIPE = """\
name: yolo-tiny
task: detection
model: {{arch: yolo11n, weights: {weights}}}
data:
  format: synthetic:shapes
  root: {root}
  synthetic: {{classes: [circle, square, triangle], train_per_class: 3, val_per_class: 2, size: 64, seed: 0, max_objects: 2}}
  image_size: 64
  augment: none
schedule:
  - {{epochs: 1, train: head, lr: 0.01}}
  - {{epochs: 1, train: [neck, head], lr: 0.01}}
  - {{epochs: 1, train: all, lr: 0.01, layer_decay: 0.9}}
optim: {{name: sgd, weight_decay: 0.0005}}
train: {{batch_size: 4, seed: 0}}
"""


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo")
    path = root / "r.yaml"
    path.write_text(RECIPE.format(weights="none", root=root / "data"))
    return path


def _layers(state: dict, prefixes: tuple[str, ...]) -> dict:
    return {k: v.clone() for k, v in state.items() if k.startswith(prefixes)}


def test_stage_transitions_freeze_bitwise_then_train(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    mod = DetectionModality()
    data = mod.load_data(recipe)
    torch.manual_seed(0)
    model = mod.build_model(recipe, data.labels, "none")
    groups = mod.groups(recipe, model)
    names = [g.name for g in groups]
    assert names[0] == "backbone.0" and names[-1] == "head" and any(n.startswith("neck.") for n in names)
    n_backbone = len(model.yaml["backbone"])
    backbone = tuple(f"model.{i}." for i in range(n_backbone))
    neck = tuple(f"model.{i}." for i in range(n_backbone, len(model.model) - 1))
    head = (f"model.{len(model.model) - 1}.",)

    snapshots = [{k: v.clone() for k, v in model.state_dict().items()}]  # before, then after each 1-epoch stage
    snap = lambda pos: snapshots.append({k: v.clone() for k, v in model.state_dict().items()})  # noqa: E731
    train = mod.trainer(recipe, data)  # Ultralytics' trainer runs the stages
    train(model, groups, recipe.stages(), FitOptions(select_metric="val/map50_95"), tmp_path, torch.device("cpu"),
          False, [snap])
    assert len(snapshots) == 4

    def same(a, b, prefixes):
        return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefixes))

    def changed(a, b, prefixes):
        return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefixes) and a[k].is_floating_point())

    s0, s1, s2, s3 = snapshots
    # stage 0 trains the head only: backbone and neck are bitwise fixed, weights AND BatchNorm statistics
    assert same(s0, s1, backbone + neck) and changed(s0, s1, head)
    # stage 1 unfreezes the neck: backbone still bitwise fixed, neck changes
    assert same(s1, s2, backbone) and changed(s1, s2, neck)
    # stage 2 trains everything: the backbone finally changes
    assert changed(s2, s3, backbone)
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,stage,lr") and len(history) == 4
    assert (tmp_path / "checkpoints" / "best.safetensors").is_file() and (tmp_path / "checkpoints" / "last.pt").is_file()


def test_layer_decay_reaches_ultralytics_optimizer(recipe_file):
    recipe = load_recipe(recipe_file)
    mod = DetectionModality()
    data = mod.load_data(recipe)
    model = mod.build_model(recipe, data.labels, "none")
    groups = mod.groups(recipe, model)
    Trainer = yolo._trainer_class()
    t = Trainer.__new__(Trainer)
    from suite.core.schedule import group_lrs

    t.suite_groups, t.suite_lrs = groups, group_lrs(recipe.stages()[2], [g.name for g in groups])
    t.suite_opts = FitOptions(optimizer="sgd", weight_decay=5e-4, momentum=0.9)
    opt = t.build_optimizer(model)
    lrs = {g["name"].split("/")[0]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(0.01)
    assert lrs["backbone.0"] == pytest.approx(0.01 * 0.9 ** (len(groups) - 1))
    decayed = [g for g in opt.param_groups if not g["name"].endswith("/no_decay")]
    assert all(g["weight_decay"] == 5e-4 for g in decayed)
    assert all(p.ndim > 1 for g in decayed for p in g["params"])


def test_run_exports_verifies_and_serves_the_bundle(recipe_file, tmp_path, capsys, monkeypatch):
    """One tiny run: mAP beside Ultralytics' numbers, export + int8 verified through the runtime, CLI paths."""
    from suite.cli import main

    monkeypatch.setattr(yolo, "PROGRESS_EVERY_S", 0.0)  # a progress line after every batch (10 s in real use)
    out = tmp_path / "run"
    result = run(recipe_file, ["schedule=[{epochs: 2, train: all, lr: 0.01}]", "export.onnx=true",
                               "export.quantize=[int8-static]", "export.calibration_samples=4",
                               "bench.batch_sizes=[1]", "bench.iters=3", "bench.warmup=1"], out)
    captured = capsys.readouterr()  # not a terminal: Ultralytics' bars as plain lines, one line for the freezing
    log = captured.out
    assert "\r" not in log and "Freezing layer" not in log and "stage 0: 0 of 18 groups frozen" in log
    assert log.count("2/2 ") >= 1 and log.count("━") >= 4  # the epochs' bars, each once, at their end
    assert "epoch 2/2 (stage 0): 3/3 batches (" in captured.err  # and plain lines while an epoch runs
    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["val"]) >= {"val/map50", "val/map50_95"}
    report = (out / "report.md").read_text()
    assert "## mAP cross-check" in report and "Ultralytics validator" in report and "Export parity" in report
    assert (out / "plots" / "pr_val.png").is_file() and (out / "plots" / "predictions_val.png").is_file()
    assert result.metrics["val"]["val/map50_95"] >= 0.0

    meta = json.loads((out / "export" / "model.json").read_text())
    assert meta["preprocess"]["type"] == "letterbox" and meta["preprocess"]["size"] == 64
    assert meta["postprocess"]["type"] == "yolo" and meta["labels"] == ["circle", "square", "triangle"]
    verify = json.loads((out / "export" / "verify.json").read_text())
    assert verify["passed"] and set(verify["variants"]) == {"fp32", "int8-static"}
    fp32 = verify["variants"]["fp32"]
    assert abs(fp32["task"]["delta"]) <= 0.01 and fp32["tensor"]["passed"]
    assert meta["variants"]["int8-static"]["quantization"]["float_nodes"] > 0  # box decoding kept float
    assert (out / "bench.json").is_file()

    capsys.readouterr()
    main(["eval", str(out), "--onnx"])
    evaluated = dict(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("val/"))
    assert float(evaluated["val/map50_95"]) == pytest.approx(verify["variants"]["fp32"]["task"]["onnxruntime"], abs=1e-6)
    image = sorted(Path(recipe_file).parent.joinpath("data", "images", "val").iterdir())[0]
    main(["predict", str(out / "export"), str(image), "--conf", "0.0001"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(str(image))]
    assert lines and all(len(line.split("\t")) == 4 for line in lines)  # file, label, score, box


def test_an_amp_overflow_lowers_the_scale_and_training_goes_on():
    """fp16 AMP, as Ultralytics runs it on CUDA (here on CPU): a step that overflows at 2**16 is skipped and the
    scale halves until the steps are finite; the weights then move. Before, the scale stuck and nothing trained."""
    Trainer = yolo._trainer_class()
    t = Trainer.__new__(Trainer)
    torch.manual_seed(0)
    t.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    t.optimizer = torch.optim.SGD(t.model.parameters(), lr=0.01)
    t.scaler, t.ema = torch.amp.GradScaler("cpu"), None
    w0 = t.model[0].weight.detach().clone()
    scales = []
    for _ in range(12):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = t.model(torch.randn(16, 4)).float().sum() * 20  # 20 * 2**16 overflows fp16's gradients
        t.scaler.scale(loss).backward()
        t.optimizer_step()
        scales.append(t.scaler.get_scale())
    assert scales[0] < 2.0 ** 16 and scales == sorted(scales, reverse=True) and scales[-1] == scales[-2]
    assert not torch.equal(w0, t.model[0].weight)
    assert all(p.grad is None or not p.grad.any() for p in t.model.parameters())


def test_ultralytics_amp_check_loads_no_pickle_on_cuda(monkeypatch, recipe_file, tmp_path):
    """Ultralytics' check_amp would torch.load(weights_only=False) yolo26n.pt on CUDA: the suite answers for it
    there (AMP as train.precision asks) and leaves CPU to it (False: fp32); the real one is back afterwards."""
    import ultralytics.engine.trainer as ut

    calls = []
    monkeypatch.setattr(ut, "check_amp", lambda model: calls.append(model) or False)
    on_cuda = type("OnCuda", (), {"parameters": lambda self: iter([type("P", (), {"device": torch.device("cuda")})])})()
    gpu_name = ["NVIDIA H200"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu_name[0])
    on_cpu = torch.nn.Linear(2, 2)
    real = ut.check_amp
    with yolo._no_amp_check():
        assert ut.check_amp(on_cuda) is True and calls == []
        assert ut.check_amp(on_cpu) is False and calls == [on_cpu]
        gpu_name[0] = "NVIDIA GeForce GTX 1650"  # fp16 breaks there: Ultralytics' answer (False), no file loaded
        assert ut.check_amp(on_cuda) is False and len(calls) == 2
    assert ut.check_amp is real

    def amp(precision, device):
        recipe = load_recipe(recipe_file, [f"train.precision={precision}"])
        return yolo.stage_args(recipe, tmp_path / "d.yaml", recipe.stages()[0], 0, [], device, tmp_path)["amp"]

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert [amp(p, cpu) for p in ("auto", "fp32", "fp16")] == [True, False, "fp16"]
    with pytest.raises(UserError, match="train.precision: bf16 for YOLO needs a CUDA GPU with native bf16"):
        amp("bf16", cpu)  # Ultralytics' autocast would raise at the first batch
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp("bf16", gpu) == "bf16"


def test_using_yolo_leaves_pil_open_alone(recipe_file):
    """Ultralytics patches PIL.Image.open to pip-install pi-heif on unreadable files; our scans need PIL's own."""
    import PIL.Image
    from ultralytics.utils import patches

    PIL.Image.open = patches.image_open  # as a bare `import ultralytics` leaves it
    yolo.build_model("yolo11n", ["a"], "none")
    assert PIL.Image.open is patches._image_open


class Stop(Exception):
    """Stands in for a kill between two stages."""


def test_run_killed_between_stages_resumes_to_the_same_weights(recipe_file, tmp_path):
    """The library owns the epochs, the suite the stages: last.pt at each stage boundary; --resume reruns the
    stage that was cut short from its start, and ends with the weights of an uninterrupted run."""
    two = ["schedule=[{epochs: 1, train: head, lr: 0.01}, {epochs: 1, train: all, lr: 0.01}]"]
    whole = run(recipe_file, two, tmp_path / "whole")

    def kill_in_stage_1(pos):
        if pos.stage == 1:
            raise Stop

    with pytest.raises(Stop):
        run(recipe_file, two, tmp_path / "cut", on_epoch_end=[kill_in_stage_1])
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["position"]["stage"] == 1 and len(saved["history"]) == 1  # the stage-0 boundary
    resumed = run(None, resume=tmp_path / "cut")

    from safetensors.torch import load_file

    a, b = (load_file(str(d / "checkpoints" / "best.safetensors")) for d in (whole.run_dir, resumed.run_dir))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = read_history(tmp_path / "cut" / "history.csv", times=False)
    assert len(rows) == 2 and rows == read_history(whole.run_dir / "history.csv", times=False)
    assert resumed.metrics["val"] == whole.metrics["val"]


def test_non_finite_losses_stop_a_yolo_stage(recipe_file, tmp_path, monkeypatch):
    recipe = load_recipe(recipe_file, ["train.max_nonfinite=2"])
    mod = DetectionModality()
    data = mod.load_data(recipe)
    model = mod.build_model(recipe, data.labels, "none")
    groups = mod.groups(recipe, model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    real = type(model).loss

    def nan_loss(self, batch, preds=None):
        loss, items = real(self, batch, preds)
        return loss * float("nan"), items

    monkeypatch.setattr(type(model), "loss", nan_loss)
    with pytest.raises(TrainingDiverged, match="2 batches in a row"):
        mod.trainer(recipe, data)(model, groups, recipe.stages(), FitOptions(max_nonfinite=2,
                                  select_metric="val/map50_95"), tmp_path, torch.device("cpu"), False, [])
    after = dict(model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step was taken on a NaN gradient


def test_sigterm_stops_yolo_at_the_end_of_its_epoch_and_resume_continues_the_stage(recipe_file, tmp_path):
    import os
    import signal

    from suite.core.stages import Interrupted

    one_stage = ["schedule=[{epochs: 2, train: all, lr: 0.01}]"]

    def sigterm_after_first_epoch(pos):
        if pos.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as stopped:
        run(recipe_file, one_stage, tmp_path / "run", on_epoch_end=[sigterm_after_first_epoch])
    assert stopped.value.exit_code == 143 and "end of epoch 1" in stopped.value.where
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["inside"]["epoch"] == 1 and saved["inside"]["optimizer"]["param_groups"]  # Ultralytics' own state
    resumed = run(None, resume=tmp_path / "run")
    rows = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and [r.split(",")[:2] for r in rows[1:]] == [["1", "0"], ["2", "0"]]
    assert resumed.metrics["val"]["val/map50_95"] >= 0


def test_train_compile_is_refused_for_ultralytics_trainer(recipe_file):
    from suite.errors import UserError

    recipe = load_recipe(recipe_file, ["train.compile=true"])
    with pytest.raises(UserError, match="train.compile applies to the suite's own training loop"):
        DetectionModality().trainer(recipe, None)
