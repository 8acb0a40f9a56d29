"""Run artefacts for humans: history.csv, training-curve and confusion plots, report.md.

Plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas attached explicitly,
never through pyplot. ``matplotlib.use("Agg")`` before importing pyplot would not be
reliable here: torchmetrics (detection, speech) imports pyplot when it is imported, so the order is
not ours to control. Bypassing pyplot means no window can open and no figure lingers in
pyplot's global registry during a long training run, whatever backend pyplot picked.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from suite.core.checkpoint import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_LEADING_COLUMNS = ("epoch", "stage", "lr", "train/loss")
_ANNOTATE_MAX_LABELS = 20  # beyond this, numbers in cells overlap and become noise
_TICK_MAX_LABELS = 60  # beyond this, even tick labels are unreadable


# ---------------------------------------------------------------- history.csv


def write_history(path: str | os.PathLike, rows: list[dict]) -> Path:
    """One CSV row per dict; columns are the union of keys (epoch, stage, lr, train/loss
    first, the rest sorted), so rows that gained a metric later still line up."""
    keys = {k for row in rows for k in row}
    columns = [k for k in _LEADING_COLUMNS if k in keys]
    columns += sorted(keys - set(columns))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


EPOCH_SECONDS = "seconds"  # history.csv (DESIGN.md): wall time of the epoch (training and validation), not compared on resume


def read_history(path: str | os.PathLike, times: bool = True) -> list[dict]:
    """Rows back as dicts; empty cells are dropped (the key was missing when written). ``times=False`` drops the
    epoch wall-time column too, which no two runs share (what a resumed run is compared on)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {k: _parse_cell(v) for k, v in row.items() if v != "" and (times or k != EPOCH_SECONDS)}
            for row in csv.DictReader(f)
        ]


