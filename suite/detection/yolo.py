"""YOLO through Ultralytics: our groups and freeze schedule, Ultralytics' trainer runs each stage.

Each stage of the recipe is one Ultralytics training run on the same live model, with

- ``freeze=`` set to the layer indices of the groups the stage does not train, so Ultralytics
  both stops their gradients and keeps their BatchNorm statistics fixed (``_model_train``);
- our optimizer groups (one LR per group: ``layer_decay``, ``lr_mult``) in place of its three;
- its LambdaLR for the LR shape within the stage (cosine or constant), its EMA, its losses,
  its augmentation (mosaic, HSV, flips, scale) and its validator after every epoch.

After a stage the EMA weights carry on into the next stage; frozen layers are copied back
from the raw model, so a frozen layer is bitwise the same before and after its stage.
"""
from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path

import torch
from torch import nn

from suite.core import checkpoint, report
from suite.core.groups import ParamGroup, group_names, make_optimizer, set_trainable
from suite.core.metrics import DetectionEvaluator, EvalResult
from suite.core.schedule import Stage, group_lrs, trainable_groups
from suite.errors import UserError

os.environ.setdefault("YOLO_OFFLINE", "1")  # we resolve weights ourselves; training never reaches a hub
# Ultralytics' select_device() sets torch to cpu_count - 1 threads on CPU (1 of 2 cores here, to leave room
# for its dataloader workers); we keep the process's own setting: measured 4.5 -> see README for the figure
THREADS = torch.get_num_threads()


def _ultralytics() -> None:
    """Import Ultralytics, then undo its global PIL.Image.open patch: that one pip-installs pi-heif the first
    time a file is not an image, so a corrupt file in a user's data would start an install instead of being
    skipped and counted by our scans (suite.vision.data, suite.detection.data)."""
    from PIL import Image
    from ultralytics.utils import patches

    Image.open = patches._image_open

ARCH = re.compile(r"^yolo(v?\d+)[nslmx]$")
WEIGHTS_URL = "https://github.com/ultralytics/assets/releases/download/v8.3.0/{name}"
# Ultralytics' validator settings for mAP (its `yolo val` defaults)
VAL_CONF, VAL_IOU = 0.001, 0.7


def is_yolo(arch: str) -> bool:
    return bool(ARCH.match(arch))


def build_model(arch: str, labels: list[str], weights: str):
    """An Ultralytics DetectionModel from ``ARCH.yaml`` with ``len(labels)`` classes, pre-trained when asked."""
    _ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    try:
        model = DetectionModel(f"{arch}.yaml", nc=len(labels), verbose=False)
    except FileNotFoundError:
        raise UserError(f"model.arch '{arch}': Ultralytics has no {arch}.yaml; try yolo11n, yolo11s, yolov8n") from None
    model.names = dict(enumerate(labels))
    if weights != "none":
        _load_weights(model, weights, arch)
    return model


def _load_weights(model, weights: str, arch: str) -> None:
    path = _resolve(weights)
    if path.suffix == ".safetensors":  # a suite run of a YOLO model, maybe with other classes
        from safetensors.torch import load_file

        state = load_file(str(path))
        own = model.state_dict()
        fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if len(fits) < len(own) // 2:
            raise UserError(f"model.weights {path}: only {len(fits)}/{len(own)} tensors fit {arch}; "
                            "was it trained with another model.arch?")
        model.load_state_dict(fits, strict=False)
        return
    from ultralytics.nn.tasks import load_checkpoint

    # Ultralytics checkpoints are pickled models: torch.load(weights_only=False) inside Ultralytics' loader,
    # so only load .pt files you trust (official releases, your own runs). Our own runs use safetensors.
    source, _ = load_checkpoint(str(path))
    model.load(source, verbose=False)  # transfers every tensor whose shape fits (all but the class branch)


def _resolve(weights: str) -> Path:
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    from ultralytics.utils import SETTINGS

    cached = Path(SETTINGS["weights_dir"]) / path.name
    if cached.is_file():
        return cached
    url = WEIGHTS_URL.format(name=path.name) if path.suffix == ".pt" else "the run that produced it"
    raise UserError(f"model.weights: {weights} not found (looked in ./ and {cached.parent}); offline, fetch it "
                    f"from {url} and put it at {path} or {cached}, or use weights: none")


