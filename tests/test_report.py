"""report.py: history round trip, PNG output, markdown table and report links."""
from __future__ import annotations

import math
import re

import pytest

from suite.core.report import (
    comparison_table,
    plot_confusion,
    plot_curves,
    read_history,
    write_history,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ROWS = [
    {"epoch": 1, "stage": 0, "lr": 1e-3, "train/loss": 2.5, "val/loss": 2.0, "val/accuracy": 0.31},
    {"epoch": 2, "stage": 0, "lr": 1e-3, "train/loss": 1.75, "val/loss": 1.5},  # ragged: no accuracy
    {"epoch": 3, "stage": 1, "lr": 1e-4, "train/loss": 1.2, "val/loss": 1.25, "val/accuracy": 0.5625,
     "val/f1": 0.5, "note": "unfroze layer4"},
    {"epoch": 4, "stage": 2, "lr": 1e-5, "train/loss": 0.9, "val/accuracy": 0.7, "val/f1": float("nan")},
]


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_history_round_trip_with_ragged_rows(tmp_path) -> None:
    path = write_history(tmp_path / "history.csv", ROWS)
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["epoch", "stage", "lr", "train/loss", "note", "val/accuracy", "val/f1", "val/loss"]
    assert path.read_text().splitlines()[2].endswith(",,1.5")  # missing accuracy/f1 -> empty cells

    back = read_history(path)
    assert len(back) == len(ROWS)
    for row, original in zip(back, ROWS):
        assert set(row) == set(original)
        for key, value in original.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(row[key])
            else:
                assert row[key] == value and type(row[key]) is type(value), key


def test_plot_curves_writes_png(tmp_path) -> None:
    path = plot_curves(ROWS, tmp_path / "plots" / "curves.png")
    _assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # temp file renamed away
    with pytest.raises(ValueError, match="no train/loss"):
        plot_curves([{"epoch": 1, "lr": 0.1}], tmp_path / "empty.png")


@pytest.mark.parametrize("n,normalize", [(3, True), (3, False), (25, True)])
def test_plot_confusion_writes_png(tmp_path, n: int, normalize: bool) -> None:
    matrix = [[(i * 7 + j * 3) % 5 if i != j else 10 for j in range(n)] for i in range(n)]
    matrix[0] = [0] * n  # a class with no samples must not divide by zero
    path = plot_confusion(matrix, [f"label {i}" for i in range(n)], tmp_path / f"cm{n}.png", normalize)
    _assert_png(path)
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion(matrix, ["a", "b"], tmp_path / "bad.png")


def test_comparison_table_contains_numbers() -> None:
    runs = {"fine-tuned": {"val/accuracy": 0.91234, "val/f1": 0.8}, "scratch": {"val/accuracy": 0.41}}
    table = comparison_table(runs)
    lines = table.strip().splitlines()
    assert lines[0] == "| run | val/accuracy | val/f1 |"
    assert lines[2] == "| fine-tuned | 0.9123 | 0.8000 |"
    assert lines[3] == "| scratch | 0.4100 | – |"
    only = comparison_table(runs, keys=["val/f1"])
    assert "0.9123" not in only and "| fine-tuned | 0.8000 |" in only


def test_write_report_links_plots_relatively(tmp_path) -> None:
    run = tmp_path / "run"
    curves = plot_curves(ROWS, run / "plots" / "curves.png")
    elsewhere = plot_confusion([[1, 0], [0, 1]], ["a", "b"], tmp_path / "shared" / "cm.png")
    table = comparison_table({"fine-tuned": {"val/accuracy": 0.9}})
    path = write_report(
        run / "report.md",
        title="Flowers fine-tune",
        summary={"model": "resnet18", "best epoch": "3"},
        sections=[("Comparison", table), ("Notes", "Stage 1 unfroze layer4.")],
        plots=[curves, elsewhere],
    )
    text = path.read_text()
    assert text.startswith("# Flowers fine-tune\n")
    assert "| model | resnet18 |" in text and "| best epoch | 3 |" in text
    assert "## Comparison" in text and "| fine-tuned | 0.9000 |" in text
    assert text.index("## Comparison") < text.index("## Notes") < text.index("![curves]")
    links = re.findall(r"!\[(\w+)\]\(([^)]+)\)", text)
    assert links == [("curves", "plots/curves.png"), ("cm", "../shared/cm.png")]
    for _, rel in links:  # every link resolves from the report's folder
        assert (path.parent / rel).is_file()


def test_progress_in_a_log_is_a_plain_line_every_interval_never_a_carriage_return(capsys, monkeypatch):
    """Piped to a file or CI (stderr not a terminal): one plain line per `every_s`, not tqdm's frames."""
    from suite.core import progress as P

    clock = iter(range(0, 1000, 3))  # every item takes 3 s
    monkeypatch.setattr(P.time, "monotonic", lambda: next(clock))
    assert list(P.progress(range(10), "scanning train", unit="img", every_s=10)) == list(range(10))
    err = capsys.readouterr().err
    assert "\r" not in err, repr(err)
    assert err.splitlines() == ["scanning train: 4/10 img (0.333 img/s)",
                                "scanning train: 8/10 img (0.333 img/s)"]
    assert list(P.progress(iter(range(3)), "quiet", show=False)) == [0, 1, 2] and capsys.readouterr().err == ""
