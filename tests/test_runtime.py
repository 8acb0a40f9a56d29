"""suite_runtime (the torch-free deploy package in export/): preprocessing parity with the training side,
predictions equal to PyTorch's, bundle loading errors, and the CLI, also with torch made unimportable."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from suite.core.data import load_rgb
from suite.vision.transforms import Preprocess, build_transforms
from suite_runtime import Bundle, Prediction, preprocess_image, softmax
from suite_runtime.cli import main as cli_main
from suite_runtime.preprocess import limit_aspect, to_rgb

LABELS = ["circle", "square", "triangle"]
PRE = Preprocess(size=32, resize=36)  # small, so the whole file runs in seconds


def spec_of(pre: Preprocess) -> dict:
    """The preprocess block exactly as the vision modality writes it into model.json."""
    return {"type": "image", **dataclasses.asdict(pre), "channel_order": "RGB", "scale": 255.0, "max_aspect": 4}


def make_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)

    def rgb(w: int, h: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    def with_alpha(img: Image.Image) -> Image.Image:
        alpha = Image.fromarray(rng.integers(0, 256, img.size[::-1], dtype=np.uint8))
        return Image.merge(img.mode + "A", (*img.split(), alpha))

    palette = rgb(70, 50).quantize(16)
    palette.info["transparency"] = 3
    return {
        "rgb_120x80": rgb(120, 80), "L": rgb(64, 48).convert("L"), "CMYK": rgb(50, 70).convert("CMYK"),
        "RGBA": with_alpha(rgb(90, 60)), "LA": with_alpha(rgb(40, 40).convert("L")), "P_transparency": palette,
        "P": rgb(45, 45).quantize(8), "1": rgb(33, 47).convert("1"), "YCbCr": rgb(41, 39).convert("YCbCr"),
        "I;16": Image.fromarray(rng.integers(0, 65536, (60, 90), dtype=np.uint16)),
        "I_negative": Image.fromarray(rng.integers(-5000, 70000, (30, 50), dtype=np.int32)),
        "F_unit": Image.fromarray(rng.random((40, 30), dtype=np.float32)),
        "tiny_5x3": rgb(5, 3), "one_pixel": rgb(1, 1), "long_300x40": rgb(300, 40), "tall_40x300": rgb(40, 300),
        "banner_2x2000": rgb(2000, 2), "smaller_than_crop_17x17": rgb(17, 17), "odd_37x36": rgb(37, 36),
    }


IMAGES = make_images()


def max_diff(img: Image.Image, pre: Preprocess) -> float:
    ours = preprocess_image(img, spec_of(pre))
    ref = build_transforms(pre, "none")[1](img).numpy()
    assert ours.shape == ref.shape == (3, pre.size, pre.size) and ours.dtype == np.float32
    return float(np.abs(ours - ref).max())


# ----------------------------------------------------------------------------- preprocessing parity


@pytest.mark.parametrize("name", list(IMAGES))
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_preprocess_matches_training_eval_transform(name, interpolation):
    pre = Preprocess(size=32, resize=36, interpolation=interpolation, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    assert max_diff(IMAGES[name], pre) <= 1e-6


@pytest.mark.parametrize("name", ["rgb_120x80", "RGBA", "I;16", "long_300x40", "tiny_5x3", "smaller_than_crop_17x17"])
def test_preprocess_matches_with_imagenet_spec(name):
    assert max_diff(IMAGES[name], Preprocess(size=224, resize=256)) <= 1e-6


@pytest.mark.parametrize("resize,size", [(20, 32), (21, 32), (24, 25)])
def test_center_crop_pads_with_zero_like_torchvision(resize, size):
    # The recipe never allows resize < size, but a hand-written bundle can; torchvision pads with 0 then.
    img, pre = IMAGES["odd_37x36"], Preprocess(size=size, resize=size)
    ref = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), v2.ToImage(),
                      v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))])(img)
    ours = preprocess_image(img, {**spec_of(pre), "resize": resize})
    assert np.abs(ours - ref.numpy()).max() <= 1e-6
    black = (0 - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    assert np.allclose(ours[:, -1, :], black[:, None], atol=1e-6)  # the bottom row is always padding here


def test_array_and_path_inputs_equal_pil_input(tmp_path):
    img = IMAGES["rgb_120x80"]
    spec = spec_of(PRE)
    from_pil = preprocess_image(img, spec)
    img.save(tmp_path / "x.png")
    assert np.array_equal(preprocess_image(np.asarray(img), spec), from_pil)
    assert np.array_equal(preprocess_image(tmp_path / "x.png", spec), from_pil)
    assert np.array_equal(preprocess_image(str(tmp_path / "x.png"), spec), from_pil)
    gray = IMAGES["L"]
    assert np.array_equal(preprocess_image(np.asarray(gray), spec), preprocess_image(gray, spec))


def test_exif_orientation_is_applied_like_the_training_loader(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": phone photos are stored sideways with this tag
    path = tmp_path / "phone.jpg"
    IMAGES["rgb_120x80"].save(path, exif=exif, quality=95)
    ours = preprocess_image(path, spec_of(PRE))
    eval_tf = build_transforms(PRE, "none")[1]
    assert load_rgb(path).size == (80, 120)
    assert np.abs(ours - eval_tf(load_rgb(path)).numpy()).max() <= 1e-6
    assert np.abs(ours - eval_tf(Image.open(path).convert("RGB")).numpy()).max() > 0.1


def test_to_rgb_composites_alpha_on_white_and_rescales_16_bit():
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    full = Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16))
    assert to_rgb(full).getpixel((1, 1)) == (255, 255, 255)  # PIL's own I->L would clip, not rescale


def test_limit_aspect_crops_the_long_side_centrally():
    assert limit_aspect(Image.new("RGB", (300, 40))).size == (160, 40)
    assert limit_aspect(Image.new("RGB", (40, 300))).size == (40, 160)
    assert limit_aspect(Image.new("RGB", (100, 30)), max_aspect=2).size == (60, 30)
    assert limit_aspect(Image.new("RGB", (120, 80))).size == (120, 80)


def test_spec_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown preprocess type 'audio'"):
        preprocess_image(IMAGES["L"], {**spec_of(PRE), "type": "audio"})
    with pytest.raises(ValueError, match="lanczoz"):
        preprocess_image(IMAGES["L"], {**spec_of(PRE), "interpolation": "lanczoz"})
    with pytest.raises(ValueError, match="size"):
        preprocess_image(IMAGES["L"], {"type": "image", "resize": 36, "mean": [0] * 3, "std": [1] * 3})
    # keys a future exporter adds are ignored
    assert preprocess_image(IMAGES["L"], {**spec_of(PRE), "crop_pct": 0.9}).shape == (3, 32, 32)


# ----------------------------------------------------------------------------- bundles


class TinyNet(nn.Module):
    def __init__(self, outputs: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.head = nn.Linear(8 * 4 * 4, outputs)
        with torch.no_grad():
            self.head.weight.mul_(8)  # spread the logits so labels are far from ties

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def write_bundle(folder: Path, model: nn.Module, task: str, labels: list[str], post: str) -> Path:
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but small and fast
        torch.onnx.export(model, torch.randn(2, 3, 32, 32), str(folder / "model.onnx"), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=18, dynamo=False)
    variants = {"fp32": {"file": "model.onnx", "size_bytes": 1}}
    meta = {"format_version": 1, "task": task, "labels": labels,
            "input": {"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32", "layout": "NCHW"},
            "outputs": [{"name": "logits", "shape": ["batch", len(labels)]}],
            "preprocess": spec_of(PRE), "postprocess": {"type": post}, "variants": variants,
            "default_variant": "fp32", "exporter": "test", "opset": 18, "torch_version": torch.__version__,
            "created": "2024-01-01T00:00:00Z", "some_future_key": {"ignored": True}}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyNet(len(LABELS)).eval()
    folder = write_bundle(tmp_path_factory.mktemp("cls") / "export", model, "image-classification", LABELS,
                          "softmax")
    # a second variant, so variant selection is exercised on a real quantized file
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(folder / "model.onnx"), str(folder / "model.int8-dynamic.onnx"),
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    meta = json.loads((folder / "model.json").read_text())
    meta["variants"]["int8-dynamic"] = {"file": "model.int8-dynamic.onnx"}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder, model


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    names = ["rgb_120x80", "L", "RGBA", "P_transparency", "long_300x40", "tiny_5x3", "smaller_than_crop_17x17"]
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        IMAGES[name].save(path)
        paths.append(str(path))
    IMAGES["CMYK"].save(folder / "cmyk.jpg", quality=95)
    return paths + [str(folder / "cmyk.jpg")]


def torch_probs(model: nn.Module, images: list[Image.Image]) -> np.ndarray:
    eval_tf = build_transforms(PRE, "none")[1]
    with torch.inference_mode():
        return torch.softmax(model(torch.stack([eval_tf(im) for im in images])), dim=1).numpy()


def check_top(preds: list[Prediction], probs: np.ndarray, k: int) -> None:
    assert len(preds) == len(probs)
    for p, ref in zip(preds, probs):
        order = np.argsort(-ref)[:k]
        assert list(p.scores) == [LABELS[i] for i in order]  # best first
        assert p.label == LABELS[order[0]] and p.score == pytest.approx(float(ref[order[0]]), abs=1e-4)
        assert np.allclose(list(p.scores.values()), ref[order], atol=1e-4) and p.value is None


def test_predict_files_matches_torch(classifier, image_files):
    folder, model = classifier
    preds = Bundle.load(folder).predict(image_files, top_k=2)
    check_top(preds, torch_probs(model, [load_rgb(p) for p in image_files]), k=2)
    assert len({p.label for p in preds}) > 1  # a constant model would pass the comparison trivially


def test_predict_arrays_and_pil_match_torch(classifier):
    folder, model = classifier
    images = [IMAGES[n] for n in ("rgb_120x80", "CMYK", "I;16", "banner_2x2000")]
    bundle = Bundle.load(folder)
    check_top(bundle.predict(images, top_k=3), torch_probs(model, images), k=3)
    arrays = [np.asarray(to_rgb(im)) for im in images]
    check_top(bundle.predict(arrays, top_k=1), torch_probs(model, images), k=1)
    single = bundle.predict(arrays[0])  # one input, not a list, still gives a list of one
    assert len(single) == 1 and single[0].label == bundle.predict(images[0])[0].label


def test_batch_size_does_not_change_results(classifier):
    folder, _ = classifier
    bundle = Bundle.load(folder)
    images = [IMAGES[n] for n in IMAGES]
    runs = [bundle.predict(images, batch_size=b, top_k=3) for b in (1, 3, 8, 64)]
    for other in runs[1:]:
        assert [p.label for p in other] == [p.label for p in runs[0]]
        assert np.allclose([list(p.scores.values()) for p in other], [list(p.scores.values()) for p in runs[0]],
                           atol=1e-6)
    assert all(sum(p.scores.values()) == pytest.approx(1.0) for p in runs[0])  # top 3 of 3 is everything


def test_run_returns_raw_logits(classifier):
    folder, model = classifier
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.allclose(Bundle.load(folder).run(x), ref, atol=1e-4)


def test_regression_bundle_returns_values(tmp_path):
    torch.manual_seed(1)
    model = TinyNet(1).eval()
    folder = write_bundle(tmp_path / "reg", model, "image-regression", ["value"], "identity")
    images = [IMAGES[n] for n in ("rgb_120x80", "L", "tall_40x300")]
    eval_tf = build_transforms(PRE, "none")[1]
    with torch.inference_mode():
        ref = model(torch.stack([eval_tf(im) for im in images]))[:, 0].numpy()
    preds = Bundle.load(folder).predict(images, batch_size=2, top_k=3)
    assert [p.label for p in preds] == [None] * 3 and all(p.scores == {} for p in preds)
    assert np.allclose([p.value for p in preds], ref, atol=1e-4)


def test_variants_and_session_options(classifier):
    folder, _ = classifier
    with pytest.raises(ValueError, match="no variant 'int8-static'.*fp32, int8-dynamic"):
        Bundle.load(folder, variant="int8-static")
    q = Bundle.load(folder, variant="int8-dynamic", threads=1)
    assert q.variant == "int8-dynamic" and len(q.predict(IMAGES["L"])) == 1
    assert q.session_options_summary["intra_op_num_threads"] == 1
    assert q.session.get_session_options().intra_op_num_threads == 1  # set on the session, not just reported
    default = Bundle.load(folder / "model.json")  # the metadata file names the bundle just as well
    assert default.variant == "fp32" and default.path == folder
    assert default.session_options_summary["intra_op_num_threads"] == os.cpu_count()
    opts = default.session.get_session_options()
    assert opts.inter_op_num_threads == 1 and "CPUExecutionProvider" in default.session_options_summary["providers"]


def edited(folder: Path, out: Path, **changes) -> Path:
    """A copy of the bundle in ``out`` with model.json keys replaced."""
    out.mkdir()
    for f in folder.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    meta = {**json.loads((folder / "model.json").read_text()), **changes}
    (out / "model.json").write_text(json.dumps(meta))
    return out


def test_unknown_pre_and_postprocess_types_are_named(classifier, tmp_path):
    folder, _ = classifier
    post = Bundle.load(edited(folder, tmp_path / "post", postprocess={"type": "sigmoid"}))
    with pytest.raises(ValueError, match="unknown postprocess type 'sigmoid'"):
        post.predict(IMAGES["L"])
    pre = Bundle.load(edited(folder, tmp_path / "pre", preprocess={"type": "spectrogram"}))
    with pytest.raises(ValueError, match="unknown preprocess type 'spectrogram'"):
        pre.predict(IMAGES["L"])
    assert pre.run(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 3)  # raw tensors still run


def test_missing_bundle_pieces_say_how_to_export(classifier, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*suite export RUN_DIR"):
        Bundle.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"model\.json not found.*suite export RUN_DIR"):
        Bundle.load(tmp_path)
    folder, _ = classifier
    broken = edited(folder, tmp_path / "gone", variants={"fp32": {"file": "gone.onnx"}})
    with pytest.raises(FileNotFoundError, match=r"gone\.onnx.*suite export RUN_DIR"):
        Bundle.load(broken)
    newer = edited(folder, tmp_path / "newer", format_version=99)
    with pytest.raises(ValueError, match="format_version 99"):
        Bundle.load(newer)


def test_unreadable_image_names_the_file(classifier, tmp_path):
    folder, _ = classifier
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    truncated = tmp_path / "truncated.png"
    IMAGES["rgb_120x80"].save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    bundle = Bundle.load(folder)
    for path in (bad, truncated, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match=f"cannot read image .*{path.name}"):
            bundle.predict([IMAGES["L"], path])


def test_softmax_is_stable_for_huge_logits():
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [-1e4, -1e4, -1e4]]))
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0) and np.allclose(p[1], 1 / 3)


def test_cli_in_process(classifier, image_files, capsys):
    folder, _ = classifier
    assert cli_main(["predict", str(folder), *image_files[:2], "--top-k", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == image_files[:2] and all(len(r["scores"]) == 2 for r in rows)


# ----------------------------------------------------------------------------- without torch

BLOCK_TORCH = """
import importlib.abc, json, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked: suite_runtime must not need it")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=60)