def groups(model) -> list[ParamGroup]:
    """``backbone.I`` for the backbone's layers, ``neck.I`` for the rest, ``head`` for Detect (I = layer index)."""
    n_backbone = len(model.yaml["backbone"])
    layers = list(model.model)
    out = []
    for i, layer in enumerate(layers):
        params = list(layer.parameters())
        if not params:  # Upsample, Concat
            continue
        name = "head" if i == len(layers) - 1 else f"backbone.{i}" if i < n_backbone else f"neck.{i}"
        out.append(ParamGroup(name, params, [layer]))
    return out


def _layer_index(group: ParamGroup, model) -> int:
    return list(model.model).index(group.modules[0])


# ----- training: one Ultralytics run per stage ---------------------------------------------------

def _trainer_class():
    _ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer

    class SuiteTrainer(DetectionTrainer):
        """Ultralytics' detection trainer with our optimizer groups; the run dir and best weights are ours."""

        suite_groups: list[ParamGroup] = []
        suite_lrs: dict[str, float] = {}
        suite_optim: tuple[str, float, float] = ("sgd", 5e-4, 0.9)

        def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
            norm = tuple(v for k, v in nn.__dict__.items() if "Norm" in k)
            optim, weight_decay, mom = self.suite_optim
            param_groups = []
            for g in self.suite_groups:
                if g.name not in self.suite_lrs:
                    continue
                decayed, plain = [], []
                for layer in g.modules:
                    for m in layer.modules():
                        for pname, p in m.named_parameters(recurse=False):
                            if p.requires_grad:  # Ultralytics always freezes the DFL's fixed conv
                                (plain if pname == "bias" or isinstance(m, norm) else decayed).append(p)
                lr_g = self.suite_lrs[g.name]
                for params, wd, suffix in ((decayed, weight_decay, ""), (plain, 0.0, "/no_decay")):
                    if params:
                        param_groups.append({"params": params, "lr": lr_g, "weight_decay": wd, "name": g.name + suffix})
            return make_optimizer(optim, param_groups, mom)

        def save_model(self):  # the suite writes checkpoints/best.safetensors itself
            return False

        def final_eval(self):  # evaluation happens once, in the suite, on the best weights
            return None

    return SuiteTrainer


AUGMENT = {  # recipe data.augment -> Ultralytics hyper-parameters
    "none": dict(mosaic=0.0, fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0),
    "light": dict(mosaic=0.0, fliplr=0.5, translate=0.1, scale=0.25),
    "standard": {},  # Ultralytics defaults: mosaic, HSV, flips, translate 0.1, scale 0.5
}


def stage_args(recipe, data_yaml: Path, stage: Stage, i: int, frozen: list[int], device: torch.device,
               run_dir: Path) -> dict:
    t = recipe.train
    warm = (stage.warmup if stage.warmup is not None else recipe.optim.warmup) or 0.0
    return dict(
        model=f"{recipe.model.arch}.yaml", data=str(data_yaml), epochs=stage.epochs, batch=t.batch_size,
        imgsz=recipe.data.image_size or 640, device="cpu" if device.type == "cpu" else str(device.index or 0),
        workers=recipe.data.num_workers, seed=t.seed + i, deterministic=True, freeze=frozen or None,
        lr0=stage.lr, lrf=1.0 if (stage.scheduler or recipe.optim.scheduler) == "constant" else 0.01,
        cos_lr=(stage.scheduler or recipe.optim.scheduler) != "constant",
        warmup_epochs=warm * stage.epochs, warmup_bias_lr=0.0, close_mosaic=0, amp=t.precision not in ("fp32",),
        project=str(run_dir.resolve() / "ultralytics"), name=f"stage{i}", exist_ok=True, plots=False, val=True,
        save=False, verbose=False, patience=recipe.train.early_stop.patience if recipe.train.early_stop else 100,
        cache=False, **AUGMENT.get(recipe.data.augment, {}))


