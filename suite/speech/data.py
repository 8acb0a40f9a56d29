"""Audio datasets from class folders or CSV/JSONL manifests, checked up front.

Every clip is read once by the scan before training. A clip that cannot help or would hurt is skipped and
counted in the ``ScanReport``: unreadable or empty files, silent clips, NaN/inf samples, clips over
``max_seconds``, clips under the model's 25 ms receptive field, and (CTC) empty transcripts or clips with
fewer model frames than their transcript needs (a CTC loss of inf: transformers #10884). Skipped clips never
reach the loss. Any rate, channel count or format soundfile reads becomes mono float32 at the model's rate.
Nothing here writes to the user's folders.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from suite.core.data import (CheckCache, ScanReport, class_folders, is_regular_file, label_order, scan_workers,
                             split_indices)
from suite.core.progress import progress
from suite.errors import UserError
from suite.speech.text import Vocab, ctc_min_frames, normalize

TASKS = ("speech-classification", "speech-ctc")
FORMATS = ("audiofolder", "manifest")
SPLITS = ("train", "val", "test")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf",
              ".w64", ".rf64")  # containers libsndfile (soundfile) decodes
MANIFEST_EXTS = (".csv", ".jsonl", ".ndjson")
SILENCE = 1e-4  # peak |sample| below this (-80 dBFS) is silence
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm
CONV_KERNELS = (10, 3, 3, 3, 3, 2, 2)  # Wav2Vec2's feature encoder: 25 ms windows, 20 ms hop at 16 kHz
CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)

# Why a clip is skipped (one reason per clip: the first problem found).
MISSING, UNREADABLE, EMPTY, NOT_FINITE = "missing file", "unreadable", "empty", "NaN/inf samples"
SILENT, TOO_LONG, TOO_SHORT, NOT_A_FILE = "silent", "too long", "too short", "not a regular file"
NO_PATH, NO_LABEL = "row without a path", "missing label"
EMPTY_TEXT, SHORT_FOR_TEXT = "empty transcript", "too short for its transcript"

_PROGRESS_MIN = 200


# ----------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Clip:
    path: Path
    label: int | None = None  # class id (speech-classification)
    text: str | None = None  # normalised transcript (speech-ctc), see suite.speech.text.normalize
    seconds: float = 0.0  # duration at the file's own rate


@dataclass(eq=False)
class SpeechData:
    labels: list[str]  # class names in id order; for CTC the vocabulary's tokens
    train: list[Clip]
    val: list[Clip]
    test: list[Clip] | None
    report: ScanReport
    vocab: Vocab | None  # CTC only, built from the kept transcripts of every split
    sample_rate: int  # the model's; clips are resampled to it when read


# ----------------------------------------------------------------------------- reading and resampling


class AudioError(Exception):
    """A file that is not usable audio; ``reason`` is the scan's skip reason."""

    def __init__(self, path: Path | str, reason: str, detail: str = ""):
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.path, self.reason = str(path), reason


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Every channel as float32 [frames, channels] in [-1, 1], and the file's sample rate."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, MISSING)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile's errors differ by format and version: any of them means unreadable
        raise AudioError(path, EMPTY if path.stat().st_size == 0 else UNREADABLE, str(exc)) from None
    if data.shape[0] == 0:
        raise AudioError(path, EMPTY)
    return data, int(rate)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Mono float32 at ``sample_rate``: channels averaged, then resampled. Raises ``AudioError``."""
    data, rate = read_audio(path)
    return resample(data.mean(axis=1), rate, sample_rate)


def resampled_length(n: int, orig: int, new: int) -> int:
    """Samples that ``resample`` returns for ``n`` input samples: ceil(n * new / orig)."""
    if orig <= 0 or new <= 0:
        raise ValueError(f"sample rates must be positive, got {orig} -> {new}")
    return -(-n * new // orig)


def resample(wave: np.ndarray, orig: int, new: int) -> np.ndarray:
    """1-D float32 ``wave`` from ``orig`` Hz to ``new`` Hz with torchaudio.functional.resample (band-limited
    Hann-windowed sinc, 6 zero crossings, rolloff 0.99)."""
    import torchaudio.functional as AF

    resampled_length(0, orig, new)  # checks the rates
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if orig == new:
        return wave
    with torch.no_grad():
        return AF.resample(torch.from_numpy(wave), int(orig), int(new)).numpy()


def wav2vec2_frames(n: int, kernels: Sequence[int] = CONV_KERNELS, strides: Sequence[int] = CONV_STRIDES) -> int:
    """Frames Wav2Vec2's feature encoder makes from ``n`` samples (unpadded convolutions); 0 under 400 samples."""
    for kernel, stride in zip(kernels, strides):
        n = (n - kernel) // stride + 1 if n >= kernel else 0
    return n


