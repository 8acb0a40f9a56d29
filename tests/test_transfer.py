"""The transfer report: negative transfer verdicts and the overfitting flag, from metrics and history rows."""
from suite.core.transfer import overfitting, transfer_block, transfer_section


def rows(accs, train_losses, val_losses):
    return [{"epoch": i + 1, "val/accuracy": a, "train/loss": t, "val/loss": v}
            for i, (a, t, v) in enumerate(zip(accs, train_losses, val_losses))]


def test_verdicts_follow_the_metric_direction():
    history = rows([0.5, 0.7], [1.0, 0.8], [1.1, 0.9])
    block = transfer_block("val/accuracy", {"val/accuracy": 0.70}, {"scratch": {"val": {"val/accuracy": 0.40}}},
                           history)
    c = block["comparisons"]["scratch"]
    assert c["gain"] == 0.7 - 0.4 and c["verdict"].startswith("transfer helped")
    worse = transfer_block("val/accuracy", {"val/accuracy": 0.40}, {"scratch": {"val": {"val/accuracy": 0.55}}},
                           history)
    assert worse["comparisons"]["scratch"]["verdict"].startswith("negative transfer")
    same = transfer_block("val/accuracy", {"val/accuracy": 0.500}, {"scratch": {"val": {"val/accuracy": 0.505}}},
                          history)
    assert same["comparisons"]["scratch"]["verdict"].startswith("no clear difference")
    cer = transfer_block("val/cer", {"val/cer": 0.10}, {"scratch": {"val": {"val/cer": 0.30}}}, [])
    assert cer["comparisons"]["scratch"]["gain"] > 0  # lower CER is better
    text = transfer_section(block)
    assert "transfer helped" in text and "forgetting: not measured" in text and block["forgetting"] is None


def test_overfitting_is_flagged_when_the_gap_grows_while_the_metric_falls():
    over = overfitting(rows([0.6, 0.8, 0.7, 0.65], [1.0, 0.5, 0.2, 0.05], [1.1, 0.7, 0.9, 1.2]), "val/accuracy")
    assert over["flag"] and over["best_epoch"] == 2 and over["note"].startswith("overfitting: after epoch 2")
    assert [round(g, 2) for g in over["gap"]] == [0.1, 0.2, 0.7, 1.15]
    rising = overfitting(rows([0.5, 0.6, 0.7], [1.0, 0.9, 0.8], [1.0, 0.9, 0.8]), "val/accuracy")
    assert not rising["flag"] and "still improving" in rising["note"]
    flat_gap = overfitting(rows([0.6, 0.8, 0.7], [1.0, 0.5, 0.45], [1.1, 0.6, 0.56]), "val/accuracy")
    assert not flat_gap["flag"] and "no growing train/val gap" in flat_gap["note"]
    detection = overfitting([{"val/map50_95": 0.1, "train/loss": 1.0}, {"val/map50_95": 0.05, "train/loss": 0.5}],
                            "val/map50_95")
    assert not detection["flag"] and detection["gap"] == [None, None] and "no val/loss" in detection["note"]