def train(recipe, model, param_groups: list[ParamGroup], data_yaml: Path, run_dir: Path, device: torch.device,
          select_metric: str, on_epoch_end=()) -> None:
    """Every stage through Ultralytics; writes history.csv and checkpoints/best.safetensors."""
    from suite.core.loop import Position, metric_mode

    Trainer = _trainer_class()
    names = group_names(param_groups)
    mode = metric_mode(select_metric)
    pos = Position()
    for i, stage in enumerate(recipe.stages()):
        where = f"schedule stage {i}"
        trainable = trainable_groups(stage.train, names, where)
        frozen = sorted(_layer_index(g, model) for g in param_groups if g.name not in trainable)
        trainer = Trainer(overrides=stage_args(recipe, data_yaml, stage, i, frozen, device, run_dir))
        trainer.suite_groups, trainer.suite_lrs = param_groups, group_lrs(stage, names, where)
        trainer.suite_optim = (recipe.optim.name, recipe.optim.weight_decay, recipe.optim.momentum)
        torch.set_num_threads(THREADS)  # after select_device() in the trainer's __init__
        trainer.model = model
        set_trainable(param_groups, trainable)  # Ultralytics re-checks this against freeze= (and warns otherwise)

        def on_fit_epoch_end(tr, i=i):
            row = _history_row(tr, pos.epoch + 1, i)
            pos.history.append(row)
            pos.epoch += 1
            value = row.get(select_metric)
            if value is None:
                raise UserError(f"metric '{select_metric}' is not computed for detection; choose one of: "
                                f"{', '.join(k for k in row if k.startswith('val/'))}")
            if pos.best is None or (value < pos.best if mode == "min" else value > pos.best):
                pos.best, pos.best_epoch = value, pos.epoch
                checkpoint.save_weights(run_dir / "checkpoints" / "best.safetensors", _ema_weights(tr, trainable))
            report.write_history(run_dir / "history.csv", pos.history)
            for callback in on_epoch_end:
                callback(pos)

        trainer.add_callback("on_fit_epoch_end", on_fit_epoch_end)
        trainer.train()
        model.load_state_dict(_ema_weights(trainer, trainable))
        checkpoint.save_weights(run_dir / "checkpoints" / "last.safetensors", model.state_dict())
        model.to(device)


def _ema_weights(trainer, trainable: list[str]) -> dict[str, torch.Tensor]:
    """EMA weights, with frozen layers (params and BN stats) exactly as in the raw model."""
    raw = trainer.model.state_dict()
    ema = trainer.ema.ema.state_dict() if trainer.ema else raw
    frozen = tuple(f"model.{_layer_index(g, trainer.model)}." for g in trainer.suite_groups if g.name not in trainable)
    return {k: (raw[k] if k.startswith(frozen) else ema[k]).detach().cpu().clone() for k in raw}


def _history_row(trainer, epoch: int, stage: int) -> dict:
    m = trainer.metrics or {}
    losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None else {}
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    row = {"epoch": epoch, "stage": stage, "lr": max(lrs) if lrs else 0.0,
           "train/loss": float(sum(float(v) for v in losses.values())),
           "val/map50": float(m.get("metrics/mAP50(B)", 0.0)), "val/map50_95": float(m.get("metrics/mAP50-95(B)", 0.0)),
           "val/precision": float(m.get("metrics/precision(B)", 0.0)), "val/recall": float(m.get("metrics/recall(B)", 0.0))}
    row["val/loss"] = float(sum(float(v) for k, v in m.items() if k.startswith("val/") and k.endswith("_loss")))
    return row


# ----- evaluation: our mAP on the validator's own predictions -------------------------------------

def _validator_class():
    _ultralytics()
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils import ops

    class CapturingValidator(DetectionValidator):
        """Ultralytics' validator that also hands every image's predictions and targets to our evaluator."""

        def init_metrics(self, model):
            torch.set_num_threads(THREADS)  # select_device() ran just before
            super().init_metrics(model)
            self.suite_preds, self.suite_targets, self.suite_files = [], [], []

        def update_metrics(self, preds, batch):
            super().update_metrics(preds, batch)
            for si, pred in enumerate(preds):
                pbatch = self._prepare_batch(si, batch)
                predn = self.scale_preds(self._prepare_pred(pred), pbatch)  # original image pixels
                gt = ops.scale_boxes(pbatch["imgsz"], pbatch["bboxes"].clone(), pbatch["ori_shape"],
                                     ratio_pad=pbatch["ratio_pad"])
                self.suite_preds.append({"boxes": predn["bboxes"].cpu(), "scores": predn["conf"].cpu(),
                                         "labels": predn["cls"].long().cpu()})
                self.suite_targets.append({"boxes": gt.cpu(), "labels": pbatch["cls"].long().cpu()})
                self.suite_files.append(pbatch["im_file"])

    return CapturingValidator


