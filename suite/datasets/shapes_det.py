"""A seeded, offline object-detection dataset: coloured shapes on textured backgrounds, with exact boxes.

Each image holds 1..max_objects shapes of random classes, diameters (10%-45% of the image side), rotations
and positions, drawn with the outlines, colours and textures of the classification set (``shapes.py``). A box
is the tight box of the pixels where its shape stays visible (coverage > 0.5 after later shapes are drawn over
it), so it is exact by construction. A placement whose box overlaps an earlier one with IoU > 0.3, or that
hides more than 60% of an earlier shape, is redrawn.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml
from PIL import Image, ImageFilter
from tqdm import tqdm

from suite.core.checkpoint import atomic_write_text
from suite.datasets.shapes import (
    _PARTIAL, SPLITS, _background, _check_classes, _check_count, _claim, _mask, _pose, _shape_colour,
)
from suite.datasets.formats import yolo_label_text

FORMAT = 1  # stored in shapes.json; bump when rendering changes so an old folder is not reused
SCALE = (0.10, 0.45)  # outline diameter as a fraction of the image side
MAX_IOU = 0.3  # between a new shape's box and an earlier one's
MIN_VISIBLE = 0.4  # of an earlier shape's pixels that must stay visible
_TRIES = 30  # placements per shape before the image makes do with fewer shapes
_MARGIN = 4  # empty pixels around a shape's crop: the reach of the anti-aliasing filter


@dataclass(eq=False)
class Scene:
    image: Image.Image
    boxes: np.ndarray  # float32 [N, 4] xyxy pixel edges: tight around mask > 0.5
    labels: np.ndarray  # int64 [N], index into the class list
    masks: np.ndarray  # float32 [N, size, size]: each shape's visible coverage


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for one image: images depend on (seed, split, index) only."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _extent(polygons: list) -> tuple[np.ndarray, np.ndarray]:
    filled = np.concatenate([p for p, fill in polygons if fill])
    return filled.min(0), filled.max(0)


def _outline(rng: np.random.Generator, shape: str, size: int) -> list:
    """A random pose, 2 px clear of the frame so the anti-aliased edge does not touch it."""
    radius = rng.uniform(*SCALE) * size / 2
    polygons = _pose(shape, rng.uniform(0, 2 * math.pi), radius, np.zeros(2))
    low, high = _extent(polygons)
    centre = rng.uniform(2 - low, size - 2 - high)
    return [(p + centre, fill) for p, fill in polygons]


def _coverage(polygons: list, size: int) -> np.ndarray:
    """The shape's coverage on the full frame, rendered in a crop around it (16x less drawing at 45%)."""
    low, high = _extent(polygons)
    x0, y0 = np.maximum(np.floor(low).astype(int) - _MARGIN, 0)
    side = int(math.ceil((high - low).max())) + 2 * _MARGIN + 1
    crop = _mask([(p - [x0, y0], fill) for p, fill in polygons], side)
    full = np.zeros((size, size), np.float32)
    h, w = min(side, size - y0), min(side, size - x0)
    full[y0:y0 + h, x0:x0 + w] = crop[:h, :w]
    return full


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _place(rng: np.random.Generator, classes: list[str], size: int, max_objects: int):
    """(labels, coverages, visible coverages) of the shapes that found room, in drawing order."""
    labels, alphas, visible, boxes = [], [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(classes)))
        for _ in range(_TRIES):
            polygons = _outline(rng, classes[label], size)
            box = np.concatenate(_extent(polygons))
            if any(_iou(box, b) > MAX_IOU for b in boxes):
                continue
            alpha = _coverage(polygons, size)
            covered = [v * (1 - alpha) for v in visible]
            if (alpha > 0.5).any() and all((c > 0.5).sum() >= MIN_VISIBLE * (a > 0.5).sum()
                                           for c, a in zip(covered, alphas)):
                break
        else:
            continue  # no room left for this one
        labels.append(label)
        alphas.append(alpha)
        visible = covered + [alpha]
        boxes.append(box)
    return labels, alphas, visible


def _tight_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def render_scene(classes: Sequence[str], size: int, max_objects: int, rng: np.random.Generator) -> Scene:
    """One RGB image of up to ``max_objects`` shapes with every nuisance drawn from ``rng``, and its boxes."""
    canvas = _background(rng, size)
    labels, alphas, visible = _place(rng, list(classes), size, max_objects)
    for alpha in alphas:
        colour = _shape_colour(rng, canvas, alpha)
        canvas = canvas * (1 - alpha[..., None]) + colour * alpha[..., None]
    canvas = canvas + rng.normal(0, rng.uniform(0, 0.04), canvas.shape)
    image = Image.fromarray((canvas.clip(0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    boxes = np.array([_tight_box(v > 0.5) for v in visible], np.float32).reshape(-1, 4)
    masks = np.stack(visible) if visible else np.zeros((0, size, size), np.float32)
    return Scene(image, boxes, np.array(labels, np.int64), masks)


def _write_yaml(out: Path, params: dict) -> None:
    """data.yaml with an absolute path: (Ultralytics reads a relative one against the working directory);
    rewritten only when it differs, e.g. after the folder was moved."""
    spec = {"path": str(out.resolve()),
            **{split: f"images/{split}" for split in SPLITS if params[f"{split}_images"]},
            "nc": len(params["classes"]), "names": params["classes"]}
    text = yaml.safe_dump(spec, sort_keys=False)
    path = out / "data.yaml"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def make_shapes_detection(out, classes: Sequence[str], train_images: int, val_images: int, test_images: int = 0,
                          size: int = 128, max_objects: int = 4, seed: int = 0, progress: bool = False) -> Path:
    """Write an Ultralytics dataset: out/images/{split}/00000.png, out/labels/{split}/00000.txt, out/data.yaml,
    then out/shapes.json (the parameters) last; return the data.yaml path.

    Idempotent like ``make_shapes``: a folder already holding these parameters is reused at once, a folder
    holding anything else raises UserError. Image i of a split depends only on (seed, split, i, classes,
    size, max_objects), see ``scene_rng``.
    """
    out = Path(out)
    counts = {"train": _check_count("train_images", train_images, 1),
              "val": _check_count("val_images", val_images, 0),
              "test": _check_count("test_images", test_images, 0)}
    params = {"format": FORMAT, "task": "detection", "classes": _check_classes(classes),
              **{f"{split}_images": n for split, n in counts.items()},
              "size": _check_count("size", size, 32), "max_objects": _check_count("max_objects", max_objects, 1),
              "seed": _check_count("seed", seed, 0)}
    if not _claim(out, params):
        jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
        for split, i in tqdm(jobs, desc=f"shapes -> {out}", unit="img", disable=None if progress else True):
            scene = render_scene(params["classes"], size, max_objects, scene_rng(seed, split, i))
            for folder in ("images", "labels"):
                (out / folder / split).mkdir(parents=True, exist_ok=True)
            scene.image.save(out / "images" / split / f"{i:05d}.png")
            text = yolo_label_text(scene.boxes, scene.labels, size, size)
            (out / "labels" / split / f"{i:05d}.txt").write_text(text, encoding="utf-8")
    _write_yaml(out, params)
    if not (out / "shapes.json").is_file():
        atomic_write_text(out / "shapes.json", json.dumps(params, indent=2) + "\n")
        (out / _PARTIAL).unlink(missing_ok=True)  # after shapes.json: a crash in between still reads as done
    return out / "data.yaml"
