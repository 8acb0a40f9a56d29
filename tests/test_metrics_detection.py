"""Our detection mAP (torchmetrics) against pycocotools' COCOeval run directly on the same boxes."""
import numpy as np
import pytest

from suite.core.metrics import DetectionEvaluator


def _scene(rng, n_classes=3, n_images=12):
    preds, targets = [], []
    for _ in range(n_images):
        k = int(rng.integers(1, 5))
        xy = rng.uniform(0, 200, (k, 2))
        wh = rng.uniform(10, 80, (k, 2))
        gt = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        labels = rng.integers(0, n_classes, k)
        # predictions: jittered true boxes (some with the wrong class), plus false positives
        jitter = gt + rng.normal(0, 4, gt.shape).astype(np.float32)
        fp_xy = rng.uniform(0, 200, (2, 2))
        fp = np.concatenate([fp_xy, fp_xy + rng.uniform(10, 60, (2, 2))], 1).astype(np.float32)
        boxes = np.concatenate([jitter, fp])
        plabels = np.concatenate([np.where(rng.random(k) < 0.8, labels, (labels + 1) % n_classes),
                                  rng.integers(0, n_classes, 2)])
        scores = rng.uniform(0.05, 1.0, len(boxes)).astype(np.float32)
        preds.append({"boxes": boxes, "scores": scores, "labels": plabels})
        targets.append({"boxes": gt, "labels": labels})
    return preds, targets


def _coco_eval(preds, targets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        images.append({"id": i, "width": 300, "height": 300})
        for b, c in zip(t["boxes"], t["labels"]):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": [float(b[0]), float(b[1]), w, h],
                         "area": w * h, "iscrowd": 0})
        for b, s, c in zip(p["boxes"], p["scores"], p["labels"]):
            dets.append({"image_id": i, "category_id": int(c), "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(3)]}
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats  # [AP, AP50, AP75, ..., AR100 at index 8]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_pycocotools(seed):
    preds, targets = _scene(np.random.default_rng(seed))
    ev = DetectionEvaluator(["a", "b", "c"])
    ev.update(preds[:5], targets[:5])
    ev.update(preds[5:], targets[5:])  # batches accumulate
    m = ev.compute().metrics
    stats = _coco_eval(preds, targets)
    assert m["map50_95"] == pytest.approx(stats[0], abs=1e-3)  # float32 boxes vs float64
    assert m["map50"] == pytest.approx(stats[1], abs=1e-3)  # float32 boxes vs float64
    assert m["map75"] == pytest.approx(stats[2], abs=1e-3)  # float32 boxes vs float64
    assert m["mar100"] == pytest.approx(stats[8], abs=1e-3)  # float32 boxes vs float64
    assert 0.05 < m["map50"] < 0.99  # a real mix of hits and misses, not a degenerate case


def test_perfect_and_empty_predictions():
    t = [{"boxes": np.array([[10, 10, 50, 50]], np.float32), "labels": np.array([1])}]
    ev = DetectionEvaluator(["a", "b"])
    ev.update([{"boxes": t[0]["boxes"], "scores": np.array([0.9], np.float32), "labels": np.array([1])}], t)
    r = ev.compute()
    assert r.metrics["map50"] == pytest.approx(1.0) and r.metrics["map50_95"] == pytest.approx(1.0)
    assert r.per_class["b"]["ap50_95"] == pytest.approx(1.0) and r.per_class["a"]["present"] == 0.0
    ev = DetectionEvaluator(["a", "b"])
    ev.update([{"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0)}], t)
    assert ev.compute().metrics["map50"] == 0.0
