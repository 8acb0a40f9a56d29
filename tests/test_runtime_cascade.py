"""suite_runtime cascades: crop_box geometry, a tiny real detector -> classifier bundle end to end (routing,
renormalised probabilities, combined scores), Bundle.load dispatch, model.json checks, the example script and
the CLI. The two ONNX graphs are exported here from a few torch ops, without the suite, so this runs in seconds."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from suite_runtime import Bundle, Cascade, CascadeDetections, crop_box, preprocess_image, softmax
from suite_runtime.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
W, H = 80, 60  # test images
DET_LABELS = ["shape", "blob", "other"]
# the fake detector's fixed output, torchvision-style (labels 1-based): two shapes, a blob at the bottom edge,
# and an "other" box that no route names (so the cascade drops it)
BOXES = [[8, 8, 28, 28], [48, 10, 76, 34], [30, 44, 50, 60], [0, 0, 5, 5]]
DET_IDS = [1, 1, 2, 3]
DET_SCORES = [0.9, 0.8, 0.6, 0.95]
CLS_LABELS = ["red", "green", "blue"]  # the classifier's order
FINE = ["blue", "green", "red"]  # the cascade's fine ids: a different order, so the mapping is tested
ROUTE = {"shape": ["red", "green"], "blob": ["blue"]}
SIZE, GAIN = 16, 8.0  # classifier input size; logits = GAIN * mean colour of the (normalised) crop
CLS_PRE = {"type": "image", "size": SIZE, "resize": SIZE, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
           "interpolation": "bilinear", "channel_order": "RGB", "scale": 255.0, "max_aspect": 4}
CASCADE = {"format_version": 1, "task": "cascade", "labels": FINE, "detector": "detector",
           "classifier": "classifier", "route": ROUTE, "crop": {"margin": 0.15},
           "thresholds": {"conf": 0.05, "iou": 0.7}, "score": "product"}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
GREY = (128, 128, 128)


class FixedBoxes(torch.nn.Module):
    """A Faster R-CNN-shaped graph ([3, H, W] in; boxes, labels, scores out) that always finds BOXES."""

    def forward(self, x):
        zero = x.mean() * 0  # keeps the input in the graph
        return (torch.tensor(BOXES, dtype=torch.float32) + zero, torch.tensor(DET_IDS) + zero.long(),
                torch.tensor(DET_SCORES) + zero)


class MeanColour(torch.nn.Module):
    """Logits = GAIN x each channel's mean: a crop's dominant colour wins, its grey margin softens the odds."""

    def forward(self, x):
        return x.mean((2, 3)) * GAIN


def export(model: torch.nn.Module, example: torch.Tensor, folder: Path, meta: dict, **kwargs) -> None:
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about deprecation and traced constants
        torch.onnx.export(model, (example,), str(folder / "model.onnx"), dynamo=False, input_names=["images"],
                          opset_version=17, **kwargs)
    meta = {"format_version": 1, **meta, "variants": {"fp32": {"file": "model.onnx"}}, "default_variant": "fp32"}
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cascade") / "export"
    export(FixedBoxes(), torch.rand(3, H, W), root / "detector",
           {"task": "detection", "labels": DET_LABELS, "preprocess": {"type": "image01"},
            "postprocess": {"type": "boxes", "score_threshold": 0.05, "label_offset": 1, "max_det": 100}},
           output_names=["boxes", "labels", "scores"], dynamic_axes={"images": [1, 2]})
    export(MeanColour(), torch.rand(2, 3, SIZE, SIZE), root / "classifier",
           {"task": "image-classification", "labels": CLS_LABELS, "preprocess": CLS_PRE,
            "postprocess": {"type": "softmax"}},
           output_names=["logits"], dynamic_axes={"images": [0], "logits": [0]})
    (root / "model.json").write_text(json.dumps(CASCADE))
    return root


def scene(colours: list[str]) -> Image.Image:
    """Grey W x H with the first three BOXES filled with ``colours``."""
    img = Image.new("RGB", (W, H), GREY)
    for box, name in zip(BOXES, colours):
        img.paste(COLOURS[name], tuple(box))
    return img


# image 0: red and green shapes; image 1: a green shape and a BLUE one, which the route keeps red or green
SCENES = [["red", "green", "red"], ["green", "blue", "green"]]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    for i, colours in enumerate(SCENES):
        paths.append(str(folder / f"scene{i}.png"))
        scene(colours).save(paths[-1])
    return paths


def expected(img: Image.Image, box_index: int) -> tuple[str, float]:
    """The fine label and renormalised probability of one shape box, computed in numpy without onnxruntime."""
    x = preprocess_image(crop_box(img, BOXES[box_index], CASCADE["crop"]["margin"]), CLS_PRE)
    probs = softmax(x.mean((1, 2)).astype(np.float64) * GAIN)
    routed = ROUTE[DET_LABELS[DET_IDS[box_index] - 1]]
    sub = np.array([probs[CLS_LABELS.index(f)] for f in routed])
    sub /= sub.sum()
    return routed[int(sub.argmax())], float(sub.max())


# ----------------------------------------------------------------------------- crop_box


def coords(w: int, h: int) -> Image.Image:
    """Red = x, green = y: a crop's first pixel says where it came from."""
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8))


