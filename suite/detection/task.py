"""The detection modality: YOLO (Ultralytics runs each stage) and Faster R-CNN (our loop), one contract."""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from suite.core import dist
from suite.core import weights as W
from suite.core.data import cache_dir, loader_workers
from suite.core.export import ExportSpec, OnnxModel, as_bundle
from suite.core.groups import ParamGroup
from suite.core.loop import Hooks
from suite.core.metrics import DetectionEvaluator, EvalResult, check_metric_names
from suite.detection import data as ddata
from suite.detection import frcnn, yolo
from suite.errors import UserError
from suite.recipe import Recipe

SYNTHETIC = "synthetic:shapes"
FORMATS = ("yolo", "coco", SYNTHETIC)


def _kind(recipe: Recipe) -> str:
    arch = recipe.model.arch
    if yolo.is_yolo(arch):
        return "yolo"
    if frcnn.is_frcnn(arch):
        return "frcnn"
    raise UserError(f"model.arch '{arch}' is not a detection model; use yolo11n, yolov8n, ... (Ultralytics) or "
                    f"one of {', '.join(frcnn.ARCHS)}")


def staged_yaml(data) -> Path:
    """The data's kept samples as a YOLO folder of symlinks + fresh labels; keyed by content, so reused."""
    cached = getattr(data, "_staged", None)
    if cached is not None:
        return cached
    h = hashlib.sha1()
    for split in ("train", "val", "test"):
        for s in getattr(data, split) or []:
            h.update(f"{split}|{s.image}|{s.image.stat().st_mtime_ns}|".encode())
            h.update(np.ascontiguousarray(s.boxes, dtype=np.float32).tobytes())
            h.update(np.ascontiguousarray(s.labels, dtype=np.int64).tobytes())
    h.update("|".join(data.labels).encode())
    out = cache_dir() / STAGED / h.hexdigest()[:16]
    path = out / "data.yaml"
    if not path.is_file():
        stage_yolo(data, out)
    data._staged = path
    return path


STAGED = "yolo-staged-2"  # since staging is atomic; "yolo-staged" may hold half-written folders of older versions
STALE_S = 24 * 3600  # a temporary folder this old was left by a killed process


