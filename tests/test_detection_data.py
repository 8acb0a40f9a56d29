"""Detection data: the YOLO and COCO loaders' scan, conversion both ways, and the synthetic shapes set."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from suite.datasets.shapes_det import make_shapes_detection, render_scene, scene_rng
from suite.detection.data import MARKER, load_coco, load_detection, load_yolo, write_coco, write_yolo
from suite.errors import UserError

CLASSES = ["circle", "square", "triangle"]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every entry under root ('dir' for folders): any new, changed or removed
    file shows."""
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def png(path: Path, size=(40, 30), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def mask_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask > 0.5)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# ----------------------------------------------------------------------------- synthetic shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "s"
    return make_shapes_detection(root, CLASSES, 6, 3, test_images=2, size=64, max_objects=3, seed=1)


def test_shapes_load_with_boxes_that_match_the_masks(shapes):
    data = load_yolo(shapes.parent)  # the folder holding data.yaml
    assert data.labels == CLASSES and data.source == shapes
    assert (len(data.train), len(data.val), len(data.test)) == (6, 3, 2)
    assert data.report.summary() == "train 6 images, 6 kept; val 3 images, 3 kept; test 2 images, 2 kept"
    for split, samples in (("train", data.train), ("val", data.val), ("test", data.test)):
        for i, sample in enumerate(samples):
            scene = render_scene(CLASSES, 64, 3, scene_rng(1, split, i))
            assert sample.image.name == f"{i:05d}.png" and (sample.width, sample.height) == (64, 64)
            assert 1 <= len(sample.boxes) <= 3
            assert sample.boxes.dtype == np.float32 and sample.labels.dtype == np.int64
            np.testing.assert_allclose(sample.boxes, [mask_box(m) for m in scene.masks], atol=1e-3)
            assert sample.labels.tolist() == scene.labels.tolist()
            assert np.array_equal(np.asarray(Image.open(sample.image)), np.asarray(scene.image))


def test_boxes_are_tight_and_every_shape_stays_visible():
    for i in range(12):
        scene = render_scene(CLASSES, 96, 4, scene_rng(5, "train", i))
        assert 1 <= len(scene.boxes) <= 4 and len(scene.boxes) == len(scene.labels) == len(scene.masks)
        for box, mask in zip(scene.boxes, scene.masks):
            x0, y0, x1, y1 = box.astype(int)
            assert np.array_equal(box, [x0, y0, x1, y1])
            drawn = mask > 0.5
            # the shape touches all four edges of its box, and nothing of it lies outside
            assert drawn[y0:y1, x0].any() and drawn[y0:y1, x1 - 1].any()
            assert drawn[y0, x0:x1].any() and drawn[y1 - 1, x0:x1].any()
            assert drawn[y0:y1, x0:x1].sum() == drawn.sum() > 0
            assert max(x1 - x0, y1 - y0) <= 0.45 * 96 + 1  # at most 45% of the side
            assert 2 <= x0 and 2 <= y0 and x1 <= 94 and y1 <= 94  # inside the frame


def test_shapes_are_deterministic_and_reused(tmp_path):
    a = make_shapes_detection(tmp_path / "a", CLASSES, 4, 2, size=48, seed=3)
    b = make_shapes_detection(tmp_path / "b", CLASSES, 4, 2, size=48, seed=3)
    c = make_shapes_detection(tmp_path / "c", CLASSES, 4, 2, size=48, seed=4)
    files_a, files_b = snapshot(a.parent), snapshot(b.parent)
    assert files_a.pop("data.yaml") != files_b.pop("data.yaml")  # only the absolute path: differs
    assert files_a == files_b
    assert sorted(files_a) == sorted(
        ["images", "images/train", "images/val", "labels", "labels/train", "labels/val", "shapes.json"]
        + [f"{kind}/{split}/{i:05d}.{ext}" for kind, ext in (("images", "png"), ("labels", "txt"))
           for split, n in (("train", 4), ("val", 2)) for i in range(n)])
    spec = yaml.safe_load(a.read_text())
    assert spec == {"path": str(a.parent.resolve()), "train": "images/train", "val": "images/val",
                    "nc": 3, "names": CLASSES}
    assert snapshot(c.parent)["images/train/00000.png"] != files_a["images/train/00000.png"]
    stamps = {p: p.stat().st_mtime_ns for p in a.parent.rglob("*")}
    assert make_shapes_detection(tmp_path / "a", CLASSES, 4, 2, size=48, seed=3) == a
    assert {p: p.stat().st_mtime_ns for p in a.parent.rglob("*")} == stamps  # reused, nothing rewritten
    with pytest.raises(UserError, match="different parameters"):
        make_shapes_detection(tmp_path / "a", CLASSES, 5, 2, size=48, seed=3)
    with pytest.raises(UserError, match="unknown shape class"):
        make_shapes_detection(tmp_path / "d", ["circel"], 1, 1)


