"""Data rules every modality shares: class-folder walking, seeded splits, image decoding, one ScanReport.

Nothing here writes to the user's folders, and nothing knows a modality: the image, detection and audio
loaders call these with their own file extensions and wording.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import stat
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.errors import UserError

VAL_DIRS = ("val", "valid", "validation")
EXAMPLES = 5  # skipped files named in a report's examples
_DRAFT = 128  # JPEGs are checked at reduced DCT scale: every byte is still decoded, 8x less work


# ----------------------------------------------------------------------------- the scan report


@dataclass
class SplitScan:
    """What a scan did to one split."""

    found: int = 0
    kept: int = 0
    background: int = 0  # kept images without boxes (detection)
    seconds: float = 0.0  # duration of the kept clips (audio)
    skipped: Counter = field(default_factory=Counter)  # reason -> files
    removed: Counter = field(default_factory=Counter)  # kind -> rows dropped from kept files (duplicates, ...)
    converted: Counter = field(default_factory=Counter)  # original image mode -> files converted to RGB

    def describe(self, split: str, unit: str) -> str:
        text = f"{split} {self.found} {unit}{'s' * (self.found != 1)}, {self.kept} kept"
        text += f" ({duration(self.seconds)})" if self.seconds and self.kept else ""
        if self.skipped:
            text += f", {sum(self.skipped.values())} skipped ({counts(self.skipped)})"
        text += "".join(f", {n} {kind} removed" for kind, n in sorted(self.removed.items()) if n)
        text += f", {self.background} background" if self.background else ""
        if self.converted:
            modes = ", ".join(f"{m}: {n}" for m, n in sorted(self.converted.items(), key=lambda kv: (-kv[1], kv[0])))
            text += f", converted {sum(self.converted.values())} to RGB ({modes})"
        return text


@dataclass
class ScanReport:
    """What happened to the user's files, per split: found = kept + skipped; every skipped file with its
    reason (``skips``, in scan order); notes such as ignored files or a held-out val split."""

    unit: str = "image"  # what one item is called in the summary: image, clip
    splits: dict[str, SplitScan] = field(default_factory=dict)
    skips: list[tuple[str, str]] = field(default_factory=list)  # (path or "file.csv:LINE", reason)
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> SplitScan:
        return self.splits.setdefault(name, SplitScan())

    def skip(self, split: str, path: str | os.PathLike, reason: str) -> None:
        counts = self.split(split)
        counts.found += 1
        counts.skipped[reason] += 1
        self.skips.append((str(path), str(reason)))

    def keep(self, split: str, *, seconds: float = 0.0, background: bool = False, mode: str | None = None,
             removed: Counter | None = None) -> None:
        counts = self.split(split)
        counts.found += 1
        counts.kept += 1
        counts.seconds += seconds
        counts.background += bool(background)
        if mode is not None and mode != "RGB":
            counts.converted[mode] += 1
        if removed:
            counts.removed.update(removed)

    def _total(self, name: str):
        values = [getattr(s, name) for s in self.splits.values()]
        return sum(values, Counter()) if values and isinstance(values[0], Counter) else sum(values)

    found = property(lambda self: self._total("found"))
    kept = property(lambda self: self._total("kept"))
    background = property(lambda self: self._total("background"))
    skipped = property(lambda self: self._total("skipped"), doc="reason -> skipped files, all splits")
    removed = property(lambda self: self._total("removed"))
    converted = property(lambda self: self._total("converted"))

    @property
    def n_skipped(self) -> int:
        return len(self.skips)

    def skipped_files(self) -> dict[str, list[str]]:
        """reason -> every file skipped for it, in scan order."""
        out: dict[str, list[str]] = {}
        for path, reason in self.skips:
            out.setdefault(reason, []).append(path)
        return out

    @property
    def example_pairs(self) -> list[tuple[str, str]]:
        """The first few skipped files as (path, reason)."""
        return self.skips[:EXAMPLES]

    def examples(self) -> list[str]:
        """'reason: path' for the first few skipped files."""
        return [f"{reason}: {path}" for path, reason in self.example_pairs]

    def summary(self) -> str:
        """One line: 'train 120 images, 118 kept, 2 skipped (1 corrupt image, 1 truncated), 4 background;
        val 30 images, 30 kept'."""
        order = {"train": 0, "val": 1, "test": 2}
        names = sorted(self.splits, key=lambda s: (order.get(s, 3), s))
        return "; ".join([self.splits[s].describe(s, self.unit) for s in names] + self.notes)


