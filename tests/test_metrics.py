"""metrics.py cross-checked against scikit-learn on random, imbalanced predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from suite.core.metrics import (
    ClassificationEvaluator,
    EvalResult,
    RegressionEvaluator,
    check_metric_names,
    metrics_document,
    write_metrics_json,
)
from suite.errors import UserError

TOL = 1e-6  # torchmetrics computes in float32


def _random_problem(seed: int, c: int, n: int = 600, never_predicted: int = 1):
    """Imbalanced targets; logits biased toward the truth; class ``never_predicted`` has its
    logit pushed to -inf-ish so it is never the argmax although it is in the targets."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(c, 0.7))
    weights[never_predicted] = max(weights[never_predicted], 0.05)
    target = rng.choice(c, size=n, p=weights / weights.sum())
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), target] += rng.uniform(0, 2.5)
    logits[:, never_predicted] = -100.0
    return logits.astype(np.float32), target


def _evaluate(logits: np.ndarray, target: np.ndarray, c: int, batch: int = 97) -> EvalResult:
    ev = ClassificationEvaluator([f"class_{i}" for i in range(c)])
    for s in range(0, len(target), batch):  # uneven batches exercise state accumulation
        ev.update(torch.from_numpy(logits[s : s + batch]), torch.from_numpy(target[s : s + batch]))
    return ev.compute()