# ----------------------------------------------------------------------------- the scan of a YOLO folder

ROW = "0 0.5 0.5 0.5 0.5\n"  # on 40x30: [10, 7.5, 30, 22.5]
DEFECTS = {  # image name -> label text (None: no label file)
    "good": ROW,
    "nolabel": None,
    "corrupt": ROW,
    "truncated": ROW,
    "outside": "1 0.9 0.5 0.4 0.2\n",  # reaches x = 1.1
    "badclass": "2 0.5 0.5 0.2 0.2\n",  # nc is 2
    "malformed": "0 0.5 0.5 0.2\n",
    "dup": ROW + ROW + "1 0.25 0.25 0.2 0.2\n",
    "degenerate": "0 0.5 0.5 0.01 0.5\n" + ROW,  # 0.4 px wide
    "empty": "",
    "clipped": "0 0.5 0.5 1.008 0.5\n",  # overhangs by 0.16 px: within tolerance, clipped
    "sub1/same": ROW,
    "sub2/same": "1 0.5 0.5 0.25 0.25\n",
}


@pytest.fixture
def user_data(tmp_path) -> Path:
    """A user's YOLO dataset with one of each defect; returns its folder."""
    root = tmp_path / "user"
    write(root / "data.yaml", "names: [cat, dog]\ntrain: images/train\nval: images/val\n")
    for i, (name, label) in enumerate(DEFECTS.items()):
        image = png(root / "images" / "train" / f"{name}.png", seed=i)
        if label is not None:
            write(root / "labels" / "train" / f"{name}.txt", label)
    (root / "images/train/corrupt.png").write_bytes(b"this is not an image")
    truncated = root / "images/train/truncated.png"
    truncated.write_bytes(truncated.read_bytes()[:1500])
    png(root / "images/val/v.png", seed=99)
    write(root / "labels/val/v.txt", "1 0.5 0.5 0.5 0.5\n")
    return root


def test_scan_skips_and_fixes_exactly_the_defects(user_data):
    data = load_yolo(user_data / "data.yaml")
    assert data.labels == ["cat", "dog"]
    kept = {s.image.relative_to(user_data / "images/train").with_suffix("").as_posix(): s for s in data.train}
    assert sorted(kept) == ["clipped", "degenerate", "dup", "empty", "good", "sub1/same", "sub2/same"]
    report = data.report
    assert report.summary() == (
        "train 13 images, 7 kept, 6 skipped (2 corrupt image, 1 class id >= nc, 1 malformed row, "
        "1 missing label file, 1 out-of-range coordinates), 1 degenerate boxes removed, "
        "1 duplicate rows removed, 1 background; val 1 image, 1 kept")
    assert [(Path(path).name, reason) for path, reason in report.example_pairs] == [
        ("badclass.png", "class id >= nc"), ("corrupt.png", "corrupt image"), ("malformed.png", "malformed row"),
        ("nolabel.png", "missing label file"), ("outside.png", "out-of-range coordinates")]
    assert report.examples()[0] == f"class id >= nc: {user_data / 'images/train/badclass.png'}"
    assert (report.found, report.kept, report.background) == (14, 8, 1)
    assert report.skipped["corrupt image"] == 2 and report.removed["duplicate rows"] == 1
    np.testing.assert_allclose(kept["good"].boxes, [[10, 7.5, 30, 22.5]])
    np.testing.assert_allclose(kept["dup"].boxes, [[10, 7.5, 30, 22.5], [6, 4.5, 14, 10.5]])
    assert kept["dup"].labels.tolist() == [0, 1]
    np.testing.assert_allclose(kept["degenerate"].boxes, [[10, 7.5, 30, 22.5]])
    assert kept["empty"].boxes.shape == (0, 4) and kept["empty"].labels.shape == (0,)
    np.testing.assert_allclose(kept["clipped"].boxes, [[0, 7.5, 40, 22.5]])
    assert (kept["good"].width, kept["good"].height) == (40, 30)
    np.testing.assert_allclose(data.val[0].boxes, [[10, 7.5, 30, 22.5]])