def counts(counter: Counter) -> str:
    return ", ".join(f"{n} {key}" for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# ----------------------------------------------------------------------------- splits


def split_indices(targets: Sequence, val_split: float, seed: int, stratify: bool = True) -> tuple[list[int], list[int]]:
    """Seeded (stratified) train/val split of ``range(len(targets))``; returns sorted (train, val) indices.

    Each group holds out ``round(n * val_split)`` items, at least 1 when it has >= 2 and never all of them.
    Each group has its own RNG seeded by (seed, target), so adding a class does not reshuffle the others.
    """
    check_val_split(val_split)
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


def check_val_split(val_split: float) -> None:
    if not 0 < val_split < 1:
        raise UserError(f"data.val_split must be between 0 and 1 (got {val_split}); it is the fraction of the "
                        "training data held out for validation when the data has no val split")


def label_order(names: set[str]) -> list[str]:
    """Sorted class names; numerically when all are integers so '2' comes before '10'."""
    try:
        return sorted(names, key=lambda n: (int(n), n))
    except ValueError:
        return sorted(names)


# ----------------------------------------------------------------------------- class folders


def _visible(name: str) -> bool:
    return not name.startswith(".")


def walk_files(folder: str | os.PathLike) -> Iterator[str]:
    """Every visible file under ``folder``, sorted per folder, following links to folders once each: a link
    loop (a folder linking to its parent) is walked once, never forever."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        yield from (os.path.join(dirpath, name) for name in sorted(filenames) if _visible(name))


def is_regular_file(path: str | os.PathLike) -> bool:
    """A regular file (through links): not a folder, FIFO, socket or device, whose open() could block."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def class_files(folder: Path, exts: Sequence[str], notes: list[str], kind: str) -> dict[str, list[str]]:
    """``kind`` files (extension in ``exts``) under each visible subfolder of ``folder``, recursively and
    sorted; empty classes dropped. What is ignored (loose files, other files, empty folders) goes to ``notes``."""
    classes: dict[str, list[str]] = {}
    others: Counter[str] = Counter()
    loose = [p for p in folder.iterdir() if p.is_file() and _visible(p.name) and p.suffix.lower() in exts]
    if loose:
        notes.append(f"{len(loose)} {kind} file(s) directly in {folder} are not in a class folder (ignored)")
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name)):
        files: list[str] = []
        for path in walk_files(sub):
            ext = os.path.splitext(path)[1].lower()
            if ext in exts:
                files.append(path)
            else:
                others[ext or os.path.basename(path)] += 1
        if files:
            classes[sub.name] = sorted(files)
        else:
            notes.append(f"empty class folder {sub} (ignored)")
    if others:
        listed = ", ".join(f"{ext}: {n}" for ext, n in others.most_common(5))
        notes.append(f"ignored {sum(others.values())} non-{kind} file(s) in {folder} ({listed})")
    return classes


@dataclass
class ClassFolders:
    """A class-folder dataset found on disk: files per class per split, before any file is decoded."""

    labels: list[str]  # the train class folders, sorted
    splits: dict[str, dict[str, list[str]]]  # split -> class -> files; "val" only when it has its own folder
    train_dir: Path

    def indexed(self, split: str) -> list[tuple[str, int]]:
        """(path, class index) in label order."""
        classes = self.splits[split]
        return [(path, i) for i, name in enumerate(self.labels) if name in classes for path in classes[name]]


