"""The `suite` command: exit codes, one-line errors, validate, ls, data make, eval."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_user_error_exits_2_with_one_line(suite_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "recipes/quickstart/shapes-pretrain.yaml").read_text().replace("weights:", "wieghts:"))
    code, out, err = suite_cli("validate", str(bad))
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "model.wieghts: unknown key; did you mean 'weights'?" in err and "bad.yaml:7" in err


def test_validate_scans_data_and_checks_schedule(suite_cli, tmp_path):
    recipe = ROOT / "recipes/quickstart/shapes-finetune.yaml"
    # no pretrain run here: random init, so validate gets to the data and the schedule
    code, out, _ = suite_cli("validate", str(recipe), "-s", f"data.root={tmp_path / 'd'}", "-s", "model.weights=none", "-s", "eval.source=null",
                        "-s", "data.synthetic.train_per_class=2", "-s", "data.synthetic.val_per_class=1")
    assert code == 0 and "4 classes, 6 groups, 3 stages" in out and "train 8 images, 8 kept; val 4 images, 4 kept" in out
    code, _, err = suite_cli("validate", str(recipe), "-s", f"data.root={tmp_path / 'd'}", "-s", "model.weights=none", "-s", "eval.source=null",
                        "-s", "data.synthetic.train_per_class=2", "-s", "data.synthetic.val_per_class=1",
                        "-s", "schedule.1.train=[layer9]")
    assert code == 2 and "unknown group 'layer9'" in err and "stem, layer1" in err


def test_ls(suite_cli):
    code, out, _ = suite_cli("ls", "models")
    assert code == 0 and "resnet18" in out and "vit_b_16" in out and "timm:" in out
    code, out, _ = suite_cli("ls", "groups", "resnet18", "--classes", "2")
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4", "head", "total"]
    assert "1,026 params" in out  # head: 512 * 2 + 2
    code, out, _ = suite_cli("ls", "recipes")
    assert "recipes/vision/vgg16-cifar10.yaml" in out and "image-classification" in out
    code, _, err = suite_cli("ls", "groups", "resnet81")
    assert code == 2 and "resnet18" in err


def test_data_make_shapes_and_eval_a_run(suite_cli, tmp_path):
    code, out, _ = suite_cli("data", "make", "shapes", "--out", str(tmp_path / "s"), "--classes", "circle,star",
                        "--train-per-class", "4", "--val-per-class", "2", "--size", "32")
    assert code == 0 and len(list((tmp_path / "s" / "train" / "star").glob("*.png"))) == 4
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
name: cli
task: image-classification
model: {{arch: resnet18, weights: none}}
data: {{format: imagefolder, root: {tmp_path / 's'}, image_size: 32, resize: 32}}
schedule: [{{epochs: 1, train: all, lr: 1.0e-3}}]
train: {{batch_size: 4}}
""")
    code, out, _ = suite_cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert code == 0 and "| fine-tuned |" in out
    code, _, err = suite_cli("run", str(recipe), "--out", str(tmp_path / "run"))
    assert code == 2 and "already holds a run" in err and "--resume" in err  # never silently replaced
    code, out, _ = suite_cli("eval", str(tmp_path / "run"))
    assert code == 0 and "val/accuracy" in out
    code, _, err = suite_cli("eval", str(tmp_path / "run"), "--split", "test")
    assert code == 2 and "no 'test' split" in err
    code, _, err = suite_cli("run", "--resume", str(tmp_path / "s"))
    assert code == 2 and "no checkpoints/last.pt" in err


def test_ls_lists_every_modality_through_the_registry(suite_cli):
    code, out, _ = suite_cli("ls", "models")
    assert code == 0 and "wav2vec2-base" in out and "yolo11n" in out and "fasterrcnn_resnet50_fpn_v2" in out
    code, out, _ = suite_cli("ls", "groups", "wav2vec2-base", "--classes", "12")
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert code == 0 and names == ["feature_encoder", "feature_projection", *(f"encoder.{i}" for i in range(12)),
                                   "head", "total"]
    assert "199,948 params" in out  # head: projector 768 * 256 + 256 = 196,864, classifier 256 * 12 + 12 = 3,084


def test_the_console_script_freezes_the_collector_before_exit_and_main_does_not(monkeypatch, capsys):
    """`suite` (entry) ends with gc.freeze(), so the interpreter's exit skips collecting the imports' objects
    (1.2 s after a run); main(), which tests and notebooks call in-process, leaves the collector alone."""
    import gc

    from suite import cli

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr("sys.argv", ["suite", "--help"])
    cli.main(["--help"])
    assert frozen == []
    cli.entry()
    assert frozen == [True] and "Fine-tune pre-trained models" in capsys.readouterr().out


def test_preload_imports_torch_without_the_collector_for_training_commands_only():
    """entry() imports torch with the cyclic collector off for the commands that need torch, then freezes those
    objects and turns the collector back on; `predict` (torch-free) and --help import nothing."""
    script = """
import gc, sys
from suite import cli
assert not cli.preload(["predict", "bundle", "x.png"]) and not cli.preload(["run", "r.yaml", "--help"])
assert not cli.preload([]) and "torch" not in sys.modules and gc.get_freeze_count() == 0
assert cli.preload(["run", "r.yaml"]) and "torchvision" in sys.modules and gc.isenabled()
print(gc.get_freeze_count())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 100_000  # torch's and torchvision's objects, frozen
