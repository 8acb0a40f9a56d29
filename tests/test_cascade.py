"""`task: cascade` end to end on tiny models: the detector and crop views, both stage runs, the direct baseline,
the bundle, PyTorch-vs-onnxruntime parity through the runtime, the latency table, and the recipe's errors."""
import json

import numpy as np
import pytest
from PIL import Image

from suite.errors import UserError
from suite.recipe import load_cascade
from suite.cascade import run_cascade as run

DETECTOR = """\
name: tiny-detector
task: detection
model: {arch: yolo11n, weights: none}
data: {format: synthetic:shapes, image_size: 64, augment: none}
schedule:
  - {epochs: 1, train: all, lr: 1.0e-3}
train: {batch_size: 4, seed: 0}
"""
CLASSIFIER = """\
name: tiny-classifier
task: image-classification
model: {arch: resnet18, weights: none}
data: {format: imagefolder, image_size: 32, resize: 32, augment: none}
schedule:
  - {epochs: 1, train: all, lr: 1.0e-3}
train: {batch_size: 8, seed: 0}
"""
CASCADE = """\
name: tiny-cascade
task: cascade
data:
  format: synthetic:shapes
  root: {root}
  synthetic: {{classes: [circle, square], train_per_class: 3, val_per_class: 2, size: 64, max_objects: 2, seed: 0}}
classes: {classes}
detector: {detector}
classifier: {classifier}
crop: {{margin: 0.2}}
compare: {compare}
bench: {{warmup: 0, iters: 2}}
"""


def _recipes(tmp_path, classes="{shape: [circle, square]}", compare="[direct]"):
    (tmp_path / "det.yaml").write_text(DETECTOR)
    (tmp_path / "cls.yaml").write_text(CLASSIFIER)
    path = tmp_path / "cascade.yaml"
    path.write_text(CASCADE.format(root=tmp_path / "data", classes=classes, detector=tmp_path / "det.yaml",
                                   classifier=tmp_path / "cls.yaml", compare=compare))
    return path


def test_cascade_trains_both_stages_exports_one_bundle_and_matches_pytorch(tmp_path, suite_cli):
    from suite_runtime import Bundle
    from suite_runtime.cascade import Cascade, crop_box

    result = run(_recipes(tmp_path, compare="[]"), out=tmp_path / "run")  # `direct`: the second run below
    out = result.run_dir
    doc = json.loads((out / "metrics.json").read_text())
    # every stage is a run of its own, on its own view of the one fine-labelled dataset
    assert json.loads((out / "detector" / "labels.json").read_text()) == ["shape"]
    assert json.loads((out / "classifier" / "labels.json").read_text()) == ["circle", "square"]
    crops = sorted((out / "data" / "crops" / "train").rglob("*.png"))
    assert len(crops) == doc["crops"]["train"] > 0
    # a crop on disk is exactly what the runtime cuts from the scene at serving time
    scene = out / "data" / "detector" / "labels" / "train"
    assert scene.is_dir() and all(line.split()[0] == "0" for f in scene.glob("*.txt")
                                  for line in f.read_text().splitlines())
    first = crops[0]
    image_name, k = first.stem.rsplit("_", 1)
    rows = (tmp_path / "data" / "labels" / "train" / f"{image_name}.txt").read_text().splitlines()
    with Image.open(tmp_path / "data" / "images" / "train" / f"{image_name}.png") as im:
        w, h = im.size
        _, cx, cy, bw, bh = map(float, rows[int(k)].split())
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
        again = np.asarray(crop_box(im.convert("RGB"), box, 0.2))
    assert np.array_equal(np.asarray(Image.open(first)), again)

    bundle = Bundle.load(out / "export")
    assert isinstance(bundle, Cascade)
    meta = json.loads((out / "export" / "model.json").read_text())
    assert meta["route"] == {"shape": ["circle", "square"]} and meta["crop"]["margin"] == 0.2
    assert (out / "export" / "detector" / "model.onnx").is_file() and (out / "export" / "classifier" / "model.onnx").is_file()
    # the run directory's contract: val/ metric keys, the deployed (onnxruntime) cascade's; stages and parity beside
    assert set(doc["val"]) == {"val/map50", "val/map50_95"} and doc["baselines"] == {}
    assert set(doc["stages"]) == {"detector", "classifier"} and "val/map50" in doc["stages"]["detector"]["val"]
    assert doc["parity"]["onnxruntime"] == doc["val"]
    assert abs(doc["parity"]["onnxruntime"]["val/map50_95"] - doc["parity"]["pytorch"]["val/map50_95"]) <= 0.01
    assert doc["parity"]["passed"]
    b = json.loads((out / "bench.json").read_text())
    assert b["images"] == 2 and b["total_ms_p50"] > 0 and b["detector_ms_per_image"] > 0
    report = (out / "report.md").read_text()
    assert "| detector |" in report and "Export parity" in report
    dets = bundle.predict([str(next((tmp_path / "data" / "images" / "val").glob("*.png")))])
    assert len(dets) == 1 and set(dets[0].classes.tolist()) <= {0, 1} and dets[0].labels == ["circle", "square"]
    code, printed, _ = suite_cli("bench", str(out))  # per stage, on the run's validation images
    assert code == 0 and "| detector |" in printed and json.loads((out / "bench.json").read_text())["images"] == 30
    code, printed, _ = suite_cli("validate", str(tmp_path / "cascade.yaml"))
    assert code == 0 and "1 detector class(es) -> 2 fine classes" in printed
    code, printed, _ = suite_cli("predict", str(out), str(next((tmp_path / "data" / "images" / "val").glob("*.png"))),
                                 "--conf", "0.001")
    assert code == 0 and printed.strip()

    # finished stage runs plug in as they are; `direct` still trains the detector's recipe on the fine classes
    again = _recipes(tmp_path, compare="[direct]").read_text().replace(str(tmp_path / "det.yaml"), str(out / "detector")) \
        .replace(str(tmp_path / "cls.yaml"), str(out / "classifier"))
    (tmp_path / "again.yaml").write_text(again)
    second = run(tmp_path / "again.yaml", out=tmp_path / "run2")
    assert not (tmp_path / "run2" / "detector").exists() and not (tmp_path / "run2" / "classifier").exists()
    assert json.loads((tmp_path / "run2" / "direct" / "labels.json").read_text()) == ["circle", "square"]
    assert second.metrics["val"] == doc["val"]
    assert set(second.metrics["baselines"]["direct"]["val"]) == {"val/map50", "val/map50_95"}
    assert "val/map50_95" in second.metrics["baselines"]["direct"]["own_protocol"]


