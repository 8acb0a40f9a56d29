"""Speech data: reading any rate/format, the scan's skips, splits, manifests, the CTC vocabulary, items."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from suite.errors import UserError
from suite.speech.data import (
    AudioDataset, AudioError, CONV_KERNELS, CONV_STRIDES, collate, load_audio, load_audiofolder, load_manifest,
    load_speech, normalize_wave, resample, wav2vec2_frames,
)
from suite.speech.text import Vocab, ctc_min_frames, normalize

SR = 16000


def tone(path: Path, seconds: float, rate: int = SR, freq: float = 440.0, channels: int = 1,
         subtype: str | None = None, amplitude: float = 0.5, seed: int = 0) -> Path:
    """A sine tone with a little noise (so clips differ; none when silent), written with soundfile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * rate))) / rate
    noise = 0.02 * amplitude * np.random.default_rng(seed).standard_normal(len(t))
    wave = amplitude * np.sin(2 * np.pi * freq * t) + noise
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(str(path), data.astype(np.float32), rate, subtype=subtype)
    return path


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("rate, channels, name, subtype, freq", [
    (8000, 2, "a.wav", "PCM_16", 440.0),  # telephone-rate stereo int16
    (44100, 1, "b.flac", None, 1000.0),
    (16000, 1, "c.wav", None, 3000.0),
    (22050, 1, "d.ogg", None, 700.0),
])
def test_load_audio_any_rate_and_format_becomes_mono_float32_at_16k(tmp_path, rate, channels, name, subtype, freq):
    path = tone(tmp_path / name, 1.5, rate, freq, channels, subtype)
    wave = load_audio(path, SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 1.5 * SR) <= 1
    assert abs(peak_hz(wave, SR) - freq) < 2.0  # the tone's pitch survives resampling
    assert 0.4 < np.abs(wave).max() < 0.6  # and its level (0.5)


def test_stereo_is_averaged(tmp_path):
    t = np.arange(SR) / SR
    left, right = np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    sf.write(str(tmp_path / "s.wav"), np.stack([left, right], 1).astype(np.float32), SR)
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav", SR), left / 2, atol=1e-4)


def test_resample_odd_rate_and_speed_grid():
    rate = 44056  # an NTSC-derived rate: the exact ratio has huge terms and is approximated
    x = np.sin(2 * np.pi * 500 * np.arange(rate) / rate).astype(np.float32)
    y = resample(x, rate, SR)
    assert abs(len(y) - SR) <= 2 and abs(peak_hz(y, SR) - 500) < 2
    np.testing.assert_array_equal(resample(x, SR, SR), x)


def test_unreadable_file_raises_audio_error_with_reason(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really audio" * 10)
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioError) as bad:
        load_audio(tmp_path / "bad.wav", SR)
    with pytest.raises(AudioError) as zero:
        load_audio(tmp_path / "zero.wav", SR)
    with pytest.raises(AudioError) as missing:
        load_audio(tmp_path / "nope.wav", SR)
    assert (bad.value.reason, zero.value.reason, missing.value.reason) == ("unreadable", "empty", "missing file")


def test_wav2vec2_frames_matches_the_conv_stack():
    for n in (399, 400, 401, 719, 720, 16000, 16001, 33333):
        x = torch.zeros(1, 1, n)
        for kernel, stride in zip(CONV_KERNELS, CONV_STRIDES):
            x = F.conv1d(x, torch.ones(1, 1, kernel), stride=stride) if x.shape[-1] >= kernel else x[..., :0]
        assert wav2vec2_frames(n) == x.shape[-1], n
    assert wav2vec2_frames(SR) == 49  # 20 ms per frame


# ----------------------------------------------------------------------------- folders and manifests


def make_folder(root: Path, classes=("no", "yes"), n: int = 5) -> None:
    for c, name in enumerate(classes):
        for i in range(n):
            tone(root / name / f"{i}.wav", 0.5, freq=300 + 200 * c, seed=10 * c + i)


