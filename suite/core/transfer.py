"""The transfer report: did the pre-trained weights help (negative transfer), did training overfit, and what did
the model forget of its source task.

Pure functions over what a run already has (its validation metrics, its baselines' and its history.csv rows);
the result is metrics.json's ``transfer`` block and a report.md section.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from suite.core.stages import metric_mode
from suite.errors import UserError

MARGIN = 0.01  # a difference smaller than this, in the metric's own units, is "no clear difference"
GAP_GROWTH = 0.05  # the val - train loss gap must grow by this much after the best epoch to flag overfitting


def transfer_block(metric: str, val: Mapping[str, float], baselines: Mapping[str, dict],
                   history: Sequence[Mapping[str, float]], source: Mapping | None = None) -> dict:
    """``val``: the fine-tuned model's prefixed validation metrics; ``baselines``: name -> metrics.json's
    baseline entry (its ``val``); ``history``: history.csv rows. ``metric`` picks the winner (its direction
    from the name: loss, mse, cer, wer lower is better). ``source``: the modality's evaluate_source result."""
    sign = 1.0 if metric_mode(metric) == "max" else -1.0
    comparisons = {}
    for name, doc in baselines.items():
        theirs = doc.get("val", {}).get(metric)
        if theirs is None or metric not in val:
            continue
        gain = sign * (float(val[metric]) - float(theirs))
        comparisons[name] = {"fine_tuned": float(val[metric]), "baseline": float(theirs), "gain": gain,
                             "verdict": _verdict(name, metric, gain)}
    return {"metric": metric, "comparisons": comparisons, "overfitting": overfitting(history, metric),
            "forgetting": forgetting(source) if source else None}


def forgetting(source: Mapping) -> dict:
    """The source task's metrics before and after fine-tuning, the drop of each (positive: worse after) and a
    verdict on the top-1 accuracy."""
    before, after = source["before"], source["after"]
    drop = {k: (float(after[k]) - float(before[k])) if k == "loss" else (float(before[k]) - float(after[k]))
            for k in before if k in after}
    acc = drop.get("accuracy", 0.0)
    where = f"{source['samples']} samples of the source task's {source['classes']} classes ({source['source']})"
    if acc >= MARGIN:
        verdict = (f"forgetting: source accuracy fell from {before['accuracy']:.4f} to {after['accuracy']:.4f} on "
                   f"{where} (freeze more groups, lower the LR or use layer decay to keep more)")
    elif acc <= -MARGIN:
        verdict = f"no forgetting: source accuracy rose from {before['accuracy']:.4f} to {after['accuracy']:.4f} on {where}"
    else:
        verdict = f"source accuracy kept ({before['accuracy']:.4f} before, {after['accuracy']:.4f} after) on {where}"
    return {**dict(source), "drop": drop, "verdict": verdict}


def _verdict(name: str, metric: str, gain: float) -> str:
    if gain >= MARGIN:
        return f"transfer helped: the fine-tuned model beats {name} by {gain:.4f} {metric}"
    if gain <= -MARGIN:
        return (f"negative transfer: {name} beats the fine-tuned model by {-gain:.4f} {metric}; the pre-trained "
                "weights hurt on this data (unfreeze more groups, lower the LR, or start from other weights)")
    return f"no clear difference from {name} (within {MARGIN} {metric}): the pre-trained weights did not help here"


def overfitting(history: Sequence[Mapping[str, float]], metric: str) -> dict:
    """Per epoch the val - train loss gap (where both losses are logged), the epoch where ``metric`` was best,
    and a flag when after that epoch the gap grew while the metric fell."""
    rows = [r for r in history if metric in r]
    if not rows:
        return {"epochs": 0, "best_epoch": None, "gap": [], "flag": False, "note": f"no {metric} in history.csv"}
    sign = 1.0 if metric_mode(metric) == "max" else -1.0
    best = max(range(len(rows)), key=lambda i: (sign * float(rows[i][metric]), -i))  # the first of equal bests
    gap = [float(r["val/loss"]) - float(r["train/loss"]) if "val/loss" in r and "train/loss" in r else None
           for r in rows]
    last = rows[-1]
    fell = sign * (float(rows[best][metric]) - float(last[metric]))
    grew = (gap[-1] - gap[best]) if gap[-1] is not None and gap[best] is not None else None
    flag = best < len(rows) - 1 and fell >= MARGIN and grew is not None and grew >= GAP_GROWTH
    if flag:
        note = (f"overfitting: after epoch {best + 1} the val - train loss gap grew from {gap[best]:.3f} to "
                f"{gap[-1]:.3f} while {metric} fell from {float(rows[best][metric]):.4f} to {float(last[metric]):.4f}"
                f"; best.safetensors holds epoch {best + 1} (fewer epochs, more augmentation or early stopping)")
    elif best == len(rows) - 1:
        note = f"{metric} was still improving at the last epoch ({best + 1}): more epochs may help"
    else:
        note = (f"{metric} was best at epoch {best + 1} of {len(rows)}; "
                + ("no growing train/val gap after it" if grew is not None else "no val/loss logged to compare"))
    return {"epochs": len(rows), "best_epoch": best + 1, "gap": gap, "flag": flag, "note": note}


