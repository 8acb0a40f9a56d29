"""Image datasets from folders, CSV files or torchvision, checked up front.

Every image is decoded once by ``scan`` before training: broken, truncated or non-image files are
skipped and counted in a ``ScanReport`` instead of crashing a DataLoader worker hours later. Nothing
here writes to the user's data folders.
"""
from __future__ import annotations

import csv
import difflib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from PIL import Image
from torch.utils.data import Dataset, WeightedRandomSampler

from suite.core.data import (CheckCache, ScanReport, class_folders, label_order, load_scanned, scan_workers,
                             skip_reason, split_indices, strict_decoding)
from suite.core.progress import progress
from suite.errors import UserError
from suite.vision.transforms import Preprocess, to_rgb

T = TypeVar("T")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TASKS = ("image-classification", "image-regression")
FORMATS = ("imagefolder", "csv", "torchvision:NAME")
_PROGRESS_MIN = 500


def _check(cache: CheckCache, path: str) -> str | Exception:
    """Decode once for the scan (unless unchanged since a cached one); returns the original mode or the exception
    (threads must not raise)."""
    try:
        return cache.check(path).mode
    except Exception as exc:  # any decoder failure means "skip this file", never "stop the run"
        return exc


def scan(samples: list[tuple[str, T]], report: ScanReport, split: str = "train") -> list[tuple[str, T]]:
    """Decode every file once (files unchanged since an earlier scan: see CheckCache); return the samples that
    load and record skips/conversions in ``report``."""
    paths = [str(p) for p, _ in samples]
    kept: list[tuple[str, T]] = []
    report.split(split)  # an empty split is still reported
    cache = CheckCache(paths)
    with strict_decoding(), ThreadPoolExecutor(scan_workers()) as pool:
        results = pool.map(partial(_check, cache), paths)
        bar = progress(results, f"scanning {split}", total=len(paths), unit="img", show=len(paths) > _PROGRESS_MIN)
        for sample, path, result in zip(samples, paths, bar):
            if isinstance(result, Exception):
                report.skip(split, path, skip_reason(path, result))
                continue
            report.keep(split, mode=result)
            kept.append(sample)
    cache.save()
    return kept


# ----------------------------------------------------------------------------- datasets


class ImageDataset(Dataset):
    """(path, target) samples, already scanned, -> (image tensor, target tensor)."""

    def __init__(self, samples: list[tuple[str, int | float]], transform: Callable,
                 target_dtype: torch.dtype = torch.long) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.target_dtype = target_dtype

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, target = self.samples[index]
        return self.transform(load_scanned(path)), torch.tensor(target, dtype=self.target_dtype)

    @property
    def targets(self) -> list[int | float]:
        return [t for _, t in self.samples]


@dataclass
class VisionData:
    train: Dataset
    val: Dataset
    test: Dataset | None
    labels: list[str]  # class names in index order; ["value"] for regression
    report: ScanReport
    train_targets: list[int]  # for class weights / samplers; empty for regression
    preprocess: Preprocess | None = None  # set by the caller; exported with the deploy bundle


# ----------------------------------------------------------------------------- imagefolder


def imagefolder_splits(root: str | os.PathLike, val_split: float, seed: int,
                       report: ScanReport | None = None) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """``{"train": [...], "val": [...], ["test": [...]]}`` of (path, class index), and the class names.

    Layouts: ``root/train``, ``root/val`` (or valid/validation), optional ``root/test``, each with one folder
    per class; or class folders directly under ``root``, split by ``split_indices``. Notes (empty class
    folders, ignored files) go to ``report``.
    """
    report = report if report is not None else ScanReport()
    found = class_folders(root, IMAGE_EXTS, "image", report.notes,
                          other_format="for a CSV file set data.format=csv", example="cat/1.jpg")
    splits = {split: found.indexed(split) for split in found.splits}
    if "val" not in splits:
        train = splits["train"]
        train_idx, val_idx = split_indices([t for _, t in train], val_split, seed)
        splits["train"], splits["val"] = [train[i] for i in train_idx], [train[i] for i in val_idx]
    return splits, found.labels


# ----------------------------------------------------------------------------- csv