@pytest.mark.parametrize("box,margin,want", [
    ([10.5, 20.2, 30.1, 40.9], 0.0, (10, 20, 31, 41)),  # margin 0: floor the low edges, ceil the high ones
    ([20, 20, 40, 30], 0.15, (17, 18, 43, 32)),  # widened by 3 px (0.15 x 20) and 1.5 px (0.15 x 10)
    ([12, 10, 12, 10], 0.5, (12, 10, 13, 11)),  # an empty box still gives one pixel
    ([-5, -5, 10, 10], 0.5, (0, 0, 18, 18)),  # clamped at the top left
    ([90, 70, 100, 80], 0.2, (88, 68, 100, 80)),  # ... and at the bottom right
    ([100, 80, 100, 80], 0.15, (99, 79, 100, 80)),  # on the far corner: the last pixel
    ([120, 90, 130, 95], 0.0, (99, 79, 100, 80)),  # past it too
    ([70, 5, 30, 25], 0.25, (70, 0, 71, 30)),  # x2 < x1: zero width, one column
])
def test_crop_box_geometry(box, margin, want):
    img = coords(100, 80)
    crop = crop_box(img, box, margin)
    left, top, right, bottom = want
    assert crop.size == (right - left, bottom - top)
    assert np.array_equal(np.asarray(crop), np.asarray(img)[top:bottom, left:right])
    # float32 boxes (what detectors give) cut the same pixels as float64 ones (what annotations give)
    assert np.array_equal(np.asarray(crop_box(img, np.array(box, np.float32), margin)), np.asarray(crop))


def test_crop_box_float_noise_and_errors():
    img = coords(250, 20)
    # 100 - 0.55 * 100 is 44.99999999999999 in floats: still the 45th column, not the 44th
    assert crop_box(img, [100, 0, 200, 10], 0.55).size == (205, 16)  # 45..250 (clamped), 0..16
    assert np.asarray(crop_box(img, [100, 0, 200, 10], 0.55))[0, 0, 0] == 45
    with pytest.raises(ValueError, match="margin"):
        crop_box(img, [0, 0, 5, 5], -0.1)
    with pytest.raises(ValueError, match="4 finite numbers"):
        crop_box(img, [0, 0, float("nan"), 5], 0.1)
    with pytest.raises(ValueError, match="4 finite numbers"):
        crop_box(img, [0, 0, 5], 0.1)


# ----------------------------------------------------------------------------- predict


def test_cascade_predicts_routed_fine_classes(cascade_dir, image_files):
    cascade = Bundle.load(cascade_dir)
    timings: dict = {}
    results = cascade.predict(image_files, timings=timings)
    assert len(results) == 2 and all(isinstance(r, CascadeDetections) for r in results)
    for r, path, colours in zip(results, image_files, SCENES):
        img = Image.open(path).convert("RGB")
        assert len(r) == 3 and r.labels == FINE  # the "other" box (no route) is dropped
        assert r.boxes.dtype == r.scores.dtype == r.det_scores.dtype == r.cls_scores.dtype == np.float32
        assert r.classes.dtype == r.det_classes.dtype == np.int64
        assert (np.diff(r.scores) <= 0).all()  # best combined score first
        np.testing.assert_allclose(r.scores, r.det_scores * r.cls_scores, rtol=1e-6)
        for i in range(3):
            j = BOXES.index(r.boxes[i].tolist())  # which fixed box this is
            assert r.det_names[i] == DET_LABELS[DET_IDS[j] - 1] and r.det_scores[i] == np.float32(DET_SCORES[j])
            if r.det_names[i] == "blob":  # routed to one fine class: always it, with probability 1
                assert r.names[i] == "blue" and r.cls_scores[i] == 1.0 and r.scores[i] == np.float32(DET_SCORES[j])
            else:
                label, prob = expected(img, j)
                assert r.names[i] == label and abs(r.cls_scores[i] - prob) < 1e-5
                assert abs(r.scores[i] - DET_SCORES[j] * prob) < 1e-5 and 0.5 < prob < 1
            assert FINE[int(r.classes[i])] == r.names[i]
    # the painted colours win where routed; the blue shape in image 1 may only become red or green
    assert sorted(results[0].names) == ["blue", "green", "red"]
    blue_shape = results[1].boxes.tolist().index(BOXES[1])
    assert results[1].names[blue_shape] in ROUTE["shape"] and results[1].cls_scores[blue_shape] < 0.9
    assert timings["images"] == 2 and timings["crops"] == 4  # only the two shapes per image need the classifier
    assert timings["detector"] > 0 and timings["classifier"] > 0
    cascade.predict(image_files[0], timings=timings)  # accumulates
    assert timings["images"] == 3 and timings["crops"] == 6


