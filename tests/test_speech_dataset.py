"""The espeak-ng speech dataset: layout, audio format, speech-like content, sentence manifests,
reproducibility, idempotence and refusals."""
from __future__ import annotations

import csv
import itertools
import json
import os

import numpy as np
import pytest
import soundfile as sf

import suite.datasets.speech as speech
import suite.recipe as recipe
from suite.datasets.speech import DIGITS, KEYWORDS, VOCABULARY, make_speech
from suite.errors import UserError

TINY = dict(words=["yes", "no", "seven"], train_per_word=3, val_per_word=2, sentences=4)


def files(root):
    """Relative path -> bytes of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read(path):
    info = sf.info(path)
    audio, rate = sf.read(path, dtype="int16")
    return info, audio, rate


def speech_band_share(audio: np.ndarray, rate: int) -> float:
    """The share of a clip's energy between 100 Hz and 4 kHz."""
    power = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    return float(power[(freqs >= 100) & (freqs <= 4000)].sum() / power.sum())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_speech(tmp_path_factory.mktemp("speech") / "d", **TINY, progress=True)


def test_word_lists():
    assert len(KEYWORDS) == len(DIGITS) == 10 and DIGITS[0] == "zero" and DIGITS[-1] == "nine"
    assert len(set(VOCABULARY)) == len(VOCABULARY) >= 55


def test_layout_and_counts(tiny):
    assert sorted(p.name for p in tiny.iterdir()) == ["sentences", "speech.json", "train", "val"]
    for split, n in {"train": 3, "val": 2}.items():
        assert sorted(p.name for p in (tiny / split).iterdir()) == ["no", "seven", "yes"]
        for word in TINY["words"]:
            names = sorted(p.name for p in (tiny / split / word).iterdir())
            assert names == [f"{i:05d}.wav" for i in range(n)]
    sentences = tiny / "sentences"
    assert sorted(p.name for p in sentences.iterdir()) == ["manifest.csv", "train", "train.csv", "val", "val.csv"]
    assert len(list((sentences / "train").iterdir())) == 4
    assert len(list((sentences / "val").iterdir())) == 10  # max(10, sentences // 5)
    params = json.loads((tiny / "speech.json").read_text())
    assert params["words"] == TINY["words"] and params["sentences"] == 4
    assert (params["train_per_word"], params["val_per_word"], params["test_per_word"]) == (3, 2, 0)
    assert (params["sample_rate"], params["seed"], params["noise"]) == (16000, 0, True)
    assert params["espeak_ng"] == speech.espeak_version() and params["espeak_ng"][0].isdigit()
    assert "en-us" in params["languages"] and "" in params["variants"] and len(params["variants"]) > 10


def test_keyword_clips_are_one_second_16k_mono_int16_and_not_silent(tiny):
    clips = sorted(tiny.glob("train/*/*.wav")) + sorted(tiny.glob("val/*/*.wav"))
    assert len(clips) == 15
    for path in clips:
        info, audio, rate = read(path)
        assert (info.format, info.subtype, info.channels) == ("WAV", "PCM_16", 1)
        assert (rate, info.frames) == (16000, 16000)
        assert audio.dtype == np.int16 and audio.shape == (16000,)
        assert np.abs(audio).max() > 3000  # peak above -21 dBFS: the gain is drawn in -20..-1 dBFS
        assert audio.astype(float).std() > 100


def test_clips_of_the_same_word_differ(tiny):
    for word in TINY["words"]:
        clips = [read(p)[1].astype(float) for p in sorted(tiny.glob(f"*/{word}/*.wav"))]
        assert len(clips) == 5
        for a, b in itertools.combinations(clips, 2):
            assert np.abs(a - b).mean() > 0.1 * min(np.abs(a).mean(), np.abs(b).mean())


def test_energy_is_in_the_speech_band(tiny):
    shares = [speech_band_share(read(p)[1], 16000) for p in sorted(tiny.rglob("*.wav"))]
    assert min(shares) > 0.5 and np.mean(shares) > 0.8
    white = np.random.default_rng(0).standard_normal(16000)  # the check can fail: noise scores ~0.49
    assert speech_band_share(white, 16000) < 0.55