# ----------------------------------------------------------------------------- the scan


@dataclass(frozen=True)
class _Candidate:
    path: Path
    label: int | None = None
    text: str | None = None  # normalised
    reason: str | None = None  # a row problem found before any audio is read


def _probe(job: _Candidate, sample_rate: int, max_seconds: float | None, cache: CheckCache) -> Clip | str:
    """The clip, or why it is skipped (threads must not raise). What reading the file found out (length, rate,
    finite, silent) is remembered in ``cache`` for the next scan of the unchanged file."""
    if job.reason:
        return job.reason
    if job.text is not None and not job.text:
        return EMPTY_TEXT
    if job.path.exists() and not is_regular_file(job.path):  # a FIFO's open() would block the scan
        return NOT_A_FILE
    ident, facts = cache.recall(job.path, 4)
    if facts is None:
        try:
            if max_seconds is not None:
                info = sf.info(str(job.path))
                if info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
                    return TOO_LONG  # decided from the header: a 2-hour file is not read to be rejected
        except Exception:  # read_audio below names the problem
            pass
        try:
            data, rate = read_audio(job.path)
        except AudioError as exc:
            return exc.reason
        finite = bool(np.isfinite(data).all())
        # silence on the mix the model hears: opposite-phase channels cancel
        facts = [len(data), rate, finite, finite and bool(np.abs(data.mean(axis=1)).max() < SILENCE)]
        cache.remember(job.path, ident, facts)
    length, rate, finite, silent = facts
    if not finite:
        return NOT_FINITE
    if silent:
        return SILENT
    seconds = length / rate
    if max_seconds is not None and seconds > max_seconds:
        return TOO_LONG
    frames = wav2vec2_frames(resampled_length(length, rate, sample_rate))
    if frames < 1:
        return TOO_SHORT
    if job.text is not None and frames < ctc_min_frames(job.text):
        return SHORT_FOR_TEXT
    return Clip(job.path, job.label, job.text, seconds)


def scan(split: str, jobs: list[_Candidate], report: ScanReport, sample_rate: int,
         max_seconds: float | None) -> list[Clip]:
    """Read every clip once; record each in ``report`` and return the kept clips in order."""
    report.split(split)  # an empty split is still reported
    kept: list[Clip] = []
    cache = CheckCache([str(job.path) for job in jobs], kind="audio",
                       decoder=f"libsndfile {sf.__libsndfile_version__}")
    probe = partial(_probe, sample_rate=sample_rate, max_seconds=max_seconds, cache=cache)
    with ThreadPoolExecutor(scan_workers()) as pool:
        results = progress(pool.map(probe, jobs), f"scanning {split}", total=len(jobs), unit="clip",
                           show=len(jobs) >= _PROGRESS_MIN)
        for job, result in zip(jobs, results):
            if isinstance(result, Clip):
                report.keep(split, seconds=result.seconds)
                kept.append(result)
            else:
                report.skip(split, job.path, result)
    cache.save()
    return kept


