"""Penn-Fudan pedestrians (PNGImages/ + PedMasks/) -> a detection dataset, boxes from the instance masks."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from suite.detection.data import DetectionData, DetScanReport, Sample
from suite.errors import UserError

URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"


def load_pennfudan(root: str | os.PathLike) -> DetectionData:
    """Every image as training data (``val_split`` holds out validation at load time); one class, person."""
    root = Path(root)
    images, masks = root / "PNGImages", root / "PedMasks"
    if not images.is_dir() or not masks.is_dir():
        raise UserError(f"{root} is not the Penn-Fudan folder (PNGImages/ and PedMasks/ expected); "
                        f"download {URL} and unzip it")
    report, samples = DetScanReport(), []
    for image in sorted(images.glob("*.png")):
        mask_file = masks / f"{image.stem}_mask.png"
        if not mask_file.is_file():
            report.record("train", image, None, "missing mask", Counter())
            continue
        mask = np.asarray(Image.open(mask_file))
        boxes = []
        for instance in np.unique(mask)[1:]:  # 0 is background; each other value is one pedestrian
            ys, xs = np.nonzero(mask == instance)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        sample = Sample(image, box_array, np.zeros(len(box_array), dtype=np.int64), mask.shape[1], mask.shape[0])
        report.record("train", image, sample, None, Counter())
        samples.append(sample)
    if not samples:
        raise UserError(f"no images with masks in {images}; download {URL} and unzip it")
    return DetectionData(labels=["person"], train=samples, val=[], test=None, report=report, source=root)