def test_bundle_works_with_torch_unimportable(classifier, image_files):
    folder, _ = classifier
    code = f"""
from suite_runtime import Bundle
preds = Bundle.load({str(folder)!r}).predict({image_files!r}, top_k=3)
try:
    import torch
    blocked = False
except ImportError:
    blocked = True
print(json.dumps({{"preds": [p.__dict__ for p in preds], "torch_loaded": "torch" in sys.modules,
                   "torchvision_loaded": "torchvision" in sys.modules, "blocked": blocked}}))
"""
    proc = run_without_torch(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["blocked"] and not out["torch_loaded"] and not out["torchvision_loaded"]
    here = Bundle.load(folder).predict(image_files, top_k=3)
    assert [p["label"] for p in out["preds"]] == [p.label for p in here]
    assert np.allclose([list(p["scores"].values()) for p in out["preds"]], [list(p.scores.values()) for p in here])


def run_cli_without_torch(*args: str) -> subprocess.CompletedProcess:
    code = f"import runpy; sys.argv = ['suite-runtime', *{list(args)!r}]; runpy.run_module('suite_runtime.cli', run_name='__main__')"
    return run_without_torch(code)


def test_cli_without_torch(classifier, image_files):
    folder, _ = classifier
    proc = run_cli_without_torch("predict", str(folder), *image_files, "--batch-size", "3", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    here = Bundle.load(folder).predict(image_files)
    assert len(lines) == len(image_files)
    for line, path, p in zip(lines, image_files, here):
        got_path, label, score = line.split("\t")
        assert (got_path, label) == (path, p.label) and float(score) == pytest.approx(p.score, abs=1e-5)
    js = run_cli_without_torch("predict", str(folder), image_files[0], "--json", "--top-k", "3")
    assert js.returncode == 0 and list(json.loads(js.stdout)["scores"]) == list(
        Bundle.load(folder).predict(image_files[0], top_k=3)[0].scores)


def test_cli_errors_exit_2_with_one_line(classifier, image_files, tmp_path):
    folder, _ = classifier
    missing = str(tmp_path / "missing.jpg")
    proc = run_cli_without_torch("predict", str(folder), image_files[0], missing)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "missing.jpg" in proc.stderr
    proc = run_cli_without_torch("predict", str(tmp_path / "no-bundle"), image_files[0])
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "no-bundle" in proc.stderr and "suite export" in proc.stderr


# ----------------------------------------------------------------------------- a bundle is self-contained


def test_files_outside_the_bundle_are_refused(classifier, tmp_path):
    folder, _ = classifier
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((folder / "model.onnx").read_bytes())
    for name, file in (("dotdot", "../outside.onnx"), ("absolute", str(outside))):
        with pytest.raises(ValueError, match="not inside the bundle folder"):
            Bundle.load(edited(folder, tmp_path / name, variants={"fp32": {"file": file}}))
    linked = edited(folder, tmp_path / "linked", variants={"fp32": {"file": "link.onnx"}})
    (linked / "link.onnx").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the bundle folder"):
        Bundle.load(linked)


def test_external_data_outside_the_bundle_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import convert_model_to_external_data

    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    folder = tmp_path / "b"
    folder.mkdir()
    convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    onnx.save(model, str(folder / "model.onnx"))  # writes b/weights.bin: inside, fine
    meta = {"format_version": 1, "task": "image-classification", "labels": ["a", "b", "c"],
            "preprocess": spec_of(PRE), "postprocess": {"type": "softmax"},
            "variants": {"fp32": {"file": "model.onnx"}}}
    (folder / "model.json").write_text(json.dumps(meta))
    assert Bundle.load(folder).run(np.ones((1, 4), np.float32)).shape == (1, 3)

    for tensor in model.graph.initializer:  # the same graph, its tensor's bytes said to be one folder up
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=False)
    with pytest.raises(ValueError, match=r"'\.\./weights\.bin'.*not inside the bundle folder"):
        Bundle.load(folder)


def test_broken_bundles_get_one_clear_error_each(classifier, tmp_path):
    folder, _ = classifier
    cut = edited(folder, tmp_path / "cut")
    data = (cut / "model.onnx").read_bytes()
    (cut / "model.onnx").write_bytes(data[: len(data) // 2])  # a copy that stopped half way
    with pytest.raises(ValueError, match=r"model\.onnx is not a valid ONNX file.*truncated or corrupt"):
        Bundle.load(cut)
    listed = edited(folder, tmp_path / "list")
    (listed / "model.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="is not a bundle description"):
        Bundle.load(listed)
    with pytest.raises(ValueError, match="has no labels list"):
        Bundle.load(edited(folder, tmp_path / "nolabels", labels=[]))
    with pytest.raises(ValueError, match="has no variant 'int4'; it has: fp32, int8-dynamic"):
        Bundle.load(folder, variant="int4")
    with pytest.raises(ValueError, match="names no file"):
        Bundle.load(edited(folder, tmp_path / "nofile", variants={"fp32": {"size_bytes": 3}}))