@pytest.mark.parametrize("c", [3, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn(seed: int, c: int) -> None:
    logits, target = _random_problem(seed, c)
    pred = logits.argmax(1)
    assert 1 not in pred and 1 in target  # the premise: a class present but never predicted
    result = _evaluate(logits, target, c)
    m = result.metrics

    assert m["accuracy"] == pytest.approx(skm.accuracy_score(target, pred), abs=TOL)
    for name, fn in [("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)]:
        expected = fn(target, pred, average="macro", zero_division=0)
        assert m[name] == pytest.approx(expected, abs=TOL), name

    labels = list(range(c))
    assert result.confusion == skm.confusion_matrix(target, pred, labels=labels).tolist()
    p, r, f, support = skm.precision_recall_fscore_support(target, pred, labels=labels, zero_division=0)
    for i, (label, row) in enumerate(result.per_class.items()):
        assert label == f"class_{i}"
        assert row["precision"] == pytest.approx(p[i], abs=TOL)
        assert row["recall"] == pytest.approx(r[i], abs=TOL)
        assert row["f1"] == pytest.approx(f[i], abs=TOL)
        assert row["support"] == support[i]
    assert result.per_class["class_1"]["precision"] == 0.0  # never predicted -> zero_division=0

    if c > 5:
        top5 = np.argsort(-logits, axis=1)[:, :5]
        expected = float(np.mean((top5 == target[:, None]).any(axis=1)))
        assert m["top5"] == pytest.approx(expected, abs=TOL)
        assert m["top5"] >= m["accuracy"]
    else:
        assert "top5" not in m


def test_class_absent_from_targets_and_predictions_is_left_out_of_macro() -> None:
    """Documented caveat: torchmetrics == sklearn's default labels (observed only), and
    != sklearn with labels=range(C), which averages in a 0 for the absent class."""
    logits, target = _random_problem(seed=3, c=10)
    keep = target != 7
    logits, target = logits[keep], target[keep]
    logits[:, 7] = -100.0
    pred = logits.argmax(1)
    m = _evaluate(logits, target, 10).metrics
    observed = skm.f1_score(target, pred, average="macro", zero_division=0)
    all_labels = skm.f1_score(target, pred, labels=list(range(10)), average="macro", zero_division=0)
    assert m["f1"] == pytest.approx(observed, abs=TOL)
    assert m["f1"] != pytest.approx(all_labels, abs=TOL)


@pytest.mark.parametrize("absent", [False, True])
def test_classification_equals_torchmetrics(absent: bool) -> None:
    """The confusion-matrix evaluator gives torchmetrics' Multiclass* values (it avoids only their import)."""
    from torchmetrics.classification import (MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score,
                                             MulticlassPrecision, MulticlassRecall)

    logits, target = _random_problem(seed=4, c=10)
    if absent:  # class 7 in neither targets nor predictions
        keep = target != 7
        logits, target = logits[keep], target[keep]
        logits[:, 7] = -100.0
    result = _evaluate(logits, target, 10)
    x, y = torch.from_numpy(logits), torch.from_numpy(target)
    kw = {"num_classes": 10, "zero_division": 0}
    expected = {"accuracy": MulticlassAccuracy(10, average="micro")(x, y),
                "top5": MulticlassAccuracy(10, top_k=5, average="micro")(x, y),
                **{name: cls(average="macro", **kw)(x, y) for name, cls in
                   (("precision", MulticlassPrecision), ("recall", MulticlassRecall), ("f1", MulticlassF1Score))}}
    for name, value in expected.items():
        assert result.metrics[name] == pytest.approx(float(value), abs=TOL), name
    per = {name: cls(average="none", **kw)(x, y) for name, cls in
           (("precision", MulticlassPrecision), ("recall", MulticlassRecall), ("f1", MulticlassF1Score))}
    for i, row in enumerate(result.per_class.values()):
        assert all(row[k] == pytest.approx(float(per[k][i]), abs=TOL) for k in per)
    assert result.confusion == MulticlassConfusionMatrix(10)(x, y).tolist()


def test_classification_run_does_not_import_torchmetrics() -> None:
    """Its import (every domain: scipy.signal, transformers) was a quarter of a short classification run."""
    import subprocess
    import sys

    code = ("import sys, torch; from suite.core.metrics import ClassificationEvaluator as E; e = E(list('abcdef')); "
            "e.update(torch.randn(8, 6), torch.arange(8) % 6, loss=1.0); e.compute(); "
            "assert 'torchmetrics' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_top5_is_counted_apart_from_top1_after_an_all_correct_first_batch() -> None:
    """torchmetrics' automatic compute groups merged top-5 into top-1 when the first batch was all correct."""
    ev = ClassificationEvaluator([str(i) for i in range(10)])
    ev.update(torch.eye(10)[:4] * 5, torch.arange(4))  # all correct: top-1 and top-5 states equal here
    wrong = torch.zeros(4, 10)
    wrong[:, 9], wrong[:, 0] = 5.0, 1.0  # predicted 9, the true class 0 second
    ev.update(wrong, torch.zeros(4, dtype=torch.long))
    m = ev.compute().metrics
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["top5"] == pytest.approx(1.0)


def test_loss_is_sample_weighted_mean() -> None:
    ev = ClassificationEvaluator(["a", "b"])
    ev.update(torch.tensor([[1.0, 0.0]] * 3), torch.tensor([0, 0, 1]), loss=2.0)
    ev.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), loss=torch.tensor(6.0))
    ev.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), loss=10.0, n=4)
    m = ev.compute().metrics
    assert m["loss"] == pytest.approx((2.0 * 3 + 6.0 * 1 + 10.0 * 4) / 8)
    assert m["accuracy"] == pytest.approx(4 / 5)


def test_evaluator_rejects_bad_input() -> None:
    ev = ClassificationEvaluator(["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        ev.update(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        ev.update(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(UserError, match="no samples"):
        ev.compute()
    with pytest.raises(ValueError, match="unique"):
        ClassificationEvaluator(["a", "a"])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("column", [False, True])
def test_regression_matches_sklearn(seed: int, column: bool) -> None:
    rng = np.random.default_rng(seed)
    target = rng.normal(3.0, 2.0, size=257).astype(np.float32)
    pred = (target + rng.normal(0, 0.7, size=257)).astype(np.float32)
    ev = RegressionEvaluator()
    for s in range(0, 257, 50):
        p = torch.from_numpy(pred[s : s + 50])
        ev.update(p[:, None] if column else p, torch.from_numpy(target[s : s + 50]), loss=1.5)
    result = ev.compute()
    assert result.metrics["mse"] == pytest.approx(skm.mean_squared_error(target, pred), rel=1e-5)
    assert result.metrics["mae"] == pytest.approx(skm.mean_absolute_error(target, pred), rel=1e-5)
    assert result.metrics["loss"] == pytest.approx(1.5)
    assert result.per_class == {} and result.confusion is None
    with pytest.raises(ValueError, match="differ"):
        ev.update(torch.zeros(3), torch.zeros(4))


def test_check_metric_names() -> None:
    check_metric_names(["accuracy", "val/f1", "top5", "loss"], "classification")
    check_metric_names(["mse", "test/mae"], "regression")
    with pytest.raises(UserError, match=r"Did you mean 'accuracy'\?.*Valid: accuracy, precision"):
        check_metric_names(["acuracy"], "classification")
    with pytest.raises(UserError, match=r"unknown regression metric 'f1'.*Valid: mse, mae"):
        check_metric_names(["f1"], "regression")
    with pytest.raises(UserError, match="more than 5 classes"):
        check_metric_names(["top5"], "classification", num_classes=3)
    with pytest.raises(UserError, match="split prefix"):
        check_metric_names(["valid/f1"], "classification")
    check_metric_names(["map50", "val/map50_95"], "detection")
    with pytest.raises(UserError, match=r"unknown detection metric 'mse'.*Valid: map50"):
        check_metric_names(["mse"], "detection")
    with pytest.raises(ValueError):
        check_metric_names(["mse"], "speech")


def test_metrics_document_round_trip(tmp_path) -> None:
    logits, target = _random_problem(seed=5, c=3)
    val = _evaluate(logits, target, 3)
    test = _evaluate(logits[:100], target[:100], 3)
    scratch = EvalResult(metrics={"accuracy": 0.5, "f1": float("nan")})
    doc = metrics_document("classification", val, test, baselines={"scratch": {"val": scratch.prefixed("val")}})
    path = write_metrics_json(tmp_path / "run" / "metrics.json", doc)

    text = path.read_text()
    assert text.startswith('{\n  "task": "classification"')  # indent=2
    loaded = json.loads(text)
    assert set(loaded) >= {"task", "val", "test", "per_class", "baselines"}
    assert loaded["val"]["val/accuracy"] == val.metrics["accuracy"]
    assert loaded["test"]["test/f1"] == test.metrics["f1"]
    assert all(k.startswith("val/") for k in loaded["val"])
    assert loaded["per_class"] == val.per_class
    assert loaded["confusion"] == val.confusion
    assert loaded["baselines"]["scratch"]["val"] == {"val/accuracy": 0.5, "val/f1": None}  # NaN -> null
    assert list(tmp_path.joinpath("run").iterdir()) == [path]  # no temp file left behind


def test_metrics_document_regression_without_test(tmp_path) -> None:
    val = EvalResult(metrics={"mse": np.float32(0.25), "mae": torch.tensor(0.5)})
    loaded = json.loads(write_metrics_json(tmp_path / "m.json", metrics_document("regression", val)).read_text())
    assert loaded == {
        "task": "regression",
        "val": {"val/mse": 0.25, "val/mae": 0.5},
        "test": {},
        "per_class": {},
        "confusion": None,
        "baselines": {},
    }


def test_transcription_error_rates_are_corpus_level() -> None:
    from suite.core.metrics import TranscriptionEvaluator

    ev = TranscriptionEvaluator()
    ev.update(["the cat sat", "go"], ["the cat sat down", "go"])  # 1 deletion in 5 words
    ev.update(["yes"], ["yes no"])  # 1 deletion in 2 words -> 2 / 7 overall
    r = ev.compute()
    assert r.metrics["wer"] == pytest.approx(2 / 7)
    # characters: "the cat sat" vs "the cat sat down" -> 5 deletions (" down"); "yes" vs "yes no" -> 3
    assert r.metrics["cer"] == pytest.approx(8 / (16 + 2 + 6))
    assert r.extra["samples"][0] == ("the cat sat down", "the cat sat")
    with pytest.raises(UserError):
        TranscriptionEvaluator().compute()
