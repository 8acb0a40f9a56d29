"""The transfer report: did the pre-trained weights help (negative transfer), and did training overfit.

Pure functions over what a run already has (its validation metrics, its baselines' and its history.csv rows);
the result is metrics.json's ``transfer`` block and a report.md section.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from suite.core.stages import metric_mode

MARGIN = 0.01  # a difference smaller than this, in the metric's own units, is "no clear difference"
GAP_GROWTH = 0.05  # the val - train loss gap must grow by this much after the best epoch to flag overfitting


def transfer_block(metric: str, val: Mapping[str, float], baselines: Mapping[str, dict],
                   history: Sequence[Mapping[str, float]]) -> dict:
    """``val``: the fine-tuned model's prefixed validation metrics; ``baselines``: name -> metrics.json's
    baseline entry (its ``val``); ``history``: history.csv rows. ``metric`` picks the winner (its direction
    from the name: loss, mse, cer, wer lower is better)."""
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
            "forgetting": None}


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
    lines.append("- forgetting: not measured (it needs the source task's data; not implemented yet)")
    return "\n".join(lines)
