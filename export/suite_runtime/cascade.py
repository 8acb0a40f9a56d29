"""Cascade bundles: a detector finds coarse objects, a classifier names each one's fine class from its crop.

A cascade bundle is a folder with its own model.json and two ordinary bundles in sub-folders::

    export/
      model.json    {"format_version": 1, "task": "cascade",
                     "labels": ["circle", "square", ...],        # the fine classes, in id order
                     "detector": "detector", "classifier": "classifier",   # the two sub-bundles' folders
                     "route": {"shape": ["circle", "square"]},   # detector class -> the fine classes it may become
                     "crop": {"margin": 0.15},                   # see crop_box
                     "thresholds": {"conf": 0.05, "iou": 0.7},   # the detector's, unless predict overrides them
                     "score": "product"}                         # detector score x classifier probability
      detector/     a detection bundle (yolo or boxes)
      classifier/   an image-classification bundle (softmax)

Each box is cut out with ``crop_box`` (the suite cuts its classifier's training crops with the same function,
so training and serving crops are identical), the classifier's softmax is restricted to the fine classes routed
from the box's detector class and renormalised over them, and the best of those is the box's fine class.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from suite_runtime.bundle import Bundle, _as_list, read_meta
from suite_runtime.detection import Detections, _load_rgb
from suite_runtime.onnxfile import inside

SCORES = ("product",)  # the final score's rule: detector score x renormalised classifier probability


def crop_box(image: Image.Image, box: Sequence[float], margin: float) -> Image.Image:
    """The part of ``image`` under ``box`` (x1, y1, x2, y2 in pixels), widened by ``margin``.

    Deterministic integer geometry, shared by training (the suite cuts its classifier's crops with it) and
    serving: with w = x2 - x1 and h = y2 - y1 (0 when negative), the box grows by ``margin * w`` on the left
    and right and ``margin * h`` at the top and bottom; each coordinate is snapped to the nearest 1e-6 px (so
    float noise cannot add a pixel), then the low edges are floored and the high edges ceiled (the crop
    always covers the widened box), clamped to the image, and kept at least 1 px wide and high (a box on or
    past the right/bottom edge keeps the last column/row).
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.integer, np.floating)) \
            or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"crop margin must be a finite number >= 0 (got {margin!r})")
    margin = float(margin)
    coords = [float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1)]
    if len(coords) != 4 or not all(math.isfinite(v) for v in coords):
        raise ValueError(f"box must be 4 finite numbers x1, y1, x2, y2 (got {box!r})")
    x1, y1, x2, y2 = coords
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"cannot crop an empty image ({width}x{height})")
    dx, dy = margin * max(x2 - x1, 0.0), margin * max(y2 - y1, 0.0)

    def edges(lo: float, hi: float, size: int) -> tuple[int, int]:
        # round(.., 6) first: 100 - 0.55 * 100 is 44.99999999999999, which must not floor to 44
        a = min(max(math.floor(round(lo, 6)), 0), size - 1)
        b = min(max(math.ceil(round(hi, 6)), a + 1), size)
        return a, b

    left, right = edges(x1 - dx, x2 + dx, width)
    top, bottom = edges(y1 - dy, y2 + dy, height)
    return image.crop((left, top, right, bottom))