def test_audiofolder_with_split_folders(tmp_path):
    make_folder(tmp_path / "train", n=4)
    make_folder(tmp_path / "val", n=2)
    make_folder(tmp_path / "test", n=1)
    data = load_audiofolder(tmp_path, SR)
    assert data.labels == ["no", "yes"] and data.vocab is None and data.sample_rate == SR
    assert (len(data.train), len(data.val), len(data.test)) == (8, 4, 2)
    assert [c.label for c in data.val] == [0, 0, 1, 1]
    assert all(c.path.parts[-3] == "val" and abs(c.seconds - 0.5) < 1e-6 for c in data.val)
    assert data.report.summary().startswith("train 8 clips, 8 kept (4.0 s); val 4 clips, 4 kept")


def test_audiofolder_val_class_unknown_to_train_is_a_user_error(tmp_path):
    make_folder(tmp_path / "train", n=2)
    make_folder(tmp_path / "val", classes=("no", "maybe"), n=1)
    with pytest.raises(UserError, match=r"maybe .*no matching class"):
        load_audiofolder(tmp_path, SR)


def test_audiofolder_without_split_folders_holds_out_stratified_val(tmp_path):
    make_folder(tmp_path, classes=("down", "up", "yes"), n=10)
    first = load_audiofolder(tmp_path, SR, val_split=0.2, seed=3)
    again = load_audiofolder(tmp_path, SR, val_split=0.2, seed=3)
    other = load_audiofolder(tmp_path, SR, val_split=0.2, seed=4)
    assert sorted(c.label for c in first.val) == [0, 0, 1, 1, 2, 2]
    assert len(first.train) == 24 and first.test is None
    assert [c.path for c in first.val] == [c.path for c in again.val]
    assert [c.path for c in first.val] != [c.path for c in other.val]
    assert not {c.path for c in first.val} & {c.path for c in first.train}
    assert "val held out of train" in first.report.summary()


