"""suite_runtime detection: numpy NMS equal to torchvision's, YOLO decoding equal to Ultralytics', the letterbox
geometry, and YOLO / Faster R-CNN bundles predicting what their torch models predict, through the API and CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.transforms import v2
from ultralytics.data.augment import LetterBox
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import ops
from ultralytics.utils.nms import non_max_suppression

from suite_runtime import Bundle, Detections, batched_nms, decode_yolo, draw, letterbox, nms, scale_boxes, xywh2xyxy
from suite_runtime.cli import main as cli_main
from suite_runtime.detection import image01, letterbox_geometry

LABELS = ["circle", "square", "triangle"]
S = 96  # YOLO input size: 189 anchors, enough boxes for NMS to have work
LETTERBOX = {"type": "letterbox", "size": S, "pad_value": 114, "scale": 255.0, "channel_order": "RGB", "scaleup": True}
YOLO_POST = {"type": "yolo", "conf_threshold": 0.25, "iou_threshold": 0.7, "max_det": 300, "agnostic": False,
             "max_wh": 7680}
IMAGE01 = {"type": "image01", "channel_order": "RGB", "scale": 255.0}
BOXES_POST = {"type": "boxes", "score_threshold": 0.05, "label_offset": 1, "max_det": 100}


def smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 image of gentle waves: resamplers agree on it, unlike on noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    p = np.random.default_rng(seed).uniform(5, 15, 3)
    a = np.stack([127 + 100 * np.sin(xx / p[0] + yy / 13), 127 + 100 * np.cos(yy / p[1]),
                  127 + 90 * np.sin((xx - yy) / p[2])], -1)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def images() -> list[Image.Image]:
    sizes = [(80, 50), (40, 120), (96, 96), (33, 97), (200, 150)]  # (w, h): wide, tall, square, odd, downscaled
    return [Image.fromarray(smooth(h, w, seed=i)) for i, (w, h) in enumerate(sizes)]


def write_meta(folder: Path, pre: dict, post: dict) -> None:
    meta = {"format_version": 1, "task": "detection", "labels": LABELS, "preprocess": pre, "postprocess": post,
            "variants": {"fp32": {"file": "model.onnx"}}, "default_variant": "fp32"}
    (folder / "model.json").write_text(json.dumps(meta))


def edited(folder: Path, out: Path, **changes) -> Path:
    """A bundle in ``out`` sharing ``folder``'s ONNX files (hard links: a symlink out of a bundle is refused),
    with model.json keys replaced."""
    out.mkdir()
    for f in folder.glob("*.onnx"):
        os.link(f, out / f.name)
    meta = {**json.loads((folder / "model.json").read_text()), **changes}
    (out / "model.json").write_text(json.dumps(meta))
    return out


def onnx_export(model, args, path: Path, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns about deprecation and traced constants
        torch.onnx.export(model, args, str(path), dynamo=False, input_names=["images"], **kwargs)


# ----------------------------------------------------------------------------- NMS


def random_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Crowded boxes with tied scores, exact duplicates and empty boxes: the cases where NMS orders differ."""
    xy = rng.uniform(0, 60, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (n, 2))], 1).astype(np.float32)
    boxes[rng.random(n) < 0.1] = boxes[0]
    boxes[1:4, 2:] = boxes[1:4, :2]  # zero area
    scores = (rng.integers(0, 8, n) / 8).astype(np.float32)  # 8 distinct values: ties everywhere
    return boxes, scores


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_equals_torchvision(seed, iou):
    boxes, scores = random_boxes(np.random.default_rng(seed), 400)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    ours = nms(boxes, scores, iou)
    assert ours.dtype == np.int64 and np.array_equal(ours, ref)
    assert 10 < len(ref) < len(boxes) - 40  # crowded: many boxes are suppressed, not all
    assert np.array_equal(nms(boxes, scores, iou, max_keep=7), ref[:7])


@pytest.mark.parametrize("seed", range(5))
def test_batched_nms_equals_torchvision(seed):
    rng = np.random.default_rng(seed)
    boxes, scores = random_boxes(rng, 1000)  # torchvision uses its coordinate trick up to 1000 boxes on CPU
    classes = rng.integers(0, 4, len(boxes))
    ref = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                      torch.from_numpy(classes), 0.5).numpy()
    assert np.array_equal(batched_nms(boxes, scores, classes, 0.5), ref)
    assert len(ref) > len(torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5))