def _read_csv(path: Path, column: str) -> Iterator[tuple[int, str, str]]:
    """Yield (line number, path cell, target cell); header problems become UserErrors naming the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in ("path", column) if c not in header]
            if missing:
                raise UserError(
                    f"{path}: missing column(s) {', '.join(missing)}; the first line must be the header "
                    f"'path,{column}' (found: {', '.join(header) or 'nothing'})"
                )
            reader.fieldnames = header
            for row in reader:
                yield reader.line_num, (row.get("path") or "").strip(), (row.get(column) or "").strip()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from exc
    except csv.Error as exc:
        raise UserError(f"{path} is not a valid CSV file ({exc}); fix the line it names") from exc


def csv_samples(path: str | os.PathLike, task: str, root: Path | None = None, *, labels: list[str] | None = None,
                report: ScanReport | None = None, split: str = "train") -> tuple[list[tuple[str, int | float]], list[str]]:
    """Samples from a CSV with header ``path,label`` (classification) or ``path,value`` (regression).

    Relative image paths resolve against ``root`` or the CSV's folder. Pass the training ``labels`` to map a
    val/test CSV onto them. Rows with an empty path or a bad label/value are recorded in ``report``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"CSV file {path} does not exist; set data.root to a .csv file or a folder with train.csv")
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'; use one of {', '.join(TASKS)}")
    report = report if report is not None else ScanReport()
    regression = task == "image-regression"
    base = Path(root).expanduser() if root is not None else path.parent
    rows: list[tuple[str, str]] = []
    for line, image, cell in _read_csv(path, "value" if regression else "label"):
        value = _parse_value(cell) if regression else cell
        if not image or value is None or value == "":
            report.skip(split, f"{path}:{line}", "bad label" if image else "bad row")
            continue
        rows.append((str(base / image), value))  # base / absolute path == absolute path
    if regression:
        return [(p, float(v)) for p, v in rows], ["value"]
    if labels is None:
        labels = label_order({v for _, v in rows})
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({v for _, v in rows} - set(index))
    if unknown:
        raise UserError(
            f"{path}: label '{unknown[0]}' is not a training class ({', '.join(labels[:10])}"
            f"{', ...' if len(labels) > 10 else ''}); fix the label or add examples of it to the training CSV"
        )
    return [(p, index[v]) for p, v in rows], list(labels)


def _parse_value(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- torchvision

_TRAIN_FLAG = {"train": {"train": True}, "test": {"train": False}}
_TRAIN_TEST = {"train": {"split": "train"}, "test": {"split": "test"}}
_TRAIN_VAL_TEST = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}
# Official splits per dataset, as constructor kwargs. A dataset without "val" gets one split off its train set.
TORCHVISION_SPLITS: dict[str, dict[str, dict[str, Any]]] = {
    "CIFAR10": _TRAIN_FLAG, "CIFAR100": _TRAIN_FLAG, "MNIST": _TRAIN_FLAG,
    "FashionMNIST": _TRAIN_FLAG, "KMNIST": _TRAIN_FLAG,
    "Flowers102": _TRAIN_VAL_TEST, "DTD": _TRAIN_VAL_TEST, "FGVCAircraft": _TRAIN_VAL_TEST,
    "Country211": {"train": {"split": "train"}, "val": {"split": "valid"}, "test": {"split": "test"}},
    "OxfordIIITPet": {"train": {"split": "trainval"}, "test": {"split": "test"}},
    "Food101": _TRAIN_TEST, "SVHN": _TRAIN_TEST, "STL10": _TRAIN_TEST, "GTSRB": _TRAIN_TEST,
    "Imagenette": {"train": {"split": "train"}, "val": {"split": "val"}},
    "EuroSAT": {"train": {}}, "Caltech101": {"train": {}},
}


class TorchvisionSplit(Dataset):
    """A torchvision dataset (or some of its indices) yielding (transformed RGB tensor, long target)."""

    def __init__(self, base: Dataset, indices: list[int], targets: list[int], transform: Callable) -> None:
        self.base, self.indices, self.targets, self.transform = base, indices, targets, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.base[self.indices[index]]
        if isinstance(image, Image.Image):
            image = to_rgb(image)  # MNIST is L, some Caltech101 images are grayscale
        return self.transform(image), torch.tensor(int(target), dtype=torch.long)


def _targets_of(ds: Any) -> list[int]:
    """Class index per item, from whichever attribute this torchvision dataset keeps them in."""
    for attr in ("targets", "_labels", "labels", "y"):
        values = getattr(ds, attr, None)
        if values is not None:
            return [int(t) for t in (values.tolist() if hasattr(values, "tolist") else values)]
    samples = getattr(ds, "_samples", None) or getattr(ds, "samples", None)  # GTSRB, Imagenette
    if samples is not None:
        return [int(t) for _, t in samples]
    return [int(ds[i][1]) for i in range(len(ds))]  # slow fallback: decodes every item once


