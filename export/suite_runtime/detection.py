"""Object detection with numpy and Pillow only: letterbox, YOLO decoding, NMS, box scaling, drawing.

Two kinds of detection bundle, told apart by model.json's ``postprocess.type``. Both have
``"task": "detection"`` and ``"labels": [class names]`` (0-based class ids index into it).

``yolo``: an Ultralytics export with ``nms=False``.

- input ``images`` float32 [B, 3, S, S], RGB in 0..1 (dynamic batch; a fixed batch of 1 also works);
- first output [B, 4 + nc, A]: rows 0..3 are cx, cy, w, h in letterboxed-input pixels, rows 4.. the
  per-class scores, sigmoid already applied;
- ``"preprocess": {"type": "letterbox", "size": S, "pad_value": 114, "scale": 255.0, "channel_order":
  "RGB", "scaleup": true}`` (optional ``"interpolation"``, a PIL filter name, default ``bilinear``): the
  geometry of Ultralytics' ``LetterBox(new_shape=(S, S), auto=False, scaleup=True, center=True)``;
- ``"postprocess": {"type": "yolo", "conf_threshold": 0.25, "iou_threshold": 0.7, "max_det": 300,
  "agnostic": false, "max_wh": 7680}`` (optional ``"max_nms": 30000``): decoded like Ultralytics'
  ``non_max_suppression`` (multi_label=False) followed by ``scale_boxes`` back to the original image.

``boxes``: a torchvision detector (Faster R-CNN) whose graph resizes, normalises and runs NMS itself.

- input ``images`` float32 [3, H, W], RGB in 0..1, any H and W, one image per run;
- outputs by name: ``boxes`` [N, 4] x1, y1, x2, y2 in input pixels, ``labels`` [N] int64 (torchvision's,
  1-based: 0 is background), ``scores`` [N];
- ``"preprocess": {"type": "image01", "channel_order": "RGB", "scale": 255.0}`` (no resize);
- ``"postprocess": {"type": "boxes", "score_threshold": 0.05, "label_offset": 1, "max_det": 100}``
  (optional ``"iou_threshold"``: a further class-wise NMS on the graph's output). The graph's own
  ``box_score_thresh`` and ``detections_per_img`` were fixed at export, so these can only keep fewer boxes.

The pixel arithmetic differs from Ultralytics' in one place on purpose: images are resized with Pillow
(which antialiases when shrinking) rather than OpenCV's INTER_LINEAR, so pixels agree closely, not bit
for bit; the geometry (sizes, padding, box mapping) is identical.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from suite_runtime.preprocess import RESAMPLE, ImageInput, as_pil, to_rgb


def _check_channels(order: str) -> None:
    if order not in ("RGB", "BGR"):
        raise ValueError(f"unknown channel_order '{order}'; use RGB or BGR")


def _known(cls, spec: dict) -> dict:
    return {k: spec[k] for k in (f.name for f in dataclasses.fields(cls)) if k in spec}  # unknown keys are ignored


def _load_rgb(item: ImageInput) -> Image.Image:
    pil = to_rgb(as_pil(item))
    if min(pil.size) == 0:
        raise ValueError(f"cannot preprocess an empty image ({pil.size[0]}x{pil.size[1]})")
    return pil


def _chw(a: np.ndarray, channel_order: str) -> np.ndarray:
    return (a[..., ::-1] if channel_order == "BGR" else a).transpose(2, 0, 1)


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class LetterboxSpec:
    """The validated ``preprocess`` block for ``type: letterbox``."""

    size: int
    pad_value: int = 114
    scale: float = 255.0
    channel_order: str = "RGB"
    scaleup: bool = True
    interpolation: str = "bilinear"

    @classmethod
    def from_dict(cls, spec: dict) -> "LetterboxSpec":
        if "size" not in spec:
            raise ValueError("letterbox preprocess spec lacks size")
        out = cls(**_known(cls, spec))
        _check_channels(out.channel_order)
        if out.interpolation not in RESAMPLE:
            raise ValueError(f"unknown interpolation '{out.interpolation}'; use one of {', '.join(RESAMPLE)}")
        if not (isinstance(out.size, int) and out.size > 0 and 0 <= out.pad_value <= 255 and out.scale > 0):
            raise ValueError(f"bad letterbox spec: need an integer size > 0, pad_value in 0..255 and scale > 0 "
                             f"(got {spec})")
        return out


@dataclass(frozen=True)
class Image01Spec:
    """The validated ``preprocess`` block for ``type: image01``: the whole image, scaled to 0..1, no resize."""

    channel_order: str = "RGB"
    scale: float = 255.0

    @classmethod
    def from_dict(cls, spec: dict) -> "Image01Spec":
        out = cls(**_known(cls, spec))
        _check_channels(out.channel_order)
        if out.scale <= 0:
            raise ValueError(f"bad image01 spec: scale must be > 0 (got {spec})")
        return out


@dataclass(frozen=True)
class Letterbox:
    """Where one image went inside the letterboxed input."""

    shape: tuple[int, int]  # original (height, width)
    resized: tuple[int, int]  # (width, height) after resizing, before padding
    pad: tuple[int, int, int, int]  # top, bottom, left, right

    @property
    def gain(self) -> tuple[float, float]:
        """(x, y) scale from original to input pixels: each side was rounded, so the two can differ slightly."""
        return self.resized[0] / self.shape[1], self.resized[1] / self.shape[0]


def letterbox_geometry(height: int, width: int, size: int, scaleup: bool = True) -> Letterbox:
    """Ultralytics' LetterBox.get_params for a square target, auto=False, center=True."""
    r = min(size / height, size / width)
    if not scaleup:
        r = min(r, 1.0)
    new_w, new_h = max(round(width * r), 1), max(round(height * r), 1)  # thin images keep one pixel
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    # +-0.1 puts an odd pixel of padding at the bottom/right, as Ultralytics does
    pad = (round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1))
    return Letterbox(shape=(height, width), resized=(new_w, new_h), pad=pad)


