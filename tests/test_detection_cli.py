"""`suite data make shapes-detection` and `suite data convert` (Penn-Fudan masks, YOLO <-> COCO)."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from suite.cli import main
from suite.detection.data import load_coco, load_yolo


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_make_and_convert_round_trip(tmp_path, capsys):
    main(["data", "make", "shapes-detection", "--out", str(tmp_path / "y"), "--train", "6", "--val", "3",
          "--size", "64", "--classes", "circle,star"])
    before = _hashes(tmp_path / "y")
    main(["data", "convert", "yolo", str(tmp_path / "y" / "data.yaml"), "coco", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert "train 6 images, 6 kept" in out
    a, b = load_yolo(tmp_path / "y" / "data.yaml"), load_coco(tmp_path / "c")
    assert a.labels == b.labels == ["circle", "star"] and len(b.train) == 6 and len(b.val) == 3
    for s, t in zip(sorted(a.train, key=lambda s: s.image.name), sorted(b.train, key=lambda s: s.image.name)):
        np.testing.assert_allclose(s.boxes, t.boxes, atol=1e-3)
        np.testing.assert_array_equal(s.labels, t.labels)
    assert _hashes(tmp_path / "y") == before  # the source is never modified


def test_pennfudan_masks_become_boxes(tmp_path, capsys):
    root = tmp_path / "PennFudanPed"
    (root / "PNGImages").mkdir(parents=True)
    (root / "PedMasks").mkdir()
    for i in range(5):
        Image.fromarray(np.full((40, 60, 3), 30 * i, np.uint8)).save(root / "PNGImages" / f"P{i}.png")
        mask = np.zeros((40, 60), np.uint8)
        mask[5:20, 10:25] = 1
        mask[22:38, 30:58] = 2
        Image.fromarray(mask).save(root / "PedMasks" / f"P{i}_mask.png")
    main(["data", "convert", "pennfudan", str(root), "coco", str(tmp_path / "coco")])
    data = load_coco(tmp_path / "coco", val_split=0.2)
    assert data.labels == ["person"] and len(data.train) + len(data.val) == 5
    boxes = sorted(map(tuple, data.train[0].boxes.tolist()))
    assert boxes == [(10.0, 5.0, 25.0, 20.0), (30.0, 22.0, 58.0, 38.0)]


def test_convert_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "convert", "pennfudan", str(tmp_path), "coco", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "PNGImages/ and PedMasks/ expected" in capsys.readouterr().err


def test_ls_groups_for_detection_models(capsys):
    main(["ls", "groups", "yolo11n", "--classes", "3"])
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert names[0] == "backbone.0" and "neck.22" in names and names[-2:] == ["head", "total"]
    main(["ls", "groups", "fasterrcnn_mobilenet_v3_large_320_fpn", "--classes", "2"])
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert names == ["backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4",
                     "fpn", "rpn", "roi_heads", "head", "total"]
