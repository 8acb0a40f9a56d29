"""Vision data loading: messy real-world folders, CSVs, splits, imbalance helpers and transforms."""
from __future__ import annotations

import hashlib
import io
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from suite.core.data import ScanReport, load_rgb, split_indices
from suite.errors import UserError
from suite.vision.data import (
    ImageDataset,
    balanced_sampler,
    build_vision_data,
    class_weights,
    csv_samples,
    imagefolder_splits,
    scan,
    torchvision_data,
)
from suite.vision.transforms import AUGMENTS, Preprocess, build_transforms

PRE = Preprocess(size=32, resize=36)  # small, so the whole file runs in seconds
RNG = np.random.default_rng(0)


def noise(mode: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    rgb = Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def half_jpeg() -> bytes:
    full = encode(noise("RGB", (120, 90)), "JPEG")
    return full[: len(full) // 2]


def messy_images(folder: Path) -> dict[str, str]:
    """Good images of many modes plus broken files; returns {file name: expected outcome}."""
    p_trans = Image.new("P", (20, 20))
    p_trans.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p_trans.info["transparency"] = 0
    i16 = Image.fromarray((RNG.integers(0, 65536, (24, 17))).astype(np.uint16))
    f32 = Image.fromarray(RNG.random((9, 13), dtype=np.float32))
    good = {
        "rgb.jpg": encode(noise("RGB", (64, 48)), "JPEG"),
        "gray.png": encode(noise("L", (30, 70)), "PNG"),
        "gray_alpha.png": encode(noise("LA", (30, 30)), "PNG"),
        "cmyk.jpg": encode(noise("CMYK", (40, 40)), "JPEG"),
        "rgba.png": encode(noise("RGBA", (33, 21)), "PNG"),
        "palette_transparent.png": encode(p_trans, "PNG", transparency=0),
        "onebit.png": encode(noise("1", (50, 50)), "PNG"),
        "i16.png": encode(i16, "PNG"),
        "float.tif": encode(f32, "TIFF"),
        "tiny.png": encode(noise("RGB", (5, 3)), "PNG"),
        "anim.gif": encode(noise("P", (16, 16)), "GIF"),
        "photo.webp": encode(noise("RGB", (20, 20)), "WEBP"),
        "plain.bmp": encode(noise("RGB", (12, 12)), "BMP"),
    }
    bad = {
        "truncated.jpg": half_jpeg(),
        "truncated.png": encode(noise("RGB", (120, 90)), "PNG")[:600],
        "empty.jpg": b"",
        "notes.jpg": b"this is a text file that someone renamed to .jpg\n",
    }
    for name, content in {**good, **bad}.items():
        write(folder / name, content)
    return {**{n: "ok" for n in good}, "truncated.jpg": "truncated", "truncated.png": "truncated",
            "empty.jpg": "empty file", "notes.jpg": "not an image"}


# ----------------------------------------------------------------------------- scanning messy data


def test_scan_skips_broken_files_converts_modes_and_never_touches_data(tmp_path):
    folder = tmp_path / "imgs"
    expected = messy_images(folder)
    before = snapshot(folder)
    samples = [(str(folder / name), 0) for name in sorted(expected)] + [(str(folder / "gone.jpg"), 0)]

    report = ScanReport()
    kept = scan(samples, report)

    assert report.found == len(samples) == report.kept + report.n_skipped
    assert sorted(Path(p).name for p, _ in kept) == sorted(n for n, e in expected.items() if e == "ok")
    skipped = {reason: sorted(Path(p).name for p in paths) for reason, paths in report.skipped_files().items()}
    assert skipped == {
        "truncated": ["truncated.jpg", "truncated.png"],
        "empty file": ["empty.jpg"],
        "not an image": ["notes.jpg"],
        "missing file": ["gone.jpg"],
    }
    assert report.converted == {"L": 1, "LA": 1, "CMYK": 1, "RGBA": 1, "P": 2, "1": 1, "I;16": 1, "F": 1}
    line = report.summary()
    assert "\n" not in line and line.startswith(f"train 18 images, {len(kept)} kept, 5 skipped (")
    assert "2 truncated" in line and "converted 9 to RGB" in line and line.count(".jpg") + line.count(".png") <= 3

    _, eval_tf = build_transforms(PRE, "none")
    train_tf, _ = build_transforms(PRE, "standard")
    for tf in (eval_tf, train_tf):
        for x, y in ImageDataset(kept, tf):
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
            assert y.dtype == torch.long
    assert snapshot(folder) == before  # byte-identical, nothing added or removed


def test_pipeline_tail_is_bit_identical_to_v2s_four_transforms():
    """ToNormalized replaces ToImage, ToDtype(scale), Normalize, ToPureTensor by their kernels: same numbers."""
    from torchvision.transforms import v2

    pre = Preprocess(size=24, resize=28)
    reference = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(pre.mean), list(pre.std)), v2.ToPureTensor()])
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8))
    for augment in AUGMENTS:
        for tf in build_transforms(pre, augment):
            torch.manual_seed(1)
            ours = tf(image)
            torch.manual_seed(1)
            theirs = reference(v2.Compose(tf.transforms[:-1])(image))
            assert type(ours) is torch.Tensor and ours.dtype == torch.float32 and torch.equal(ours, theirs)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a uint8 tensor in: the same arithmetic
    assert torch.equal(build_transforms(pre, "none")[1].transforms[-1](tensor), reference(tensor))