def letterbox(img: ImageInput, spec: dict | LetterboxSpec) -> tuple[np.ndarray, Letterbox]:
    """One image -> the (3, size, size) float32 input and its geometry (for ``scale_boxes``)."""
    s = spec if isinstance(spec, LetterboxSpec) else LetterboxSpec.from_dict(spec)
    pil = _load_rgb(img)
    geo = letterbox_geometry(pil.height, pil.width, s.size, s.scaleup)
    if geo.resized != pil.size:
        pil = pil.resize(geo.resized, resample=RESAMPLE[s.interpolation])
    top, _, left, _ = geo.pad
    canvas = np.full((s.size, s.size, 3), s.pad_value, dtype=np.uint8)
    canvas[top:top + pil.height, left:left + pil.width] = np.asarray(pil, dtype=np.uint8)
    # divided, not multiplied by 1/scale: Ultralytics' predictor does `im.float() / 255`
    x = _chw(canvas, s.channel_order).astype(np.float32) / np.float32(s.scale)
    return np.ascontiguousarray(x), geo


def image01(img: ImageInput, spec: dict | Image01Spec) -> np.ndarray:
    """One image -> (3, H, W) float32 in 0..1 at its own size (torchvision v2's ToDtype(scale=True) arithmetic)."""
    s = spec if isinstance(spec, Image01Spec) else Image01Spec.from_dict(spec)
    a = np.asarray(_load_rgb(img), dtype=np.uint8)
    return np.ascontiguousarray(_chw(a, s.channel_order).astype(np.float32) * np.float32(1.0 / s.scale))


# ----------------------------------------------------------------------------- boxes and NMS


def xywh2xyxy(x: np.ndarray) -> np.ndarray:
    """Centre x, y, width, height -> corners x1, y1, x2, y2 (last axis), in Ultralytics' float order."""
    x = np.asarray(x)
    half = x[..., 2:] / 2
    return np.concatenate([x[..., :2] - half, x[..., :2] + half], axis=-1)