def test_the_word_is_there_and_placed_at_random(tiny):
    onsets = []
    for path in sorted(tiny.glob("train/*/*.wav")):
        envelope = np.abs(read(path)[1].astype(float)).reshape(100, 160).mean(axis=1)  # 10 ms frames
        loud = envelope > 0.3 * envelope.max()
        assert 3 <= loud.sum() <= 95  # a word, not a tone over the whole second nor a click
        onsets.append(int(np.argmax(loud)))
    assert len(set(onsets)) >= 5


def test_sentence_manifests(tiny):
    lengths = []
    for split, n in {"train": 4, "val": 10}.items():
        with open(tiny / "sentences" / f"{split}.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == n and list(rows[0]) == ["path", "text"]
        assert [r["path"] for r in rows] == [f"{split}/{i:05d}.wav" for i in range(n)]
        for row in rows:
            words = row["text"].split()
            assert 3 <= len(words) <= 8 and set(words) <= set(VOCABULARY), row
            info, audio, rate = read(tiny / "sentences" / row["path"])
            assert (info.subtype, info.channels, rate) == ("PCM_16", 1, 16000)
            assert audio.astype(float).std() > 100
            assert speech_band_share(audio, rate) > 0.5
            lengths.append(info.frames / rate)
    assert len(set(lengths)) > 5 and max(lengths) > 1.2 and min(lengths) > 0.5  # not padded to one length


def test_sentences_use_only_the_vocabulary_and_vary():
    rng = np.random.default_rng(1)
    texts = [speech.sentence(rng) for _ in range(300)]
    for text in texts:
        assert 3 <= len(text.split()) <= 8 and set(text.split()) <= set(VOCABULARY), text
    assert len(set(texts)) > 200
    used = {w for text in texts for w in text.split()}
    assert set(KEYWORDS) <= used and set(DIGITS) <= used


def test_digit_sentences_are_connected_digits_only(tmp_path):
    rng = np.random.default_rng(2)
    texts = [speech.sentence(rng, "digits") for _ in range(200)]
    assert all(3 <= len(t.split()) <= 6 and set(t.split()) <= set(DIGITS) for t in texts)
    assert {w for t in texts for w in t.split()} == set(DIGITS) and len(set(texts)) > 150
    out = make_speech(tmp_path / "d", ["yes"], 1, 1, sentences=3, sentence_style="digits")
    with open(out / "sentences" / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13 and all(set(r["text"].split()) <= set(DIGITS) for r in rows)
    assert json.loads((out / "speech.json").read_text())["sentence_style"] == "digits"
    with pytest.raises(UserError, match="different parameters"):  # a mixed set is another dataset
        make_speech(out, ["yes"], 1, 1, sentences=3)
    assert speech.SENTENCE_STYLES == recipe.SENTENCE_STYLES


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = files(make_speech(tmp_path / "a", **TINY, seed=3))
    b = files(make_speech(tmp_path / "b", **TINY, seed=3))
    assert a == b and len(a) == 15 + 14 + 4  # clips, sentences, three manifests and speech.json
    other = files(make_speech(tmp_path / "c", ["yes"], 1, 0, seed=4))
    assert other["train/yes/00000.wav"] != a["train/yes/00000.wav"]


def test_a_clip_does_not_depend_on_the_other_words(tiny, tmp_path):
    alone = files(make_speech(tmp_path / "d", ["seven"], 2, 1))
    both = files(tiny)
    for name in ("train/seven/00000.wav", "train/seven/00001.wav", "val/seven/00000.wav"):
        assert alone[name] == both[name]


def test_renditions_never_repeat_within_a_word(tmp_path):
    # One voice and 150 clips per split: the (voice, speed, pitch) space is small enough that repeats
    # would be drawn (birthday bound), so this exercises the redraw.
    params = {"words": ["go"], "train_per_word": 150, "val_per_word": 150, "test_per_word": 150, "seed": 0}
    jobs = speech._keyword_jobs(tmp_path, params, ["en-us"])
    keys = [job.rendition.key() for job in jobs]
    assert len(keys) == 450 and len(set(keys)) == 450


def test_rerun_with_same_parameters_writes_nothing(tmp_path):
    out = make_speech(tmp_path / "d", ["up"], 2, 1, sentences=2)
    old = 1_000_000_000  # 2001: any rewrite would move the mtime to now
    for path in out.rglob("*"):
        os.utime(path, (old, old))
    before = files(out)
    assert make_speech(tmp_path / "d", ["up"], 2, 1, sentences=2) == out
    assert files(out) == before
    assert all(path.stat().st_mtime == old for path in out.rglob("*"))


def test_existing_dataset_with_other_parameters_is_refused(tmp_path):
    out = make_speech(tmp_path / "d", ["up"], 2, 1)
    before = files(out)
    with pytest.raises(UserError) as error:
        make_speech(out, ["up"], 2, 1, seed=1)
    message = str(error.value)
    assert str(out) in message and "--out" in message and "(seed)" in message and "\n" not in message
    with pytest.raises(UserError, match="noise"):
        make_speech(out, ["up"], 2, 1, noise=False)
    assert files(out) == before


def test_foreign_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="--out"):
        make_speech(out, ["yes"], 1, 1)
    assert files(out) == {"notes.txt": b"keep me"}


def test_an_interrupted_run_is_finished_by_the_next_one(tmp_path, monkeypatch):
    real, calls = speech.synthesize, []

    def flaky(*args):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(speech, "synthesize", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_speech(tmp_path / "d", ["left", "right"], 3, 1, sentences=2)
    assert not (tmp_path / "d" / "speech.json").exists()  # unfinished is never mistaken for done
    assert 0 < len(list((tmp_path / "d").rglob("*.wav"))) < 20
    monkeypatch.setattr(speech, "synthesize", real)
    make_speech(tmp_path / "d", ["left", "right"], 3, 1, sentences=2)
    fresh = make_speech(tmp_path / "fresh", ["left", "right"], 3, 1, sentences=2)
    assert files(tmp_path / "d") == files(fresh)


def test_test_split_and_other_sample_rates(tmp_path):
    out = make_speech(tmp_path / "d", ["off"], 1, 1, test_per_word=2, sample_rate=8000, noise=False)
    assert sorted(p.name for p in out.iterdir()) == ["speech.json", "test", "train", "val"]
    assert len(list((out / "test" / "off").iterdir())) == 2
    for path in out.rglob("*.wav"):
        info, audio, rate = read(path)
        assert (rate, info.frames, info.channels) == (8000, 8000, 1)
        assert speech_band_share(audio, rate) > 0.6


def test_missing_espeak_is_a_user_error_saying_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no espeak-ng on it
    monkeypatch.setattr(speech, "espeak_version", speech.espeak_version.__wrapped__)
    monkeypatch.setattr(speech, "voice_inventory", speech.voice_inventory.__wrapped__)  # past the caches
    expected = "^espeak-ng not found: install it with `apt-get install -y espeak-ng`"
    with pytest.raises(UserError, match=expected):
        make_speech(tmp_path / "d", ["yes"], 1, 1)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("bad", [dict(train_per_word=0), dict(val_per_word=-1), dict(sentences=1.5),
                                 dict(sample_rate=4000), dict(seed=-1), dict(words=[]),
                                 dict(words=["yes", "yes"]), dict(words=["Yes"]), dict(words=["-v"]),
                                 dict(noise="no"), dict(sentences=2, sentence_style="words")])
def test_bad_parameters_are_user_errors(tmp_path, bad):
    args = dict(words=["yes"], train_per_word=1, val_per_word=1) | bad
    with pytest.raises(UserError):
        make_speech(tmp_path / "d", **args)
    assert not (tmp_path / "d").exists()