def _open_torchvision(name: str, root: Path, kwargs: dict[str, Any]) -> Dataset:
    import torchvision.datasets as tvd  # looked up per call so tests can substitute a class

    try:
        return getattr(tvd, name)(root=str(root), download=True, **kwargs)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision raises RuntimeError
        detail = " ".join(str(exc).split())[:200]
        raise UserError(
            f"could not download torchvision dataset {name} into {root} (offline?): put the files there "
            f"or use format: imagefolder ({type(exc).__name__}: {detail})"
        ) from exc


def torchvision_data(name: str, root: str | os.PathLike, train_tf: Callable, eval_tf: Callable,
                     val_split: float, seed: int) -> VisionData:
    """A torchvision dataset with its official splits; val is split off train (seeded) where there is none."""
    if name not in TORCHVISION_SPLITS:
        close = difflib.get_close_matches(name, TORCHVISION_SPLITS, n=1)
        hint = f" (did you mean torchvision:{close[0]}?)" if close else ""
        raise UserError(f"unsupported torchvision dataset '{name}'{hint}; use one of {', '.join(TORCHVISION_SPLITS)}")
    root = Path(root).expanduser()
    splits = {split: _open_torchvision(name, root, kw) for split, kw in TORCHVISION_SPLITS[name].items()}
    targets = {split: _targets_of(ds) for split, ds in splits.items()}
    train_idx = list(range(len(splits["train"])))
    if "val" in splits:
        val = TorchvisionSplit(splits["val"], list(range(len(splits["val"]))), targets["val"], eval_tf)
    else:
        train_idx, val_idx = split_indices(targets["train"], val_split, seed)
        val = TorchvisionSplit(splits["train"], val_idx, [targets["train"][i] for i in val_idx], eval_tf)
    train_targets = [targets["train"][i] for i in train_idx]
    train = TorchvisionSplit(splits["train"], train_idx, train_targets, train_tf)
    test = None
    if "test" in splits:
        test = TorchvisionSplit(splits["test"], list(range(len(splits["test"]))), targets["test"], eval_tf)
    labels = _torchvision_labels(splits["train"], targets)
    return VisionData(train, val, test, labels, _trusted_report(train=train, val=val, test=test), train_targets)


def _torchvision_labels(ds: Any, targets: dict[str, list[int]]) -> list[str]:
    """Class names where the dataset has them (Imagenette gives synonym tuples), else '0', '1', ..."""
    n_classes = max((max(t) for t in targets.values() if t), default=-1) + 1
    names = getattr(ds, "classes", None) or getattr(ds, "categories", None)
    if names is None or len(names) != n_classes:
        return [str(i) for i in range(n_classes)]
    return [str(n[0] if isinstance(n, (tuple, list)) else n) for n in names]


def _trusted_report(**datasets: Dataset | None) -> ScanReport:
    # torchvision checks its own files (md5), so nothing is decoded up front: every item counts as kept.
    report = ScanReport()
    for split, ds in datasets.items():
        if ds is not None:
            report.split(split).found = report.split(split).kept = len(ds)
    return report


# ----------------------------------------------------------------------------- entry point


def _csv_splits(root: Path, task: str, val_split: float, seed: int, csv_val: str | None,
                report: ScanReport) -> tuple[dict[str, list[tuple[str, int | float]]], list[str]]:
    """``root`` is the train CSV, or a folder with train.csv and optional val.csv / test.csv."""
    test_csv = None
    if root.is_dir():
        train_csv = root / "train.csv"
        if not train_csv.is_file():
            raise UserError(f"{root} has no train.csv; put train.csv (and val.csv) there or set data.root to a CSV file")
        val_csv = Path(csv_val) if csv_val else (root / "val.csv" if (root / "val.csv").is_file() else None)
        test_csv = root / "test.csv" if (root / "test.csv").is_file() else None
    else:
        train_csv, val_csv = root, Path(csv_val) if csv_val else None
    train, labels = csv_samples(train_csv, task, report=report)
    classification = task == "image-classification"
    splits: dict[str, list[tuple[str, int | float]]] = {"train": train}
    for split, path in (("val", val_csv), ("test", test_csv)):
        if path is not None:
            splits[split] = csv_samples(path, task, labels=labels if classification else None, report=report,
                                        split=split)[0]
    if "val" not in splits:
        train_idx, val_idx = split_indices([t for _, t in train], val_split, seed, stratify=classification)
        splits["train"], splits["val"] = [train[i] for i in train_idx], [train[i] for i in val_idx]
    return splits, labels