def test_nms_edge_cases():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).shape == (0,)
    same = np.array([[0, 0, 10, 10]] * 3)  # integer boxes work; equal scores keep the first
    assert nms(same, np.ones(3), 0.5).tolist() == [0]
    assert batched_nms(same, np.ones(3), np.array([0, 1, 0]), 0.5).tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    assert np.array_equal(xywh2xyxy(np.array([[10, 20, 4, 6]], np.float32)), [[8, 17, 12, 23]])


# ----------------------------------------------------------------------------- YOLO decoding and letterbox


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("conf,agnostic,max_det,max_nms", [(0.25, False, 300, 30000), (0.001, False, 300, 30000),
                                                           (0.1, True, 20, 30000), (0.05, False, 300, 150)])
def test_decode_yolo_equals_ultralytics(seed, conf, agnostic, max_det, max_nms):
    rng = np.random.default_rng(seed)
    nc, anchors = 5, 600
    xy, wh = rng.uniform(0, S, (2, 2, anchors)), rng.uniform(2, S / 2, (2, 2, anchors))
    raw = np.concatenate([xy, wh, rng.random((2, nc, anchors)) ** 3], 1).astype(np.float32)
    ref = non_max_suppression(torch.from_numpy(raw.copy()), conf, 0.7, agnostic=agnostic, max_det=max_det,
                              max_nms=max_nms)
    ours = decode_yolo(raw, conf, 0.7, max_det=max_det, agnostic=agnostic, max_nms=max_nms)
    assert len(ours) == 2 and len(ref[0]) < (raw[0, 4:].max(0) > conf).sum()  # thresholds or NMS removed some
    for (h, w), r, (boxes, scores, classes) in zip([(37, 91), (120, 45)], ref, ours):
        assert 0 < len(r) == len(boxes) <= min(max_nms, max_det)
        assert np.array_equal(scores, r[:, 4].numpy()) and np.array_equal(classes, r[:, 5].numpy().astype(np.int64))
        assert np.array_equal(boxes, r[:, :4].numpy())
        want = ops.scale_boxes((S, S), r[:, :4].clone(), (h, w)).numpy()
        np.testing.assert_allclose(scale_boxes(boxes, letterbox_geometry(h, w, S)), want, rtol=1e-6, atol=1e-4)
        assert boxes.dtype == scores.dtype == np.float32 and classes.dtype == np.int64


def ultralytics_letterbox(rgb: np.ndarray, size: int, scaleup: bool) -> tuple[np.ndarray, dict]:
    lb = LetterBox(new_shape=(size, size), auto=False, scaleup=scaleup)
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # Ultralytics works on cv2's BGR
    return lb(image=bgr.copy())[..., ::-1], lb.get_params({"img": bgr})


@pytest.mark.parametrize("h,w", [(37, 91), (120, 45), (20, 30), (5, 300), (300, 1), (64, 64), (150, 131),
                                 (1000, 700)])
@pytest.mark.parametrize("scaleup", [True, False])
def test_letterbox_equals_ultralytics(h, w, scaleup):
    rgb = smooth(h, w)
    ref, params = ultralytics_letterbox(rgb, 64, scaleup)
    x, geo = letterbox(Image.fromarray(rgb), {**LETTERBOX, "size": 64, "scaleup": scaleup})
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and ref.shape == (64, 64, 3)
    top, bottom, left, right = geo.pad
    assert geo.resized == params["new_unpad"]
    assert geo.pad == tuple(params[k] for k in ("top", "bottom", "left", "right"))
    assert (top + geo.resized[1] + bottom, left + geo.resized[0] + right) == (64, 64)
    ours = np.rint(x.transpose(1, 2, 0) * 255).astype(int)
    inside = np.zeros((64, 64), bool)
    inside[top:top + geo.resized[1], left:left + geo.resized[0]] = True
    assert (ours[~inside] == 114).all() and (ref[~inside] == 114).all()
    if max(h, w) <= 3 * 64:  # Pillow antialiases when shrinking and cv2's INTER_LINEAR does not: compare mild cases
        assert np.abs(ours - ref).mean() <= 1.0
    # the resized image's corners map back onto the original's
    corners = np.array([[left, top, left + geo.resized[0], top + geo.resized[1]]], np.float32)
    np.testing.assert_allclose(scale_boxes(corners, geo), [[0, 0, w, h]], atol=1e-4)


