"""Nothing from a user's disk runs code unless the user says so: weights, checkpoints and recipes that carry a
pickled payload are refused with exit 2 and a line naming the file and the opt-in; the payload never runs."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from suite.cli import main
from suite.errors import UserError


class Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_file(path: Path, marker: Path, wrap=lambda p: {"model": p}) -> Path:
    torch.save(wrap(Payload(marker)), path)
    return path


def call(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr().err


IMAGE_RECIPE = """\
name: trust
task: image-classification
model: {{arch: resnet18, weights: {weights}}}
data: {{format: synthetic:shapes, root: {root}, image_size: 32, resize: 32, augment: none,
        synthetic: {{classes: [circle, square], train_per_class: 2, val_per_class: 1, size: 32}}}}
schedule: [{{epochs: 1, train: head, lr: 1.0e-3}}]
train: {{batch_size: 2}}
"""
YOLO_RECIPE = """\
name: trust-yolo
task: detection
model: {{arch: yolo11n, weights: {weights}}}
data: {{format: synthetic:shapes, root: {root}, image_size: 64, augment: none,
        synthetic: {{classes: [circle, square], train_per_class: 2, val_per_class: 1, size: 64, max_objects: 1}}}}
schedule: [{{epochs: 1, train: head, lr: 1.0e-3}}]
train: {{batch_size: 2}}
"""


@pytest.mark.parametrize("template, suffix", [(IMAGE_RECIPE, ".pth"), (YOLO_RECIPE, ".pt")], ids=["image", "yolo"])
def test_a_weights_file_carrying_code_is_refused_and_never_runs(template, suffix, tmp_path, capsys):
    marker = tmp_path / "pwned"
    weights = payload_file(tmp_path / f"some{suffix}", marker)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(template.format(weights=weights, root=tmp_path / "data"))
    code, err = call(capsys, "run", str(recipe), "--out", str(tmp_path / "run"))
    assert code == 2 and not marker.exists()
    line = err.strip().splitlines()[-1]
    assert str(weights) in line and "trust_weights" in line and "--trust-weights" in line


def test_an_ultralytics_checkpoint_loads_without_trust_and_a_pickled_state_dict_with_it(tmp_path):
    """The real thing Ultralytics writes (its layers as pickled objects) loads through the allow-list."""
    from ultralytics import YOLO

    from suite.detection import yolo

    torch.manual_seed(0)
    saved = YOLO("yolo11n.yaml")
    saved.save(str(tmp_path / "yolo11n.pt"))
    in_file = torch.load(tmp_path / "yolo11n.pt", weights_only=False)["model"]  # our own file: safe to unpickle
    planted = {k: v.float() if v.is_floating_point() else v for k, v in in_file.state_dict().items()}
    model = yolo.build_model("yolo11n", [f"c{i}" for i in range(80)], str(tmp_path / "yolo11n.pt"))
    got = model.state_dict()
    assert got.keys() == planted.keys() and all(torch.equal(got[k], planted[k]) for k in planted)

    from suite.vision import models as vm

    whole = vm.build_model("resnet18", 3)[0]
    torch.save(whole, tmp_path / "whole.pth")  # a pickled module object, not a state_dict
    with pytest.raises(UserError, match="trust_weights"):
        vm.build_model("resnet18", 3, weights=str(tmp_path / "whole.pth"))
    trusted, _ = vm.build_model("resnet18", 3, weights=str(tmp_path / "whole.pth"), trust=True)
    assert all(torch.equal(a, b) for a, b in zip(trusted.state_dict().values(), whole.state_dict().values()))


def test_a_resume_checkpoint_swapped_for_a_payload_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(IMAGE_RECIPE.format(weights="none", root=tmp_path / "data"))
    marker = tmp_path / "pwned"
    payload_file(run_dir / "checkpoints" / "last.pt", marker, wrap=lambda p: {"position": {}, "model": p})
    code, err = call(capsys, "run", "--resume", str(run_dir))
    assert code == 2 and not marker.exists() and "last.pt" in err


def test_a_recipe_with_a_python_tag_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\ntask: image-classification\n")
    code, err = call(capsys, "validate", str(recipe))
    assert code == 2 and not marker.exists() and "not valid YAML" in err


def test_hugging_face_folder_with_only_a_pickled_bin_is_refused(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    from suite.speech import wav2vec2

    folder = tmp_path / "hf"
    model = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**wav2vec2.SIZES["wav2vec2-tiny"], num_labels=2))
    model.save_pretrained(folder)
    for f in folder.glob("*.safetensors"):  # a folder as older releases ship it: pytorch_model.bin only
        f.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"no \.safetensors weights.*trust_weights"):
        wav2vec2.build_model("wav2vec2-tiny", 2, str(folder), ctc=False)
    assert wav2vec2.build_model("wav2vec2-tiny", 2, str(folder), ctc=False, trust=True) is not None


def test_plain_pickle_files_are_never_unpickled_with_code(tmp_path):
    from suite.core import weights as W

    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps({"w": Payload(marker)}))  # not a torch zip: the legacy pickle path
    with pytest.raises(UserError):
        W.read_state_dict(raw)
    assert not marker.exists()