def build_vision_data(fmt: str, root: str | os.PathLike, task: str, val_split: float, seed: int,
                      train_tf: Callable, eval_tf: Callable, csv_val: str | None = None) -> VisionData:
    """Find, split and scan the data. ``fmt``: imagefolder | csv | torchvision:NAME."""
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'; use one of {', '.join(TASKS)}")
    if fmt.startswith("torchvision:"):
        if task != "image-classification":
            raise UserError(f"format {fmt} only supports image-classification; for {task} use format: csv")
        return torchvision_data(fmt.split(":", 1)[1], root, train_tf, eval_tf, val_split, seed)
    report = ScanReport()
    if fmt == "imagefolder":
        if task != "image-classification":
            raise UserError(f"format imagefolder has no target values for {task}; use format: csv with columns path,value")
        splits, labels = imagefolder_splits(root, val_split, seed, report)
    elif fmt == "csv":
        splits, labels = _csv_splits(Path(root).expanduser(), task, val_split, seed, csv_val, report)
    else:
        kind, sep, name = str(fmt).partition(":")
        close = difflib.get_close_matches(kind, ["imagefolder", "csv", "torchvision"], n=1)
        hint = f" (did you mean '{close[0]}{sep}{name}'?)" if close else ""
        raise UserError(f"unknown data format '{fmt}'{hint}; use one of {', '.join(FORMATS)}")
    dtype = torch.long if task == "image-classification" else torch.float32
    datasets: dict[str, ImageDataset] = {}
    for split, samples in splits.items():
        kept = scan(samples, report, split)
        if not kept:
            found = report.splits[split].describe(split, "image") if samples else "no images found"
            raise UserError(f"the {split} split of {root} has no usable images ({found}); add images or fix the files")
        datasets[split] = ImageDataset(kept, train_tf if split == "train" else eval_tf, dtype)
    train_targets = [int(t) for t in datasets["train"].targets] if dtype == torch.long else []
    return VisionData(datasets["train"], datasets["val"], datasets.get("test"), labels, report, train_targets)


def relabel(data: VisionData, labels: list[str]) -> None:
    """Map the data's classes onto ``labels`` by name (a kept pre-trained head: ImageNet's classes), in place.

    A class folder matches a label case-insensitively, with '_' read as ' ' ("tiger_cat" is "tiger cat")."""
    index = {name.lower(): i for i, name in enumerate(labels)}
    if not all(isinstance(ds, ImageDataset) for ds in (data.train, data.val, data.test) if ds is not None):
        raise UserError("model.head: keep works with imagefolder and csv data (class names to look up)")
    mapping = {}
    for i, name in enumerate(data.labels):
        key = name.lower().replace("_", " ")
        if key not in index:
            close = difflib.get_close_matches(key, list(index), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"class '{name}' is not a class of the kept head{hint}; with model.head: keep the class "
                            f"folders must be named after the weights' {len(labels)} classes (e.g. '{labels[0]}')")
        mapping[i] = index[key]
    for ds in (data.train, data.val, data.test):
        if ds is not None:
            ds.samples = [(path, mapping[t]) for path, t in ds.samples]
    data.train_targets = [mapping[t] for t in data.train_targets]
    data.labels = list(labels)


# ----------------------------------------------------------------------------- imbalance


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so present classes average 1; a class with no samples gets 0."""
    counts = torch.bincount(torch.as_tensor(list(targets), dtype=torch.long), minlength=num_classes).double()
    if counts.numel() > num_classes:
        raise ValueError(f"targets contain class {counts.numel() - 1} but num_classes is {num_classes}")
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = 1.0 / counts[present]
    if present.any():
        weights[present] /= weights[present].mean()
    return weights.float()


def balanced_sampler(targets: Sequence[int], num_classes: int,
                     generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """Draws len(targets) samples with replacement so every present class is equally likely."""
    if len(targets) == 0:
        raise UserError("cannot balance an empty training set; check data.root")
    per_sample = class_weights(targets, num_classes)[torch.as_tensor(list(targets), dtype=torch.long)]
    return WeightedRandomSampler(per_sample.double(), num_samples=len(targets), replacement=True, generator=generator)