def _parse_cell(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


# ---------------------------------------------------------------- plots


def _figure(layout: str | None = "constrained", **kw) -> Figure:
    """A matplotlib Figure (imported here, when a plot is drawn: `suite` commands that draw none skip its
    import, 0.3 s)."""
    from matplotlib.figure import Figure

    return Figure(layout=layout, **kw)


def _save_png(fig: Figure, path: str | os.PathLike) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches the Agg canvas; savefig then never touches a GUI
    # format= is required: atomic_write's temporary file has a .tmp suffix.
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def _curve_panels(rows: list[dict]) -> list[str]:
    """Metric names to plot, one panel each: loss (train and val), then every val/* metric."""
    names = {k.split("/", 1)[1] for row in rows for k in row if k.startswith("val/")}
    if any("train/loss" in row for row in rows):
        names.add("loss")
    return sorted(names, key=lambda name: (name != "loss", name))


def _stage_changes(rows: list[dict], epochs: list[float]) -> list[tuple[float, Any]]:
    """(epoch, new stage) wherever the stage differs from the previous row's stage."""
    changes, previous = [], None
    for row, epoch in zip(rows, epochs):
        stage = row.get("stage")
        if stage is None:
            continue
        if previous is not None and stage != previous:
            changes.append((epoch, stage))
        previous = stage
    return changes


def plot_curves(rows: list[dict], path: str | os.PathLike) -> Path:
    """train/loss and every val/* metric against epoch, one subplot per metric, with
    dashed lines where the freeze schedule moved to a new stage."""
    panels = _curve_panels(rows)
    if not panels:
        raise ValueError("no train/loss or val/* values to plot")
    epochs = [float(row.get("epoch", i + 1)) for i, row in enumerate(rows)]
    changes = _stage_changes(rows, epochs)
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    from matplotlib.ticker import MaxNLocator

    width, height = 4.5 * cols, 3.2 * nrows
    # fixed margins in inches instead of the constrained layout, which took half of this plot's 0.5 s: every
    # panel holds the same kinds of text (a short title, numeric ticks, "epoch", the legend inside the axes)
    fig = _figure(layout=None, figsize=(width, height))
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.35 / height,
                        wspace=0.3, hspace=0.55)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, panels):
        for split in ("train", "val"):
            key = f"{split}/{name}"
            # Ragged rows: a metric may be missing at some epochs; plot only where present.
            points = [(e, float(r[key])) for e, r in zip(epochs, rows) if r.get(key) not in (None, "")]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        for epoch, stage in changes:
            ax.axvline(epoch, linestyle="--", color="grey", linewidth=1)
            ax.text(epoch, 1.0, f" stage {stage}", transform=ax.get_xaxis_transform(),
                    va="top", ha="left", fontsize=8, color="grey")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 2.5" ticks
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _save_png(fig, path)


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], raw: Sequence[float], suggestion: float,
                 path: str | os.PathLike) -> Path:
    """The LR range test: raw and smoothed loss against the LR (log scale), the suggestion marked."""
    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(lrs, raw, color="lightgrey", linewidth=1, label="loss")
    ax.plot(lrs, losses, label="smoothed loss")
    ax.axvline(suggestion, linestyle="--", color="red", linewidth=1)
    ax.text(suggestion, 1.0, f" suggested {suggestion:.1e}", transform=ax.get_xaxis_transform(), va="top",
            ha="left", fontsize=8, color="red")
    ax.set_xscale("log")
    low = min(losses)
    ax.set_ylim(min(min(raw), low) * 0.9, max(4 * low, losses[0]) * 1.1)  # up to where the sweep calls divergence
    ax.set_xlabel("learning rate (the stage's lr; other groups keep their ratio)")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def plot_confusion(
    matrix: list[list[int]], labels: Sequence[str], path: str | os.PathLike, normalize: bool = True
) -> Path:
    """Heatmap, rows = true class, cols = predicted. ``normalize`` divides each row by its
    support so rare classes are as visible as common ones (an empty row stays 0)."""
    counts = np.asarray(matrix, dtype=float)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"matrix shape {counts.shape} does not match {n} labels")
    values = counts
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(4 + 0.45 * n, 24)
    fig = _figure(figsize=(side + 1.5, side))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, shrink=0.8)
    if n <= _TICK_MAX_LABELS:
        ax.set_xticks(range(n), labels=list(labels), rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels=list(labels), fontsize=8)
    if n <= _ANNOTATE_MAX_LABELS:
        for (i, j), v in np.ndenumerate(values):
            text = f"{v:.2f}" if normalize else f"{int(v)}"
            dark = image.norm(v) > 0.5  # white text on the darker half of the colour map
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    return _save_png(fig, path)


# ---------------------------------------------------------------- report.md


def _cell(text: Any) -> str:
    # A "|" inside a cell would split it into two columns.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: Any) -> str:
    if value is None:
        return "–"
    return f"{float(value):.4f}"


def comparison_table(
    runs: dict[str, dict[str, float]], keys: Sequence[str] | None = None
) -> str:
    """Markdown table: a row per run, a column per metric, 4 decimals, "–" where absent."""
    if keys is None:
        keys = sorted({k for metrics in runs.values() for k in metrics})
    lines = [
        "| run | " + " | ".join(_cell(k) for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, metrics in runs.items():
        cells = [_number(metrics.get(k)) for k in keys]
        lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    path: str | os.PathLike,
    *,
    title: str,
    summary: dict[str, str],
    sections: Sequence[tuple[str, str]],
    plots: Sequence[str | os.PathLike],
) -> Path:
    """report.md: title, a key/value summary table, the sections, then the plots linked
    relative to the report's folder so the run directory can be moved or zipped."""
    path = Path(path)
    parts = [f"# {title}", ""]
    if summary:
        parts += ["| | |", "|---|---|"]
        parts += [f"| {_cell(k)} | {_cell(v)} |" for k, v in summary.items()]
        parts.append("")
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    if plots:
        parts += ["## Plots", ""]
        base = path.parent.resolve()
        for plot in plots:
            rel = Path(os.path.relpath(Path(plot).resolve(), base)).as_posix()
            parts += [f"![{Path(plot).stem}]({rel})", ""]
    return atomic_write_text(path, "\n".join(parts).rstrip() + "\n")