def _finish(labels: list[str], jobs: dict[str, list[_Candidate]], task: str, source: Path, sample_rate: int,
            max_seconds: float | None, report: ScanReport) -> SpeechData:
    """Scan every split; refuse data with nothing to train or validate on; build the CTC vocabulary."""
    kept = {split: scan(split, split_jobs, report, sample_rate, max_seconds) for split, split_jobs in jobs.items()}
    for split in ("train", "val"):
        if not kept[split]:
            hint = ("; transcripts keep only a-z, 0-9 and ' (other scripts are dropped)"
                    if report.skipped.get(EMPTY_TEXT) else "")
            raise UserError(f"no usable {split} clips in {source} ({report.summary()}){hint}; "
                            "fix the files or point data.root at another dataset")
    vocab = None
    if task == "speech-ctc":
        vocab = Vocab.build(clip.text or "" for clips in kept.values() for clip in clips)
        labels = list(vocab.tokens)
    return SpeechData(labels, kept["train"], kept["val"], kept.get("test"), report, vocab, sample_rate)


def _check_args(task: str, val_split: float, sample_rate: int) -> None:
    if task not in TASKS:
        raise UserError(f"unknown speech task {task!r}; use one of {', '.join(TASKS)}")
    if not 0 < val_split < 1:
        raise UserError(f"data.val_split must be between 0 and 1 (got {val_split}); it is the fraction of the "
                        "training clips held out for validation when the data has no val split")
    if sample_rate <= 0:
        raise UserError(f"the sample rate must be positive (got {sample_rate})")


def _hold_out(train: list[_Candidate], val_split: float, seed: int, stratify: bool,
              report: ScanReport) -> tuple[list[_Candidate], list[_Candidate]]:
    """Seeded (stratified) split of the found training clips, so a val file's membership never depends on
    which other files turn out broken."""
    train_idx, val_idx = split_indices([c.label for c in train], val_split, seed, stratify=stratify)
    report.notes.append(f"val held out of train (val_split {val_split}, seed {seed})")
    return [train[i] for i in train_idx], [train[i] for i in val_idx]


def _check_classes(labels: list[str], source: Path) -> None:
    if len(labels) < 2:
        found = f"only {labels[0]!r}" if labels else "none"
        raise UserError(f"{source} has {found} as class; classification needs at least 2 classes")


# ----------------------------------------------------------------------------- audiofolder


def load_audiofolder(root: str | os.PathLike, sample_rate: int = 16000, val_split: float = 0.1, seed: int = 0,
                     max_seconds: float | None = 30.0) -> SpeechData:
    """Classification clips from ``root/train/<class>/*``, ``root/val/<class>/*`` (or valid/validation) and an
    optional ``root/test/<class>/*``; or ``root/<class>/*`` with ``val_split`` of each class held out (seeded).

    Classes are the train class folders, sorted. Files are found recursively; extensions: ``AUDIO_EXTS``.
    """
    _check_args("speech-classification", val_split, sample_rate)
    report = ScanReport(unit="clip")
    found = class_folders(root, AUDIO_EXTS, "audio", report.notes, example="yes/1.wav",
                          other_format="for a CSV/JSONL list of clips set data.format=manifest")
    _check_classes(found.labels, found.train_dir)
    labels = found.labels
    jobs = {split: [_Candidate(Path(path), label) for path, label in found.indexed(split)] for split in found.splits}
    if "val" not in jobs:
        jobs["train"], jobs["val"] = _hold_out(jobs["train"], val_split, seed, True, report)
    source = Path(root).expanduser().absolute()
    return _finish(labels, jobs, "speech-classification", source, sample_rate, max_seconds, report)


# ----------------------------------------------------------------------------- manifests (CSV / JSONL)

PATH_COLUMNS = ("path", "file", "file_name", "filename", "audio", "audio_path")
TARGET_COLUMNS = {"speech-classification": ("label", "class", "category"),
                  "speech-ctc": ("text", "transcript", "transcription", "sentence")}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


