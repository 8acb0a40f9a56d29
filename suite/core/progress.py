"""Progress for long work: tqdm's bar on a terminal (a widget in a notebook); plain lines in a log.

Piped to a file or run in CI, a tqdm bar writes a carriage-return frame many times a second, and a log of a
100k-image scan holds thousands of them. ``progress`` keeps the bar for a terminal and otherwise prints one
plain line every ``every_s`` seconds (none for work that ends sooner), with the count and the rate.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def on_terminal(stream=None) -> bool:
    """Whether ``stream`` (default stderr, where progress goes) is a terminal."""
    try:
        return (stream or sys.stderr).isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", every_s: float = 10.0,
             show: bool = True) -> Iterator[T]:
    """``items``, reporting progress to stderr while they are consumed. ``show`` False: silent (small work)."""
    if not show:
        yield from items
        return
    if on_terminal() or "ipykernel" in sys.modules:  # a notebook: tqdm.auto draws its widget
        yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    began = last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total is not None else ""
            print(f"{desc}: {done}{of} {unit} ({done / (now - began):.3g} {unit}/s)", file=sys.stderr, flush=True)