def _floats(boxes) -> np.ndarray:
    b = np.asarray(boxes)
    b = b if b.dtype.kind == "f" else b.astype(np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be an [N, 4] array of x1, y1, x2, y2, got shape {b.shape}")
    return b


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS; indices of the kept boxes, best first, equal to torchvision.ops.nms.

    Same order (stable sort by score, descending: ties keep input order), same float arithmetic in the
    boxes' dtype, and a box is dropped when its IoU with a kept one is > iou_threshold. ``max_keep``
    stops early; the result is then the first ``max_keep`` of the full one.
    """
    b, scores = _floats(boxes), np.asarray(scores)
    if scores.shape != (len(b),):
        raise ValueError(f"got {len(b)} boxes but scores of shape {scores.shape}")
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = b.T
    areas = (x2 - x1) * (y2 - y1)
    limit, thr, keep = len(order) if max_keep is None else max_keep, float(iou_threshold), []
    with np.errstate(divide="ignore", invalid="ignore"):  # two empty boxes give 0/0: NaN never suppresses
        while order.size and len(keep) < limit:  # one vectorised step per kept box
            i, rest = order[0], order[1:]
            keep.append(i)
            w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
            h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            # compared in float64, as torchvision compares its float IoU with a double threshold
            order = rest[~(iou.astype(np.float64) > thr)]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                class_offset: float | None = None, max_keep: int | None = None) -> np.ndarray:
    """NMS within each class: boxes are shifted apart by ``class * class_offset`` first.

    ``class_offset=None`` uses the largest coordinate + 1, torchvision.ops.batched_nms's coordinate trick
    (which torchvision itself uses up to 1000 boxes on CPU); YOLO decoding passes its ``max_wh``.
    """
    b = _floats(boxes)
    if not len(b):
        return np.empty(0, dtype=np.int64)
    step = b.max() + b.dtype.type(1) if class_offset is None else b.dtype.type(class_offset)
    shifted = b + (np.asarray(classes).astype(b.dtype) * step)[:, None]
    return nms(shifted, scores, iou_threshold, max_keep)


# ----------------------------------------------------------------------------- YOLO decoding


@dataclass(frozen=True)
class YoloPost:
    """The validated ``postprocess`` block for ``type: yolo``."""

    conf_threshold: float = 0.25
    iou_threshold: float = 0.7
    max_det: int = 300
    agnostic: bool = False
    max_wh: float = 7680
    max_nms: int = 30000  # candidates kept (best first) before NMS
    multi_label: bool = False  # every class above conf per anchor (Ultralytics' validator), not just the best

    @classmethod
    def from_dict(cls, spec: dict, conf: float | None = None, iou: float | None = None,
                  multi_label: bool | None = None) -> "YoloPost":
        out = cls(**_known(cls, spec))
        out = dataclasses.replace(out, conf_threshold=out.conf_threshold if conf is None else conf,
                                  iou_threshold=out.iou_threshold if iou is None else iou,
                                  multi_label=out.multi_label if multi_label is None else bool(multi_label))
        _check_thresholds(conf_threshold=out.conf_threshold, iou_threshold=out.iou_threshold, max_det=out.max_det)
        return out


def _check_thresholds(**values) -> None:
    for name, v in values.items():
        if name == "max_det":
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"max_det must be an integer >= 1 (got {v!r})")
        elif v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(f"{name} must be between 0 and 1 (got {v!r})")


def decode_yolo(raw: np.ndarray, conf: float = 0.25, iou: float = 0.7, max_det: int = 300, agnostic: bool = False,
                max_wh: float = 7680, max_nms: int = 30000,
                multi_label: bool = False) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[B, 4 + nc, A] YOLO output -> per image (boxes xyxy in input pixels, scores, classes), best first.

    Ultralytics' non_max_suppression: the best class per anchor (``multi_label``: every class) kept when its
    score > conf, class-aware greedy NMS (boxes offset by class * max_wh unless agnostic), top max_det.
    Its validator measures mAP with multi_label=True, its predictor with False.
    """
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 3 or raw.shape[1] < 5:
        raise ValueError(f"YOLO output must be [batch, 4 + classes, anchors], got shape {raw.shape}")
    return [_decode_one(pred.T, conf, iou, max_det, agnostic, max_wh, max_nms, multi_label) for pred in raw]


def _decode_one(x: np.ndarray, conf: float, iou: float, max_det: int, agnostic: bool, max_wh: float,
                max_nms: int, multi_label: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cls = x[:, 4:]
    if multi_label:
        anchor, best = np.nonzero(cls > np.float32(conf))
        boxes, score = xywh2xyxy(x[anchor, :4]), cls[anchor, best]
    else:
        best = cls.argmax(1)  # the first of equal scores, as torch.max does
        score = np.take_along_axis(cls, best[:, None], 1)[:, 0]
        keep = score > np.float32(conf)  # float32 comparison, like a float tensor against a Python float
        boxes, score, best = xywh2xyxy(x[keep, :4]), score[keep], best[keep]
    if len(score) > max_nms:
        top = np.argsort(-score, kind="stable")[:max_nms]
        boxes, score, best = boxes[top], score[top], best[top]
    i = batched_nms(boxes, score, best, iou, class_offset=0 if agnostic else max_wh, max_keep=max_det)
    return boxes[i], score[i], best[i].astype(np.int64)


def scale_boxes(boxes: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """xyxy boxes in letterboxed-input pixels -> original image pixels, clipped to the image (a new array).

    Ultralytics' ops.scale_boxes: subtract the padding, divide by each axis's gain, clip.
    """
    b = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    top, _, left, _ = geometry.pad
    gain_x, gain_y = geometry.gain
    b[:, [0, 2]] = (b[:, [0, 2]] - left) / gain_x
    b[:, [1, 3]] = (b[:, [1, 3]] - top) / gain_y
    h, w = geometry.shape
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    return b


# ----------------------------------------------------------------------------- torchvision-style outputs


@dataclass(frozen=True)
class BoxesPost:
    """The validated ``postprocess`` block for ``type: boxes``."""

    score_threshold: float = 0.05
    label_offset: int = 1
    max_det: int = 100
    iou_threshold: float | None = None

    @classmethod
    def from_dict(cls, spec: dict, conf: float | None = None, iou: float | None = None) -> "BoxesPost":
        out = cls(**_known(cls, spec))
        out = dataclasses.replace(out, score_threshold=out.score_threshold if conf is None else conf,
                                  iou_threshold=out.iou_threshold if iou is None else iou)
        _check_thresholds(score_threshold=out.score_threshold, iou_threshold=out.iou_threshold,
                          max_det=out.max_det)
        return out


def select_boxes(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, post: BoxesPost,
                 names: list[str]) -> "Detections":
    """A torchvision detector's outputs for one image -> Detections: threshold, optional NMS, best max_det."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(labels).astype(np.int64).reshape(-1) - post.label_offset
    bad = (classes < 0) | (classes >= len(names))
    if bad.any():
        raise ValueError(f"model gives label {int(classes[bad][0]) + post.label_offset}, but model.json has "
                         f"{len(names)} labels and label_offset {post.label_offset}")
    keep = np.flatnonzero(scores > np.float32(post.score_threshold))
    if post.iou_threshold is not None:
        keep = keep[batched_nms(boxes[keep], scores[keep], classes[keep], post.iou_threshold)]
    keep = keep[np.argsort(-scores[keep], kind="stable")][:post.max_det]
    return Detections(boxes[keep], scores[keep], classes[keep], list(names))


# ----------------------------------------------------------------------------- results


@dataclass
class Detections:
    """The objects found in one image; ``boxes`` are x1, y1, x2, y2 in the original image's pixels."""

    boxes: np.ndarray  # float32 [N, 4]
    scores: np.ndarray  # float32 [N], best first
    classes: np.ndarray  # int64 [N], 0-based indices into labels
    labels: list[str] = field(default_factory=list)  # the bundle's class names

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        """The label of each detection."""
        return [self.labels[int(c)] for c in self.classes]

    def to_dict(self) -> list[dict]:
        """JSON-friendly: one {label, class, score, box} per detection, best first."""
        return [{"label": name, "class": int(c), "score": float(s), "box": [float(v) for v in b]}
                for name, c, s, b in zip(self.names, self.classes, self.scores, self.boxes)]


# one colour per class, cycled: Ultralytics' palette order, so drawings look familiar
PALETTE = ["#FF3838", "#FF9D97", "#FF701F", "#FFB21D", "#CFD231", "#48F90A", "#92CC17", "#3DDB86", "#1A9334",
           "#00D4BB", "#2C99A8", "#00C2FF", "#344593", "#6473FF", "#0018EC", "#8438FF", "#520085", "#CB38FF",
           "#FF95C8", "#FF37C7"]


def draw(image: ImageInput, detections: Detections) -> Image.Image:
    """A copy of ``image`` (RGB) with each detection's box and ``label score`` drawn on it."""
    out = to_rgb(as_pil(image)).copy()
    pen = ImageDraw.Draw(out)
    width = max(1, round(sum(out.size) / 2 * 0.003))
    for (x1, y1, x2, y2), name, c, s in zip(detections.boxes.tolist(), detections.names, detections.classes,
                                            detections.scores):
        colour = PALETTE[int(c) % len(PALETTE)]
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{name} {s:.2f}"
        left, top, right, bottom = pen.textbbox((0, 0), text)
        tw, th = right - left, bottom - top + 2
        ty = y1 - th if y1 - th >= 0 else y1  # above the box, or inside it at the top edge
        pen.rectangle((x1, ty, x1 + tw + 2, ty + th), fill=colour)
        pen.text((x1 + 1, ty - top + 1), text, fill="white")
    return out
