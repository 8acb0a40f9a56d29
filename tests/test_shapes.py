"""The offline shapes dataset: layout, reproducibility, idempotence, refusals, and that class = outline."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
from PIL import Image

import suite.datasets.shapes as shapes
from suite.datasets.shapes import SHAPES, make_shapes, render_image
from suite.errors import UserError


def files(root):
    """Relative path -> bytes of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_there_are_enough_distinct_class_names():
    assert len(SHAPES) >= 12
    assert len(set(SHAPES)) == len(SHAPES)


def test_layout_and_counts(tmp_path):
    out = make_shapes(tmp_path / "d", ["circle", "star"], 3, 2, test_per_class=1, progress=True)
    assert out == tmp_path / "d"
    assert sorted(p.name for p in out.iterdir()) == ["shapes.json", "test", "train", "val"]
    for split, n in {"train": 3, "val": 2, "test": 1}.items():
        assert sorted(p.name for p in (out / split).iterdir()) == ["circle", "star"]
        for name in ("circle", "star"):
            assert sorted(p.name for p in (out / split / name).iterdir()) == [f"{i}.png" for i in range(n)]
    params = json.loads((out / "shapes.json").read_text())
    assert params["classes"] == ["circle", "star"]
    assert (params["train_per_class"], params["val_per_class"], params["test_per_class"]) == (3, 2, 1)
    assert (params["size"], params["seed"]) == (64, 0)


def test_no_test_split_unless_asked(tmp_path):
    out = make_shapes(tmp_path / "d", ["ring"], 1, 1)
    assert sorted(p.name for p in out.iterdir()) == ["shapes.json", "train", "val"]


def test_images_are_rgb_pngs_of_the_requested_size(tmp_path):
    out = make_shapes(tmp_path / "d", ["heart", "arrow"], 2, 1, test_per_class=1, size=48)
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 8
    for path in pngs:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (48, 48))


def test_same_parameters_give_byte_identical_files(tmp_path):
    a = files(make_shapes(tmp_path / "a", ["square", "cross"], 3, 2, seed=7))
    b = files(make_shapes(tmp_path / "b", ["square", "cross"], 3, 2, seed=7))
    assert a == b
    other_seed = files(make_shapes(tmp_path / "c", ["square", "cross"], 3, 2, seed=8))
    assert other_seed["train/square/0.png"] != a["train/square/0.png"]


def test_an_image_does_not_depend_on_the_other_classes_or_counts(tmp_path):
    both = files(make_shapes(tmp_path / "a", ["square", "cross"], 3, 2, seed=7))
    alone = files(make_shapes(tmp_path / "b", ["cross"], 2, 1, seed=7))
    for name in ("train/cross/0.png", "train/cross/1.png", "val/cross/0.png"):
        assert alone[name] == both[name]


def test_rerun_with_same_parameters_writes_nothing(tmp_path):
    out = make_shapes(tmp_path / "d", ["triangle"], 2, 1)
    old = 1_000_000_000  # 2001: any rewrite would move the mtime to now
    for path in out.rglob("*"):
        os.utime(path, (old, old))
    before = files(out)
    assert make_shapes(tmp_path / "d", ["triangle"], 2, 1) == out
    assert files(out) == before
    assert all(path.stat().st_mtime == old for path in out.rglob("*"))


def test_existing_dataset_with_other_parameters_is_refused(tmp_path):
    out = make_shapes(tmp_path / "d", ["triangle"], 2, 1, seed=0)
    before = files(out)
    with pytest.raises(UserError) as error:
        make_shapes(out, ["triangle"], 2, 1, seed=1)
    message = str(error.value)
    assert str(out) in message and "--out" in message and "\n" not in message
    assert files(out) == before


def test_foreign_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="--out"):
        make_shapes(out, ["circle"], 1, 1)
    assert files(out) == {"notes.txt": b"keep me"}


def test_an_interrupted_run_is_finished_by_the_next_one(tmp_path, monkeypatch):
    real, calls = shapes.render_image, []

    def flaky(*args):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(shapes, "render_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_shapes(tmp_path / "d", ["star", "ring"], 3, 1)
    assert not (tmp_path / "d" / "shapes.json").exists()  # unfinished is never mistaken for done
    monkeypatch.setattr(shapes, "render_image", real)
    make_shapes(tmp_path / "d", ["star", "ring"], 3, 1)
    assert files(tmp_path / "d") == files(make_shapes(tmp_path / "fresh", ["star", "ring"], 3, 1))


def test_unknown_class_is_refused_with_a_suggestion(tmp_path):
    with pytest.raises(UserError) as error:
        make_shapes(tmp_path / "d", ["circle", "hexagn"], 1, 1)
    message = str(error.value)
    assert "'hexagn'" in message and "did you mean 'hexagon'" in message
    assert all(name in message for name in SHAPES)  # lists the valid ones
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("bad", [dict(train_per_class=0), dict(val_per_class=-1), dict(size=8),
                                 dict(seed=-1), dict(classes=[]), dict(classes=["star", "star"])])
def test_bad_parameters_are_user_errors(tmp_path, bad):
    args = dict(classes=["star"], train_per_class=1, val_per_class=1) | bad
    with pytest.raises(UserError):
        make_shapes(tmp_path / "d", **args)
    assert not (tmp_path / "d").exists()


def test_the_class_changes_the_image_and_nothing_else_random_does():
    same = [np.asarray(render_image("circle", 64, np.random.default_rng(5)), float) for _ in range(2)]
    assert np.array_equal(same[0], same[1])
    for other in ("square", "star", "ring"):
        image = np.asarray(render_image(other, 64, np.random.default_rng(5)), float)
        assert np.abs(image - same[0]).mean() > 2  # grey levels; the outline differs, not just noise


def test_random_poses_keep_the_shape_inside_the_frame():
    for name, i in itertools.product(SHAPES, range(10)):
        rng = np.random.default_rng([3, SHAPES.index(name), i])
        mask = shapes._mask(shapes._random_pose(rng, name, 64), 64)
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert border.max() < 0.05, name
        assert 0.02 * 64 * 64 < mask.sum() < 0.6 * 64 * 64, name  # 30-80% of the frame, never empty


def test_no_two_classes_coincide_under_rotation_at_the_smallest_scale():
    # Soft IoU of one class against every 5-degree turn of another, both centred, radius = 30% of 64 px.
    # A square vs. a 45-degree square scores 1.0 and an octagon vs. a circle 0.92; hexagon vs. circle 0.85.
    centre, radius, turns = np.array([32.0, 32.0]), 0.3 * 64 / 2, np.radians(np.arange(0, 360, 5))
    masks = {s: [shapes._mask(shapes._pose(s, a, radius, centre), 64) for a in turns] for s in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        reference = masks[a][0]
        iou = max(np.minimum(reference, m).sum() / np.maximum(reference, m).sum() for m in masks[b])
        assert iou < 0.9, (a, b, iou)