def stage_yolo(data, out: Path) -> None:
    """``write_yolo`` into a fresh temporary sibling of ``out`` (a unique name, not a pid: processes of other
    machines or containers sharing the cache can have the same pid), then one rename: a folder at ``out`` is
    complete, and processes that stage the same data at once never write into each other's. The first rename
    wins; the others drop their copy (the same content)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f"{out.name}.*.tmp"):  # left by killed processes
        try:
            if time.time() - old.stat().st_mtime > STALE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        ddata.write_yolo(data, tmp, moved_to=out)
        try:
            os.rename(tmp, out)
        except OSError:  # another process's copy is there (or a folder without data.yaml)
            if not (out / "data.yaml").is_file():
                raise UserError(f"cannot stage the YOLO dataset at {out}: the folder is there without data.yaml; "
                                "delete it and run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; else another process's copy won


NO_CACHE = ("detection heads (RPN, RoI heads) take feature maps and proposals, not one feature vector "
            "per image: cached features do not apply")


class DetectionModality:
    """Satisfies suite.tasks.Modality for task ``detection``."""

    def resolve_weights(self, recipe: Recipe) -> str:
        arch, weights = recipe.model.arch, recipe.model.weights
        if W.parse(weights).kind == W.NONE:
            return "random init"
        if _kind(recipe) == "yolo":
            return str(yolo._resolve(weights))
        return frcnn.resolve_weights(arch, weights)

    def load_data(self, recipe: Recipe):
        d = recipe.data
        _kind(recipe)
        check_metric_names(recipe.eval.metrics, "detection")
        fmt, root = d.format, d.root
        if fmt not in FORMATS:
            raise UserError(f"data.format '{fmt}' is not a detection format; use one of: {', '.join(FORMATS)}")
        if fmt == SYNTHETIC:
            from suite.datasets.shapes_det import make_shapes_detection

            s = d.synthetic
            root = root or f"data/{recipe.name}"
            n = len(s.classes)
            root = str(make_shapes_detection(Path(root), s.classes, s.train_per_class * n, s.val_per_class * n,
                                             s.test_per_class * n, size=s.size, max_objects=s.max_objects,
                                             seed=s.seed, progress=True))
            fmt = "yolo"
        if not root:
            raise UserError(f"data.root is empty; point it at your data: -s data.root=PATH ({fmt})")
        return ddata.load_detection(fmt, root, d.val_split, recipe.train.seed)

    def build_model(self, recipe: Recipe, labels: list[str], weights: str) -> nn.Module:
        arch = recipe.model.arch
        trust = recipe.model.trust_weights
        if _kind(recipe) == "yolo":
            return yolo.build_model(arch, list(labels), weights, trust)
        model = frcnn.build_model(arch, labels, weights, recipe.data.image_size, trust)
        if weights == "none" and recipe.model.weights != "none":  # reloading a run: the same norm layers
            frcnn.freeze_backbone_norms(model)
        return model

    def groups(self, recipe: Recipe, model: nn.Module) -> list[ParamGroup]:
        return yolo.groups(model) if _kind(recipe) == "yolo" else frcnn.groups(model)

    def evaluate_source(self, recipe: Recipe, model: nn.Module, device: torch.device) -> dict | None:
        return None  # forgetting is measured for image and speech classification (runner.check_task_options says so)

    def default_metric(self, recipe: Recipe) -> str:
        return "val/map50_95"

    def trainer(self, recipe: Recipe, data):
        """YOLO: Ultralytics' trainer runs every stage. Faster R-CNN: None, our loop runs."""
        if _kind(recipe) == "yolo" and recipe.train.compile != "false":
            raise UserError("train.compile applies to the suite's own training loop; YOLO trains in Ultralytics' "
                            "trainer: set train.compile: false")
        if not self.own_trainer(recipe):
            return None
        staged = dist.main_first(lambda: staged_yaml(data), "staging the YOLO dataset")  # one writer per folder
        return functools.partial(yolo.train, recipe, staged)

    def own_trainer(self, recipe: Recipe) -> str | None:
        return "Ultralytics" if _kind(recipe) == "yolo" else None

    def models(self) -> list[str]:
        return [*(f"{a}  (detection, torchvision)" for a in frcnn.ARCHS),
                "yolo11n|s|m|l|x, yolov8n, ...  (detection, Ultralytics)"]

    def task_for(self, arch: str) -> str | None:
        return "detection" if yolo.is_yolo(arch) or frcnn.is_frcnn(arch) else None

    def hooks(self, recipe: Recipe, data, device: torch.device) -> Hooks:
        tf = frcnn.train_transforms(recipe.data.augment)

        train_set = frcnn.DetectionDataset(data.train, tf)  # one for every epoch: kept loader workers hold copies

        def train_loader(epoch: int):
            gen = torch.Generator().manual_seed(recipe.train.seed * 100_003 + epoch)
            return frcnn.loader(train_set, recipe.train.batch_size, True, loader_workers(recipe.data.num_workers), gen)

        def evaluate(model: nn.Module) -> EvalResult:
            return self.evaluate(recipe, model, data, "val", device)

        # auto precision on a GPU: fp16 with a GradScaler, as torchvision's detection reference trains (--amp);
        # under bf16 the RPN's decoded proposals are bf16 boxes, 4-8 px apart at 800-1333 px
        return Hooks(loss=lambda model, batch: frcnn.loss(model, batch, device), evaluate=evaluate,
                     train_loader=train_loader, cache=NO_CACHE, auto_amp=torch.float16)

    def evaluate(self, recipe: Recipe, model: nn.Module, data, split: str, device: torch.device) -> EvalResult | None:
        samples = getattr(data, split)
        if not samples:
            return None
        bs = recipe.train.eval_batch_size or recipe.train.batch_size
        if _kind(recipe) == "yolo":
            return yolo.evaluate(model, list(data.labels), staged_yaml(data), split, _imgsz(recipe), bs, device)
        return frcnn.evaluate(model, samples, data.labels, device, bs, keep_predictions=True)

    def plots(self, result: EvalResult, data, plot_dir: Path) -> list[Path]:
        from suite.detection.plots import plot_pr_curves, plot_predictions

        out = []
        if result.extra.get("pr_curves"):
            out.append(plot_pr_curves(result.extra["pr_curves"], result.metrics, plot_dir / "pr_val.png"))
        if result.extra.get("predictions"):
            out.append(plot_predictions(result.extra["predictions"], data.labels, plot_dir / "predictions_val.png"))
        return out

    def report_sections(self, recipe: Recipe, result: EvalResult) -> list[tuple[str, str]]:
        title, text = yolo.agreement_section(result)
        return [(title, text)] if title else []

    # ----- export ----------------------------------------------------------------------------
    def export_module(self, recipe: Recipe, model: nn.Module) -> nn.Module:
        """What is exported, verified and benchmarked: YOLO fused with Detect in export mode, or Faster R-CNN
        taking one [3, H, W] image and returning (boxes, labels, scores)."""
        return yolo.ExportHead(model) if _kind(recipe) == "yolo" else frcnn.ExportWrapper(model)

    def _bundle_meta(self, recipe: Recipe, labels: list[str]) -> tuple[dict, tuple[list, list[str]]]:
        if _kind(recipe) == "yolo":
            size = _imgsz(recipe)
            return yolo.export_meta(labels, size), (["batch", 3, size, size], ["logits"])
        return frcnn.export_meta(labels), ([3, "height", "width"], ["boxes", "labels", "scores"])

    def evaluate_bundle(self, recipe: Recipe, bundle, data, split: str) -> dict[str, float] | None:
        """mAP of an exported bundle on a split, through suite_runtime end to end (`suite eval --onnx`)."""
        samples = getattr(data, split)
        if not samples:
            return None
        meta, io = self._bundle_meta(recipe, list(data.labels))
        got = runtime_map(OnnxModel(bundle), samples, list(data.labels), meta, *io)
        return {k.replace("val/", f"{split}/"): v for k, v in got.items()}

    def export_spec(self, recipe: Recipe, data, model: nn.Module) -> ExportSpec:
        labels = list(data.labels)
        samples = data.val

        meta, io = self._bundle_meta(recipe, labels)
        module = self.export_module(recipe, model)

        def evaluate(m) -> dict[str, float]:
            return runtime_map(m, samples, labels, meta, *io)

        if _kind(recipe) == "yolo":
            size = _imgsz(recipe)
            example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
            return ExportSpec(meta=meta, example=example, evaluate=evaluate, metric="val/map50_95", io=yolo.EXPORT_IO,
                              calibration=lambda n: _calibration(data.train, n, meta), module=module,
                              parity_batches=(1, 3), relative_atol=True, quant_exclude=yolo.quant_exclude,
                              extra={"outputs": [{"name": "logits", "shape": ["batch", 4 + len(labels), "anchors"]}]})
        example = _example_image(samples)
        return ExportSpec(meta=meta, example=example, evaluate=evaluate, metric="val/map50_95", module=module,
                          io=frcnn.EXPORT_IO, parity_batches=(), bench_item=tuple(example.shape),
                          bench_batch_axis=False,  # one [3, H, W] image per call: timed at batch 1
                          quantizable=("int8-dynamic",),  # the box head's Linear layers; static int8 breaks NMS
                          tensor_check=frcnn.tensor_parity,
                          extra={"input": {"name": "images", "shape": [3, "height", "width"], "dtype": "float32",
                                           "layout": "CHW", "batch": 1},
                                 "outputs": [{"name": "boxes", "shape": ["n", 4]}, {"name": "labels", "shape": ["n"]},
                                             {"name": "scores", "shape": ["n"]}]})


