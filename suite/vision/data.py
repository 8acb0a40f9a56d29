"""Image datasets from folders, CSV files or torchvision, checked up front.

Every image is decoded once by ``scan`` before training: broken, truncated or non-image files are
skipped and counted in a ``ScanReport`` instead of crashing a DataLoader worker hours later. Nothing
here writes to the user's data folders.
"""
from __future__ import annotations

import contextlib
import csv
import difflib
import math
import os
import random
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from suite.errors import UserError
from suite.vision.transforms import Preprocess, to_rgb

T = TypeVar("T")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TASKS = ("image-classification", "image-regression")
FORMATS = ("imagefolder", "csv", "torchvision:NAME")
VAL_DIRS = ("val", "valid", "validation")
_SCAN_DRAFT = 128  # JPEGs are scanned at reduced DCT scale: every byte is still decoded, 8x less work
_PROGRESS_MIN = 500


@dataclass
class ScanReport:
    """What happened to the user's files. Invariant: ``scanned == kept + n_skipped``."""

    scanned: int = 0
    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> paths (or "file.csv:LINE")
    converted: dict[str, int] = field(default_factory=dict)  # original PIL mode -> count
    warnings: list[str] = field(default_factory=list)  # e.g. empty class folders, ignored files

    @property
    def n_skipped(self) -> int:
        return sum(len(paths) for paths in self.skipped.values())

    def add_skip(self, reason: str, path: str) -> None:
        self.scanned += 1
        self.skipped.setdefault(reason, []).append(str(path))

    def summary(self) -> str:
        """One line, e.g. 'scanned 120 images: 117 kept, 3 skipped (2 truncated, 1 unreadable: a/x.jpg, ...)'."""
        text = f"scanned {self.scanned} images: {self.kept} kept"
        if self.skipped:
            reasons = sorted(self.skipped.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            counts = ", ".join(f"{len(paths)} {reason}" for reason, paths in reasons)
            examples = [_short(p) for _, paths in reasons for p in paths][:3]
            more = ", ..." if self.n_skipped > 3 else ""
            text += f", {self.n_skipped} skipped ({counts}: {', '.join(examples)}{more})"
        if self.converted:
            modes = ", ".join(f"{m}: {n}" for m, n in sorted(self.converted.items(), key=lambda kv: -kv[1]))
            text += f", converted {sum(self.converted.values())} to RGB ({modes})"
        if self.warnings:
            text += f"; {len(self.warnings)} warning(s): {self.warnings[0]}" + ("; ..." if len(self.warnings) > 1 else "")
        return text

    def merge(self, other: ScanReport) -> ScanReport:
        """A new report with both reports' counts; neither input is changed."""
        skipped = {k: list(v) for k, v in self.skipped.items()}
        for reason, paths in other.skipped.items():
            skipped.setdefault(reason, []).extend(paths)
        converted = Counter(self.converted) + Counter(other.converted)
        return ScanReport(
            self.scanned + other.scanned, self.kept + other.kept, skipped, dict(converted),
            self.warnings + other.warnings,
        )


def _short(path: str) -> str:
    """Last two path parts ('cat/0001.jpg'): enough to find the file, short enough for one line."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts else str(path)


# ----------------------------------------------------------------------------- decoding


def _decode(path: str | os.PathLike, draft: bool = False) -> tuple[Image.Image, str]:
    """Fully decode ``path``; return (RGB image, original mode). Raises on broken files."""
    with Image.open(path) as im:
        mode = im.mode
        if draft and im.format == "JPEG":
            im.draft(mode, (_SCAN_DRAFT, _SCAN_DRAFT))
        im.load()  # raises OSError('image file is truncated') unless LOAD_TRUNCATED_IMAGES is set
        try:
            upright = ImageOps.exif_transpose(im)  # always a copy, so it outlives the closed file
        except Exception:  # malformed EXIF must not cost the image; orientation is cosmetic
            upright = im.copy()
        return to_rgb(upright), mode


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode, apply EXIF orientation, convert any mode to RGB (alpha on white)."""
    return _decode(path)[0]


def _skip_reason(path: str, exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, UnidentifiedImageError):
        return "empty file" if os.path.isfile(path) and os.path.getsize(path) == 0 else "not an image"
    if isinstance(exc, Image.DecompressionBombError):
        return "too large"
    if isinstance(exc, EOFError) or "truncat" in str(exc).lower() or "broken" in str(exc).lower():
        return "truncated"
    return "unreadable"


def _check(path: str) -> str | Exception:
    """Decode once for the scan; returns the original mode or the exception (threads must not raise)."""
    try:
        return _decode(path, draft=True)[1]
    except Exception as exc:  # any decoder failure means "skip this file", never "stop the run"
        return exc


@contextlib.contextmanager
def _strict_decoding() -> Iterator[None]:
    """Truncation is only detected with LOAD_TRUNCATED_IMAGES off; another library may have set it."""
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # per-file PIL warnings (corrupt EXIF, odd palettes) would flood the log; the report says enough
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def scan(samples: list[tuple[str, T]], report: ScanReport) -> list[tuple[str, T]]:
    """Decode every file once; return the samples that load and record skips/conversions in ``report``."""
    paths = [str(p) for p, _ in samples]
    workers = min(8, os.cpu_count() or 1)  # decoding releases the GIL, so threads help
    kept: list[tuple[str, T]] = []
    with _strict_decoding(), ThreadPoolExecutor(workers) as pool:
        results = pool.map(_check, paths)
        bar = tqdm(results, total=len(paths), desc="scanning images", unit="img",
                   disable=len(paths) <= _PROGRESS_MIN, leave=False)
        for sample, path, result in zip(samples, paths, bar):
            if isinstance(result, Exception):
                report.add_skip(_skip_reason(path, result), path)
                continue
            report.scanned += 1
            report.kept += 1
            if result != "RGB":
                report.converted[result] = report.converted.get(result, 0) + 1
            kept.append(sample)
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
        try:
            image = load_rgb(path)
        except Exception as exc:  # it decoded during the scan, so the file changed since
            raise UserError(
                f"could not read {path} ({_skip_reason(path, exc)}) although it passed the scan at start-up; "
                "it was changed or removed during the run: restore it or remove it from the data"
            ) from exc
        return self.transform(image), torch.tensor(target, dtype=self.target_dtype)

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


# ----------------------------------------------------------------------------- splitting


def split_indices(targets: Sequence, val_split: float, seed: int, stratify: bool = True) -> tuple[list[int], list[int]]:
    """Seeded (stratified) train/val split of ``range(len(targets))``; returns sorted (train, val) indices.

    Each group holds out ``round(n * val_split)`` items, at least 1 when it has >= 2 and never all of them.
    Each group has its own RNG seeded by (seed, target), so adding a class does not reshuffle the others.
    """
    if not 0 < val_split < 1:
        raise UserError(
            f"data.val_split must be between 0 and 1 (got {val_split}); "
            "it is the fraction of each class held out for validation when there is no val split"
        )
    groups: dict[Any, list[int]] = {}
    for i, t in enumerate(targets):
        groups.setdefault(t if stratify else 0, []).append(i)
    val: list[int] = []
    for key, idx in groups.items():
        n_val = 0 if len(idx) < 2 else min(max(1, int(len(idx) * val_split + 0.5)), len(idx) - 1)
        shuffled = list(idx)
        random.Random(f"{seed}:{key}").shuffle(shuffled)
        val.extend(shuffled[:n_val])
    held_out = set(val)
    return [i for i in range(len(targets)) if i not in held_out], sorted(val)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def class_files(folder: Path, exts, notes: list[str], kind: str = "image") -> dict[str, list[str]]:
    """``kind`` files (extension in ``exts``) under each visible subfolder of ``folder``, recursively and
    sorted; empty classes dropped. What is ignored (loose files, other files, empty folders) goes to ``notes``.
    Shared by the image and audio folder layouts."""
    classes: dict[str, list[str]] = {}
    others: Counter[str] = Counter()
    loose = [p for p in folder.iterdir() if p.is_file() and _visible(p.name) and p.suffix.lower() in exts]
    if loose:
        notes.append(f"{len(loose)} {kind} file(s) directly in {folder} are not in a class folder (ignored)")
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name)):
        files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(sub):  # no followlinks: symlink loops cannot hang us
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            for name in filenames:
                ext = os.path.splitext(name)[1].lower()
                if not _visible(name):
                    continue
                if ext in exts:
                    files.append(os.path.join(dirpath, name))
                else:
                    others[ext or name] += 1
        if files:
            classes[sub.name] = sorted(files)
        else:
            notes.append(f"empty class folder {sub} (ignored)")
    if others:
        kinds = ", ".join(f"{ext}: {n}" for ext, n in others.most_common(5))
        notes.append(f"ignored {sum(others.values())} non-{kind} file(s) in {folder} ({kinds})")
    return classes