def test_ultralytics_reads_the_staged_copy_and_the_user_folder_is_untouched(user_data, tmp_path, monkeypatch):
    from ultralytics.data import utils as ultralytics_utils
    from ultralytics.data.dataset import YOLODataset

    from ultralytics.utils import checks

    monkeypatch.setattr(ultralytics_utils, "check_font", lambda *args, **kwargs: None)  # it would download
    installs = []
    monkeypatch.setattr(checks, "check_requirements", lambda *args, **kwargs: installs.append(args))
    before = snapshot(user_data)
    data = load_yolo(user_data)
    assert installs == []  # Ultralytics' Image.open patch pip-installs pi-heif when a file is not an image
    stage = tmp_path / "stage"
    data_yaml = write_yolo(data, stage)
    assert data_yaml == stage / "data.yaml" and (stage / MARKER).is_file()
    assert sorted(p.name for p in (stage / "images/train").iterdir()) == [
        "clipped.png", "degenerate.png", "dup.png", "empty.png", "good.png", "same.png", "same_1.png"]
    assert all(p.is_symlink() for p in (stage / "images/train").iterdir())
    outside = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("stage")}

    info = ultralytics_utils.check_det_dataset(str(data_yaml))
    assert info["names"] == {0: "cat", 1: "dog"} and info["train"] == str(stage / "images/train")
    dataset = YOLODataset(img_path=info["train"], data=info, task="detect", imgsz=64, augment=False)
    by_source = {os.path.realpath(s.image): s for s in data.train}
    assert len(dataset.labels) == len(data.train) == 7
    for label in dataset.labels:
        sample = by_source[os.path.realpath(label["im_file"])]
        assert label["shape"] == (sample.height, sample.width)
        assert label["cls"].ravel().tolist() == sample.labels.tolist()
        cx, cy, w, h = (label["bboxes"] * ([sample.width, sample.height] * 2)).T
        np.testing.assert_allclose(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).reshape(-1, 4),
                                   sample.boxes, atol=1e-3)
    assert (stage / "labels/train.cache").is_file()  # Ultralytics' cache went to the staged copy...
    assert snapshot(user_data) == before  # ...and nothing in the user's folder changed
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("stage")} == outside


def test_write_yolo_replaces_its_own_folder_and_refuses_others(user_data, tmp_path):
    data = load_yolo(user_data)
    stage = tmp_path / "stage"
    write_yolo(data, stage)
    write(stage / "stray.txt", "left over")
    first = snapshot(stage)
    write_yolo(data, stage)  # idempotent: replaced cleanly
    assert "stray.txt" not in snapshot(stage) and snapshot(stage) == {k: v for k, v in first.items()
                                                                     if k != "stray.txt"}
    restaged = load_yolo(stage)  # a staged copy staged into itself: its links still point at the originals
    write_yolo(restaged, stage)
    assert [len(s.boxes) for s in load_yolo(stage).train] == [len(s.boxes) for s in data.train]
    copies = write_yolo(data, tmp_path / "copies", link=False).parent
    assert not any(p.is_symlink() for p in copies.rglob("*"))
    with pytest.raises(UserError, match="inside the output folder"):
        write_yolo(load_yolo(copies), copies)  # would delete its own inputs
    with pytest.raises(UserError, match="inside the output folder"):
        write_yolo(data, user_data)
    with pytest.raises(UserError, match="a folder of the dataset's images"):
        write_yolo(data, user_data / "images/train/staged")
    assert not (user_data / "images/train/staged").exists()
    theirs = write(tmp_path / "theirs" / "notes.txt", "keep me")
    with pytest.raises(UserError, match="not written by this suite"):
        write_yolo(data, theirs.parent)
    assert theirs.read_text() == "keep me"