def test_letterbox_options():
    rgb = smooth(40, 80)
    x, _ = letterbox(rgb, LETTERBOX)
    bgr, _ = letterbox(rgb, {**LETTERBOX, "channel_order": "BGR", "pad_value": 0})
    assert np.array_equal(bgr[:, 30:60], x[::-1, 30:60]) and bgr[:, 0].max() == 0
    assert np.allclose(x[:, 0], 114 / 255)
    with pytest.raises(ValueError, match="channel_order 'RBG'"):
        letterbox(rgb, {**LETTERBOX, "channel_order": "RBG"})
    with pytest.raises(ValueError, match="lacks size"):
        letterbox(rgb, {"type": "letterbox"})
    tv = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])(Image.fromarray(rgb)).numpy()
    assert np.array_equal(image01(rgb, IMAGE01), tv)  # bit for bit what torchvision feeds a detector


# ----------------------------------------------------------------------------- YOLO bundle


def calibration_batch(n: int, seed: int) -> torch.Tensor:
    """Letterboxed wave images like the test's own (noise would set statistics these images never meet)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(30, 200, (n, 2))
    return torch.from_numpy(np.stack([letterbox(smooth(h, w, seed + i), LETTERBOX)[0]
                                      for i, (h, w) in enumerate(sizes)]))


def set_batchnorm_statistics(model: torch.nn.Module, batches: list) -> None:
    """BatchNorm running statistics from ``batches``: a fresh model's defaults make activations vanish or explode,
    and then every anchor or proposal scores the same."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches
        bn.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for bn in norms:
        bn.eval()


def outputs_of(layers: list[torch.nn.Module], model: torch.nn.Module, batch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append(o)) for layer in layers]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    return seen


def tiny_yolo() -> DetectionModel:
    """yolo11n with 3 classes and random weights that give varied boxes and scores: class logits of each level
    scaled to a spread of 1.5 around -1.5, so few scores saturate at 1.0 (ties that float noise could reorder)."""
    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=len(LABELS), verbose=False).eval()
    set_batchnorm_statistics(model, [calibration_batch(8, 100)])
    head = model.model[-1]
    last = [seq[-1] for seq in head.cv3]
    with torch.no_grad():
        for layer, out in zip(last, outputs_of(last, model, calibration_batch(8, 200))):
            layer.weight.mul_(1.5 / out.std())
            layer.bias.fill_(-1.5)
    head.export = True  # one [B, 4 + nc, A] tensor, what Ultralytics exports with nms=False
    return model


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    model = tiny_yolo()
    folder = tmp_path_factory.mktemp("yolo") / "export"
    folder.mkdir()
    onnx_export(model, torch.rand(2, 3, S, S), folder / "model.onnx", output_names=["output0"], opset_version=18,
                dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}})
    write_meta(folder, LETTERBOX, YOLO_POST)
    return folder, model


def letterboxed(imgs: list[Image.Image]) -> np.ndarray:
    return np.stack([letterbox(im, LETTERBOX)[0] for im in imgs])


def ultralytics_post(raw: np.ndarray, imgs: list[Image.Image], conf: float, iou: float = 0.7) -> list[tuple]:
    """Ultralytics' own postprocessing of a [B, 4 + nc, A] output: NMS, then scale_boxes."""
    preds = non_max_suppression(torch.from_numpy(raw), conf, iou, max_det=300)
    return [(ops.scale_boxes((S, S), p[:, :4].clone(), (im.height, im.width)).numpy(), p[:, 4].numpy(),
             p[:, 5].numpy().astype(np.int64)) for p, im in zip(preds, imgs)]


