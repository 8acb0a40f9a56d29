"""Detection datasets (Ultralytics YOLO folders, COCO json), scanned up front, and converted both ways.

Every image is decoded once and every label row checked before training. An image with a problem is
skipped and counted in the ``ScanReport``; a row that is only redundant (an exact duplicate) or empty (a box
under a pixel) is dropped and counted. Boxes are xyxy float32 in absolute pixels of the upright image (EXIF
orientation applied, as Ultralytics and ``ImageOps.exif_transpose`` see it), whatever the source format.

Nothing here writes to the user's folders. Ultralytics writes ``labels/*.cache`` next to the labels it reads
and rewrites JPEGs it finds corrupt, so training reads a staged copy made by ``write_yolo``: symlinks to the
kept images and clean label files, in a folder this module owns.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from suite.core.checkpoint import atomic_write_text
from suite.core.data import (CheckCache, NotAFile, ScanReport, check_val_split, open_image, scan_workers, split_indices,
                             is_regular_file, strict_decoding, walk_files)
from suite.core.progress import progress
from suite.datasets.formats import yolo_label_text
from suite.errors import UserError

SPLITS = ("train", "val", "test")
FORMATS = ("yolo", "coco")
IMG_FORMATS = frozenset({"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff",
                         "webp"})  # Ultralytics' list: a file it would not read never reaches its loader
YOLO_TOLERANCE = 0.01  # fraction of the image side a box may overhang and be clipped: Ultralytics' own check
COCO_TOLERANCE = 1.0  # pixels
MARKER = ".suite-staged"  # a folder holding this file was written by write_yolo/write_coco and may be replaced
MIN_SIDE = 10  # Ultralytics rejects smaller images

# Why an image is skipped (one reason per image: the first problem found).
MISSING_IMAGE, MISSING_LABEL, CORRUPT = "missing image", "missing label file", "corrupt image"
UNSUPPORTED, TOO_SMALL, NOT_A_FILE = "unsupported image format", f"image under {MIN_SIDE} px", "not a regular file"
OUT_OF_RANGE, BAD_CLASS, MALFORMED = "out-of-range coordinates", "class id >= nc", "malformed row"
UNKNOWN_CATEGORY, MALFORMED_ANNOTATION = "unknown category id", "malformed annotation"
# What is dropped from a kept image.
DUPLICATES, DEGENERATE, CROWD = "duplicate rows", "degenerate boxes", "crowd annotations"

_PROGRESS_MIN = 500


# ----------------------------------------------------------------------------- data classes


@dataclass(eq=False)
class Sample:
    """One kept image with its boxes, in pixels of the upright image."""

    image: Path
    boxes: np.ndarray  # float32 [N, 4] xyxy
    labels: np.ndarray  # int64 [N], 0-based class ids
    width: int
    height: int


@dataclass(eq=False)
class DetectionData:
    labels: list[str]  # class names in id order
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] | None
    report: ScanReport
    source: Path  # the data.yaml, or the COCO root


# ----------------------------------------------------------------------------- the scan


class _Skip(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# (width, height, removed) -> (class ids, xyxy pixels, (x, y) tolerance in pixels); raises _Skip
RowsFn = Callable[[int, int, Counter], tuple[np.ndarray, np.ndarray, tuple[float, float]]]


def _image_size(path: Path, cache: CheckCache) -> tuple[int, int]:
    """Decode ``path`` fully (unless unchanged since a cached check) and return its upright (width, height), as
    Ultralytics' ``exif_size``."""
    try:
        info = cache.check(str(path))
    except FileNotFoundError:
        raise _Skip(MISSING_IMAGE) from None
    except NotAFile:
        raise _Skip(NOT_A_FILE) from None
    except Exception:  # any decoder failure means "skip this file", never "stop the run"
        raise _Skip(CORRUPT) from None
    if info.format not in IMG_FORMATS | {"jpeg2000"}:
        raise _Skip(UNSUPPORTED)
    if min(info.width, info.height) < MIN_SIDE:
        raise _Skip(TOO_SMALL)
    return info.width, info.height