# ----------------------------------------------------------------------------- conversion and COCO


def test_yolo_coco_yolo_round_trip(shapes, tmp_path):
    data = load_yolo(shapes)
    coco = write_coco(data, tmp_path / "coco")
    spec = json.loads((coco / "annotations/instances_train.json").read_text())
    assert spec["categories"] == [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    assert {a["iscrowd"] for a in spec["annotations"]} == {0}
    assert all(a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3]) for a in spec["annotations"])
    from_coco = load_coco(coco)
    back = load_yolo(write_yolo(from_coco, tmp_path / "yolo"))
    for result in (from_coco, back):
        assert result.labels == CLASSES
        for before, after in ((data.train, result.train), (data.val, result.val), (data.test, result.test)):
            assert [s.image.name for s in after] == [s.image.name for s in before]
            for a, b in zip(before, after):
                np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
                assert b.labels.tolist() == a.labels.tolist() and (b.width, b.height) == (a.width, a.height)


def test_staging_moves_a_complete_folder_into_place_and_the_first_one_wins(shapes, tmp_path):
    """The YOLO copy a run trains on is written to a fresh temporary sibling and renamed into place: a process that
    finds the folder already staged by another drops its own copy and leaves that one alone; temporary folders
    left by killed processes go after a day (a recent one may be another process's copy in progress); a folder
    without data.yaml is not guessed at."""
    import time

    from suite.detection.task import stage_yolo

    data = load_yolo(shapes)
    out = tmp_path / "staged" / "abc"
    out.parent.mkdir()
    old, recent = out.parent / "abc.dead.tmp", out.parent / "abc.busy.tmp"
    for folder in (old, recent):
        folder.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    stage_yolo(data, out)
    spec = yaml.safe_load((out / "data.yaml").read_text())
    assert spec["path"] == os.path.realpath(out) and (out / spec["train"]).is_dir()
    assert len(list((out / "labels/train").iterdir())) == len(data.train)
    assert sorted(p.name for p in out.parent.iterdir()) == ["abc", "abc.busy.tmp"]
    (out / "in-use").write_text("another process reads this folder")
    stage_yolo(data, out)
    assert (out / "in-use").is_file() and sorted(p.name for p in out.parent.iterdir()) == ["abc", "abc.busy.tmp"]
    (out / "data.yaml").unlink()
    with pytest.raises(UserError, match=r"abc: the folder is there without data.yaml; delete it and run again"):
        stage_yolo(data, out)


def test_coco_scan_maps_categories_and_skips_bad_images(tmp_path):
    root = tmp_path / "coco"
    for name in "acdef":
        png(root / "train2017" / f"{name}.png")
    png(root / "val2017" / "v.png")
    images = [{"id": i, "file_name": f"{n}.png", "width": 40, "height": 30} for i, n in enumerate("abcdef", 1)]
    box = {"category_id": 3, "bbox": [5, 5, 10, 10]}
    annotations = [
        {"image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 8]},
        {"image_id": 1, "category_id": 3, "bbox": [-0.5, 0, 10, 10]},  # within 1 px: clipped
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
        {"image_id": 2, **box},  # b.png does not exist
        {"image_id": 3, "category_id": 3, "bbox": [35, 0, 10, 10]},  # reaches x = 45 on a 40 px image
        {"image_id": 5, "category_id": 3, "bbox": [5, 5, 0.5, 10]}, {"image_id": 5, **box}, {"image_id": 5, **box},
        {"image_id": 6, "category_id": 99, "bbox": [1, 1, 5, 5]},
        {"image_id": 1234, **box},
    ]
    categories = [{"id": 7, "name": "zebra"}, {"id": 3, "name": "ant"}]
    write(root / "annotations/instances_train2017.json",
          json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    write(root / "annotations/instances_val2017.json", json.dumps({
        "images": [{"id": 1, "file_name": "v.png"}], "categories": categories,
        "annotations": [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 40, 30]}]}))
    write(root / "annotations/captions_train2017.json", "{}")  # COCO ships these alongside: ignored
    data = load_detection("coco", root, val_split=0.2, seed=0)
    assert data.labels == ["ant", "zebra"] and data.source == root
    assert [s.image for s in data.train] == [root / "train2017" / f"{n}.png" for n in "ade"]
    a, d, e = data.train
    np.testing.assert_allclose(a.boxes, [[1, 2, 11, 10], [0, 0, 9.5, 10]])
    assert a.labels.tolist() == [1, 0]
    assert d.boxes.shape == (0, 4)
    np.testing.assert_allclose(e.boxes, [[5, 5, 15, 15]])
    np.testing.assert_allclose(data.val[0].boxes, [[0, 0, 40, 30]])
    assert data.test is None
    assert data.report.summary() == (
        "train 6 images, 3 kept, 3 skipped (1 missing image, 1 out-of-range coordinates, 1 unknown category id), "
        "1 annotations of unlisted images removed, 1 crowd annotations removed, 1 degenerate boxes removed, "
        "1 duplicate rows removed, 1 background; val 1 image, 1 kept")