def yolo_reference(bundle: Bundle, model, imgs: list[Image.Image], batch: int, conf: float,
                   iou: float = 0.7) -> list[tuple]:
    """What Ultralytics makes of the bundle's own ONNX output, run in the batches predict() runs, after checking
    that output against the torch model's on the same letterboxed input. Ultralytics on the torch output is not
    the reference: outputs equal to float noise (boxes 1e-2 px apart) can put two boxes' IoU on either side of
    the NMS threshold, which kept a box of score 0.271 on one side only at one thread on an Intel Xeon."""
    x = letterboxed(imgs)
    raw = np.concatenate([bundle.run(x[i:i + batch]) for i in range(0, len(x), batch)])
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(raw[:, :4], ref[:, :4], rtol=1e-3, atol=2e-2)  # box pixels: 1.2e-2 apart seen
    np.testing.assert_allclose(raw[:, 4:], ref[:, 4:], atol=1e-4)  # class scores: 2.6e-5 apart seen
    return ultralytics_post(raw, imgs, conf, iou)


def check_same(dets: list[Detections], ref: list, box_atol: float = 1e-3) -> None:
    """Same detections: scores position by position (both sorted), each box and class matched one to one. Two
    detections whose scores differ by float noise may swap places, so positions alone would be too strict."""
    assert len(dets) == len(ref)
    for d, (boxes, scores, classes) in zip(dets, ref):
        assert isinstance(d, Detections) and len(d) == len(boxes) and d.labels == LABELS
        assert d.boxes.dtype == d.scores.dtype == np.float32 and d.classes.dtype == np.int64
        np.testing.assert_allclose(d.scores, scores, atol=1e-4)
        free = list(range(len(d)))
        for box, score, cls in zip(boxes, scores, classes):
            match = [i for i in free if d.classes[i] == cls and abs(d.scores[i] - score) <= 1e-4
                     and np.allclose(d.boxes[i], box, rtol=1e-3, atol=box_atol)]
            assert match, f"no detection of class {cls} with score {score:.5f} at {box}"
            free.remove(match[0])


@pytest.mark.parametrize("conf", [None, 0.001])
def test_yolo_bundle_matches_ultralytics(yolo, conf):
    folder, model = yolo
    imgs = images()
    bundle = Bundle.load(folder)
    dets = bundle.predict(imgs, batch_size=2, conf=conf)
    check_same(dets, yolo_reference(bundle, model, imgs, 2, conf or YOLO_POST["conf_threshold"]))
    assert sum(map(len, dets)) > 50 and len({int(c) for d in dets for c in d.classes}) == len(LABELS)
    for d, im in zip(dets, imgs):  # boxes are in original pixels: inside the image
        assert (d.boxes[:, [0, 2]] <= im.width).all() and (d.boxes[:, [1, 3]] <= im.height).all()
        assert (d.scores > (conf or 0.25)).all() and (np.diff(d.scores) <= 0).all()


def test_yolo_bundle_inputs_batches_and_run(yolo, tmp_path):
    folder, model = yolo
    bundle = Bundle.load(folder)
    imgs = images()
    base = bundle.predict(imgs, batch_size=8)
    paths = []
    for i, im in enumerate(imgs):
        im.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    same = [(d.boxes, d.scores, d.classes) for d in base]
    check_same(bundle.predict(imgs, batch_size=1), same)
    check_same(bundle.predict(paths, batch_size=3), same)
    check_same(bundle.predict([np.asarray(im) for im in imgs]), same)
    single = bundle.predict(imgs[0])  # one input gives a list of one
    assert len(single) == 1 and np.array_equal(single[0].boxes, base[0].boxes)
    x = np.stack([bundle.preprocess(im) for im in imgs[:3]])  # the exporter's tensor-parity check uses run()
    assert x.shape == (3, 3, S, S)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.allclose(bundle.run(x), ref, rtol=1e-3, atol=1e-3)
    assert bundle.is_detector
    strict = bundle.predict(imgs, iou=0.3, conf=0.5)
    assert sum(map(len, strict)) < sum(map(len, base))
    check_same(strict, yolo_reference(bundle, model, imgs, 8, conf=0.5, iou=0.3))