def _clean_boxes(classes: np.ndarray, xyxy: np.ndarray, width: int, height: int, tolerance: tuple[float, float],
                 removed: Counter) -> tuple[np.ndarray, np.ndarray]:
    """Skip the image if a box leaves the frame by more than ``tolerance`` pixels; clip the rest; drop boxes
    under a pixel wide or high and exact duplicates, counting both in ``removed``."""
    tx, ty = tolerance
    xs, ys = xyxy[:, [0, 2]], xyxy[:, [1, 3]]
    if (xs < -tx).any() or (xs > width + tx).any() or (ys < -ty).any() or (ys > height + ty).any():
        raise _Skip(OUT_OF_RANGE)
    rows = np.column_stack([classes, xyxy.clip(0, [width, height, width, height])])
    keep = (rows[:, 3] - rows[:, 1] >= 1) & (rows[:, 4] - rows[:, 2] >= 1)
    removed[DEGENERATE] += int((~keep).sum())
    rows = rows[keep]
    if len(rows):
        first = np.sort(np.unique(rows, axis=0, return_index=True)[1])  # keep file order
        removed[DUPLICATES] += len(rows) - len(first)
        rows = rows[first]
    return rows[:, 1:].astype(np.float32), rows[:, 0].astype(np.int64)


def _scan_one(cache: CheckCache, job: tuple[Path, RowsFn]) -> tuple[Sample | None, str | None, Counter]:
    image, rows = job
    removed: Counter = Counter()
    try:
        width, height = _image_size(image, cache)
        classes, xyxy, tolerance = rows(width, height, removed)
        boxes, labels = _clean_boxes(classes, xyxy.reshape(-1, 4), width, height, tolerance, removed)
    except _Skip as skip:
        return None, skip.reason, removed
    return Sample(image, boxes, labels, width, height), None, removed


def _scan(split: str, jobs: list[tuple[Path, RowsFn]], report: ScanReport) -> list[Sample]:
    """Check every (image, rows) job; record each in ``report`` and return the kept samples in order."""
    kept: list[Sample] = []
    report.split(split)  # an empty split is still reported
    cache = CheckCache([str(image) for image, _ in jobs])
    with strict_decoding(), ThreadPoolExecutor(scan_workers()) as pool:
        results = progress(pool.map(partial(_scan_one, cache), jobs), f"scanning {split}", total=len(jobs),
                           unit="img", show=len(jobs) >= _PROGRESS_MIN)
        for (image, _), (sample, reason, removed) in zip(jobs, results):
            if sample is None:
                report.skip(split, image, reason)
                continue
            report.keep(split, background=not len(sample.boxes), removed=removed)
            kept.append(sample)
    cache.save()
    return kept