def test_load_rgb_keeps_the_decoded_pixels_without_a_copy_and_closes_the_file(tmp_path):
    """No copy of the pixels: the image outlives its closed file, for an animated GIF (its file stays open
    after load()) and an uncompressed PPM (memory-mapped) too; the files are not changed."""
    import os

    from suite_runtime.preprocess import load_image

    frames = [Image.new("P", (8, 6), i) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (16, 8), (1, 2, 3)).save(tmp_path / "raw.ppm")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fds = len(os.listdir("/proc/self/fd"))
    for name in before:
        for load in (load_rgb, load_image):
            image = load(tmp_path / name)
            assert image.mode == "RGB" and image.resize((4, 4)).size == (4, 4)
    assert load_rgb(tmp_path / "raw.ppm").getpixel((0, 0)) == load_image(tmp_path / "raw.ppm").getpixel((0, 0)) \
        == (1, 2, 3)
    assert len(os.listdir("/proc/self/fd")) == fds  # every file closed
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_load_rgb_converts_alpha_on_white_and_applies_exif_orientation(tmp_path):
    clear = write(tmp_path / "clear.png", encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"))
    assert load_rgb(clear).getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white, not black/red

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated = write(tmp_path / "rotated.jpg", encode(noise("RGB", (40, 20)), "JPEG", exif=exif.tobytes()))
    img = load_rgb(rotated)
    assert img.mode == "RGB" and img.size == (20, 40)

    deep = write(tmp_path / "deep.png", encode(Image.fromarray(np.full((4, 4), 65535, np.uint16)), "PNG"))
    assert load_rgb(deep).getpixel((0, 0)) == (255, 255, 255)  # 16-bit white stays white (scaled, not clipped)


def test_a_second_scan_decodes_only_what_changed_and_reports_the_same(tmp_path, monkeypatch):
    """CheckCache: files unchanged since the last scan are not decoded again, changed ones are, failures are never
    recorded; the cache lives outside the data; SUITE_SCAN_CACHE=0 turns it off; a corrupt cache is ignored."""
    from suite.core import data as core_data

    monkeypatch.setenv("SUITE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "imgs"
    expected = messy_images(folder)
    before = snapshot(folder)
    samples = [(str(folder / name), 0) for name in sorted(expected)]
    bad = sorted(n for n, e in expected.items() if e != "ok")
    decoded = []
    real = core_data.open_image
    monkeypatch.setattr(core_data, "open_image", lambda path: decoded.append(Path(path).name) or real(path))

    def scanned():
        decoded.clear()
        report = ScanReport()
        return scan(samples, report), report.summary(), sorted(decoded)

    first = scanned()
    assert first[2] == sorted(expected)
    second = scanned()
    assert second[:2] == first[:2] and second[2] == bad  # the same result; only the failures decoded again
    assert snapshot(folder) == before and len(list((tmp_path / "cache" / "scan").iterdir())) == 1

    write(folder / "rgb.jpg", encode(noise("RGB", (30, 20)), "JPEG"))  # changed: decoded again
    write(folder / "gray.png", half_jpeg())  # now broken: skipped
    kept, line, third = scanned()
    assert third == sorted([*bad, "gray.png", "rgb.jpg"]) and "gray.png" not in {Path(p).name for p, _ in kept}
    assert len(kept) == len(first[0]) - 1
    assert line.startswith(f"train {len(samples)} images, {len(kept)} kept, 5 skipped")

    gone = folder / sorted(n for n, e in expected.items() if e == "ok" and n != "rgb.jpg")[0]
    gone.unlink()  # deleted: its entry is dropped at the next save, with a new file's entry added
    samples = [s for s in samples if s[0] != str(gone)]
    write(folder / "new.png", encode(noise("RGB", (8, 8)), "PNG"))
    samples.append((str(folder / "new.png"), 0))
    assert "new.png" in scanned()[2]
    entries = core_data.CheckCache([s for s, _ in samples]).entries
    # the deleted file's entry and the broken file's old one are gone: one entry per file that passed
    assert str(folder / "new.png") in entries and str(gone) not in entries and len(entries) == len(kept)

    names = sorted(Path(p).name for p, _ in samples)
    monkeypatch.setenv("SUITE_SCAN_CACHE", "0")
    assert scanned()[2] == names
    monkeypatch.delenv("SUITE_SCAN_CACHE")
    for f in (tmp_path / "cache" / "scan").iterdir():
        f.write_text("{not json")
    assert scanned()[2] == names

    (folder / "plain.bmp").write_bytes(b"")  # passed the scan, broken since: one line naming it
    with pytest.raises(UserError, match=r"could not read .*plain\.bmp \(empty file\) although it passed the scan"):
        ImageDataset([(str(folder / "plain.bmp"), 0)], build_transforms(PRE, "none")[1])[0]


def test_the_scan_cache_takes_any_folder_name_and_a_missing_home_only_costs_the_cache(tmp_path, monkeypatch):
    import os

    from suite.core.data import CheckCache

    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))  # not UTF-8
    image = write(folder / "a.png", encode(noise("RGB", (8, 8)), "PNG"))
    monkeypatch.setenv("SUITE_CACHE", str(tmp_path / "cache"))
    assert len(scan([(str(image), 0)], ScanReport())) == 1
    assert CheckCache([str(image)]).recall(image, 4)[1] == ["png", "RGB", 8, 8]  # recorded, read back

    monkeypatch.delenv("SUITE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

    def no_home(cls):
        raise RuntimeError("Could not determine home directory")

    monkeypatch.setattr(Path, "home", classmethod(no_home))
    assert len(scan([(str(image), 0)], ScanReport())) == 1


def test_scan_detects_truncation_even_if_another_library_enabled_lenient_loading(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    bad = write(tmp_path / "half.jpg", half_jpeg())
    report = ScanReport()
    assert scan([(str(bad), 0)], report) == []
    assert report.skipped_files() == {"truncated": [str(bad)]}
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


def test_report_totals_over_splits_and_summary_without_problems():
    m = ScanReport()
    m.skip("train", "x/a.jpg", "truncated")
    m.keep("train", mode="L")
    m.keep("train", mode="RGB")
    m.skip("val", "x/b.jpg", "truncated")
    m.keep("val", mode="L")
    m.keep("val", mode="CMYK")
    assert (m.found, m.kept, m.converted) == (6, 4, {"L": 2, "CMYK": 1})
    assert m.skipped_files() == {"truncated": ["x/a.jpg", "x/b.jpg"]}
    assert m.splits["train"].skipped == {"truncated": 1} and m.splits["val"].converted == {"L": 1, "CMYK": 1}
    clean = ScanReport()
    for _ in range(4):
        clean.keep("train")
    assert clean.summary() == "train 4 images, 4 kept"


# ----------------------------------------------------------------------------- imagefolder


def make_class_tree(root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 10)) -> None:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write(root / name / f"{i:03d}.png", encode(noise("RGB", size), "PNG"))


def test_flat_layout_split_is_seeded_deterministic_and_stratified(tmp_path):
    make_class_tree(tmp_path, {"ant": 20, "bee": 10, "cat": 2, "dog": 1})
    (tmp_path / "empty").mkdir()
    write(tmp_path / ".hidden" / "x.png", encode(noise("RGB", (4, 4)), "PNG"))
    write(tmp_path / "ant" / ".DS_Store", b"junk")
    write(tmp_path / "ant" / "readme.txt", b"text")

    report = ScanReport()
    splits, labels = imagefolder_splits(tmp_path, val_split=0.2, seed=7, report=report)
    assert labels == ["ant", "bee", "cat", "dog"]
    assert set(splits) == {"train", "val"}
    val_counts = Counter(labels[t] for _, t in splits["val"])
    assert val_counts == {"ant": 4, "bee": 2, "cat": 1}  # 20%, at least 1, none from the single-image class
    train_paths = {p for p, _ in splits["train"]}
    assert not train_paths & {p for p, _ in splits["val"]}
    assert len(train_paths) + len(splits["val"]) == 33
    assert not any(".hidden" in p or p.endswith((".txt", ".DS_Store")) for p in train_paths)
    assert any("empty class folder" in w and "empty" in w for w in report.notes)

    again, _ = imagefolder_splits(tmp_path, val_split=0.2, seed=7)
    other, _ = imagefolder_splits(tmp_path, val_split=0.2, seed=8)
    assert again == splits
    assert other["val"] != splits["val"]


def test_split_indices_rejects_bad_fraction():
    with pytest.raises(UserError, match="val_split"):
        split_indices([0, 0, 1, 1], val_split=1.5, seed=0)


def test_train_val_test_layout_and_unknown_val_class(tmp_path):
    make_class_tree(tmp_path / "train", {"a": 3, "b": 2})
    make_class_tree(tmp_path / "val", {"a": 1, "b": 1})
    make_class_tree(tmp_path / "test", {"b": 2})
    splits, labels = imagefolder_splits(tmp_path, val_split=0.5, seed=0)
    assert labels == ["a", "b"]
    assert [len(splits[s]) for s in ("train", "val", "test")] == [5, 2, 2]
    assert {t for _, t in splits["test"]} == {1}

    make_class_tree(tmp_path / "val", {"zebra": 1})
    with pytest.raises(UserError, match=r"zebra.*(rename|add)"):
        imagefolder_splits(tmp_path, val_split=0.5, seed=0)


def test_build_imagefolder_end_to_end_with_broken_files(tmp_path):
    make_class_tree(tmp_path / "train", {"a": 4, "b": 4})
    make_class_tree(tmp_path / "val", {"a": 1, "b": 1})
    messy_images(tmp_path / "train" / "a")
    before = snapshot(tmp_path)
    train_tf, eval_tf = build_transforms(PRE, "light")

    vd = build_vision_data("imagefolder", tmp_path, "image-classification", 0.2, 0, train_tf, eval_tf)

    assert vd.labels == ["a", "b"] and vd.test is None
    assert len(vd.train) == 4 + 13 + 4 and len(vd.val) == 2
    assert vd.report.n_skipped == 4 and vd.report.kept == len(vd.train) + len(vd.val)
    assert Counter(vd.train_targets) == {0: 17, 1: 4}
    x, y = vd.train[0]
    assert x.shape == (3, 32, 32) and y.dtype == torch.long
    assert snapshot(tmp_path) == before


def test_split_that_is_empty_after_scanning_names_the_split(tmp_path):
    make_class_tree(tmp_path / "train", {"a": 2, "b": 2})
    write(tmp_path / "val" / "a" / "broken.jpg", b"")
    tf, _ = build_transforms(PRE, "none")
    with pytest.raises(UserError, match=r"val split .*no usable images.*1 skipped"):
        build_vision_data("imagefolder", tmp_path, "image-classification", 0.2, 0, tf, tf)


def test_missing_root_and_unknown_format_are_user_errors(tmp_path):
    tf, _ = build_transforms(PRE, "none")
    with pytest.raises(UserError, match=r"does not exist; set data.root=.*-s data.root=PATH"):
        build_vision_data("imagefolder", tmp_path / "nope", "image-classification", 0.2, 0, tf, tf)
    with pytest.raises(UserError, match=r"unknown data format 'imagefoldr'.*imagefolder.*csv.*torchvision:NAME"):
        build_vision_data("imagefoldr", tmp_path, "image-classification", 0.2, 0, tf, tf)
    with pytest.raises(UserError, match="format: csv"):
        build_vision_data("imagefolder", tmp_path, "image-regression", 0.2, 0, tf, tf)


# ----------------------------------------------------------------------------- csv


def test_csv_classification_with_names_and_relative_paths(tmp_path):
    make_class_tree(tmp_path / "imgs", {"x": 3})
    rows = ["path,label", "imgs/x/000.png,dog", "imgs/x/001.png,cat", "imgs/x/002.png,dog", "imgs/x/000.png,"]
    write(tmp_path / "train.csv", "\n".join(rows).encode())
    report = ScanReport()
    samples, labels = csv_samples(tmp_path / "train.csv", "image-classification", report=report)
    assert labels == ["cat", "dog"]
    assert samples == [(str(tmp_path / "imgs/x/000.png"), 1), (str(tmp_path / "imgs/x/001.png"), 0),
                       (str(tmp_path / "imgs/x/002.png"), 1)]
    assert report.skipped_files() == {"bad label": [f"{tmp_path / 'train.csv'}:5"]}

    other_root, _ = csv_samples(tmp_path / "train.csv", "image-classification", root=Path("/data"))
    assert other_root[0][0] == "/data/imgs/x/000.png"


def test_csv_integer_labels_sort_numerically(tmp_path):
    write(tmp_path / "t.csv", b"path,label\na.png,10\nb.png,2\nc.png,0\n")
    samples, labels = csv_samples(tmp_path / "t.csv", "image-classification")
    assert labels == ["0", "2", "10"] and [t for _, t in samples] == [2, 1, 0]


def test_csv_regression_skips_bad_value_rows_end_to_end(tmp_path):
    make_class_tree(tmp_path / "imgs", {"x": 4})
    rows = ["path,value", "imgs/x/000.png,1.5", "imgs/x/001.png,oops", "imgs/x/002.png,-2", "imgs/x/003.png,3e1",
            "imgs/x/000.png,nan"]
    write(tmp_path / "data.csv", "\n".join(rows).encode())
    tf, _ = build_transforms(PRE, "none")

    vd = build_vision_data("csv", tmp_path / "data.csv", "image-regression", 0.34, 0, tf, tf)

    assert vd.labels == ["value"] and vd.train_targets == []
    assert sorted(vd.report.skipped_files()["bad label"]) == [f"{tmp_path / 'data.csv'}:3", f"{tmp_path / 'data.csv'}:6"]
    values = sorted(t for _, t in vd.train.samples + vd.val.samples)
    assert values == [-2.0, 1.5, 30.0] and len(vd.val) == 1
    x, y = vd.train[0]
    assert y.dtype == torch.float32 and x.shape == (3, 32, 32)


def test_csv_folder_with_val_csv_and_header_errors(tmp_path):
    make_class_tree(tmp_path / "imgs", {"x": 3})
    write(tmp_path / "train.csv", b"path,label\nimgs/x/000.png,a\nimgs/x/001.png,b\n")
    write(tmp_path / "val.csv", b"path,label\nimgs/x/002.png,b\n")
    tf, _ = build_transforms(PRE, "none")
    vd = build_vision_data("csv", tmp_path, "image-classification", 0.2, 0, tf, tf)
    assert vd.labels == ["a", "b"] and len(vd.train) == 2 and vd.val.samples[0][1] == 1

    write(tmp_path / "val.csv", b"path,label\nimgs/x/002.png,c\n")
    with pytest.raises(UserError, match=r"val.csv: label 'c' is not a training class"):
        build_vision_data("csv", tmp_path, "image-classification", 0.2, 0, tf, tf)

    write(tmp_path / "bad.csv", b"file,label\nimgs/x/000.png,a\n")
    with pytest.raises(UserError, match=r"bad.csv: missing column\(s\) path.*'path,label'"):
        csv_samples(tmp_path / "bad.csv", "image-classification")
    with pytest.raises(UserError, match=r"'path,value'"):
        csv_samples(tmp_path / "train.csv", "image-regression")


# ----------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("error", [urllib.error.URLError("no network"), RuntimeError("Error downloading x.tar.gz")])
def test_torchvision_offline_is_a_user_error(tmp_path, monkeypatch, error):
    def offline(*args, **kwargs):
        raise error

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    tf, _ = build_transforms(PRE, "none")
    with pytest.raises(UserError, match=r"could not download torchvision dataset CIFAR10 into .*\(offline\?\).*imagefolder"):
        build_vision_data("torchvision:CIFAR10", tmp_path, "image-classification", 0.1, 0, tf, tf)


def test_torchvision_wrapper_splits_train_and_converts_grayscale(tmp_path, monkeypatch):
    class FakeMNIST(torch.utils.data.Dataset):  # same constructor and attributes as torchvision's MNIST
        classes = ["zero", "one"]

        def __init__(self, root, train=True, download=False):
            assert download and Path(root) == tmp_path
            self.targets = torch.tensor([0, 1] * (10 if train else 3))

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return Image.new("L", (28, 28), 255), int(self.targets[i])

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    train_tf, eval_tf = build_transforms(PRE, "standard")
    vd = torchvision_data("MNIST", tmp_path, train_tf, eval_tf, val_split=0.2, seed=0)
    assert vd.labels == ["zero", "one"]
    assert (len(vd.train), len(vd.val), len(vd.test)) == (16, 4, 6)
    assert Counter(vd.train_targets) == {0: 8, 1: 8}
    x, y = vd.val[0]
    assert x.shape == (3, 32, 32) and y.dtype == torch.long
    with pytest.raises(UserError, match="did you mean torchvision:MNIST"):
        torchvision_data("MINST", tmp_path, train_tf, eval_tf, 0.2, 0)


# ----------------------------------------------------------------------------- imbalance


def test_class_weights_inverse_frequency_mean_one_and_zero_for_absent():
    w = class_weights([0, 0, 0, 1], num_classes=3)
    assert w.dtype == torch.float32
    assert torch.allclose(w, torch.tensor([0.5, 1.5, 0.0]))
    assert torch.allclose(class_weights([0, 1, 2], 3), torch.ones(3))


def test_balanced_sampler_evens_out_an_imbalanced_set():
    targets = [0] * 900 + [1] * 90 + [2] * 10
    sampler = balanced_sampler(targets, 3, generator=torch.Generator().manual_seed(0))
    drawn = Counter(targets[i] for _ in range(5) for i in sampler)
    assert len(sampler) == 1000
    freqs = [drawn[c] / 5000 for c in range(3)]
    assert all(abs(f - 1 / 3) < 0.04 for f in freqs), freqs


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("augment", AUGMENTS)
@pytest.mark.parametrize("size", [(5, 3), (300, 200), (2, 2000)])
def test_transforms_shapes_and_dtypes(augment, size):
    train_tf, eval_tf = build_transforms(PRE, augment)
    for tf in (train_tf, eval_tf):
        x = tf(noise("RGB", size))
        assert type(x) is torch.Tensor and x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_eval_transform_normalises_a_constant_image_with_mean_and_std():
    pre = Preprocess(size=16, resize=20, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    _, eval_tf = build_transforms(pre, "standard")
    x = eval_tf(Image.new("RGB", (40, 30), (255, 0, 51)))  # 1.0, 0.0, 0.2
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, (0.2 - 0.0) / 1.0])
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-5)
    assert torch.allclose(x.std(dim=(1, 2)), torch.zeros(3), atol=1e-5)


def test_bad_augment_and_preprocess_values_are_user_errors():
    with pytest.raises(UserError, match=r"unknown augment 'standrd' \(did you mean 'standard'\?\)"):
        build_transforms(PRE, "standrd")
    with pytest.raises(UserError, match="preprocess.resize"):
        Preprocess(size=224, resize=200)
    with pytest.raises(UserError, match="interpolation"):
        Preprocess(interpolation="cubic-ish")
    assert Preprocess(mean=[0.5, 0.5, 0.5]) == Preprocess(mean=(0.5, 0.5, 0.5))  # JSON lists round-trip
