"""What `suite ls` prints: bundled recipes, known models, a model's parameter groups."""
from __future__ import annotations

from pathlib import Path

import yaml


def recipes(root: Path) -> list[str]:
    rows = []
    for path in sorted(root.rglob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raw = {}
        model = raw.get("model", {}) if isinstance(raw, dict) else {}
        rows.append(f"{str(path.relative_to(root.parent)):50s} {raw.get('task', '?'):22s} {model.get('arch', '?')}")
    return rows or [f"no recipes under {root}"]


def models() -> list[str]:
    from suite.detection.frcnn import ARCHS
    from suite.vision.models import list_models

    return [*list_models(), "timm:<name>  (any timm model, when timm is installed)",
            *(f"{a}  (detection)" for a in ARCHS), "yolo11n|s|m|l|x, yolov8n, ...  (detection, Ultralytics)"]


def _detection_groups(arch: str, classes: int) -> list[tuple[str, int]] | None:
    from suite.detection import frcnn, yolo

    labels = [f"class{i}" for i in range(classes)]
    if yolo.is_yolo(arch):
        groups = yolo.groups(yolo.build_model(arch, labels, "none"))
    elif frcnn.is_frcnn(arch):
        groups = frcnn.groups(frcnn.build_model(arch, labels, "none"))
    else:
        return None
    return [(g.name, sum(p.numel() for p in g.params)) for g in groups]


def groups(arch: str, classes: int) -> list[str]:
    from suite.vision.models import build_model, describe_groups

    rows = _detection_groups(arch, classes)
    if rows is None:
        model, _ = build_model(arch, classes, "none")
        rows = describe_groups(arch, model)
    total = sum(n for _, n in rows)
    return [f"{name:16s} {n:>12,d} params" for name, n in rows] + [f"{'total':16s} {total:>12,d} params"]