def _hold_out(samples: list[Sample], val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded (train, val) split, each in the original order; val gets at least 1 and never all."""
    train_idx, val_idx = split_indices([0] * len(samples), val_split, seed, stratify=False)
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def _finish(names: list[str], splits: dict[str, list[Sample]], report: ScanReport, source: Path,
            val_split: float, seed: int) -> DetectionData:
    """Hold out a val split when there is none, and refuse data with nothing left to train or validate on."""
    train = splits.get("train", [])
    if "val" in splits:
        val = splits["val"]
    else:
        train, val = _hold_out(train, val_split, seed)
        report.notes.append(f"val {len(val)} of train's kept images held out (val_split {val_split}, seed {seed})")
    for split, kept in (("train", train), ("val", val)):
        if not kept:
            raise UserError(f"no usable {split} images in {source} ({report.summary()}); "
                            "fix the data or point data.root at another dataset")
    return DetectionData(names, train, val, splits.get("test"), report, source)


# ----------------------------------------------------------------------------- YOLO (Ultralytics data.yaml)


def img2label_paths(images: list[str]) -> list[str]:
    """Ultralytics' mapping: the last /images/ becomes /labels/ and the extension .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(x.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in images]


def _find_yaml(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{path} does not exist: point data.root at an Ultralytics data.yaml or the folder holding it")
    for name in ("data.yaml", "data.yml"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    if len(found) == 1:
        return found[0]
    hint = f"found {', '.join(p.name for p in found)}: point data.root at one" if found else \
        "point data.root at an Ultralytics data.yaml"
    raise UserError(f"no data.yaml in {path}; {hint}")


def _read_yaml(file: Path) -> dict:
    try:
        spec = yaml.safe_load(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {file}: {' '.join(str(exc).split())}") from None
    if not isinstance(spec, dict):
        raise UserError(f"{file} is not a data.yaml: expected a mapping with train:, val: and names:")
    return spec


def _class_count(spec: dict, file: Path) -> int | None:
    nc = spec.get("nc")
    if nc is None:
        return None
    try:
        value = float(nc)
    except (TypeError, ValueError):
        value = -1.0
    if isinstance(nc, bool) or value != int(value) or value < 1:
        raise UserError(f"{file}: nc: {nc!r} must be a positive integer (or remove it: names: is enough)")
    return int(value)


def _class_names(spec: dict, file: Path) -> list[str]:
    """names: as a list or {id: name}, checked against nc: when both are given (Ultralytics' rules)."""
    names, nc = spec.get("names"), _class_count(spec, file)
    if names is None:
        if nc is None:
            raise UserError(f"{file} has neither names: nor nc:; add names: [first class, second class, ...]")
        names = [f"class_{i}" for i in range(nc)]
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise UserError(f"{file}: names: keys must be class ids 0, 1, 2, ...") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise UserError(f"{file}: names: must number the classes 0..{len(by_id) - 1} without gaps, "
                            f"got ids {sorted(by_id)}")
        names = [by_id[i] for i in range(len(by_id))]
    if not isinstance(names, list) or not names:
        raise UserError(f"{file}: names: must be a non-empty list of class names or a {{id: name}} mapping")
    if nc is not None and nc != len(names):
        raise UserError(f"{file}: nc: {nc} but names: has {len(names)} classes; fix one of them or remove nc:")
    return [str(n) for n in names]


def _dataset_root(spec: dict, file: Path) -> Path:
    """path: relative to the yaml's folder (or, as Ultralytics reads it, to the working directory)."""
    value = spec.get("path")
    if not value:
        return file.parent
    if not isinstance(value, str):
        raise UserError(f"{file}: path: must be a folder name, got {value!r}")
    path = Path(value)
    candidates = [path] if path.is_absolute() else [file.parent / path, Path.cwd() / path]
    found = next((p for p in candidates if p.is_dir()), None)
    if found is None:
        raise UserError(f"{file}: path: {value} is not a folder (looked for {candidates[0]}); "
                        "fix path: or remove it to use the yaml's own folder")
    return found


def _split_paths(spec: dict, root: Path, file: Path, split: str) -> list[Path] | None:
    """The split's folders/list files, resolved like Ultralytics' check_det_dataset; None if absent."""
    entry = spec.get(split) or (spec.get("validation") if split == "val" else None)
    if not entry:
        return None
    entries = entry if isinstance(entry, list) else [entry]
    paths = []
    for value in entries:
        if not isinstance(value, str):
            raise UserError(f"{file}: {split}: must be a folder, a list of folders or a .txt file, got {value!r}")
        path = root / value
        if not path.exists() and value.startswith("../"):
            path = root / value[3:]
        if not path.exists():
            raise UserError(f"{file}: {split}: {value} not found (looked for {path}); fix the path in the "
                            "yaml (this suite never downloads datasets)")
        paths.append(path)
    return paths


def _read_list(txt: Path) -> list[str]:
    """Image paths listed one per line. As in Ultralytics, './x' is relative to the list file and any other
    relative path to the working directory; where that does not exist, the list file's folder is tried."""
    try:
        lines = [line.strip() for line in txt.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the image list {txt}: {exc}") from None
    files = []
    for line in lines:
        path = Path(line)
        if line.startswith("./") or not (path.is_absolute() or path.exists()):
            path = txt.parent / path
        files.append(str(path))
    return files


def _list_images(paths: list[Path], file: Path, split: str) -> list[Path]:
    files: list[str] = []
    for path in paths:
        if path.is_dir():  # what Ultralytics' recursive glob finds, with a link loop walked once
            files += [f for f in walk_files(path) if "." in os.path.basename(f)]
        else:
            files += _read_list(path)
    images = sorted(f for f in files if f.rpartition(".")[-1].lower() in IMG_FORMATS)
    if not images:
        raise UserError(f"{file}: no images for {split}: in {', '.join(map(str, paths))} "
                        f"(image types read: {', '.join(sorted(IMG_FORMATS))})")
    return [Path(f) for f in images]


def _keypoint_row_length(spec: dict) -> int | None:
    """Pose labels carry keypoints after the box; a detector reads the box only (Ultralytics does the same)."""
    shape = spec.get("kpt_shape")
    if isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) for v in shape):
        return 5 + shape[0] * shape[1]
    return None


def _yolo_row(fields: list[str], nc: int, pose_length: int | None) -> list[float]:
    """[cls, cx, cy, w, h]; a polygon row (segmentation labels) becomes its bounding box, as in Ultralytics."""
    if pose_length and len(fields) == pose_length:
        fields = fields[:5]
    try:
        values = [float(f) for f in fields]
    except ValueError:
        raise _Skip(MALFORMED) from None
    if len(values) >= 7 and len(values) % 2:
        xy = np.array(values[1:]).reshape(-1, 2)
        values = [values[0], *((xy.min(0) + xy.max(0)) / 2), *(xy.max(0) - xy.min(0))]
    if len(values) != 5 or not np.isfinite(values).all() or min(values[3:]) < 0:
        raise _Skip(MALFORMED)
    if values[0] < 0 or values[0] != int(values[0]):
        raise _Skip(MALFORMED)
    if values[0] >= nc:
        raise _Skip(BAD_CLASS)
    return values


def _plain_rows(text: str, nc: int) -> np.ndarray | None:
    """The usual label file (every row 'cls cx cy w h', all valid) parsed at C speed; None for anything else,
    so that a file of a million rows takes a second, not a minute."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        return np.zeros((0, 5))
    if any(len(fields) != 5 for fields in lines):
        return None
    try:
        table = np.array([f for fields in lines for f in fields], dtype=np.float64)
    except ValueError:
        return None
    if table.size != 5 * len(lines):
        return None
    table = table.reshape(-1, 5)
    cls = table[:, 0]
    if not (np.isfinite(table).all() and (table[:, 3:] >= 0).all() and (cls >= 0).all()
            and (cls == np.floor(cls)).all() and (cls < nc).all()):
        return None
    return table


def _yolo_rows(label: Path, nc: int, pose_length: int | None, width: int, height: int, removed: Counter):
    """A label file's rows as (class ids, xyxy pixels, tolerance); see ``RowsFn``."""
    if label.exists() and not is_regular_file(label):  # a FIFO would block the read
        raise _Skip(MALFORMED)
    try:
        text = label.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise _Skip(MISSING_LABEL) from None
    except (OSError, UnicodeDecodeError):
        raise _Skip(MALFORMED) from None
    table = _plain_rows(text, nc)
    if table is None:  # polygons, keypoints, or a row that is wrong: row by row, to name the problem
        rows = [_yolo_row(line.split(), nc, pose_length) for line in text.splitlines() if line.strip()]
        table = np.array(rows, np.float64).reshape(-1, 5)
    cx, cy, w, h = table[:, 1] * width, table[:, 2] * height, table[:, 3] * width, table[:, 4] * height
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return table[:, 0], xyxy, (YOLO_TOLERANCE * width, YOLO_TOLERANCE * height)


def load_yolo(path: str | os.PathLike, val_split: float = 0.2, seed: int = 0) -> DetectionData:
    """Read and scan an Ultralytics detection dataset: a data.yaml, or the folder holding one.

    ``train``/``val``/``test`` may each be a folder (searched recursively), a list of folders or a .txt list of
    images; labels are found by Ultralytics' rule (the last ``/images/`` becomes ``/labels/``). Without a val
    split, ``val_split`` of the kept training images is held out with ``seed``.
    """
    check_val_split(val_split)
    file = _find_yaml(Path(path))
    spec = _read_yaml(file)
    names = _class_names(spec, file)
    root = _dataset_root(spec, file)
    pose_length = _keypoint_row_length(spec)
    if not spec.get("train"):
        raise UserError(f"{file} has no train: key; add train: images/train (a folder of images)")
    report, splits = ScanReport(unit="image"), {}
    for split in SPLITS:
        paths = _split_paths(spec, root, file, split)
        if paths is None:
            continue
        images = _list_images(paths, file, split)
        labels = img2label_paths([str(p) for p in images])
        rows = [partial(_yolo_rows, Path(label), len(names), pose_length) for label in labels]
        splits[split] = _scan(split, list(zip(images, rows)), report)
    return _finish(names, splits, report, file, val_split, seed)


# ----------------------------------------------------------------------------- COCO json


def _coco_files(root: Path, report: ScanReport) -> dict[str, Path]:
    """split -> annotation json: instances_{split}.json, {split}.json, else the one *{split}*.json."""
    folder = root / "annotations" if (root / "annotations").is_dir() else root
    files = {}
    for split in SPLITS:
        matches = sorted(p for p in folder.glob("*.json") if split in p.stem.lower())
        best = ([p for p in matches if p.stem.lower() in (split, f"instances_{split}")]
                or [p for p in matches if p.stem.lower().startswith("instances_")] or matches)
        if len(best) > 1 and split == "test":  # COCO ships several unlabelled test lists; none is required
            report.notes.append(f"test ignored: several test annotation files ({', '.join(p.name for p in best)})")
        elif len(best) > 1:
            raise UserError(f"several {split} annotation files in {folder} ({', '.join(p.name for p in best)}); "
                            f"rename the one to use instances_{split}.json")
        elif best:
            files[split] = best[0]
    if "train" not in files:
        raise UserError(f"no train annotations in {folder}: expected annotations/instances_train.json "
                        "(or any *train*.json) in COCO format")
    return files


def _read_coco(file: Path) -> dict:
    try:
        spec = json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("images"), list):
        raise UserError(f"{file} is not COCO detection json: expected images:, annotations: and categories: lists")
    return spec


def _categories(spec: dict, file: Path) -> list[tuple[int, str]]:
    """(category id, name) sorted by id: class i is the i-th."""
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in spec.get("categories") or [])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{file}: every category needs an integer id and a name") from None
    if not categories or len({c for c, _ in categories}) != len(categories):
        raise UserError(f"{file}: categories: must list at least one category, each id once")
    return categories


def _image_dirs(root: Path, split: str, file: Path) -> list[Path]:
    """Where a split's file_name may live, first match wins: images/train/, train/, images/train2017/, ..."""
    stem = file.stem[len("instances_"):] if file.stem.startswith("instances_") else file.stem
    dirs = [root / "images" / split, root / split, root / "images" / stem, root / stem, root / "images", root]
    return list(dict.fromkeys(dirs))


def _coco_rows(annotations: list[dict], index: dict[int, int], width: int, height: int, removed: Counter):
    """An image's annotations as (class ids, xyxy pixels, tolerance); crowd regions are dropped."""
    classes, boxes = [], []
    for annotation in annotations:
        if annotation.get("iscrowd"):
            removed[CROWD] += 1
            continue
        try:
            x, y, w, h = np.asarray(annotation["bbox"], np.float64).reshape(4)
        except (KeyError, TypeError, ValueError):
            raise _Skip(MALFORMED_ANNOTATION) from None
        if not np.isfinite([x, y, w, h]).all() or w < 0 or h < 0:
            raise _Skip(MALFORMED_ANNOTATION)
        if annotation.get("category_id") not in index:
            raise _Skip(UNKNOWN_CATEGORY)
        classes.append(index[annotation["category_id"]])
        boxes.append([x, y, x + w, y + h])
    return np.array(classes, np.float64), np.array(boxes, np.float64), (COCO_TOLERANCE, COCO_TOLERANCE)


def _coco_jobs(root: Path, split: str, file: Path, spec: dict, index: dict[int, int],
               report: ScanReport) -> list[tuple[Path, RowsFn]]:
    by_image: dict = {}
    for annotation in spec["annotations"]:
        by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    dirs, jobs = _image_dirs(root, split, file), []
    for image in spec["images"]:
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            raise UserError(f"{file}: every image needs an id and a file_name")
        name = image["file_name"]
        path = next((d / name for d in dirs if (d / name).is_file()), dirs[0] / name)
        jobs.append((path, partial(_coco_rows, by_image.pop(image["id"], []), index)))
    if orphans := sum(len(a) for a in by_image.values()):
        report.split(split).removed["annotations of unlisted images"] += orphans
    return jobs


def load_coco(root: str | os.PathLike, val_split: float = 0.2, seed: int = 0) -> DetectionData:
    """Read and scan a COCO detection dataset: ``root/annotations/instances_{train,val,test}*.json`` (or
    ``{split}.json``) with images in ``root/images/{split}/``, ``root/{split}/``, ``root/images/`` or ``root``.

    Classes are the categories sorted by id. Crowd annotations are dropped and counted. Without a val split,
    ``val_split`` of the kept training images is held out with ``seed``.
    """
    check_val_split(val_split)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: point data.root at the folder holding annotations/*.json")
    report, splits = ScanReport(unit="image"), {}
    files = _coco_files(root, report)
    specs = {split: _read_coco(file) for split, file in files.items()}
    categories = _categories(specs["train"], files["train"])
    index = {category: i for i, (category, _) in enumerate(categories)}
    for split, spec in specs.items():
        file = files[split]
        if not isinstance(spec.get("annotations"), list):
            if split != "test":
                raise UserError(f"{file} has no annotations: list; a {split} split needs labelled boxes")
            report.notes.append(f"test ignored: {file.name} has no annotations")
            continue
        if _categories(spec, file) != categories:
            raise UserError(f"{file} lists other categories than {files['train'].name}; all splits need the same")
        splits[split] = _scan(split, _coco_jobs(root, split, file, spec, index, report), report)
    return _finish([name for _, name in categories], splits, report, root, val_split, seed)


PENNFUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"


def load_pennfudan(root: str | os.PathLike) -> DetectionData:
    """Penn-Fudan pedestrians (PNGImages/ + PedMasks/): every image as training data, boxes from the instance
    masks, one class (person); ``val_split`` holds out validation when it is loaded for training."""
    root = Path(root)
    images, masks = root / "PNGImages", root / "PedMasks"
    if not images.is_dir() or not masks.is_dir():
        raise UserError(f"{root} is not the Penn-Fudan folder (PNGImages/ and PedMasks/ expected); "
                        f"download {PENNFUDAN_URL} and unzip it")
    report, samples = ScanReport(unit="image"), []
    for image in sorted(images.glob("*.png")):
        mask_file = masks / f"{image.stem}_mask.png"
        if not mask_file.is_file():
            report.skip("train", image, "missing mask")
            continue
        with open_image(mask_file) as m:
            mask = np.asarray(m)
        boxes = []
        for instance in np.unique(mask)[1:]:  # 0 is background; each other value is one pedestrian
            ys, xs = np.nonzero(mask == instance)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        samples.append(Sample(image, box_array, np.zeros(len(box_array), dtype=np.int64), mask.shape[1],
                              mask.shape[0]))
        report.keep("train", background=not len(box_array))
    if not samples:
        raise UserError(f"no images with masks in {images}; download {PENNFUDAN_URL} and unzip it")
    return DetectionData(labels=["person"], train=samples, val=[], test=None, report=report, source=root)


def load_detection(fmt: str, root: str | os.PathLike, val_split: float = 0.2, seed: int = 0) -> DetectionData:
    """Dispatch on ``data.format``: ``yolo`` (a data.yaml or its folder) or ``coco`` (a folder)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown detection data.format {fmt!r}; valid: {', '.join(FORMATS)}")
    if not Path(root).exists():
        what = "an Ultralytics data.yaml or the folder holding it" if fmt == "yolo" else \
            "the folder holding annotations/*.json"
        raise UserError(f"data.root {root} does not exist: point data.root at {what}")
    loader = load_yolo if fmt == "yolo" else load_coco
    return loader(root, val_split=val_split, seed=seed)


# ----------------------------------------------------------------------------- writing (never in place)


def _splits(data: DetectionData) -> list[tuple[str, list[Sample]]]:
    return [(s, samples) for s, samples in (("train", data.train), ("val", data.val), ("test", data.test))
            if samples]


def _start_output(out: str | os.PathLike, data: DetectionData) -> tuple[Path, dict[str, list[Path]]]:
    """Resolve every source image, then empty ``out`` if it is ours. Refuses a folder we did not write, an
    ``out`` holding a source image (re-staging a copy into itself would delete its own inputs) and an ``out``
    inside a folder of source images."""
    out = Path(os.path.realpath(out))
    sources = {split: [Path(os.path.realpath(s.image)) for s in samples] for split, samples in _splits(data)}
    inside = next((p for paths in sources.values() for p in paths if p.is_relative_to(out)), None)
    if inside is not None:
        raise UserError(f"the image {inside} is inside the output folder {out}: write the converted "
                        "dataset to another folder")
    holder = next((f for f in {p.parent for paths in sources.values() for p in paths} if out.is_relative_to(f)), None)
    if holder is not None:  # a recursive scan of that folder would then find the copies as more images
        raise UserError(f"{out} is inside {holder}, a folder of the dataset's images: write the converted "
                        "dataset to another folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: give a folder for the converted dataset")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"{out} is not empty and was not written by this suite: choose a new or empty "
                            "folder (nothing in it was changed)")
        shutil.rmtree(out)  # does not follow symlinks: the linked originals are untouched
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by finetune-suite; the whole folder is replaced on the next write\n")
    return out, sources


def _extension(path: Path) -> str:
    """The file's extension if Ultralytics reads it, else one named after its content."""
    if path.suffix[1:].lower() in IMG_FORMATS:
        return path.suffix
    with open_image(path) as image:
        kind = (image.format or "").lower()
    return "." + {"jpeg": "jpg", "mpo": "jpg", "jpeg2000": "jp2"}.get(kind, kind)


def _unique_names(samples: list[Sample], sources: list[Path]) -> list[str]:
    """The images' own names, made unique by stem (a.jpg and a.png would share a.txt) and visible to glob."""
    used: set[str] = set()
    names = []
    for sample, source in zip(samples, sources):
        stem = sample.image.name[: -len(sample.image.suffix)] if sample.image.suffix else sample.image.name
        stem = "_" + stem if stem.startswith(".") else stem
        name, k = stem, 0
        while name.lower() in used:  # lower: case-insensitive file systems
            k += 1
            name = f"{stem}_{k}"
        used.add(name.lower())
        names.append(name + _extension(source))
    return names


def _place(source: Path, target: Path, link: bool) -> None:
    if link:
        try:
            os.symlink(source, target)
            return
        except OSError:  # no symlinks here (some Windows setups, some mounts): copy the bytes
            pass
    shutil.copyfile(source, target)


def _link_images(samples: list[Sample], sources: list[Path], folder: Path, link: bool) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = _unique_names(samples, sources)
    for source, name in zip(sources, names):
        _place(source, folder / name, link)
    return names


def write_yolo(data: DetectionData, out: str | os.PathLike, link: bool = True,
               moved_to: str | os.PathLike | None = None) -> Path:
    """Write the kept samples as an Ultralytics dataset and return its data.yaml.

    ``out/images/{split}/`` holds symlinks to the original images (copies where symlinks fail, or with
    ``link=False``), ``out/labels/{split}/`` the clean labels. Rerunning replaces ``out``; a folder this
    function did not write is refused. ``moved_to``: where the caller will move ``out`` (data.yaml's ``path``).
    """
    out, sources = _start_output(out, data)
    for split, samples in _splits(data):
        labels = out / "labels" / split
        labels.mkdir(parents=True)
        for sample, name in zip(samples, _link_images(samples, sources[split], out / "images" / split, link)):
            (labels / (name.rsplit(".", 1)[0] + ".txt")).write_text(
                yolo_label_text(sample.boxes, sample.labels, sample.width, sample.height), encoding="utf-8")
    where = os.path.realpath(moved_to) if moved_to else str(out)
    spec = {"path": where, **{split: f"images/{split}" for split, _ in _splits(data)},
            "nc": len(data.labels), "names": list(data.labels)}
    return atomic_write_text(out / "data.yaml", yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))


def _coco_json(samples: list[Sample], names: list[str], labels: list[str]) -> dict:
    images, annotations = [], []
    for image_id, (sample, name) in enumerate(zip(samples, names), 1):
        images.append({"id": image_id, "file_name": name, "width": sample.width, "height": sample.height})
        for label, (x1, y1, x2, y2) in zip(sample.labels.tolist(), sample.boxes.astype(np.float64).tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(labels)]
    return {"info": {"description": "written by finetune-suite"}, "images": images,
            "annotations": annotations, "categories": categories}


def write_coco(data: DetectionData, out: str | os.PathLike, link: bool = True) -> Path:
    """Write the kept samples as COCO json (``out/annotations/instances_{split}.json``, category ids 1..K)
    with the images linked into ``out/images/{split}/``; return ``out``, the folder ``load_coco`` reads."""
    out, sources = _start_output(out, data)
    for split, samples in _splits(data):
        names = _link_images(samples, sources[split], out / "images" / split, link)
        text = json.dumps(_coco_json(samples, names, data.labels))
        atomic_write_text(out / "annotations" / f"instances_{split}.json", text)
    return out