@dataclass
class CascadeDetections:
    """The objects found in one image, each named by its fine class; ``boxes`` in the original image's pixels."""

    boxes: np.ndarray  # float32 [N, 4], x1 y1 x2 y2, best combined score first
    scores: np.ndarray  # float32 [N], combined: det_scores x cls_scores
    classes: np.ndarray  # int64 [N], fine class ids: indices into labels
    labels: list[str]  # the cascade's fine class names
    det_classes: np.ndarray  # int64 [N], indices into det_labels
    det_scores: np.ndarray  # float32 [N], the detector's scores
    cls_scores: np.ndarray  # float32 [N], the classifier's probability, renormalised over the routed classes
    det_labels: list[str]  # the detector's class names

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        """The fine label of each box."""
        return [self.labels[int(c)] for c in self.classes]

    @property
    def det_names(self) -> list[str]:
        """The detector label of each box."""
        return [self.det_labels[int(c)] for c in self.det_classes]

    def to_dicts(self) -> list[dict]:
        """JSON-friendly: one {box, label, score, detector: {label, score}, classifier_score} per box, best first."""
        return [{"box": [float(v) for v in b], "label": name, "score": float(s),
                 "detector": {"label": det, "score": float(ds)}, "classifier_score": float(cs)}
                for b, name, s, det, ds, cs in zip(self.boxes, self.names, self.scores, self.det_names,
                                                   self.det_scores, self.cls_scores)]


def _threshold(file: Path, thresholds: dict, key: str) -> float | None:
    v = thresholds.get(key)
    if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1):
        raise ValueError(f"{file}: thresholds.{key} must be between 0 and 1 (got {v!r})")
    return v