def _manifest_rows(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """('file:line', row with lower-case keys and str values) for each CSV row or JSONL object."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
            if path.suffix.lower() == ".csv":
                reader = csv.DictReader(f)
                reader.fieldnames = [h.strip().lower() for h in (reader.fieldnames or [])]
                for row in reader:
                    yield f"{path}:{reader.line_num}", {k: (v or "").strip() for k, v in row.items() if k}
                return
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{number}", _json_row(line, f"{path}:{number}")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except csv.Error as exc:
        raise UserError(f"{path} is not a valid CSV file ({exc}); fix the line it names") from None


def _json_row(line: str, where: str) -> dict[str, str]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise UserError(f"{where} is not valid JSON ({exc.msg}); a JSONL manifest holds one object per line, "
                        'e.g. {"path": "clips/1.wav", "text": "hello"}') from None
    if not isinstance(row, dict):
        raise UserError(f"{where} is not a JSON object; write one object per line with path and label/text keys")
    return {str(k).strip().lower(): "" if v is None else str(v).strip() for k, v in row.items()}


def _column(columns: Sequence[str], names: Sequence[str]) -> str | None:
    return next((name for name in names if name in columns), None)


def _manifest_jobs(path: Path, task: str) -> tuple[dict[str, list[tuple[str, Path, str]]], list[tuple[str, str]]]:
    """Rows grouped by split as (where, audio path, target cell); rows without a path as (where, reason)."""
    rows = list(_manifest_rows(path))
    if not rows:
        raise UserError(f"{path} lists no clips; add one row per clip with columns path and "
                        f"{TARGET_COLUMNS[task][0]}")
    columns = list(rows[0][1])
    path_col, target_col = _column(columns, PATH_COLUMNS), _column(columns, TARGET_COLUMNS[task])
    if path_col is None or target_col is None:
        need = " and ".join(f"'{c}'" for c, got in (("path", path_col), (TARGET_COLUMNS[task][0], target_col))
                            if got is None)
        raise UserError(f"{path} has no {need} column (found: {', '.join(columns) or 'nothing'}); {task} needs "
                        f"columns path and {TARGET_COLUMNS[task][0]} (plus an optional split: train/val/test)")
    has_split = "split" in columns
    grouped: dict[str, list[tuple[str, Path, str]]] = {}
    bad: list[tuple[str, str]] = []
    for where, row in rows:
        split = row.get("split", "").lower() if has_split else "train"
        if split not in SPLIT_NAMES:
            raise UserError(f"{where}: split {row.get('split')!r} is not one of train, val, test (or valid, "
                            "validation, dev); fix the value or remove the split column")
        if not row.get(path_col):
            bad.append((where, NO_PATH))
            continue
        grouped.setdefault(SPLIT_NAMES[split], []).append((where, path.parent / row[path_col], row.get(target_col, "")))
    return grouped, bad


def load_manifest(path: str | os.PathLike, task: str, sample_rate: int = 16000, val_split: float = 0.1,
                  seed: int = 0, max_seconds: float | None = 30.0) -> SpeechData:
    """Clips listed in a CSV (with a header) or JSONL file: ``path`` (relative to the manifest's folder) and
    ``label`` (speech-classification) or ``text`` (speech-ctc), optionally ``split`` (train/val/test).

    Common column names are accepted too (``file_name``, ``sentence``, ``transcription``, ...: see
    ``PATH_COLUMNS`` and ``TARGET_COLUMNS``). Without val rows, ``val_split`` of train is held out (seeded;
    stratified by label for classification). Classes are the train labels, sorted (numerically when all are
    integers); a val/test label that train lacks is an error.
    """
    _check_args(task, val_split, sample_rate)
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise UserError(f"manifest {path} does not exist; set data.root to a .csv or .jsonl file listing the clips")
    if path.suffix.lower() not in MANIFEST_EXTS:
        raise UserError(f"manifest {path} is neither .csv nor .jsonl; rename it to the format it is in")
    grouped, bad = _manifest_jobs(path, task)
    if "train" not in grouped:
        raise UserError(f"{path} has no train rows; mark training clips with split=train (or drop the split column)")
    ctc = task == "speech-ctc"
    labels = [] if ctc else label_order({target for _, _, target in grouped["train"] if target})
    if not ctc:
        _check_classes(labels, path)
    index = {name: i for i, name in enumerate(labels)}
    jobs: dict[str, list[_Candidate]] = {}
    for split, rows in grouped.items():
        jobs[split] = [_manifest_candidate(where, audio, target, ctc, index, labels) for where, audio, target in rows]
    jobs["train"] += [_Candidate(Path(where), reason=reason) for where, reason in bad]  # counted, never read
    report = ScanReport(unit="clip")
    if "val" not in jobs:
        jobs["train"], jobs["val"] = _hold_out(jobs["train"], val_split, seed, not ctc, report)
    return _finish(labels, {s: jobs[s] for s in SPLITS if s in jobs}, task, path, sample_rate, max_seconds, report)


def _manifest_candidate(where: str, audio: Path, target: str, ctc: bool, index: dict[str, int],
                        labels: list[str]) -> _Candidate:
    if ctc:
        return _Candidate(audio, text=normalize(target))
    if not target:
        return _Candidate(audio, reason=NO_LABEL)
    if target not in index:
        shown = ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else "")
        raise UserError(f"{where}: label {target!r} is not a training class ({shown}); fix the label or add "
                        "training clips of it")
    return _Candidate(audio, label=index[target])


def load_speech(fmt: str, root: str | os.PathLike, task: str, sample_rate: int = 16000, val_split: float = 0.1,
                seed: int = 0, max_seconds: float | None = 30.0) -> SpeechData:
    """Dispatch on ``data.format``: ``audiofolder`` (classification) or ``manifest`` (a .csv/.jsonl file)."""
    if fmt == "audiofolder":
        if task != "speech-classification":
            raise UserError(f"format audiofolder has no transcripts for {task}; use format: manifest with "
                            "columns path,text")
        return load_audiofolder(root, sample_rate, val_split, seed, max_seconds)
    if fmt == "manifest":
        return load_manifest(root, task, sample_rate, val_split, seed, max_seconds)
    raise UserError(f"unknown speech data.format {fmt!r}; use one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------- training items

AUGMENTS = ("none", "light", "standard")
SPEEDS = (0.9, 0.95, 1.0, 1.05, 1.1)  # a grid, so each rate change is a small rational resampling kernel
SNR_DB = (20.0, 40.0)
MAX_SHIFT = 0.1  # seconds of silence split between the start and the end


def normalize_wave(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per clip: Wav2Vec2FeatureExtractor with do_normalize=True."""
    wave = np.asarray(wave, dtype=np.float32)
    return ((wave - wave.mean()) / np.sqrt(wave.var() + NORM_EPS)).astype(np.float32)


def _speed(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Faster or slower by up to 10% (pitch moves with it, as in Kaldi's speed perturbation)."""
    factor = SPEEDS[rng.integers(len(SPEEDS))]
    return resample(wave, round(factor * 20), 20)  # read as if recorded at factor x the rate


def _shift_and_noise(wave: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Start 0-100 ms later (padding, so no speech is cut), plus Gaussian noise at a random 20-40 dB SNR."""
    pad = int(MAX_SHIFT * sample_rate)
    start = int(rng.integers(pad + 1))
    wave = np.pad(wave, (start, pad - start))
    power = float(np.mean(wave.astype(np.float64) ** 2))
    snr = rng.uniform(*SNR_DB)
    noise = rng.standard_normal(len(wave)).astype(np.float32) * math.sqrt(power / 10 ** (snr / 10))
    return wave + noise


class AudioDataset(Dataset):
    """Scanned clips -> ``{"input_values": float32 [T], "labels": class id | LongTensor of token ids}``.

    Training items are augmented (``augment``: none | light | standard) and, for classification, randomly
    cropped to ``max_seconds``; eval items are head-cropped and never augmented. CTC clips are never cropped:
    the transcript covers the whole clip (the scan drops clips over its limit instead). ``light``: a random
    0-100 ms delay and Gaussian noise at 20-40 dB SNR; ``standard``: also speed perturbation 0.9-1.1. There is
    no random gain: per-clip normalisation would undo it. Randomness is a numpy Generator seeded by (seed,
    epoch, index): an item is the same whichever worker loads it; call ``set_epoch`` to vary it per epoch.
    """

    def __init__(self, clips: Sequence[Clip], data: SpeechData, task: str, train: bool, augment: str = "none",
                 max_seconds: float | None = None, seed: int = 0,
                 features: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if task not in TASKS:
            raise UserError(f"unknown speech task {task!r}; use one of {', '.join(TASKS)}")
        if augment not in AUGMENTS:
            raise UserError(f"unknown augment {augment!r}; use one of {', '.join(AUGMENTS)}")
        if task == "speech-ctc" and data.vocab is None:
            raise ValueError("speech-ctc needs data.vocab (load the data with task speech-ctc)")
        self.clips, self.data, self.task, self.train = list(clips), data, task, train
        self.augment, self.max_seconds, self.seed, self.epoch = augment, max_seconds, seed, 0
        self.features = features  # e.g. Whisper's log-mel: then items hold "input_features" of the raw wave

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def targets(self) -> list[int]:
        """Class ids in order (classification), for class weights and balanced samplers."""
        return [int(c.label) for c in self.clips if c.label is not None]

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        try:
            wave = load_audio(clip.path, self.data.sample_rate)
        except AudioError as exc:  # it was read during the scan, so the file changed since
            raise UserError(f"could not read {clip.path} ({exc.reason}) although it passed the scan at start-up; "
                            "it was changed or removed during the run: restore it or remove it from the data") from None
        rng = np.random.default_rng([self.seed % 2**63, self.epoch, index])
        if self.task == "speech-ctc":
            labels: Any = torch.tensor(self.data.vocab.encode(clip.text or ""), dtype=torch.long)
            if self.train and self.augment != "none":
                wave = self._augment(wave, rng, ctc_min_frames(labels.tolist()))
        else:
            labels = int(clip.label)
            wave = self._crop(wave, rng if self.train else None)
            if self.train and self.augment != "none":
                wave = self._augment(wave, rng, 1)
        if self.features is not None:
            return {"input_features": torch.from_numpy(np.asarray(self.features(wave), dtype=np.float32)),
                    "labels": labels}
        return {"input_values": torch.from_numpy(normalize_wave(wave)), "labels": labels}

    def _crop(self, wave: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        if self.max_seconds is None:
            return wave
        size = max(1, int(round(self.max_seconds * self.data.sample_rate)))
        if len(wave) <= size:
            return wave
        start = int(rng.integers(len(wave) - size + 1)) if rng is not None else 0
        return wave[start:start + size]

    def _augment(self, wave: np.ndarray, rng: np.random.Generator, min_frames: int) -> np.ndarray:
        if self.augment == "standard":
            faster = _speed(wave, rng)
            if wav2vec2_frames(len(faster)) >= min_frames:  # never speed a clip below what its label needs
                wave = faster
        return _shift_and_noise(wave, rng, self.data.sample_rate)


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad a list of items: ``input_values`` [B, T] with zeros, ``attention_mask`` [B, T] (1 = sample), and
    ``labels`` [B] (classification) or [B, L] padded with -100 (CTC; the loss ignores it, as in transformers).
    Items with ``input_features`` (one fixed shape, e.g. Whisper's log-mel window) are stacked instead."""
    if "input_features" in batch[0]:
        return {"input_features": torch.stack([item["input_features"] for item in batch]),
                "labels": torch.tensor([int(item["labels"]) for item in batch], dtype=torch.long)}
    lengths = [len(item["input_values"]) for item in batch]
    values = torch.zeros(len(batch), max(lengths), dtype=torch.float32)
    mask = torch.zeros(len(batch), max(lengths), dtype=torch.long)
    for i, (item, n) in enumerate(zip(batch, lengths)):
        values[i, :n] = item["input_values"]
        mask[i, :n] = 1
    first = batch[0]["labels"]
    if isinstance(first, torch.Tensor) and first.ndim == 1:
        labels = torch.full((len(batch), max(len(item["labels"]) for item in batch)), -100, dtype=torch.long)
        for i, item in enumerate(batch):
            labels[i, : len(item["labels"])] = item["labels"]
    else:
        labels = torch.tensor([int(item["labels"]) for item in batch], dtype=torch.long)
    return {"input_values": values, "attention_mask": mask, "labels": labels}