def test_cascade_recipe_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="classes.*exactly one detector class"):
        load_cascade(_recipes(tmp_path, classes="{a: [circle], b: [circle, square]}"))
    with pytest.raises(UserError, match="compare.*direct"):
        load_cascade(_recipes(tmp_path), ["compare=[scratch]"])
    with pytest.raises(UserError, match="unknown key; did you mean 'classifier'"):
        load_cascade(_recipes(tmp_path), ["clasifier=x"])
    with pytest.raises(UserError, match="pentagon not in the data's classes"):
        run(_recipes(tmp_path, classes="{shape: [circle, square, pentagon]}"), out=tmp_path / "bad")


def test_data_make_shapes_cascade_writes_every_stage_view(tmp_path, suite_cli):
    code, out, _ = suite_cli("data", "make", "shapes-cascade", "--out", str(tmp_path / "c"), "--train", "4",
                             "--val", "2", "--size", "64")
    assert code == 0 and "crops" in out
    import yaml

    assert yaml.safe_load((tmp_path / "c" / "detector" / "data.yaml").read_text())["names"] == ["shape"]
    fine = yaml.safe_load((tmp_path / "c" / "scenes" / "data.yaml").read_text())["names"]
    assert fine == ["circle", "square", "triangle", "star"]
    crops = list((tmp_path / "c" / "crops" / "train").rglob("*.png"))
    boxes = sum(len(f.read_text().splitlines()) for f in (tmp_path / "c" / "scenes" / "labels" / "train").glob("*.txt"))
    assert crops and len(crops) == boxes and {p.parent.name for p in crops} <= set(fine)


def test_crops_are_cut_from_the_upright_image_under_unique_names(tmp_path):
    """An EXIF-rotated photo is cropped as the runtime sees it (upright); two images named 0001 keep both crops."""
    from dataclasses import dataclass

    from suite.cascade import write_crops
    from suite_runtime.cascade import crop_box
    from suite_runtime.preprocess import load_image

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    for folder in ("cam1", "cam2"):
        (tmp_path / folder).mkdir()
        Image.fromarray(pixels).save(tmp_path / folder / "0001.jpg", exif=exif, quality=100)

    @dataclass
    class Sample:
        image: object
        boxes: np.ndarray
        labels: np.ndarray

    box = np.array([[5, 5, 35, 25]], np.float32)  # in the upright (40 wide, 60 high) image
    samples = [Sample(tmp_path / f / "0001.jpg", box, np.array([0])) for f in ("cam1", "cam2")]
    data = type("D", (), {"labels": ["thing"], "train": samples, "val": samples[:1]})()
    counts = write_crops(data, tmp_path / "crops", 0.0)
    files = sorted((tmp_path / "crops" / "train" / "thing").glob("*.png"))
    assert counts == {"train": 2, "val": 1} and len(files) == 2
    upright = crop_box(load_image(samples[0].image).convert("RGB"), box[0], 0.0)
    assert np.array_equal(np.asarray(Image.open(files[0])), np.asarray(upright))