def _imgsz(recipe: Recipe) -> int:
    return yolo.stride_multiple(recipe.data.image_size or 640)


def _example_image(samples) -> torch.Tensor:
    from suite_runtime.preprocess import load_image

    img = np.asarray(load_image(samples[0].image), dtype=np.float32) / 255.0
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def _calibration(samples, n: int, meta: dict):
    """n training images letterboxed exactly as the runtime does, in batches of 8, for int8 calibration."""
    from suite_runtime.detection import letterbox

    order = np.random.default_rng(0).permutation(len(samples))[:n]
    for start in range(0, len(order), 8):
        yield np.stack([letterbox(str(samples[i].image), meta["preprocess"])[0] for i in order[start:start + 8]])


def runtime_map(m, samples, labels: list[str], meta: dict, spec_input: list, outputs: list[str]) -> dict[str, float]:
    """mAP of ``m`` (a torch module or an OnnxModel) through suite_runtime's Bundle.predict on ``samples``."""
    bundle = as_bundle(m, meta, spec_input, outputs, "images")
    is_yolo = meta["postprocess"]["type"] == "yolo"  # mAP as Ultralytics' validator: conf 0.001, multi-label
    kw = {"conf": yolo.VAL_CONF, "multi_label": True} if is_yolo else {}
    ev = DetectionEvaluator(labels)
    for start in range(0, len(samples), 8):
        chunk = samples[start:start + 8]
        dets = bundle.predict([str(s.image) for s in chunk], **kw)
        ev.update([{"boxes": d.boxes, "scores": d.scores, "labels": d.classes} for d in dets],
                  [{"boxes": s.boxes, "labels": s.labels} for s in chunk])
    r = ev.compute()
    return {"val/map50": r.metrics["map50"], "val/map50_95": r.metrics["map50_95"]}