def evaluate(model, labels: list[str], data_yaml: Path, split: str, imgsz: int, batch: int,
             device: torch.device) -> EvalResult:
    """mAP by our evaluation core and by Ultralytics' validator, on the same predictions."""
    Validator = _validator_class()
    args = dict(data=str(data_yaml), imgsz=imgsz, batch=batch, conf=VAL_CONF, iou=VAL_IOU, split=split,
                plots=False, verbose=False, save_json=False, workers=0,
                device="cpu" if device.type == "cpu" else str(device.index or 0))
    v = Validator(args=args)
    # AutoBackend fuses Conv+BN in place: validate a copy so the live model keeps its BatchNorm layers
    stats = v(model=copy.deepcopy(model).float())
    ev = DetectionEvaluator(labels)
    ev.update(v.suite_preds, v.suite_targets)
    result = ev.compute()
    ours50, ours = result.metrics["map50"], result.metrics["map50_95"]
    theirs50, theirs = float(stats["metrics/mAP50(B)"]), float(stats["metrics/mAP50-95(B)"])
    result.extra.update({
        "ultralytics": {"map50": theirs50, "map50_95": theirs,
                        "precision": float(stats["metrics/precision(B)"]), "recall": float(stats["metrics/recall(B)"])},
        "agree": max(abs(ours50 - theirs50), abs(ours - theirs)) <= 0.01,
        "predictions": list(zip(v.suite_files, v.suite_preds, v.suite_targets)),
    })
    return result


AGREEMENT_NOTE = (
    "Both numbers come from the same predictions (Ultralytics' validator at conf 0.001, IoU 0.7). "
    "They can differ: COCO (pycocotools) matches each prediction per IoU threshold greedily by score and "
    "interpolates precision at 101 recall points, while Ultralytics matches once per threshold by IoU and "
    "integrates the interpolated curve; with few images or weak models that moves AP by more than 0.01.")


def agreement_section(result: EvalResult) -> tuple[str, str]:
    u = result.extra.get("ultralytics")
    if not u:
        return "", ""
    m = result.metrics
    rows = ["| metric | suite (torchmetrics/pycocotools) | Ultralytics validator | delta |", "|---|---:|---:|---:|"]
    for key, label in (("map50", "mAP50"), ("map50_95", "mAP50-95")):
        rows.append(f"| {label} | {m[key]:.4f} | {u[key]:.4f} | {m[key] - u[key]:+.4f} |")
    verdict = ("They agree within 0.01." if result.extra.get("agree") else
               "They differ by more than 0.01. " + AGREEMENT_NOTE)
    return "mAP cross-check", "\n".join(rows) + "\n\n" + verdict


# ----- export ------------------------------------------------------------------------------------

class ExportHead(nn.Module):
    """The fused model with Detect in export mode: one output [B, 4 + nc, anchors] (cx, cy, w, h, scores)."""

    def __init__(self, model):
        super().__init__()
        _ultralytics()
        from ultralytics.nn.modules import Detect

        self.model = copy.deepcopy(model).float().eval().fuse()
        for m in self.model.modules():
            if isinstance(m, Detect):
                m.export, m.format, m.dynamic = True, "onnx", True

    def forward(self, x):
        y = self.model(x)
        return y[0] if isinstance(y, (tuple, list)) else y


FINAL_CONV = re.compile(r"\.cv[23]\.\d+\.2\.weight$")  # Detect's last 1x1 conv of each box / class branch


def quant_exclude(path: Path) -> list[str]:
    """Every node after Detect's final convolutions: the box decoding (DFL softmax, anchors, strides) and the
    concat of pixel boxes with 0..1 scores must stay float, or one uint8 scale for both erases the scores."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier = [o for n in graph.node if n.op_type == "Conv" and len(n.input) > 1 and FINAL_CONV.search(n.input[1])
                for o in n.output]
    seen: dict[str, None] = {}
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name not in seen:
                seen[node.name] = None
                frontier.extend(node.output)
    return list(seen)


def export_meta(labels: list[str], imgsz: int) -> dict:
    return {"task": "detection", "labels": list(labels),
            "preprocess": {"type": "letterbox", "size": imgsz, "pad_value": 114, "scale": 255.0,
                           "channel_order": "RGB", "scaleup": True},
            "postprocess": {"type": "yolo", "conf_threshold": 0.25, "iou_threshold": VAL_IOU, "max_det": 300,
                            "agnostic": False, "max_wh": 7680}}


def stride_multiple(size: int, stride: int = 32) -> int:
    return max(stride, int(math.ceil(size / stride) * stride))