class Cascade:
    """A detector and a classifier behind one ``predict``: fine-class boxes per image.

    ``detector`` and ``classifier`` are Bundles or anything with the same ``labels`` and ``predict`` (a
    detector's ``predict([image], conf=, iou=)`` gives Detections; a classifier's ``predict(images,
    batch_size=, top_k=)`` gives Predictions with ``scores`` by label). ``meta`` is the cascade's model.json,
    checked here; ``path`` is its folder, named in errors.
    """

    def __init__(self, detector: Bundle | Any, classifier: Bundle | Any, meta: dict, path: str | os.PathLike):
        self.detector, self.classifier, self.meta, self.path = detector, classifier, meta, Path(path)
        file = self.path / "model.json"
        if meta.get("task") != "cascade":
            raise ValueError(f"{file} has task {meta.get('task')!r}; a cascade bundle has task 'cascade'")
        labels = meta.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, (str, int)) for x in labels):
            raise ValueError(f"{file} has no labels list (the fine classes, in id order); re-export the bundle")
        self.labels: list[str] = [str(x) for x in labels]
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"{file}: labels repeat a name; each fine class must appear once")
        if getattr(detector, "is_detector", True) is not True:
            raise ValueError(f"{file}: the detector sub-bundle is not a detection bundle")
        if getattr(classifier, "is_detector", False) is not False:
            raise ValueError(f"{file}: the classifier sub-bundle is a detection bundle, not a classifier")
        det_labels, cls_labels = [str(x) for x in detector.labels], [str(x) for x in classifier.labels]
        route = meta.get("route")
        if not isinstance(route, dict) or not route:
            raise ValueError(f"{file} has no route (detector class -> list of fine classes); re-export the bundle")
        fine_id, cls_id = {name: i for i, name in enumerate(self.labels)}, {n: i for i, n in enumerate(cls_labels)}
        # detector class id -> (fine ids, classifier output columns), both in route order
        self._route: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        routed: set[str] = set()
        for det, fine in route.items():
            if det not in det_labels:
                raise ValueError(f"{file}: route names detector class {det!r}, which the detector does not have "
                                 f"(it has: {', '.join(det_labels)})")
            if not isinstance(fine, list) or not fine or not all(isinstance(f, str) for f in fine):
                raise ValueError(f"{file}: route[{det!r}] must be a non-empty list of fine class names")
            for f in fine:
                if f not in fine_id:
                    raise ValueError(f"{file}: route[{det!r}] names {f!r}, which is not in labels")
                if f not in cls_id:
                    raise ValueError(f"{file}: route[{det!r}] names {f!r}, which the classifier does not have "
                                     f"(it has: {', '.join(cls_labels)})")
            if len(set(fine)) != len(fine):
                raise ValueError(f"{file}: route[{det!r}] repeats a fine class")
            self._route[det_labels.index(det)] = (np.array([fine_id[f] for f in fine], dtype=np.int64),
                                                  np.array([cls_id[f] for f in fine], dtype=np.int64))
            routed.update(fine)
        unrouted = [f for f in self.labels if f not in routed]
        if unrouted:
            raise ValueError(f"{file}: no detector class routes to {', '.join(map(repr, unrouted))}; every fine "
                             "label must be in some route list")
        crop = meta.get("crop", {})
        self.margin = crop.get("margin", 0.15) if isinstance(crop, dict) else None
        if not (isinstance(self.margin, (int, float)) and not isinstance(self.margin, bool)
                and math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"{file}: crop.margin must be a number >= 0 (got {self.margin!r})")
        thresholds = meta.get("thresholds", {})
        if not isinstance(thresholds, dict):
            raise ValueError(f"{file}: thresholds must be an object like {{\"conf\": 0.05, \"iou\": 0.7}}")
        self.conf, self.iou = _threshold(file, thresholds, "conf"), _threshold(file, thresholds, "iou")
        self.score = meta.get("score", "product")
        if self.score not in SCORES:
            raise ValueError(f"{file}: unknown score {self.score!r}; this suite-runtime supports: {', '.join(SCORES)}")
        self._det_labels, self._cls_labels = det_labels, cls_labels

    @classmethod
    def load(cls, path: str | os.PathLike, variant: str | None = None, threads: int | None = None) -> "Cascade":
        """The cascade bundle folder ``path``: both sub-bundles loaded with Bundle.load.

        ``variant`` (fp32, int8-static, ...) is used for both when both have it; when only one has it each
        loads its default_variant; when neither has it, ValueError.
        """
        root = Path(path)
        if root.name == "model.json" and root.is_file():
            root = root.parent
        meta = read_meta(root)
        file = root / "model.json"
        if meta.get("task") != "cascade":
            raise ValueError(f"{file} has task {meta.get('task')!r}; a cascade bundle has task 'cascade'")
        folders = {}
        for key in ("detector", "classifier"):
            name = meta.get(key)
            if not isinstance(name, str) or not name:
                raise ValueError(f"{file}: {key} must name the {key} bundle's sub-folder (e.g. \"{key}\")")
            folders[key] = inside(root, name)
        if variant is not None:
            have = [set(read_meta(folders[k]).get("variants") or {"fp32": {}}) for k in folders]
            if not any(variant in h for h in have):
                raise ValueError(f"cascade bundle {root} has no variant '{variant}' in either sub-bundle; they have: "
                                 + "; ".join(f"{k} {', '.join(sorted(h))}" for k, h in zip(folders, have)))
            variant = variant if all(variant in h for h in have) else None
        detector = Bundle.load(folders["detector"], variant=variant, threads=threads)
        classifier = Bundle.load(folders["classifier"], variant=variant, threads=threads)
        return cls(detector, classifier, meta, root)

    def __repr__(self) -> str:
        return f"Cascade({str(self.path)!r}, detector={self.detector!r}, classifier={self.classifier!r})"

    @property
    def is_detector(self) -> bool:
        """True: predict gives boxes (CascadeDetections), so tools that draw boxes accept a cascade."""
        return True

    @property
    def variant(self) -> str | None:
        """The sub-bundles' variant, or ``detector/classifier`` when they differ."""
        det, cls = getattr(self.detector, "variant", None), getattr(self.classifier, "variant", None)
        return det if det == cls else f"{det}/{cls}"

    def predict(self, inputs, conf: float | None = None, iou: float | None = None, batch_size: int = 16,
                timings: dict | None = None) -> list[CascadeDetections]:
        """Paths, PIL images or HWC uint8 arrays (one or a list) -> one CascadeDetections each, in order.

        ``conf`` and ``iou`` override model.json's thresholds (which, when absent, leave the detector bundle's
        own). Crops are classified ``batch_size`` at a time, across images; boxes whose detector class routes
        to one fine class take it with probability 1 without running the classifier. A ``timings`` dict gets
        seconds added to "detector" and "classifier" and counts to "images" and "crops" (crops classified).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1 (got {batch_size!r})")
        conf = self.conf if conf is None else conf
        iou = self.iou if iou is None else iou
        t_det = t_cls = 0.0
        dets: list[Detections] = []
        probs: list[np.ndarray] = []  # per image: [N] probability of each box's chosen fine class
        fine: list[np.ndarray] = []  # per image: [N] fine class ids
        crops: list[Image.Image] = []
        owners: list[tuple[int, int]] = []  # (image, box) of each pending crop
        n_crops = 0

        def classify() -> None:
            nonlocal t_cls, n_crops
            t0 = time.perf_counter()
            preds = self.classifier.predict(crops, batch_size=batch_size, top_k=len(self._cls_labels))
            t_cls += time.perf_counter() - t0
            for (i, j), p in zip(owners, preds):
                full = np.array([p.scores.get(name, 0.0) for name in self._cls_labels], dtype=np.float64)
                k, prob = self._pick(int(dets[i].classes[j]), full)
                fine[i][j], probs[i][j] = k, prob
            n_crops += len(crops)
            crops.clear()
            owners.clear()

        for item in _as_list(inputs):
            image = _load_rgb(item)
            t0 = time.perf_counter()
            d = self.detector.predict([image], conf=conf, iou=iou)[0]
            t_det += time.perf_counter() - t0
            i = len(dets)
            dets.append(d)
            fine.append(np.zeros(len(d), dtype=np.int64))
            probs.append(np.ones(len(d), dtype=np.float64))
            for j, (box, c) in enumerate(zip(d.boxes, d.classes)):
                route = self._route.get(int(c))
                if route is None:  # a detector class no route names: not one of the cascade's objects
                    probs[i][j] = -1.0
                    continue
                if len(route[0]) == 1:
                    fine[i][j] = route[0][0]
                    continue
                crops.append(crop_box(image, box, self.margin))
                owners.append((i, j))
                if len(crops) >= batch_size:
                    classify()
        if crops:
            classify()
        if timings is not None:
            for key, v in (("detector", t_det), ("classifier", t_cls), ("images", len(dets)), ("crops", n_crops)):
                timings[key] = timings.get(key, 0) + v
        return [self._result(d, k, p) for d, k, p in zip(dets, fine, probs)]

    def _pick(self, det_class: int, full: np.ndarray) -> tuple[int, float]:
        """The classifier's softmax over its labels -> (fine id, probability renormalised over the routed ones);
        ties keep route order, and an all-zero (underflowed) subset counts as uniform."""
        fine_ids, columns = self._route[det_class]
        sub = full[columns]
        total = sub.sum()
        sub = sub / total if total > 0 else np.full(len(sub), 1.0 / len(sub))
        best = int(np.argmax(sub))
        return int(fine_ids[best]), float(sub[best])

    def _result(self, d: Detections, fine: np.ndarray, probs: np.ndarray) -> CascadeDetections:
        keep = np.flatnonzero(probs >= 0)  # boxes of unrouted detector classes are dropped
        combined = np.asarray(d.scores, dtype=np.float64)[keep] * probs[keep]
        order = keep[np.argsort(-combined, kind="stable")]  # best combined score first; ties keep detector order
        combined = np.asarray(d.scores, dtype=np.float64)[order] * probs[order]
        return CascadeDetections(
            boxes=np.asarray(d.boxes, dtype=np.float32).reshape(-1, 4)[order],
            scores=combined.astype(np.float32), classes=fine[order].astype(np.int64), labels=list(self.labels),
            det_classes=np.asarray(d.classes, dtype=np.int64)[order],
            det_scores=np.asarray(d.scores, dtype=np.float32)[order],
            cls_scores=probs[order].astype(np.float32), det_labels=list(self._det_labels))