def _class_files(folder: Path, report: ScanReport) -> dict[str, list[str]]:
    return class_files(folder, IMAGE_EXTS, report.warnings, "image")


def _indexed(classes: dict[str, list[str]], labels: list[str]) -> list[tuple[str, int]]:
    return [(path, labels.index(name)) for name in labels if name in classes for path in classes[name]]


def imagefolder_splits(root: str | os.PathLike, val_split: float, seed: int,
                       report: ScanReport | None = None) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """``{"train": [...], "val": [...], ["test": [...]]}`` of (path, class index), and the class names.

    Layouts: ``root/train``, ``root/val`` (or valid/validation), optional ``root/test``, each with one folder
    per class; or class folders directly under ``root``, split by ``split_indices``. Warnings (empty class
    folders, ignored files) go to ``report``.
    """
    root = Path(root).expanduser().absolute()
    report = report if report is not None else ScanReport()
    if not root.is_dir():
        if root.exists():
            raise UserError(f"data root {root} is a file, not a folder; for a CSV file set data.format=csv")
        raise UserError(f"data root {root} does not exist; set data.root=... (or -s data.root=PATH)")
    split_layout = (root / "train").is_dir()
    train_dir = root / "train" if split_layout else root
    train_classes = _class_files(train_dir, report)
    labels = sorted(train_classes)
    if not labels:
        raise UserError(
            f"no class folders with images in {train_dir}; put one subfolder per class holding "
            f"{', '.join(IMAGE_EXTS)} files (e.g. {train_dir}/cat/1.jpg)"
        )
    train = _indexed(train_classes, labels)
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, names in (("val", VAL_DIRS), ("test", ("test",))):
        folder = next((root / n for n in names if split_layout and (root / n).is_dir()), None)
        if folder is not None:
            classes = _class_files(folder, report)
            _check_known_classes(folder, classes, labels, train_dir)
            splits[split] = _indexed(classes, labels)
    if "val" not in splits:
        train_idx, val_idx = split_indices([t for _, t in train], val_split, seed)
        splits["val"] = [train[i] for i in val_idx]
        train = [train[i] for i in train_idx]
    return {"train": train, **splits}, labels