def class_folders(root: str | os.PathLike, exts: Sequence[str], kind: str, notes: list[str],
                  other_format: str, example: str) -> ClassFolders:
    """``root/train``, ``root/val`` (or valid/validation), optional ``root/test``, each with one folder per
    class; or class folders directly under ``root`` (then there is no val split yet: hold one out).

    ``other_format`` is the hint when ``root`` is a file (e.g. "for a CSV file set data.format=csv");
    ``example`` a file name for the error when no class folder holds any ``kind`` file."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        what = f"is a file, not a folder; {other_format}" if root.exists() else \
            "does not exist; set data.root=... (or -s data.root=PATH)"
        raise UserError(f"data root {root} {what}")
    split_layout = (root / "train").is_dir()
    train_dir = root / "train" if split_layout else root
    train = class_files(train_dir, exts, notes, kind)
    labels = sorted(train)
    if not labels:
        raise UserError(f"no class folders with {kind} files in {train_dir}; put one subfolder per class holding "
                        f"{', '.join(exts[:4])}, ... files (e.g. {train_dir}/{example})")
    splits = {"train": train}
    for split, names in (("val", VAL_DIRS), ("test", ("test",))):
        folder = next((root / n for n in names if split_layout and (root / n).is_dir()), None)
        if folder is None:
            continue
        classes = class_files(folder, exts, notes, kind)
        unknown = sorted(set(classes) - set(labels))
        if unknown:
            raise UserError(f"class folder {folder / unknown[0]} has no matching class in {train_dir} "
                            f"(train classes: {', '.join(labels)}); rename it to a train class or add "
                            f"{kind} files for it to {train_dir}")
        splits[split] = classes
    return ClassFolders(labels, splits, train_dir)


# ----------------------------------------------------------------------------- image decoding


def open_image(path: str | os.PathLike):
    """PIL's own ``Image.open``. Importing Ultralytics replaces it with one that pip-installs pi-heif the first
    time a file is not an image: a corrupt file in the user's data must not start an install."""
    from PIL import Image

    opener = getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", Image.open)
    return opener(path)


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """Truncation is only detected with LOAD_TRUNCATED_IMAGES off; another library may have set it."""
    from PIL import ImageFile

    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # per-file PIL warnings (corrupt EXIF, odd palettes) would flood the log; the report says enough
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


@dataclass(frozen=True)
class ImageInfo:
    format: str  # lower-case PIL format name: jpeg, png, ...
    mode: str  # the file's own mode (L, RGBA, CMYK, ...), before any conversion to RGB
    width: int  # upright size (EXIF orientation applied), full resolution
    height: int


class NotAFile(OSError):
    """A path that is a folder, FIFO, socket or device: never opened (a FIFO's open() blocks)."""


def check_image(path: str | os.PathLike) -> ImageInfo:
    """Decode every byte of ``path`` once (JPEGs at reduced DCT scale); raises on a broken file."""
    if os.path.exists(path) and not is_regular_file(path):
        raise NotAFile(f"{path} is not a regular file")
    with open_image(path) as image:
        kind, mode, (width, height) = (image.format or "").lower(), image.mode, image.size
        try:
            orientation = image.getexif().get(274)
        except Exception:  # malformed EXIF costs the orientation, not the image
            orientation = None
        if kind == "jpeg":
            image.draft(mode, (_DRAFT, _DRAFT))
        image.load()  # raises OSError('image file is truncated') unless LOAD_TRUNCATED_IMAGES is set
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees
        width, height = height, width
    return ImageInfo(kind, mode, width, height)