def test_yolo_fixed_batch_export(yolo, tmp_path):
    """Ultralytics' default ONNX export has a fixed batch of 1; predict() then runs one image at a time."""
    folder, model = yolo
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    onnx_export(model, torch.rand(1, 3, S, S), fixed / "model.onnx", output_names=["output0"], opset_version=18)
    write_meta(fixed, LETTERBOX, YOLO_POST)
    bundle = Bundle.load(fixed)
    assert bundle.session.get_inputs()[0].shape == [1, 3, S, S]
    imgs = images()
    check_same(bundle.predict(imgs, batch_size=4), yolo_reference(bundle, model, imgs, 1, 0.25))


# ----------------------------------------------------------------------------- Faster R-CNN bundle


def tiny_frcnn() -> torch.nn.Module:
    """Faster R-CNN for 3 classes (+ background) with random weights whose proposals score differently."""
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=len(LABELS) + 1,
                                                  box_score_thresh=0.0).eval()
    sizes = [(96, 128), (150, 90)]
    calib = [[torch.from_numpy(image01(smooth(h, w, 50 + i), IMAGE01))] for i, (h, w) in enumerate(sizes)]
    set_batchnorm_statistics(model, calib)
    layer = model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        layer.weight.mul_(2.0 / outputs_of([layer], model, calib[0])[0].std())
    return model


@pytest.fixture(scope="module")
def frcnn(tmp_path_factory):
    """The bundle, two images of different sizes, and the torch model's outputs for them."""
    model = tiny_frcnn()
    folder = tmp_path_factory.mktemp("frcnn") / "export"
    folder.mkdir()
    # torchvision detectors take a list of CHW images; the traced graph keeps H and W dynamic, batch 1
    onnx_export(model, ([torch.rand(3, 96, 128)],), folder / "model.onnx", opset_version=18,
                output_names=["boxes", "labels", "scores"],
                dynamic_axes={"images": [1, 2], "boxes": [0], "labels": [0], "scores": [0]})
    write_meta(folder, IMAGE01, BOXES_POST)
    imgs = [Image.fromarray(smooth(96, 128, 1)), Image.fromarray(smooth(150, 90, 2))]
    with torch.inference_mode():
        ref = [{k: v.numpy() for k, v in model([torch.from_numpy(image01(im, IMAGE01))])[0].items()} for im in imgs]
    return folder, imgs, ref


def test_frcnn_bundle_matches_torchvision(frcnn):
    folder, imgs, ref = frcnn
    bundle = Bundle.load(folder)
    dets = bundle.predict(imgs)
    for d, r, im in zip(dets, ref, imgs):
        keep = r["scores"] > BOXES_POST["score_threshold"]
        assert keep.sum() > 10 and len(set(r["labels"])) > 1 and np.ptp(r["scores"]) > 0.3
        # torchvision's 1-based labels -> 0-based classes
        check_same([d], [(r["boxes"][keep], r["scores"][keep], r["labels"][keep] - 1)], box_atol=1e-3 * max(im.size))
        assert [LABELS[c] for c in d.classes] == d.names
    assert bundle.preprocess(imgs[1]).shape == (3, 150, 90) and bundle.is_detector
    assert np.allclose(bundle.run(bundle.preprocess(imgs[0])), ref[0]["boxes"], atol=0.2)  # first output: boxes


def test_frcnn_thresholds_and_max_det(frcnn, tmp_path):
    folder, imgs, _ = frcnn
    bundle = Bundle.load(folder)
    raw = bundle.run_all(bundle.preprocess(imgs[0]))  # the graph's own outputs, so comparisons can be exact
    assert sorted(raw) == ["boxes", "labels", "scores"]
    conf = float(np.median(raw["scores"]))
    d = bundle.predict(imgs[0], conf=conf)[0]
    assert 0 < len(d) == (raw["scores"] > conf).sum() < len(raw["scores"])
    assert np.array_equal(d.scores, raw["scores"][:len(d)])
    d = bundle.predict(imgs[0], iou=0.2)[0]  # a stricter class-wise NMS on the graph's output
    keep = torchvision.ops.batched_nms(*(torch.from_numpy(raw[k]) for k in ("boxes", "scores", "labels")), 0.2)
    assert 0 < len(d) == len(keep) < len(raw["scores"])
    assert np.array_equal(d.boxes, raw["boxes"][keep]) and np.array_equal(d.classes, raw["labels"][keep] - 1)
    few = Bundle.load(edited(folder, tmp_path / "few", postprocess={**BOXES_POST, "max_det": 7}))
    top = few.predict(imgs[0])[0]
    assert len(top) == 7 and np.array_equal(top.scores, raw["scores"][:7])
    zero = Bundle.load(edited(folder, tmp_path / "zero", postprocess={**BOXES_POST, "label_offset": 0}))
    with pytest.raises(ValueError, match="model gives label 3, but model.json has 3 labels"):
        zero.predict(imgs[0])