# ----------------------------------------------------------------------------- data.yaml variants and errors


def test_yaml_variants_and_held_out_val(tmp_path):
    ds = tmp_path / "ds"
    for i in range(10):
        png(ds / "images" / ("a" if i < 5 else "b") / f"{i}.png", seed=i)
        write(ds / "labels" / ("a" if i < 5 else "b") / f"{i}.txt", f"{i % 2} 0.5 0.5 0.5 0.5\n")
    write(ds / "val.txt", "./images/a/0.png\n./images/b/9.png\n")
    config = write(tmp_path / "cfg" / "data.yaml",
                   "path: ../ds\ntrain: [images/a, images/b]\nval: val.txt\nnc: 2\nnames: {0: odd, 1: even}\n")
    data = load_yolo(config)
    assert data.labels == ["odd", "even"] and len(data.train) == 10
    assert [s.image.name for s in data.val] == ["0.png", "9.png"] and data.test is None

    write(config, "path: ../ds\ntrain: images/a\nnames: [odd, even]\n")  # no val: 20% of train held out
    first, again, other = (load_yolo(config, seed=s) for s in (0, 0, 1))
    assert (len(first.train), len(first.val)) == (4, 1)
    assert [s.image for s in first.val] == [s.image for s in again.val]
    assert {s.image for s in first.train + first.val} == {s.image for s in other.train + other.val}
    assert "val 1 of train's kept images held out (val_split 0.2, seed 0)" in first.report.summary()

    write(config, "path: ../ds\ntrain: images/a\nnc: 3\nnames: [odd, even]\n")
    with pytest.raises(UserError, match="nc: 3 but names: has 2"):
        load_yolo(config)
    write(config, "path: ../ds\ntrain: images/missing\nnames: [odd, even]\n")
    with pytest.raises(UserError, match="images/missing not found"):
        load_yolo(config)
    write(config, "train: [unclosed\n")
    with pytest.raises(UserError, match="cannot read"):
        load_yolo(config)


def test_exif_rotation_gives_the_upright_size(tmp_path):
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees: a stored 40x30 image is 30x40 upright
    (tmp_path / "images/train").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(tmp_path / "images/train/r.jpg", exif=exif)
    write(tmp_path / "labels/train/r.txt", ROW)
    write(tmp_path / "data.yaml", "train: images/train\nval: images/train\nnames: [cat]\n")
    sample = load_yolo(tmp_path).train[0]
    assert (sample.width, sample.height) == (30, 40)
    np.testing.assert_allclose(sample.boxes, [[7.5, 10, 22.5, 30]])


def test_load_detection_errors_say_what_to_do(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'nope'} does not exist: point data.root"):
        load_detection("yolo", tmp_path / "nope", 0.2, 0)
    with pytest.raises(UserError, match="unknown detection data.format 'voc'; valid: yolo, coco"):
        load_detection("voc", tmp_path, 0.2, 0)
    with pytest.raises(UserError, match="no train annotations"):
        load_detection("coco", tmp_path, 0.2, 0)
    with pytest.raises(UserError, match="val_split must be between 0 and 1"):
        load_detection("yolo", tmp_path, 1.5, 0)