def cache_dir() -> Path:
    """The suite's own cache, never inside the user's data: $SUITE_CACHE, else $XDG_CACHE_HOME/finetune-suite,
    else ~/.cache/finetune-suite."""
    if os.environ.get("SUITE_CACHE"):
        return Path(os.environ["SUITE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetune-suite"


class CheckCache:
    """What earlier scans of a folder found out about each file that passed, by the file's identity (path, size,
    mtime_ns, ctime_ns, inode; ctime moves with any write or chmod and no tool sets it back), kept as JSON under
    ``cache_dir()/scan`` for one ``decoder`` version (a new Pillow or libsndfile checks everything again): a later
    run, and the baselines and tune trials of this one, read it back instead of decoding every file again (an
    ImageNet-sized JPEG takes ~1.4 ms to check, so 100k images are over a minute of every run's start on 2
    cores). A file whose identity changed is decoded again; a file that failed to decode is never recorded, so
    it is checked and reported every run.
    ``SUITE_SCAN_CACHE=0`` turns it off. A cache that cannot be read or written costs a full scan, nothing else.
    ``kind`` names what is recorded (images: ``check``; audio: the scan's own facts through recall/remember)."""

    VERSION = 2

    def __init__(self, paths: Sequence[str], kind: str = "images", decoder: str | None = None):
        self.file: Path | None = None
        self.entries: dict[str, list] = {}
        self.dirty = False
        if not paths or os.environ.get("SUITE_SCAN_CACHE", "1") == "0":
            return
        if decoder is None and kind == "images":
            import PIL

            decoder = f"pillow {PIL.__version__}"
        self.root, self.decoder = os.path.commonpath([os.path.abspath(p) for p in paths]), decoder
        try:
            name = f"{kind}-{hashlib.sha1(os.fsencode(self.root)).hexdigest()[:16]}.json"
            self.file = cache_dir() / "scan" / name
            saved = json.loads(self.file.read_text(encoding="utf-8"))
            if (saved.get("version"), saved.get("root"), saved.get("decoder")) == (self.VERSION, self.root, decoder):
                self.entries = dict(saved["files"])
        except FileNotFoundError:
            pass  # the first scan of this folder
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError):
            pass  # unreadable, or no home folder for the cache (RuntimeError): every file is checked

    def recall(self, path: str | os.PathLike, length: int) -> tuple[list | None, list | None]:
        """(the file's identity, the ``length`` values remembered for it while it had that identity, else None).
        The identity is None for a path that is not a regular file (missing, a folder, a FIFO): check it."""
        try:
            st = os.stat(path)
        except OSError:
            return None, None
        if not stat.S_ISREG(st.st_mode):
            return None, None
        ident = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        key = os.path.abspath(path)
        seen = self.entries.get(key)
        if isinstance(seen, list) and len(seen) == len(ident) + length and seen[:len(ident)] == ident:
            return ident, seen[len(ident):]
        if seen is not None:  # the file changed: what was remembered no longer holds (remember() may add it back)
            self.entries.pop(key, None)  # scan threads: the same path listed twice may get here twice
            self.dirty = True
        return ident, None

    def remember(self, path: str | os.PathLike, ident: list | None, values: Sequence) -> None:
        if ident is not None and self.file is not None:
            self.entries[os.path.abspath(path)] = [*ident, *values]
            self.dirty = True

    def check(self, path: str) -> ImageInfo:
        """``check_image(path)``, or what it returned before when the file has not changed since."""
        ident, seen = self.recall(path, 4)
        if seen is not None:
            return ImageInfo(*seen)
        info = check_image(path)
        self.remember(path, ident, [info.format, info.mode, info.width, info.height])
        return info

    def save(self) -> None:
        """Write the entries back when this scan added or changed one, without those of files that are gone (a
        stat each, only on such a save), so that the cache holds what is on disk, not every file ever scanned."""
        if self.file is None or not self.dirty:
            return
        from suite.core.checkpoint import atomic_write_text

        self.entries = {p: v for p, v in self.entries.items() if os.path.lexists(p)}
        try:
            atomic_write_text(self.file, json.dumps({"version": self.VERSION, "root": self.root,
                                                     "decoder": self.decoder, "files": self.entries}))
        except Exception:  # noqa: BLE001  (a full or read-only cache disk: the next run scans in full)
            pass


def load_rgb(path: str | os.PathLike):
    """Open, fully decode, apply EXIF orientation, convert any mode to RGB (alpha on white)."""
    from suite_runtime.preprocess import to_rgb, upright  # one decoding for training and the deployed runtime

    with open_image(path) as im:
        im.load()
        upright(im)
    return to_rgb(im)  # leaving the ``with`` closed the file only: the decoded pixels stay


def load_scanned(path: str | os.PathLike):
    """``load_rgb`` for a file the scan passed: a failure now is a one-line error naming the file."""
    try:
        return load_rgb(path)
    except Exception as exc:
        raise UserError(
            f"could not read {path} ({skip_reason(path, exc)}) although it passed the scan; it changed or was "
            "removed since: restore it or remove it from the data (SUITE_SCAN_CACHE=0 checks every file again)"
        ) from exc


def skip_reason(path: str | os.PathLike, exc: BaseException) -> str:
    """Why a file that failed to decode is skipped, in the scan report's words."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, (NotAFile, IsADirectoryError)):
        return "not a regular file"
    if isinstance(exc, UnidentifiedImageError):
        return "empty file" if os.path.isfile(path) and os.path.getsize(path) == 0 else "not an image"
    if isinstance(exc, Image.DecompressionBombError):
        return "too large"
    if isinstance(exc, EOFError) or "truncat" in str(exc).lower() or "broken" in str(exc).lower():
        return "truncated"
    return "unreadable"


def scan_workers() -> int:
    """Threads for a scan: decoders (PIL, libsndfile, numpy) release the GIL."""
    return min(8, os.cpu_count() or 1)


def loader_workers(setting: int | str) -> int:
    """``data.num_workers``: a number as given; ``auto`` is min(8, cores) when a CUDA GPU is visible (decoding
    keeps up with it) and 0 on CPU, where worker processes only copy batches to the cores that train on them."""
    if setting != "auto":
        return int(setting)
    import torch

    return min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0