def test_manifest_csv_with_split_column(tmp_path):
    for i in range(6):
        tone(tmp_path / "clips" / f"{i}.wav", 0.5, seed=i)
    rows = ["path,label,split"] + [f"clips/{i}.wav,{'10' if i % 2 else '2'},{'val' if i >= 4 else 'train'}"
                                   for i in range(6)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_speech("manifest", tmp_path / "m.csv", "speech-classification", SR)
    assert data.labels == ["2", "10"]  # numeric order
    assert [c.label for c in data.train] == [0, 1, 0, 1] and [c.label for c in data.val] == [0, 1]
    assert data.train[0].path == (tmp_path / "clips" / "0.wav").absolute()


def test_manifest_jsonl_ctc_holds_out_val_and_builds_vocab(tmp_path):
    texts = ["Yes, please!", "no way", "twenty-one", "It’s OK", "go left", "stop now", "up", "down there"]
    lines = []
    for i, text in enumerate(texts):
        tone(tmp_path / f"{i}.flac", 1.0, rate=8000, seed=i)
        lines.append(json.dumps({"path": f"{i}.flac", "text": text}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n\n")
    data = load_manifest(tmp_path / "m.jsonl", "speech-ctc", SR, val_split=0.25, seed=0)
    assert (len(data.train), len(data.val)) == (6, 2)
    assert data.labels == list(data.vocab.tokens) and data.labels[:2] == ["<pad>", "<unk>"]
    assert "twenty one" in {c.text for c in data.train + data.val}
    assert "it's ok" in {c.text for c in data.train + data.val}
    assert set("".join(texts).lower()) - set(",!’- ") <= set(data.vocab.tokens)


@pytest.mark.parametrize("name, content", [
    ("m.csv", "file,words\na.wav,hi\n"),
    ("m.jsonl", json.dumps({"file": "a.wav", "words": "hi"}) + "\n"),
])
def test_manifest_missing_columns_names_file_and_columns(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError) as err:
        load_manifest(tmp_path / name, "speech-ctc", SR)
    message = str(err.value)
    assert name in message and "no 'text' column" in message and "found: file, words" in message


# ----------------------------------------------------------------------------- the scan


def test_scan_skips_and_counts_bad_clips_without_touching_files(tmp_path):
    root = tmp_path / "data"
    for name in ("a", "b"):
        for i in range(3):
            tone(root / "train" / name / f"ok{i}.wav", 0.5, seed=i)
        tone(root / "val" / name / "ok.wav", 0.5)
    bad = root / "train" / "a"
    (bad / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 4)
    (bad / "zero.flac").write_bytes(b"")
    sf.write(str(bad / "no_frames.wav"), np.zeros((0,), np.float32), SR)
    sf.write(str(bad / "silent.wav"), np.zeros(SR // 2, np.float32), SR)
    nan = np.sin(np.arange(SR // 2) / 5).astype(np.float32)
    nan[100] = np.nan
    sf.write(str(bad / "nan.wav"), nan, SR, subtype="FLOAT")
    tone(bad / "long.wav", 2.0)
    (bad / "notes.txt").write_text("not audio")
    before = digest(root)

    data = load_audiofolder(root, SR, max_seconds=1.5)
    train = data.report.splits["train"]
    assert (train.found, train.kept) == (12, 6)
    assert train.skipped == {"unreadable": 1, "empty": 2, "silent": 1, "NaN/inf samples": 1, "too long": 1}
    assert data.report.summary().startswith(
        "train 12 clips, 6 kept (3.0 s), 6 skipped (2 empty, 1 NaN/inf samples, 1 silent, 1 too long, 1 unreadable)")
    assert "ignored 1 non-audio file(s)" in data.report.summary()
    assert len(data.report.examples()) == 5 and all(": " in e for e in data.report.examples())
    assert all(c.path.name.startswith("ok") for c in data.train)
    for split in (data.train, data.val):  # reading items never writes either
        ds = AudioDataset(split, data, "speech-classification", train=True, augment="standard")
        collate([ds[i] for i in range(len(ds))])
    assert digest(root) == before


def test_a_second_scan_reads_only_the_clips_that_failed_to_read(tmp_path, monkeypatch):
    """The scan's facts (length, rate, finite, silent) of clips it read are kept in the scan cache: the same
    report again, from reading only the files that could not be read."""
    from suite.speech import data as sdata

    monkeypatch.setenv("SUITE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for name in ("a", "b"):
        tone(root / "train" / name / "ok.wav", 0.5)
        tone(root / "val" / name / "ok.wav", 0.5)
    sf.write(str(root / "train" / "a" / "silent.wav"), np.zeros(SR // 2, np.float32), SR)
    (root / "train" / "a" / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 4)
    reads, real = [], sdata.sf.read
    monkeypatch.setattr(sdata.sf, "read", lambda path, **kw: reads.append(Path(path).name) or real(path, **kw))
    first = load_audiofolder(root, SR).report.summary()
    assert len(reads) == 6
    reads.clear()
    assert load_audiofolder(root, SR).report.summary() == first and reads == ["garbage.wav"]


def test_scan_skips_ctc_clips_too_short_for_their_transcript(tmp_path):
    rows = ["path,text"]
    for i in range(4):
        tone(tmp_path / f"ok{i}.wav", 1.0, seed=i)
        rows.append(f"ok{i}.wav,hello world")
    tone(tmp_path / "short.wav", 0.3)  # 14 frames < 30 needed
    rows += ["short.wav,this transcript needs far more frames", "ok0.wav,!!!"]  # the second normalises to ''
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_manifest(tmp_path / "m.csv", "speech-ctc", SR, val_split=0.2)
    assert data.report.skipped == {"too short for its transcript": 1, "empty transcript": 1}
    assert data.report.kept == 4
    assert "1 too short for its transcript" in data.report.summary()
    assert wav2vec2_frames(int(0.3 * SR)) < ctc_min_frames(normalize("this transcript needs far more frames"))


def test_a_split_with_nothing_usable_is_a_user_error(tmp_path):
    for name in ("a", "b"):
        tone(tmp_path / "train" / name / "ok.wav", 0.5)
        tone(tmp_path / "val" / name / "s.wav", 0.5, amplitude=0.0)
    with pytest.raises(UserError, match=r"no usable val clips .*2 silent"):
        load_audiofolder(tmp_path, SR)


# ----------------------------------------------------------------------------- vocabulary and decoding


def test_normalize():
    assert normalize("  Héllo,   WORLD!\tIt’s twenty-one — 42%  ") == "hello world it's twenty one 42"
    assert normalize("¿Qué?") == "que" and normalize("Привет") == ""


def test_vocab_round_trip():
    vocab = Vocab.build(["Hello world", "it's 42"])
    assert vocab.tokens == ("<pad>", "<unk>", "'", "2", "4", "d", "e", "h", "i", "l", "o", "r", "s", "t", "w", "|")
    assert (len(vocab), vocab.blank_id, vocab.unk_id, vocab.delimiter_id) == (16, 0, 1, 15)
    ids = vocab.encode("Hello, World")
    assert vocab.decode_ids(ids) == "hello world" and ids[5] == vocab.delimiter_id
    assert vocab.encode("hez") == [vocab.tokens.index("h"), vocab.tokens.index("e"), vocab.unk_id]
    spec = json.loads(json.dumps(vocab.to_dict()))
    assert spec["tokens"][0] == "<pad>" and Vocab.from_dict(spec) == vocab
    with pytest.raises(ValueError):
        Vocab(("a", "<pad>", "<unk>", "|"))  # the blank must be id 0


def test_greedy_decode_collapses_repeats_and_keeps_blank_separated_ones():
    vocab = Vocab.build(["hello"])
    h, e, l, o = (vocab.tokens.index(c) for c in "helo")
    frames = torch.tensor([
        [h, h, e, 0, l, l, 0, l, o, o, 0, 0],  # blank between the l's: both kept
        [h, e, l, l, l, o, 0, 0, 0, 0, 0, 0],  # no blank: one l
    ])
    assert vocab.greedy_decode(frames) == ["hello", "helo"]
    logits = F.one_hot(frames, len(vocab)).float() * 5 + torch.randn(2, 12, len(vocab)) * 0.1
    assert vocab.greedy_decode(logits) == ["hello", "helo"]
    assert vocab.greedy_decode(logits.numpy(), lengths=[4, 12]) == ["he", "helo"]  # padding frames ignored
    labels = torch.tensor([h, e, l, l, o, -100, -100])
    assert vocab.decode_ids(labels) == "hello"


# ----------------------------------------------------------------------------- items and batches


@pytest.fixture
def keyword_data(tmp_path):
    make_folder(tmp_path / "train", n=3)
    make_folder(tmp_path / "val", n=1)
    return load_audiofolder(tmp_path, SR)


def test_eval_items_are_normalised_and_never_augmented(keyword_data):
    clip = keyword_data.val[0]
    ds = AudioDataset(keyword_data.val, keyword_data, "speech-classification", train=False, augment="standard")
    item = ds[0]
    x = item["input_values"]
    assert x.dtype == torch.float32 and x.ndim == 1 and item["labels"] == clip.label
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-3
    np.testing.assert_allclose(x.numpy(), normalize_wave(load_audio(clip.path, SR)), atol=1e-6)
    assert torch.equal(ds[0]["input_values"], x)


def test_augmentation_is_seeded_and_changes_the_waveform(keyword_data):
    def items(augment, seed, epoch=0):
        ds = AudioDataset(keyword_data.train, keyword_data, "speech-classification", True, augment, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i]["input_values"] for i in range(3)]

    plain = items("none", 0)
    for augment in ("light", "standard"):
        a, b = items(augment, 0), items(augment, 0)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not any(torch.equal(x, y) for x, y in zip(a, items(augment, 1)))
        assert not any(torch.equal(x, y) for x, y in zip(a, items(augment, 0, epoch=1)))
        assert not any(x.shape == p.shape and torch.allclose(x, p, atol=1e-3) for x, p in zip(a, plain))
    lengths = {len(x) for x in items("standard", 0) + items("standard", 5)}
    assert len(lengths) > 1  # speed perturbation changes the duration


def test_crop_to_max_seconds(keyword_data):
    kw = dict(data=keyword_data, task="speech-classification", max_seconds=0.25)
    train = AudioDataset(keyword_data.train, train=True, seed=0, **kw)
    val = AudioDataset(keyword_data.train, train=False, **kw)
    head = normalize_wave(load_audio(keyword_data.train[0].path, SR)[: SR // 4])
    assert len(train[0]["input_values"]) == len(val[0]["input_values"]) == SR // 4
    np.testing.assert_allclose(val[0]["input_values"].numpy(), head, atol=1e-6)
    starts = set()
    for epoch in range(4):
        train.set_epoch(epoch)
        starts.add(tuple(train[0]["input_values"][:5].tolist()))
    assert len(starts) > 1  # a random window per epoch while training


def test_ctc_items_and_collate(tmp_path):
    rows = ["path,text"]
    for i, (seconds, text) in enumerate([(1.0, "go"), (0.6, "hello there"), (0.8, "stop"), (0.9, "up")]):
        tone(tmp_path / f"{i}.wav", seconds, seed=i)
        rows.append(f"{i}.wav,{text}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_manifest(tmp_path / "m.csv", "speech-ctc", SR, val_split=0.25)
    ds = AudioDataset(data.train, data, "speech-ctc", train=True, augment="standard", max_seconds=0.1)
    batch = collate([ds[i] for i in range(len(ds))])
    lengths = [len(ds[i]["input_values"]) for i in range(len(ds))]
    texts = [c.text for c in data.train]
    assert batch["input_values"].shape == (3, max(lengths)) and batch["input_values"].dtype == torch.float32
    assert batch["attention_mask"].dtype == torch.long and batch["attention_mask"].sum(1).tolist() == lengths
    assert all(float(batch["input_values"][i, n:].abs().sum()) == 0 for i, n in enumerate(lengths))
    assert batch["labels"].shape == (3, max(map(len, texts)))
    assert [data.vocab.decode_ids(row) for row in batch["labels"]] == texts
    assert [int((row != -100).sum()) for row in batch["labels"]] == [len(t) for t in texts]
    assert min(lengths) > 0.5 * SR  # CTC clips are never cropped: max_seconds does not apply


def test_ctc_speed_perturbation_never_makes_a_clip_too_short(tmp_path):
    text = "aaaa bbbb"  # 9 tokens + 6 repeats: 15 frames
    needed = ctc_min_frames(normalize(text))
    samples = 320 * needed + 80  # exactly enough frames at speed 1.0
    assert wav2vec2_frames(samples) == needed
    sf.write(str(tmp_path / "x.wav"), np.sin(np.arange(samples) / 3).astype(np.float32) * 0.5, SR)
    sf.write(str(tmp_path / "y.wav"), np.sin(np.arange(SR) / 3).astype(np.float32) * 0.5, SR)
    (tmp_path / "m.csv").write_text(f"path,text,split\nx.wav,{text},train\ny.wav,ab,val\n")
    data = load_manifest(tmp_path / "m.csv", "speech-ctc", SR)
    ds = AudioDataset(data.train, data, "speech-ctc", train=True, augment="standard")
    for epoch in range(12):
        ds.set_epoch(epoch)
        assert wav2vec2_frames(len(ds[0]["input_values"])) >= needed


def test_classification_collate():
    batch = collate([{"input_values": torch.ones(5), "labels": 1}, {"input_values": torch.ones(3), "labels": 0}])
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["input_values"][1, 3:].tolist() == [0, 0]
