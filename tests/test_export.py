"""`suite export`: ONNX bundles for every registry model, int8 variants, loud verification."""
import json

import numpy as np
import pytest
import torch

from suite.core import export as ex
from suite.datasets.shapes import make_shapes
from suite.exporting import VerificationFailed, export_run
from suite.runner import run
from suite.vision.models import build_model, list_models
from suite.vision.task import EXPORT_IO

BIG = {"vit_b_16": 224, "convnext_tiny": 64, "vgg16": 32, "vgg16_bn": 32, "vgg11": 32}


# One model per distinct block design: the others in list_models() are these blocks at other depths and widths
# (resnet34, vgg11, vgg16, efficientnet_b1-b3, mobilenet_v3_large), and exporting them took 88 s of the suite's
# time. VGG: vgg16_bn (its conv-BN-ReLU blocks hold vgg11's conv-ReLU ones).
DESIGNS = ["resnet18", "resnet50", "vgg16_bn", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny", "vit_b_16"]


def test_the_export_designs_are_registry_models():
    assert set(DESIGNS) <= set(list_models())


def shrink_keeping_the_design(model: torch.nn.Module) -> None:
    """vit_b_16's 12 encoder blocks and vgg16_bn's 25088x4096 and 4096x4096 Linears were 2 GB of ONNX to trace,
    write and load (26 s of the suite): 2 encoder blocks, and the same Linear-ReLU-Dropout classifier 64 wide."""
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder, "layers"):
        encoder.layers = encoder.layers[:2]
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, torch.nn.Sequential) and len(classifier) == 7:  # VGG's
        classifier[0] = torch.nn.Linear(classifier[0].in_features, 64)
        classifier[3] = torch.nn.Linear(64, 64)
        head = classifier[6]
        classifier[6] = type(head)(64, head.out_features)


@pytest.mark.parametrize("arch", DESIGNS)
def test_every_block_design_exports_with_dynamic_batch(arch, tmp_path):
    from suite_runtime import Bundle

    size = BIG.get(arch, 32)
    torch.manual_seed(0)
    model, _ = build_model(arch, 3)
    shrink_keeping_the_design(model)
    model.eval()
    example = torch.randn(2, 3, size, size)
    exporter = ex.export_onnx(model, example, tmp_path / "model.onnx", 18, EXPORT_IO)
    meta = {"task": "image-classification", "labels": ["a", "b", "c"],
            "preprocess": {"type": "image", "size": size, "resize": size, "mean": [0.5] * 3, "std": [0.25] * 3,
                           "interpolation": "bilinear", "channel_order": "RGB", "scale": 255.0, "max_aspect": 4},
            "postprocess": {"type": "softmax"}}
    spec = ex.ExportSpec(meta=meta, example=example, evaluate=lambda m: {}, metric="val/accuracy", io=EXPORT_IO)
    ex.write_json(tmp_path / "model.json", ex.model_json(spec, exporter, 18, {"fp32": {"file": "model.onnx"}}))
    parity = ex.tensor_parity(model, Bundle.load(tmp_path), example, (1, 3), atol=1e-4)
    assert parity["passed"], parity


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_shapes(root / "data", ["circle", "square", "star"], 6, 6, size=32, seed=0)
    recipe = root / "r.yaml"
    recipe.write_text(f"""\
name: exp
task: image-classification
model: {{arch: resnet18, weights: none}}
data: {{format: imagefolder, root: {data}, image_size: 32, resize: 32, augment: none}}
schedule: [{{epochs: 1, train: all, lr: 1.0e-3}}]
train: {{batch_size: 6}}
""")
    run(recipe, [], root / "run")
    return root / "run"


def test_export_writes_bundle_and_verifies_variants(trained_run):
    report = export_run(trained_run, quantize=["int8-static", "int8-dynamic"])
    out = trained_run / "export"
    meta = json.loads((out / "model.json").read_text())
    assert meta["labels"] == ["circle", "square", "star"]
    assert meta["input"]["shape"] == ["batch", 3, 32, 32] and meta["opset"] == 18
    assert meta["exporter"].startswith("torch.onnx") and meta["torch_version"] == torch.__version__
    assert meta["preprocess"]["size"] == 32 and meta["postprocess"]["type"] == "softmax"
    assert meta["variants"]["int8-static"]["quantization"]["activation"] == "QUInt8"  # the measured-fast choice
    verify = json.loads((out / "verify.json").read_text())
    assert verify == json.loads(json.dumps(report)) and verify["passed"] is True
    fp32 = verify["variants"]["fp32"]
    assert len(fp32["tensor"]["shapes"]) >= 3 and all(r["shape"][0] != 2 for r in fp32["tensor"]["shapes"])
    assert max(r["max_abs_diff"] for r in fp32["tensor"]["shapes"]) <= 1e-4
    assert fp32["task"]["torch"] == pytest.approx(fp32["task"]["onnxruntime"])
    for name in ("int8-static", "int8-dynamic"):
        assert "delta" in verify["variants"][name]["task"]
    assert (out / "model.int8-static.onnx").stat().st_size < (out / "model.onnx").stat().st_size / 2


def test_verification_fails_loudly(trained_run, monkeypatch):
    from suite_runtime import Bundle

    real_run = Bundle.run

    def noisy(self, batch):
        return np.asarray(real_run(self, batch)) + 1e-2  # a bundle that no longer matches PyTorch

    monkeypatch.setattr(Bundle, "run", noisy)
    with pytest.raises(VerificationFailed, match=r"fp32: max abs diff .* > atol 0.0001"):
        export_run(trained_run)
    verify = json.loads((trained_run / "export" / "verify.json").read_text())
    assert verify["passed"] is False and verify["variants"]["fp32"]["tensor"]["passed"] is False

    monkeypatch.setattr(Bundle, "run", lambda self, batch: np.full((len(batch), 3), np.nan, np.float32))
    with pytest.raises(VerificationFailed, match="NaN"):
        export_run(trained_run)


def test_task_parity_limits():
    ok = ex.task_parity({"val/accuracy": 0.90}, {"val/accuracy": 0.896}, "val/accuracy", 0.5)
    bad = ex.task_parity({"val/accuracy": 0.90}, {"val/accuracy": 0.89}, "val/accuracy", 0.5)
    assert ok["passed"] and not bad["passed"] and bad["drop_points"] == pytest.approx(1.0)
    assert not ex.task_parity({"val/mse": 1.0}, {"val/mse": 2.0}, "val/mse", 0.5)["passed"]


def test_cli_predict_and_eval_onnx_use_the_bundle(trained_run, capsys):
    from suite.cli import main

    export_run(trained_run)
    capsys.readouterr()
    image = next((trained_run.parent / "data" / "val" / "star").glob("*.png"))
    main(["predict", str(trained_run / "export"), str(image), "--top-k", "2"])
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(image)) and len(line.split("\t")[1].split("  ")) == 2
    main(["eval", str(trained_run), "--onnx"])
    onnx_out = capsys.readouterr().out
    main(["eval", str(trained_run)])
    torch_out = capsys.readouterr().out
    acc = [float(next(l.split()[1] for l in out.splitlines() if l.startswith("val/accuracy")))
           for out in (onnx_out, torch_out)]
    assert acc[0] == pytest.approx(acc[1])