def _check_known_classes(folder: Path, classes: dict[str, list[str]], labels: list[str], train_dir: Path) -> None:
    unknown = sorted(set(classes) - set(labels))
    if unknown:
        raise UserError(
            f"class folder {folder / unknown[0]} has no matching class in {train_dir} "
            f"(train classes: {', '.join(labels)}); rename it to a train class or add images for it to {train_dir}"
        )


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


def _label_order(names: set[str]) -> list[str]:
    """Sorted class names; numerically when all are integers so '2' comes before '10'."""
    try:
        return sorted(names, key=lambda n: (int(n), n))
    except ValueError:
        return sorted(names)


def csv_samples(path: str | os.PathLike, task: str, root: Path | None = None, *, labels: list[str] | None = None,
                report: ScanReport | None = None) -> tuple[list[tuple[str, int | float]], list[str]]:
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
            report.add_skip("bad label" if image else "bad row", f"{path}:{line}")
            continue
        rows.append((str(base / image), value))  # base / absolute path == absolute path
    if regression:
        return [(p, float(v)) for p, v in rows], ["value"]
    if labels is None:
        labels = _label_order({v for _, v in rows})
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
    return VisionData(train, val, test, labels, _trusted_report(train, val, test), train_targets)


def _torchvision_labels(ds: Any, targets: dict[str, list[int]]) -> list[str]:
    """Class names where the dataset has them (Imagenette gives synonym tuples), else '0', '1', ..."""
    n_classes = max((max(t) for t in targets.values() if t), default=-1) + 1
    names = getattr(ds, "classes", None) or getattr(ds, "categories", None)
    if names is None or len(names) != n_classes:
        return [str(i) for i in range(n_classes)]
    return [str(n[0] if isinstance(n, (tuple, list)) else n) for n in names]


def _trusted_report(*datasets: Dataset | None) -> ScanReport:
    # torchvision checks its own files (md5), so nothing is decoded up front: every item counts as kept.
    total = sum(len(ds) for ds in datasets if ds is not None)
    return ScanReport(scanned=total, kept=total)


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
            splits[split] = csv_samples(path, task, labels=labels if classification else None, report=report)[0]
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
        split_report = ScanReport()
        kept = scan(samples, split_report)
        report = report.merge(split_report)
        if not kept:
            found = f"{split_report.summary()}" if samples else "no images found"
            raise UserError(f"the {split} split of {root} has no usable images ({found}); add images or fix the files")
        datasets[split] = ImageDataset(kept, train_tf if split == "train" else eval_tf, dtype)
    train_targets = [int(t) for t in datasets["train"].targets] if dtype == torch.long else []
    return VisionData(datasets["train"], datasets["val"], datasets.get("test"), labels, report, train_targets)


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
