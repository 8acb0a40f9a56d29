"""A seeded, offline speech dataset spoken by espeak-ng: keyword clips like Google Speech Commands, and
short sentences with transcripts for CTC.

Every clip draws its own rendition (voice and variant, speed, pitch, amplitude) and its own recording
conditions (position in the window, coloured noise and mains hum at a random SNR, gain), the same way
for every word, so the word is carried by what is said alone. espeak-ng is deterministic, so a seed
gives byte-identical files on a rerun with the same espeak-ng version (recorded in speech.json).
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import re
import shutil
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from suite.core.checkpoint import atomic_write, atomic_write_text
from suite.datasets.shapes import _check_count, _claim  # one rule for counts and for claiming a folder
from suite.errors import UserError
from suite.datasets import SENTENCE_STYLES

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The sentence vocabulary: the keywords and digits plus common short words, so a CTC model sees the
# keyword sounds in running speech.
COMMON = ("the", "a", "cat", "dog", "man", "car", "door", "light", "book", "home", "red", "blue", "big",
          "small", "can", "will", "please", "turn", "move", "look", "come", "run", "walk", "open", "close",
          "now", "here", "there", "back", "fast", "slow", "it", "is", "and", "we", "you", "they", "my",
          "good", "day")
VOCABULARY = KEYWORDS + DIGITS + COMMON

SPLITS = ("train", "val", "test")
SENTENCE_SPLITS = ("train", "val")
FORMAT = 1  # stored in speech.json; bump when synthesis changes so an old folder is not reused
_PARTIAL = ".speech-partial.json"  # marks a folder this module started filling, so a rerun may finish it
_MISSING = "espeak-ng not found: install it with `apt-get install -y espeak-ng` (make install does this)"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

# espeak-ng variants that sound like a person (no whisper, robots or monsters) and stay below full scale
# at the amplitudes drawn below. Those missing from the installed espeak-ng are skipped.
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt",
            "klatt2", "klatt3", "klatt4", "croak", "Annie", "Andy", "steph", "linda", "david", "edward",
            "robert", "belinda", "aunty", "grandma", "grandpa", "Alicia", "Andrea", "max", "michel",
            "quincy", "norbert", "travis", "victor", "shelby", "adam", "benjamin", "caleb", "Lee", "Mike",
            "rob", "zac", "anika", "kaukovalta")
SPEED = (110, 220)  # words per minute (espeak-ng -s)
PITCH = (20, 80)  # espeak-ng -p, 0..99
AMPLITUDE = (50, 100)  # espeak-ng -a; above 100 some variants clip
WORD_GAP = (0, 6)  # pause between words in sentences, in 10 ms units at the default speed (espeak-ng -g)
SNR_DB = (10.0, 30.0)
CLEAN = 0.15  # the share of clips with no added noise
PEAK_DBFS = (-20.0, -1.0)


# ---------------------------------------------------------------- espeak-ng

def _espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise UserError(_MISSING)
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([_espeak(), *args], capture_output=True, timeout=60)
    except FileNotFoundError:
        raise UserError(_MISSING) from None


@functools.lru_cache(maxsize=1)
def espeak_version() -> str:
    """E.g. '1.51': the synthesis (and so every file) can change between versions."""
    text = _run("--version").stdout.decode(errors="replace")
    match = re.search(r"text-to-speech:\s*(\S+)", text)
    return match.group(1) if match else text.strip()


def _listed(kind: str, column: int) -> list[str]:
    """One column of `espeak-ng --voices=KIND`, header dropped."""
    rows = _run(f"--voices={kind}").stdout.decode(errors="replace").splitlines()[1:]
    return [row.split()[column] for row in rows if len(row.split()) > column]


def _speaks(voice: str) -> bool:
    result = _run("-v", voice, "--stdout", "yes")
    return result.returncode == 0 and len(result.stdout) > 1000


@functools.lru_cache(maxsize=1)
def voice_inventory() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(English languages, variants) available here, each in a fixed order.

    Languages come from `espeak-ng --voices=en` minus the MBROLA ones (they need the separate mbrola
    program); each is tried once and dropped if it fails. A variant missing from the install would be
    ignored silently by espeak-ng, so VARIANTS are checked against `--voices=variant` instead.
    """
    rows = [row.split() for row in _run("--voices=en").stdout.decode(errors="replace").splitlines()[1:]]
    languages = sorted({row[1] for row in rows if len(row) > 4 and row[1].startswith("en")
                        and not row[4].startswith("mb/")})
    with ThreadPoolExecutor(_workers()) as pool:
        languages = [lang for lang, ok in zip(languages, pool.map(_speaks, languages)) if ok]
    if not languages:
        raise UserError("espeak-ng has no working English voice: reinstall it with "
                        "`apt-get install -y --reinstall espeak-ng espeak-ng-data`")
    installed = {name.removeprefix("!v/") for name in _listed("variant", 4)}
    return tuple(languages), tuple(v for v in VARIANTS if v == "" or v in installed)


