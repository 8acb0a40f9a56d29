"""Detection plots for report.md: precision-recall curves and predictions drawn on validation images."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from suite.core.report import _save_png

SHOW_SCORE = 0.25  # boxes drawn on the example images: the runtime's default confidence


def plot_pr_curves(curves: dict[str, list[float]], metrics: dict[str, float], path: Path) -> Path:
    """One precision-recall curve per class at IoU 0.5 (COCO's 101 recall points), mean in bold."""
    from matplotlib.figure import Figure

    recall = np.linspace(0, 1, 101)
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for name, precision in curves.items():
        ax.plot(recall, precision, linewidth=1, alpha=0.7, label=name)
    if curves:
        ax.plot(recall, np.mean(list(curves.values()), axis=0), color="black", linewidth=2.5,
                label=f"all classes (mAP50 {metrics.get('map50', 0):.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall, IoU 0.5")
    ax.legend(fontsize=7, loc="lower left")
    return _save_png(fig, path)


def plot_predictions(predictions: Sequence[tuple], labels: Sequence[str], path: Path, n: int = 6) -> Path:
    """The first ``n`` validation images: ground truth dashed green, predictions (score >= 0.25) in red."""
    from matplotlib.figure import Figure
    from PIL import Image

    shown = list(predictions)[:n]
    cols = min(3, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig = Figure(figsize=(4 * cols, 4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (file, pred, target) in zip(axes.flat, shown):
        with Image.open(file) as im:
            ax.imshow(im.convert("RGB"))
        for box in np.asarray(target["boxes"]).reshape(-1, 4):
            ax.add_patch(_rect(box, "lime", "--"))
        boxes, scores, classes = (np.asarray(pred[k]) for k in ("boxes", "scores", "labels"))
        for box, score, c in zip(boxes.reshape(-1, 4), scores, classes):
            if score >= SHOW_SCORE:
                ax.add_patch(_rect(box, "red", "-"))
                name = labels[int(c)] if 0 <= int(c) < len(labels) else str(int(c))
                ax.text(box[0], box[1], f"{name} {score:.2f}", color="white", fontsize=7,
                        bbox={"facecolor": "red", "alpha": 0.7, "pad": 1, "linewidth": 0})
        ax.set_title(Path(file).name, fontsize=8)
    fig.suptitle("validation predictions (red, score >= 0.25) and ground truth (green)")
    return _save_png(fig, path)


def _rect(box, colour: str, style: str):
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linestyle=style, linewidth=1.5)