def test_cascade_inputs_batches_and_thresholds(cascade_dir, image_files):
    cascade = Cascade.load(cascade_dir / "model.json", variant="fp32", threads=1)
    base = cascade.predict(image_files, batch_size=16)
    pil, arr = Image.open(image_files[1]), np.asarray(Image.open(image_files[1]).convert("RGB"))
    for got in (cascade.predict(image_files, batch_size=1), [cascade.predict(image_files[0])[0],
                                                            *cascade.predict([pil]), *cascade.predict(arr)]):
        for a, b in zip(got, base):
            assert a.to_dicts() == b.to_dicts()
    strict = cascade.predict(image_files[0], conf=0.7)[0]  # overrides thresholds.conf: drops the 0.6 blob
    assert sorted(strict.det_names) == ["shape", "shape"]
    rows = base[0].to_dicts()
    assert json.loads(json.dumps(rows)) == rows and set(rows[0]) == {"box", "label", "score", "detector",
                                                                     "classifier_score"}
    assert set(rows[0]["detector"]) == {"label", "score"} and isinstance(rows[0]["score"], float)
    assert cascade.labels == FINE and cascade.meta["task"] == "cascade" and cascade.path == cascade_dir
    assert isinstance(cascade.detector, Bundle) and cascade.variant == "fp32"
    with pytest.raises(ValueError, match="no variant 'int8-static'"):
        Cascade.load(cascade_dir, variant="int8-static")
    with pytest.raises(ValueError, match="batch_size"):
        cascade.predict(image_files, batch_size=0)


# ----------------------------------------------------------------------------- model.json checks


def with_meta(cascade_dir: Path, out: Path, **changes) -> Path:
    shutil.copytree(cascade_dir, out)
    (out / "model.json").write_text(json.dumps({**CASCADE, **changes}))
    return out


def test_bad_route_names_model_json(cascade_dir, tmp_path):
    bad = with_meta(cascade_dir, tmp_path / "bad", route={"shape": ["red", "green", "purple"], "blob": ["blue"]})
    with pytest.raises(ValueError, match=r"model\.json: route\['shape'\] names 'purple', which is not in labels"):
        Bundle.load(bad)


@pytest.mark.parametrize("changes,message", [
    ({"route": {"shape": ["red", "green"], "ghost": ["blue"]}}, "detector class 'ghost'"),
    ({"labels": [*FINE, "purple"], "route": {"shape": ["red", "green"], "blob": ["blue", "purple"]}},
     "'purple', which the classifier does not have"),
    ({"route": {"shape": ["red", "green"]}}, "no detector class routes to 'blue'"),
    ({"crop": {"margin": -0.1}}, "crop.margin"),
    ({"task": "detection"}, "task 'detection'"),
    ({"score": "max"}, "unknown score 'max'"),
    ({"thresholds": {"conf": 2}}, "thresholds.conf"),
])
def test_bad_meta_errors(cascade_dir, changes, message):
    good = Bundle.load(cascade_dir)
    with pytest.raises(ValueError, match=message) as e:
        Cascade(good.detector, good.classifier, {**CASCADE, **changes}, cascade_dir)
    assert str(cascade_dir / "model.json") in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- example script and CLI

NO_TORCH = """
import importlib.abc, runpy, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked: suite_runtime must not need it")
sys.meta_path.insert(0, _NoTorch())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_example_script_writes_json(cascade_dir, image_files, tmp_path):
    folder = Path(image_files[0]).parent
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "boxes.json"
    script = ROOT / "export" / "examples" / "cascade_to_json.py"
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(script), str(cascade_dir), str(folder), str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "2 images, 6 boxes" in proc.stdout
    got = json.loads(out.read_text())
    assert list(got) == ["scene0.png", "scene1.png"]
    here = Bundle.load(cascade_dir).predict(image_files)
    for rows, d in zip(got.values(), here):
        assert [r["label"] for r in rows] == d.names and np.allclose([r["score"] for r in rows], d.scores)
    assert [p.name for p in tmp_path.iterdir()] == ["boxes.json"]  # no temp file left behind


def test_cli_prints_one_line_per_box(cascade_dir, image_files, tmp_path, capsys):
    assert cli_main(["predict", str(cascade_dir), *image_files, "--batch-size", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    here = Bundle.load(cascade_dir).predict(image_files)
    assert len(lines) == sum(map(len, here)) == 6
    for line, (path, name, score, box, det, det_score) in zip(lines, [
            (p, *row) for p, d in zip(image_files, here)
            for row in zip(d.names, d.scores, d.boxes.tolist(), d.det_names, d.det_scores)]):
        fields = line.split("\t")
        assert fields[:3] == [path, name, f"{score:.6f}"] and fields[4:] == [det, f"{det_score:.6f}"]
        assert np.allclose([float(v) for v in fields[3].split(",")], box)
    assert cli_main(["predict", str(cascade_dir), *image_files, "--json", "--conf", "0.7",
                     "--draw", str(tmp_path / "drawn")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == image_files and [len(r["detections"]) for r in rows] == [2, 2]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["scene0.png", "scene1.png"]
