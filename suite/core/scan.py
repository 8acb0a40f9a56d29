"""The bookkeeping every dataset scan shares: per-split counts, the first skipped files, notes."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class ScanReport:
    """Per-split counts (``split_type`` instances with found/kept/skipped), the first few skipped files
    as (path, reason), and notes such as a val split held out of train. Modalities subclass it."""

    split_type: ClassVar[type]
    splits: dict = field(default_factory=dict)
    example_pairs: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def split(self, name: str):
        return self.splits.setdefault(name, self.split_type())

    @property
    def found(self) -> int:
        return sum(s.found for s in self.splits.values())

    @property
    def kept(self) -> int:
        return sum(s.kept for s in self.splits.values())

    @property
    def skipped(self) -> Counter:
        return sum((s.skipped for s in self.splits.values()), Counter())

    def examples(self) -> list[str]:
        """'reason: path' for the first few skipped files."""
        return [f"{reason}: {path}" for path, reason in self.example_pairs]