def transfer_section(block: dict) -> str:
    """report.md's Transfer section."""
    lines = [f"- {c['verdict']} ({c['fine_tuned']:.4f} vs {c['baseline']:.4f})" for c in block["comparisons"].values()]
    if not lines:
        lines.append("- no baseline to compare with (`eval.compare: [scratch]` adds one)")
    lines.append(f"- {block['overfitting']['note']}")
    f = block.get("forgetting")
    if f is None:
        lines.append("- forgetting: not measured (`eval.source:` names the source task's data)")
    else:
        lines.append(f"- {f['verdict']}")
        rows = ["| source task | " + " | ".join(f["before"]) + " |", "|---" * (len(f["before"]) + 1) + "|"]
        rows += [f"| {when} | " + " | ".join(f"{f[when][k]:.4f}" for k in f["before"]) + " |"
                 for when in ("before", "after")]
        rows.append("| drop | " + " | ".join(f"{f['drop'][k]:+.4f}" for k in f["before"]) + " |")
        lines += ["", *rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- forgetting: the source model


@dataclass
class SourceRun:
    """The suite run a ``best.safetensors`` came from: its head's labels and its recipe's model and data keys."""

    labels: list[str]
    model: dict
    data: dict


def source_run(weights_file: str, arch: str, hint: str) -> SourceRun:
    """The run folder two levels above ``weights_file`` (RUN/checkpoints/best.safetensors), or a UserError."""
    import yaml

    run_dir = Path(weights_file).resolve().parent.parent
    labels_file, recipe_file = run_dir / "labels.json", run_dir / "recipe.yaml"
    if not (labels_file.is_file() and recipe_file.is_file()):
        raise UserError(f"eval.source: {weights_file} is not a suite run's checkpoint (no labels.json and recipe.yaml "
                        f"in {run_dir}), so its head's classes are unknown; {hint}")
    saved = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}
    model = saved.get("model") or {}
    if model.get("arch") != arch:
        raise UserError(f"eval.source: {weights_file} is a {model.get('arch')} run, the recipe trains {arch}")
    return SourceRun(list(json.loads(labels_file.read_text(encoding="utf-8"))), model, saved.get("data") or {})


def with_backbone(source, tuned, source_heads: Sequence[str], tuned_heads: Sequence[str]):
    """A copy of the ``source`` model (its own head) with every other tensor from ``tuned``."""
    body = {k: v for k, v in tuned.state_dict().items() if not k.startswith(tuple(tuned_heads))}
    after = copy.deepcopy(source)
    missing, unexpected = after.load_state_dict(body, strict=False)
    stray = [k for k in missing if not k.startswith(tuple(source_heads))]
    if unexpected or stray:
        raise RuntimeError(f"the fine-tuned backbone does not fit the source model: unexpected {unexpected[:3]}, "
                           f"missing {stray[:3]}")
    return after


def source_scores(logits, targets, n_classes: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy and cross-entropy of the source head over the source samples."""
    import torch
    from torchmetrics.functional.classification import multiclass_accuracy

    acc = {k: float(multiclass_accuracy(logits, targets, num_classes=n_classes, top_k=min(k, n_classes),
                                        average="micro")) for k in (1, 5)}
    return {"accuracy": acc[1], "top5_accuracy": acc[5],
            "loss": float(torch.nn.functional.cross_entropy(logits, targets))}