def voices() -> tuple[str, ...]:
    """Every language x variant, e.g. 'en-us' (the plain voice), 'en-gb-x-rp+klatt'."""
    languages, variants = voice_inventory()
    return tuple(f"{lang}+{v}" if v else lang for lang in languages for v in variants)


def _workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(2, min(8, cores + 1))  # +1: one espeak-ng process runs while another clip is mixed


@dataclass(frozen=True)
class Rendition:
    """How espeak-ng says one text."""

    voice: str
    speed: int
    pitch: int
    amplitude: int
    gap: int = 0

    def key(self) -> tuple:
        return self.voice, self.speed, self.pitch


def _draw_rendition(rng: np.random.Generator, voice_list: Sequence[str], gap: bool) -> Rendition:
    return Rendition(voice=_pick(rng, voice_list),
                     speed=int(rng.integers(SPEED[0], SPEED[1] + 1)),
                     pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
                     amplitude=int(rng.integers(AMPLITUDE[0], AMPLITUDE[1] + 1)),
                     gap=int(rng.integers(WORD_GAP[0], WORD_GAP[1] + 1)) if gap else 0)


def synthesize(text: str, rendition: Rendition) -> tuple[np.ndarray, int]:
    """espeak-ng's float32 mono waveform for `text` and its sample rate (22050 Hz)."""
    r = rendition
    gap = ("-g", str(r.gap)) if r.gap else ()
    result = _run("-v", r.voice, "-s", str(r.speed), "-p", str(r.pitch), "-a", str(r.amplitude), *gap,
                  "--stdout", text)
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"espeak-ng failed on {text!r} with {r}: {message[-1] if message else 'no audio'}")
    audio, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    return audio.mean(axis=1), rate


# ---------------------------------------------------------------- signal processing