# ----------------------------------------------------------------------------- results, drawing, CLI


def test_detections_to_dict_and_draw():
    d = Detections(np.array([[2, 3, 20, 30], [10, 10, 40, 25]], np.float32), np.array([0.9, 0.4], np.float32),
                   np.array([2, 0]), LABELS)
    rows = d.to_dict()
    assert json.loads(json.dumps(rows)) == rows
    assert rows[0] == {"label": "triangle", "class": 2, "score": pytest.approx(0.9), "box": [2.0, 3.0, 20.0, 30.0]}
    img = Image.fromarray(smooth(50, 60))
    out = draw(img, d)
    assert out is not img and out.size == img.size and np.array_equal(np.asarray(img), smooth(50, 60))
    changed = np.any(np.asarray(out) != np.asarray(img), axis=-1)
    assert changed[3, 2:21].all() and changed[12:25, 40].all()  # top edge of box 0, right edge of box 1
    assert not changed[45:, :].any()  # nothing below the boxes


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("inputs")
    paths = []
    for i, im in enumerate(images()[:3]):
        im.save(folder / f"img{i}.png")
        paths.append(str(folder / f"img{i}.png"))
    return paths


def test_cli_lines_json_and_draw(yolo, image_files, tmp_path, capsys):
    folder, _ = yolo
    want = Bundle.load(folder).predict(image_files, conf=0.3)
    assert cli_main(["predict", str(folder), *image_files, "--conf", "0.3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == sum(map(len, want)) > 0
    rows = iter(lines)
    for path, d in zip(image_files, want):
        for name, score, box in zip(d.names, d.scores, d.boxes):
            file, label, got_score, coords = next(rows).split("\t")
            assert (file, label) == (path, name) and float(got_score) == pytest.approx(float(score), abs=1e-6)
            assert np.allclose([float(v) for v in coords.split(",")], box, atol=0.006)
    assert cli_main(["predict", str(folder), *image_files, "--json", "--conf", "0.3", "--iou", "0.5"]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    strict = Bundle.load(folder).predict(image_files, conf=0.3, iou=0.5)
    assert [o["file"] for o in objs] == image_files
    assert [len(o["detections"]) for o in objs] == [len(d) for d in strict]
    assert objs[0]["detections"][0]["label"] == strict[0].names[0]
    out = tmp_path / "drawn"
    assert cli_main(["predict", str(folder), *image_files, "--draw", str(out)]) == 0
    drawn = sorted(out.iterdir())
    assert [p.name for p in drawn] == ["img0.png", "img1.png", "img2.png"]
    found = Bundle.load(folder).predict(image_files)
    assert min(map(len, found)) == 0 < max(map(len, found))  # an image without boxes: drawing follows them
    for p, src, d in zip(drawn, image_files, found):
        a, b = np.asarray(Image.open(p)), np.asarray(Image.open(src))
        assert a.shape == b.shape and (a != b).any() == (len(d) > 0)


def test_cli_draw_refuses_input_folder_and_non_detectors(yolo, image_files, tmp_path, capsys):
    folder, _ = yolo
    inputs = Path(image_files[0]).parent
    before = sorted(inputs.iterdir())
    assert cli_main(["predict", str(folder), image_files[0], "--draw", str(inputs)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "holds the input" in err and sorted(inputs.iterdir()) == before
    cls = edited(folder, tmp_path / "cls", postprocess={"type": "softmax"}, task="image-classification")
    assert cli_main(["predict", str(cls), image_files[0], "--draw", str(tmp_path / "d")]) == 2
    assert "needs a detection bundle" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert cli_main(["predict", str(folder), image_files[0], "--conf", "1.5"]) == 2
    assert "conf_threshold must be between 0 and 1" in capsys.readouterr().err


BLOCK_TORCH = """
import importlib.abc, runpy, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "cv2", "ultralytics"):
            raise ImportError(f"{name} is blocked: suite_runtime must not need it")
sys.meta_path.insert(0, _NoTorch())
"""


def test_cli_detection_without_torch(yolo, frcnn, image_files):
    for folder in (yolo[0], frcnn[0]):
        code = f"sys.argv = ['suite-runtime', 'predict', {str(folder)!r}, *{image_files!r}, '--json']\n" \
               "runpy.run_module('suite_runtime.cli', run_name='__main__')"
        proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        got = [json.loads(line)["detections"] for line in proc.stdout.splitlines()]
        here = Bundle.load(folder).predict(image_files)
        assert [len(g) for g in got] == [len(d) for d in here] and sum(map(len, here)) > 0
        assert np.allclose(got[0][0]["box"], here[0].boxes[0], atol=1e-4)


# ----------------------------------------------------------------------------- errors


def test_unknown_or_mismatched_types_error_clearly(yolo, frcnn, tmp_path, capsys):
    folder, _ = yolo
    img = images()[0]
    ssd = Bundle.load(edited(folder, tmp_path / "ssd", postprocess={"type": "ssd"}))
    with pytest.raises(ValueError, match="unknown postprocess type 'ssd'; .*softmax, identity, yolo, boxes"):
        ssd.predict(img)
    assert ssd.run(np.zeros((1, 3, S, S), np.float32)).shape == (1, 4 + len(LABELS), 189)  # raw tensors still run
    assert cli_main(["predict", str(tmp_path / "ssd"), "x.png"]) == 2
    assert "unknown postprocess type 'ssd'" in capsys.readouterr().err
    pre = Bundle.load(edited(folder, tmp_path / "pre", preprocess={"type": "mosaic"}))
    with pytest.raises(ValueError, match="unknown preprocess type 'mosaic'; .*image, letterbox, image01"):
        pre.predict(img)
    wrong = Bundle.load(edited(folder, tmp_path / "wrong", preprocess=IMAGE01))
    with pytest.raises(ValueError, match="'yolo' needs preprocess type 'letterbox'"):
        wrong.predict(img)
    labels = Bundle.load(edited(folder, tmp_path / "labels", labels=["a", "b"]))
    with pytest.raises(ValueError, match=r"2 labels, so expected \[batch, 6, anchors\]"):
        labels.predict(img)
    size = Bundle.load(edited(folder, tmp_path / "size", preprocess={**LETTERBOX, "size": 64}))
    with pytest.raises(ValueError, match="takes 96x96 inputs but model.json letterboxes to 64x64"):
        size.predict(img)
    boxes = Bundle.load(edited(frcnn[0], tmp_path / "boxes", preprocess=LETTERBOX))
    with pytest.raises(ValueError, match="'boxes' needs preprocess type 'image01'"):
        boxes.predict(img)


def test_multi_label_decode_matches_ultralytics_validator_nms():
    """mAP is measured like Ultralytics' validator: every class above conf per anchor (multi_label=True)."""
    from ultralytics.utils.nms import non_max_suppression

    from suite_runtime.detection import decode_yolo

    rng = np.random.default_rng(3)
    raw = np.concatenate([rng.uniform(10, 50, (2, 2, 300)), rng.uniform(5, 30, (2, 2, 300)),
                          rng.uniform(0, 1, (2, 3, 300)) ** 3], axis=1).astype(np.float32)
    ours = decode_yolo(raw, conf=0.01, iou=0.7, max_det=300, multi_label=True)
    theirs = non_max_suppression(torch.from_numpy(raw), conf_thres=0.01, iou_thres=0.7, max_det=300, multi_label=True)
    for (boxes, scores, classes), t in zip(ours, theirs):
        t = t.numpy()
        assert len(boxes) == len(t) > len(decode_yolo(raw[:1], conf=0.01, iou=0.7)[0][0]) // 2
        order_o, order_t = np.lexsort((classes, -scores)), np.lexsort((t[:, 5], -t[:, 4]))
        np.testing.assert_allclose(boxes[order_o], t[order_t, :4], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(classes[order_o], t[order_t, 5].astype(np.int64))
