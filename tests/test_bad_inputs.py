"""The bad-input sweep: recipes, datasets and CLI paths a user can get wrong. Each gets a one-line error (exit 2)
or is skipped and counted; nothing hangs, nothing ends in a traceback, and the user's files are unchanged."""
from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from suite.cli import main
from suite.core.data import ScanReport
from suite.vision.data import scan


def call(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.err


def snapshot(folder: Path) -> dict[str, str]:
    """Every file's bytes (links and FIFOs by what they are), to show the data is untouched."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_fifo():
            out[rel] = "fifo"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height pixels (a decompression bomb) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("text, expect", [
    ("- name: x\n- task: y\n", "a recipe is a mapping"),
    ("name: x\ntask: image-classification\nmodel: {arch: resnet18, wieghts: none}\n", "did you mean 'weights'"),
    ("name: x\ntask: image-classification\nmodel: {arch: resnet18}\ndata: {format: imagefolder}\n"
     "schedule: [{epochs: many, train: head, lr: 1e-3}]\n", "schedule.0.epochs: expected int"),
    ("name: !!python/name:os.system\n", "not valid YAML"),
    ("name: [unclosed\n", "not valid YAML"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
])
def test_bad_recipes_get_one_line(text, expect, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    code, err = call(capsys, "validate", str(path))
    assert code == 2 and expect in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_ten_megabyte_recipe_is_refused_without_parsing(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * (1 << 20))
    start = time.monotonic()
    code, err = call(capsys, "validate", str(path))
    assert code == 2 and "10.0 MiB" in err and time.monotonic() - start < 5


# ----------------------------------------------------------------------------- datasets


def test_image_folder_with_every_kind_of_broken_file(tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(root / cls / f"ok{i}.png")
    (root / "a" / "empty.png").write_bytes(b"")
    png_header(root / "a" / "bomb.png", 50_000, 50_000)
    (root / "a" / "folder.png").mkdir()  # a folder named like an image
    os.mkfifo(root / "b" / "fifo.png")  # opening it would block forever
    (root / "b" / "loop").symlink_to(root / "b")  # a folder that contains itself
    before = snapshot(root)
    samples = [(str(p), 0) for p in sorted(root.rglob("*.png"), key=str) if "loop" not in p.parts]
    report = ScanReport()
    kept = scan(samples, report)
    assert len(kept) == 4
    assert report.skipped == {"empty file": 1, "too large": 1, "not a regular file": 2}
    assert snapshot(root) == before

    from suite.core.data import class_folders

    found = class_folders(root, (".png",), "image", [], other_format="", example="a/1.png")
    assert sorted(len(v) for v in found.splits["train"].values()) == [3, 4]  # the loop is walked once


def test_detection_folder_with_a_link_loop_and_a_huge_label_file(tmp_path):
    from suite.detection.data import load_yolo

    root = tmp_path / "ds"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (i * 90, 40, 0)).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "images" / "train" / "again").symlink_to(root / "images" / "train")
    (root / "labels" / "train" / "0.txt").write_text("0 0.5 0.5 0.25 0.25\n" * 1_000_000)  # 10^6 rows
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [thing]\n")
    before = snapshot(root)
    start = time.monotonic()
    data = load_yolo(root / "data.yaml")
    assert time.monotonic() - start < 60
    assert len(data.train) == 2  # the folder linking to itself is walked once, not endlessly
    assert data.report.removed["duplicate rows"] >= 999_999
    assert snapshot(root) == before


def test_audio_with_nan_a_two_hour_header_and_a_fifo(tmp_path):
    from suite.speech.data import load_audiofolder

    root = tmp_path / "audio"
    for cls in ("yes", "no"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            t = np.arange(8000) / 16000
            sf.write(root / cls / f"{i}.wav", 0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t), 16000)
    nan = np.full(8000, np.nan, np.float32)
    sf.write(root / "yes" / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(root / "yes" / "two_hours.wav", np.full(7200, 0.1, np.float32), 1, subtype="FLOAT")  # 7200 s at 1 Hz
    os.mkfifo(root / "no" / "fifo.wav")
    before = snapshot(root)
    data = load_audiofolder(root, val_split=0.34, seed=0, max_seconds=30)
    assert data.report.skipped == {"NaN/inf samples": 1, "too long": 1, "not a regular file": 1}
    assert data.report.kept == 6
    assert snapshot(root) == before


# ----------------------------------------------------------------------------- CLI paths


def test_output_paths_that_cannot_hold_a_run(tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "shapes-pretrain.yaml"
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    code, err = call(capsys, "run", str(recipe), "--out", str(a_file))
    assert code == 2 and "file" in err and "Traceback" not in err
    code, err = call(capsys, "run", str(recipe), "--out", "/proc/suite-run", "-s", f"data.root={tmp_path / 'd'}",
                     "-s", "data.synthetic.train_per_class=1", "-s", "data.synthetic.val_per_class=1")
    assert code == 2 and "cannot create the run directory /proc/suite-run" in err and err.count("\n") == 1
    assert a_file.read_text() == "not a folder"