def _resample(audio: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    if rate == sample_rate:
        return audio
    return soxr.resample(audio, rate, sample_rate, quality="HQ").astype(np.float32)


def trim(audio: np.ndarray, sample_rate: int, below_peak_db: float = 40.0) -> np.ndarray:
    """Drop leading and trailing silence: 10 ms frames quieter than the loudest by `below_peak_db`."""
    hop = max(1, sample_rate // 100)
    frames = len(audio) // hop
    if frames == 0:
        return audio
    rms = np.sqrt((audio[: frames * hop].reshape(frames, hop) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-below_peak_db / 20))
    margin = 2  # frames kept either side: the soft onset of a fricative sits below the threshold
    start = max(0, loud[0] - margin) * hop
    stop = min(len(audio), (loud[-1] + 1 + margin) * hop)
    return audio[start:stop]


def _place(speech: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """`speech` at a random offset in `length` zeros, or a random `length` window of it if longer."""
    if len(speech) >= length:
        start = int(rng.integers(0, len(speech) - length + 1))
        return speech[start:start + length].copy()
    out = np.zeros(length, np.float32)
    start = int(rng.integers(0, length - len(speech) + 1))
    out[start:start + len(speech)] = speech
    return out


def _coloured_noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS noise with power ~ 1/f**beta, beta in [0, 2] (white to brown), nothing below 20 Hz."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    beta = rng.uniform(0.0, 2.0)
    spectrum *= np.where(freqs >= 20, np.maximum(freqs, 20) ** (-beta / 2), 0.0)
    noise = np.fft.irfft(spectrum, n)
    return noise / max(float(noise.std()), 1e-12)


def _hum(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS mains hum: 50 or 60 Hz and a few decaying harmonics with random phases."""
    t = np.arange(n) / sample_rate
    base = 50.0 if rng.random() < 0.5 else 60.0
    hum = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * math.pi * base * k * t + rng.uniform(0, 2 * math.pi))
              for k in range(1, 5) if base * k < sample_rate / 2)
    return hum / max(float(np.std(hum)), 1e-12)


def _background(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS background: mostly coloured noise, some clips with a little hum mixed in."""
    noise = _coloured_noise(rng, n, sample_rate)
    if rng.random() < 0.5:
        noise = noise + rng.uniform(0.1, 0.5) * _hum(rng, n, sample_rate)
    return noise / max(float(noise.std()), 1e-12)


def record(speech: np.ndarray, length: int | None, sample_rate: int, rng: np.random.Generator,
           noise: bool) -> np.ndarray:
    """Trimmed speech -> a clip as a microphone might have caught it: placed in a `length`-sample window
    (or padded with a short random lead-in and tail when length is None), noise at a random SNR, gain."""
    level = float(np.sqrt(np.mean(speech**2))) if len(speech) else 0.0
    if length is None:
        lead, tail = (int(rng.uniform(0.05, 0.3) * sample_rate) for _ in range(2))
        clip = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(tail, np.float32)])
    else:
        clip = _place(speech, length, rng)
    if noise and rng.random() >= CLEAN:
        snr = rng.uniform(*SNR_DB)
        clip = clip + level * 10 ** (-snr / 20) * _background(rng, len(clip), sample_rate)
    peak = float(np.abs(clip).max())
    gain = 10 ** (rng.uniform(*PEAK_DBFS) / 20) / peak if peak > 0 else 0.0
    return (clip * gain).astype(np.float32)


def _to_pcm16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    atomic_write(path, lambda tmp: sf.write(tmp, _to_pcm16(audio), sample_rate, subtype="PCM_16",
                                             format="WAV"))


# ---------------------------------------------------------------- sentences

def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _digits(rng):
    return [_pick(rng, DIGITS) for _ in range(int(rng.integers(3, 7)))]


def _command(rng):
    verb = _pick(rng, ("go", "turn", "move", "look", "come", "run", "walk"))
    words = (["please"] if rng.random() < 0.3 else []) + [verb]
    if verb in ("turn", "move") and rng.random() < 0.5:
        words += ["the", _pick(rng, ("car", "dog", "cat", "book"))]
    words.append(_pick(rng, ("up", "down", "left", "right", "back", "here", "there", "home")))
    return words + ([_pick(rng, ("now", "fast", "slow"))] if rng.random() < 0.6 else [])


def _statement(rng):
    words = ["the"] + ([_pick(rng, ("big", "small", "red", "blue", "good"))] if rng.random() < 0.5 else [])
    words += [_pick(rng, ("cat", "dog", "man", "car")), _pick(rng, ("can", "will"))]
    verb = _pick(rng, ("go", "run", "walk", "come", "look", "stop"))
    if verb == "stop":
        return words + [verb, "now"]
    return words + [verb, _pick(rng, ("up", "down", "left", "right", "back", "home", "now", "here", "fast"))]


def _switch(rng):
    verb = _pick(rng, ("turn", "open", "close"))
    words = (["please"] if rng.random() < 0.3 else []) + [verb, _pick(rng, ("the", "my"))]
    words.append(_pick(rng, ("light", "door", "book", "car")))
    if verb == "turn":
        words.append(_pick(rng, ("on", "off")))
    return words + ([_pick(rng, ("now", "here", "there"))] if rng.random() < 0.4 else [])


def _answer(rng):
    rest = _pick(rng, (("it", "is", _pick(rng, DIGITS)), ("stop", "now"), ("go", "left"), ("go", "right"),
                       (_pick(rng, ("we", "you", "they")), "can", "go"), ("it", "is", "off"),
                       ("it", "is", "on"), ("good", "day"), ("go", "up"), ("go", "down")))
    return [_pick(rng, ("yes", "no")), *rest]


_TEMPLATES = (_digits, _command, _statement, _switch, _answer)


def sentence(rng: np.random.Generator, style: str = "mixed") -> str:
    """A short sentence (3-8 words) made only of VOCABULARY, e.g. 'the cat can go up', 'seven nine two';
    ``style="digits"``: 3-6 digits, e.g. 'four four two zero six'."""
    if style == "digits":
        return " ".join(_digits(rng))
    while True:
        words = _pick(rng, _TEMPLATES)(rng)
        if rng.random() < 0.2 and len(words) <= 4:  # two joined: a longer utterance with a boundary inside
            words += ["and", *_pick(rng, _TEMPLATES)(rng)]
        if 3 <= len(words) <= 8:
            return " ".join(words)


# ---------------------------------------------------------------- the dataset folder

@dataclass(frozen=True)
class _Job:
    path: Path
    text: str
    rendition: Rendition
    post_seed: tuple  # the stream for placement, noise and gain: independent of rendition redraws


def _word_key(word: str) -> int:
    return zlib.crc32(word.encode())  # stable across runs, independent of which other words are asked for


def _keyword_jobs(out: Path, params: dict, voice_list) -> list[_Job]:
    """Every keyword clip, renditions drawn split by split from their own streams; a rendition that
    repeats one already drawn for the word (in any split) is redrawn, so no two clips share one."""
    jobs = []
    for word in params["words"]:
        taken = set()
        for s, split in enumerate(SPLITS):
            for i in range(params[f"{split}_per_word"]):
                rng = np.random.default_rng([params["seed"], s, _word_key(word), i])
                rendition = _draw_rendition(rng, voice_list, gap=False)
                while rendition.key() in taken:
                    rendition = _draw_rendition(rng, voice_list, gap=False)
                taken.add(rendition.key())
                path, text = out / split / word / f"{i:05d}.wav", word.replace("_", " ")
                jobs.append(_Job(path, text, rendition, (params["seed"], s, _word_key(word), i, 1)))
    return jobs


def _sentence_jobs(out: Path, params: dict, voice_list) -> dict[str, list[_Job]]:
    n = params["sentences"]
    counts = {"train": n, "val": max(10, n // 5) if n else 0}
    jobs = {}
    for s, split in enumerate(SENTENCE_SPLITS):
        jobs[split] = []
        for i in range(counts[split]):
            rng = np.random.default_rng([params["seed"], 100 + s, i])
            text = sentence(rng, params.get("sentence_style", "mixed"))
            rendition = _draw_rendition(rng, voice_list, gap=True)
            path = out / "sentences" / split / f"{i:05d}.wav"
            jobs[split].append(_Job(path, text, rendition, (params["seed"], 100 + s, i, 1)))
    return jobs


def _render(job: _Job, sample_rate: int, fixed_length: bool, noise: bool) -> None:
    if job.path.exists():  # written atomically, so complete: left by an interrupted run with these params
        return
    audio, rate = synthesize(job.text, job.rendition)
    speech = trim(_resample(audio, rate, sample_rate), sample_rate)
    rng = np.random.default_rng(job.post_seed)
    clip = record(speech, sample_rate if fixed_length else None, sample_rate, rng, noise)
    _write_wav(job.path, clip, sample_rate)


def _run_jobs(jobs: list[tuple[_Job, bool]], params: dict, desc: str, progress: bool) -> None:
    pool = ThreadPoolExecutor(_workers())
    try:
        rate, noise = params["sample_rate"], params["noise"]
        futures = [pool.submit(_render, job, rate, fixed, noise) for job, fixed in jobs]
        for future in tqdm(futures, desc=desc, unit="clip", disable=None if progress else True):
            future.result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # no half-run workers writing after we return
        raise
    pool.shutdown(wait=True)


def _write_manifest(path: Path, jobs: dict[str, list[_Job]], with_split: bool = False) -> None:
    """path,text rows (paths relative to the csv) of every split in ``jobs``; ``with_split`` adds a split column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "text"] + (["split"] if with_split else []))
    for split, split_jobs in jobs.items():
        for job in split_jobs:
            writer.writerow([job.path.relative_to(path.parent).as_posix(), job.text] + ([split] if with_split else []))
    atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------- parameters and the folder claim

def _check_words(words: Sequence[str]) -> list[str]:
    words = [words] if isinstance(words, str) else list(words)
    if not words:
        raise UserError("no words given: pass at least one, e.g. yes,no")
    for word in words:
        if not isinstance(word, str) or not all(_WORD.fullmatch(part) for part in word.split("_")):
            raise UserError(f"word {word!r} must be lower-case letters (an apostrophe inside, "
                            "'_' between the words of a phrase)")
    if len(set(words)) != len(words):
        raise UserError(f"words repeat: {', '.join(words)}")
    return words


def make_speech(out, words: Sequence[str] = KEYWORDS + DIGITS, train_per_word: int = 40,
                val_per_word: int = 10, test_per_word: int = 0, sentences: int = 0,
                sample_rate: int = 16000, seed: int = 0, noise: bool = True, progress: bool = False,
                sentence_style: str = "mixed") -> Path:
    """Write an audiofolder of 1 s mono 16-bit clips, out/{train,val[,test]}/<word>/NNNNN.wav, and when
    sentences > 0 out/sentences/{train,val}/NNNNN.wav with out/sentences/{train,val}.csv (path,text;
    paths relative to the csv) and out/sentences/manifest.csv (path,text,split: both splits): `sentences` train
    clips and max(10, sentences // 5) val clips, in ``sentence_style`` (SENTENCE_STYLES). Then
    out/speech.json (the parameters, espeak-ng version, languages and variants) last.

    Idempotent: if speech.json already records these parameters, returns at once without writing.
    A folder holding anything else raises UserError; an interrupted run is finished by the next one.
    A word in '_'-joined form (e.g. 'turn_left') is spoken as a phrase.
    """
    out = Path(out)
    if not isinstance(noise, bool):
        raise UserError(f"noise must be true or false, got {noise!r}")
    if sentence_style not in SENTENCE_STYLES:
        raise UserError(f"sentence style {sentence_style!r} is not one of {', '.join(SENTENCE_STYLES)}")
    params = {"format": FORMAT, "words": _check_words(words),
              "train_per_word": _check_count("train_per_word", train_per_word, 1),
              "val_per_word": _check_count("val_per_word", val_per_word, 0),
              "test_per_word": _check_count("test_per_word", test_per_word, 0),
              "sentences": _check_count("sentences", sentences, 0),
              "sample_rate": _check_count("sample_rate", sample_rate, 8000, 48000),
              "seed": _check_count("seed", seed, 0), "noise": noise}
    if sentences and sentence_style != "mixed":  # recorded only when it matters, so mixed folders stay valid
        params["sentence_style"] = sentence_style
    languages, variants = voice_inventory()
    params |= {"espeak_ng": espeak_version(), "languages": list(languages), "variants": list(variants)}
    if _claim(out, params, "speech", _PARTIAL):
        return out
    keyword_jobs = _keyword_jobs(out, params, voices())
    sentence_jobs = _sentence_jobs(out, params, voices())
    jobs = [(job, True) for job in keyword_jobs]
    jobs += [(job, False) for split_jobs in sentence_jobs.values() for job in split_jobs]
    _run_jobs(jobs, params, f"speech -> {out}", progress)
    for split, split_jobs in sentence_jobs.items():
        if split_jobs:
            _write_manifest(out / "sentences" / f"{split}.csv", {split: split_jobs})
    if any(sentence_jobs.values()):  # both splits with a split column: what `data.format: manifest` reads
        _write_manifest(out / "sentences" / "manifest.csv", sentence_jobs, with_split=True)
    atomic_write_text(out / "speech.json", json.dumps(params, indent=2) + "\n")
    (out / _PARTIAL).unlink(missing_ok=True)  # after speech.json: a crash in between still reads as done
    return out
