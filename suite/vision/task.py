"""The image modality: classification and regression heads on torchvision/timm backbones."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from suite.core import report
from suite.core.data import loader_workers
from suite.core.export import ExportSpec, OnnxIO, OnnxModel
from suite.core.features import CacheSpec
from suite.core.groups import ParamGroup
from suite.core.loop import Hooks, stop_workers
from suite.core.metrics import ClassificationEvaluator, EvalResult, RegressionEvaluator, check_metric_names
from suite.errors import UserError
from suite.recipe import Recipe
from suite.vision import data as vdata
from suite.vision import models
from suite.vision.transforms import MAX_ASPECT, build_transforms

SYNTHETIC = "synthetic:shapes"
EXPORT_IO = OnnxIO(input="images", outputs=("logits",))  # [batch, 3, H, W] -> [batch, classes], batch dynamic


def _regression(recipe: Recipe) -> bool:
    return recipe.task == "image-regression"


class VisionModality:
    """Satisfies suite.tasks.Modality for image-classification and image-regression."""

    def resolve_weights(self, recipe: Recipe) -> str:
        m = recipe.model
        where = models.resolve_weights(m.arch, m.weights)
        if m.head.keep:
            models.kept_head_labels(m.arch, m.weights)
        return where

    def load_data(self, recipe: Recipe) -> vdata.VisionData:
        d = recipe.data
        check_metric_names(recipe.eval.metrics, "regression" if _regression(recipe) else "classification")
        pre = _preprocess(recipe)
        train_tf, eval_tf = build_transforms(pre, d.augment)
        fmt, root = d.format, d.root
        if fmt == SYNTHETIC:
            root = root or f"data/{recipe.name}"
            _make_shapes(d, Path(root))
            fmt = "imagefolder"
        if not root and not fmt.startswith("torchvision:"):
            raise UserError(f"data.root is empty; point it at your data: -s data.root=PATH ({fmt})")
        data = vdata.build_vision_data(fmt, root or "data/torchvision", recipe.task, d.val_split, recipe.train.seed,
                                       train_tf, eval_tf)
        data.preprocess = pre  # the bundle's preprocessing at export time
        if recipe.model.head.keep:  # the weights' classes: the data's class names are looked up among them
            vdata.relabel(data, models.kept_head_labels(recipe.model.arch, recipe.model.weights))
        return data

    def build_model(self, recipe: Recipe, labels: list[str], weights: str) -> nn.Module:
        m = recipe.model
        outputs = 1 if _regression(recipe) else len(labels)
        model, _ = models.build_model(m.arch, outputs, weights, m.head.hidden, m.head.dropout, m.trust_weights,
                                      keep_head=m.head.keep and weights == m.weights)
        return model

    def groups(self, recipe: Recipe, model: nn.Module) -> list[ParamGroup]:
        return models.model_groups(recipe.model.arch, model)

    def trainer(self, recipe: Recipe, data):
        return None  # the suite's own loop

    def own_trainer(self, recipe: Recipe) -> str | None:
        return None

    def models(self) -> list[str]:
        return [*models.list_models(), "timm:<name>  (any timm model, when timm is installed)",
                "<any torchvision classification name>  (e.g. mobilenet_v2, regnet_y_400mf)"]

    def task_for(self, arch: str) -> str | None:
        return "image-classification" if models.is_vision(arch) else None

    def default_metric(self, recipe: Recipe) -> str:
        return "val/mse" if _regression(recipe) else "val/accuracy"

    def hooks(self, recipe: Recipe, data, device: torch.device) -> Hooks:
        criterion = self._criterion(recipe, data).to(device)
        regression = _regression(recipe)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed image sizes: cuDNN picks its fastest kernels once

        def head_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            y = y.to(device, non_blocking=True)
            return criterion(out.squeeze(-1).float(), y.float()) if regression else criterion(out.float(), y)

        layout = {"format": torch.contiguous_format}

        def prepare(model: nn.Module) -> None:
            if _channels_last(recipe, device, model):
                model.to(memory_format=torch.channels_last)
                layout["format"] = torch.channels_last
                tqdm.write(f"[{recipe.name}] channels_last memory format (train.channels_last: "
                           f"{recipe.train.channels_last})")

        def loss(model: nn.Module, batch) -> torch.Tensor:
            x = batch[0].to(device, non_blocking=True, memory_format=layout["format"])
            return head_loss(model(x), batch[1])

        kept: list[DataLoader] = []  # the validation loader, made once: with workers, they serve every epoch

        def evaluate(model: nn.Module) -> EvalResult:
            if not kept:
                kept.append(self._eval_loader(recipe, data, "val", persistent=True))
            return self._evaluate(recipe, model, data, "val", device, kept[0])

        def cache(model: nn.Module) -> CacheSpec:
            blocker = None
            if recipe.data.augment != "none":
                blocker = f"data.augment is {recipe.data.augment} (random crops and flips change the features " \
                          "every epoch); set data.augment: none to cache"
            return CacheSpec(point=models.cache_point(model), loss=head_loss,
                             inputs=lambda batch: batch[0].to(device, non_blocking=True),
                             targets=lambda batch: batch[1], val_loader=lambda: self._eval_loader(recipe, data, "val"),
                             val_metrics=lambda scored: self._score(recipe, data, scored).prefixed("val"),
                             blocker=blocker)

        def close() -> None:
            for loader in kept:
                stop_workers(loader)
            kept.clear()

        return Hooks(loss=loss, evaluate=evaluate, train_loader=lambda epoch: self._train_loader(recipe, data, epoch),
                     cache=cache, prepare=prepare, close=close)

    def _criterion(self, recipe: Recipe, data) -> nn.Module:
        if _regression(recipe):
            return nn.MSELoss()
        weight = None
        if recipe.data.balance == "loss":
            weight = vdata.class_weights(data.train_targets, len(data.labels))
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.train.label_smoothing)

    def _train_loader(self, recipe: Recipe, data, epoch: int) -> DataLoader:
        # A generator seeded by the epoch makes the order a function of (seed, epoch): exact resume.
        gen = torch.Generator().manual_seed(recipe.train.seed * 100_003 + epoch)
        bs, n = recipe.train.batch_size, len(data.train)
        sampler = None
        if recipe.data.balance == "sampler" and not _regression(recipe):
            sampler = vdata.balanced_sampler(data.train_targets, len(data.labels), generator=gen)
        return DataLoader(data.train, batch_size=bs, shuffle=sampler is None, sampler=sampler, generator=gen,
                          num_workers=loader_workers(recipe.data.num_workers), drop_last=n > bs and n % bs == 1,  # a batch of 1 breaks BatchNorm
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def evaluate_source(self, recipe: Recipe, model: nn.Module, device: torch.device) -> dict | None:
        if recipe.eval.source is None:
            return None
        from suite.vision import source

        before, labels, pre = source.source_model(recipe)
        after = source.with_backbone(before, model)
        dataset, scan = source.source_dataset(recipe, labels, build_transforms(pre, "none")[1])
        if not len(dataset):
            raise UserError(f"eval.source: no readable image in {recipe.eval.source.root} ({scan.summary()})")
        bs = recipe.train.eval_batch_size or recipe.train.batch_size * 2
        return {"source": recipe.eval.source.root, "samples": len(dataset), "classes": len(labels),
                "before": source.score(before, dataset, len(labels), device, bs),
                "after": source.score(after, dataset, len(labels), device, bs)}

    def _eval_loader(self, recipe: Recipe, data, split: str, persistent: bool = False) -> DataLoader:
        """``persistent``: worker processes (if any) kept for the next pass, not started again (the per-epoch
        validation; there is no randomness in evaluation to reseed)."""
        bs = recipe.train.eval_batch_size or recipe.train.batch_size * 2
        workers = loader_workers(recipe.data.num_workers)
        return DataLoader(getattr(data, split), batch_size=bs, shuffle=False, num_workers=workers,
                          persistent_workers=persistent and workers > 0, pin_memory=torch.cuda.is_available())

    def evaluate(self, recipe: Recipe, model: nn.Module, data, split: str, device: torch.device) -> EvalResult | None:
        return self._evaluate(recipe, model, data, split, device, None)

    def _evaluate(self, recipe: Recipe, model: nn.Module, data, split: str, device: torch.device,
                  loader: DataLoader | None) -> EvalResult | None:
        if getattr(data, split) is None:
            return None
        model.eval()

        def scored():
            with torch.inference_mode():
                for x, y in tqdm(loader or self._eval_loader(recipe, data, split), desc=f"eval {split}",
                                 leave=False, dynamic_ncols=True, disable=None):
                    yield model(x.to(device, non_blocking=True)).float().cpu(), y

        return self._score(recipe, data, scored())

    def _score(self, recipe: Recipe, data, scored) -> EvalResult:
        """Metrics of (outputs, targets) batches: the full model's or the head's on cached features."""
        regression = _regression(recipe)
        ev = RegressionEvaluator() if regression else ClassificationEvaluator(data.labels)
        criterion = nn.MSELoss() if regression else nn.CrossEntropyLoss()
        for out, y in scored:
            if regression:
                out = out.squeeze(-1)
                ev.update(out, y, loss=criterion(out, y.float()).item(), n=len(y))
            else:
                ev.update(out, y, loss=criterion(out, y).item(), n=len(y))
        return ev.compute()

    def export_spec(self, recipe: Recipe, data, model: nn.Module) -> ExportSpec:
        pre = data.preprocess
        meta = {"task": recipe.task, "labels": list(data.labels),
                "preprocess": {"type": "image", **dataclasses.asdict(pre), "channel_order": "RGB", "scale": 255.0,
                               "max_aspect": MAX_ASPECT},
                "postprocess": {"type": "identity" if _regression(recipe) else "softmax"}}
        cpu = torch.device("cpu")
        return ExportSpec(
            meta=meta, example=torch.randn(2, 3, pre.size, pre.size, generator=torch.Generator().manual_seed(0)),
            evaluate=lambda m: self.evaluate(recipe, m, data, "val", cpu).prefixed("val"),
            metric=self.default_metric(recipe), io=EXPORT_IO, calibration=lambda n: _calibration(data, n, recipe.train.seed))

    def evaluate_bundle(self, recipe: Recipe, bundle, data, split: str) -> dict[str, float] | None:
        """The bundle through onnxruntime, scored by the same evaluator as PyTorch."""
        result = self.evaluate(recipe, OnnxModel(bundle), data, split, torch.device("cpu"))
        return None if result is None else result.prefixed(split)

    def export_module(self, recipe: Recipe, model: nn.Module) -> nn.Module:
        return model

    def report_sections(self, recipe: Recipe, result: EvalResult) -> list[tuple[str, str]]:
        return []

    def plots(self, result: EvalResult, data, plot_dir: Path) -> list[Path]:
        if result.confusion is None:
            return []
        return [report.plot_confusion(result.confusion, data.labels, plot_dir / "confusion_val.png")]


def _calibration(data, n: int, seed: int):
    """n training images through the *eval* transform (no augmentation), in batches of 8, for int8 calibration."""
    train = copy.copy(data.train)
    train.transform = data.val.transform
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    subset = torch.utils.data.Subset(train, order)
    for x, _ in DataLoader(subset, batch_size=8):
        yield x.numpy()


def _preprocess(recipe: Recipe):
    """The weights' preprocessing, with the recipe's image_size/resize on top."""
    d = recipe.data
    pre = models.preprocess_for(recipe.model.arch, recipe.model.weights)
    size = d.image_size or pre.size
    resize = d.resize or max(size, round(size * pre.resize / pre.size))
    return dataclasses.replace(pre, size=size, resize=resize)


def _make_shapes(d, root: Path) -> None:
    from suite.datasets.shapes import make_shapes

    s = d.synthetic
    make_shapes(root, s.classes, s.train_per_class, s.val_per_class, s.test_per_class, size=s.size, seed=s.seed,
                progress=True)


def _channels_last(recipe: Recipe, device: torch.device, model: nn.Module) -> bool:
    """train.channels_last: true, false, or auto = a convolutional network (more than a patch embedding) on a CUDA
    GPU, where cuDNN's NHWC kernels are the fast ones; on a CPU the default layout stays (measured:
    benchmarks/bench_fastpath.py)."""
    mode = recipe.train.channels_last
    if mode != "auto":
        return mode == "true"
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    return device.type == "cuda" and convs > 2

