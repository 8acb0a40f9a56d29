"""What every trainer of the freeze schedule shares, whoever runs the epochs (our loop or a library's):
where the run is, which epoch is best, history.csv, the per-epoch log line and callbacks, checkpoint names.

``fit()`` (suite.core.loop) and a library-owned trainer (Ultralytics for YOLO) both end every epoch with
``end_epoch``, so best-metric selection, early stopping and the files they write are the same for all.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from suite.errors import UserError

LOWER_IS_BETTER = ("loss", "mse", "mae", "wer", "cer")
LAST = Path("checkpoints") / "last.pt"  # full state for --resume (torch.save of tensors and plain containers)
BEST = Path("checkpoints") / "best.safetensors"  # the best epoch's weights under the library's own names
HISTORY = "history.csv"


def metric_mode(key: str) -> str:
    return "min" if key.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "max"


def better(value: float, ref: float | None, mode: str) -> bool:
    return ref is None or (value < ref if mode == "min" else value > ref)


@dataclass
class Position:
    """Where a run is: the next stage and epoch within it, epochs done overall, and (after a stop signal)
    the batches of the current epoch already trained on, with their summed loss."""

    stage: int = 0
    stage_epoch: int = 0
    epoch: int = 0
    best: float | None = None
    best_epoch: int = -1
    stage_best: float | None = None
    stale: int = 0  # epochs without improvement in this stage
    batch: int = 0  # batches of the current epoch done (a checkpoint written inside an epoch)
    loss_sum: float = 0.0  # of those batches' finite losses, for the epoch's train/loss
    loss_count: int = 0
    history: list[dict] = field(default_factory=list)

    def state(self) -> dict:
        """Plain values for last.pt (history is saved beside it)."""
        return {k: v for k, v in vars(self).items() if k != "history"}

    def next_stage(self) -> None:
        self.stage, self.stage_epoch, self.stage_best, self.stale = self.stage + 1, 0, None, 0


@dataclass
class Selection:
    """How the best epoch is chosen and when a stage stops early."""

    metric: str = "val/loss"
    patience: int | None = None  # epochs without gain in this stage before moving on

    @property
    def mode(self) -> str:
        return metric_mode(self.metric)


def end_epoch(pos: Position, row: dict, select: Selection, stage_epochs: int, run_dir: Path,
              save_best: Callable[[], None], save_last: Callable[[], None] = lambda: None,
              callbacks: Sequence[Callable[[Position], None]] = (), writer=None, write: bool = True) -> bool:
    """Record a finished epoch, in this order: history row and position, best checkpoint (``save_best``
    when the metric improved), early stop, ``save_last`` (resume state), history.csv, the log line, the
    callbacks. Returns True when the stage stops early (no gain for ``select.patience`` epochs)."""
    from suite.core import report

    pos.history.append(row)
    pos.epoch, pos.stage_epoch = pos.epoch + 1, pos.stage_epoch + 1
    stop = track(pos, row, select, save_best)
    if stop:
        pos.stage_epoch = stage_epochs
    save_last()
    if write:  # False on DDP ranks other than 0: one process writes the run directory
        report.write_history(run_dir / HISTORY, pos.history)
        log_epoch(row, writer, stop, select)
    for callback in callbacks:
        callback(pos)
    return stop


def track(pos: Position, metrics: dict[str, float], select: Selection, save_best: Callable[[], None]) -> bool:
    """Best checkpoint over the whole run; True when this stage stalls (early stop)."""
    key = select.metric
    if key not in metrics:
        valid = [k for k in metrics if "/" in k and not k.startswith("train/")]
        raise UserError(f"metric '{key}' is not computed for this task; choose one of: {', '.join(valid)}")
    value = metrics[key]
    if better(value, pos.best, select.mode):
        pos.best, pos.best_epoch = value, pos.epoch
        save_best()
    if better(value, pos.stage_best, select.mode):
        pos.stage_best, pos.stale = value, 0
    else:
        pos.stale += 1
    return select.patience is not None and pos.stale >= select.patience


def log_epoch(row: dict, writer, stopped: bool, select: Selection) -> None:
    from tqdm import tqdm

    if writer is not None:
        for key, value in row.items():
            if key not in ("epoch", "stage") and isinstance(value, (int, float)):
                writer.add_scalar(key, value, row["epoch"])
        writer.flush()
    shown = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k not in ("epoch", "stage") and isinstance(v, float))
    note = f" (no gain in {select.metric} for {select.patience} epochs: next stage)" if stopped else ""
    tqdm.write(f"epoch {row['epoch']} stage {row['stage']}: {shown}{note}")


def tensorboard(path: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a broken install should not stop training
        return None
    return SummaryWriter(str(path), purge_step=purge_step)


# ----------------------------------------------------------------------------- stop signals


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after writing a checkpoint; `suite run --resume DIR` continues."""

    def __init__(self, signum: int, run_dir: Path, where: str, again: str | None = None):
        self.signum, self.run_dir, self.where = signum, Path(run_dir), where
        self.again = again or f"suite run --resume {run_dir}"  # the command that continues
        super().__init__(f"interrupted ({signal.Signals(signum).name}) {where}; continue with: {self.again}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


class StopRequest:
    """Set by the first SIGTERM/SIGINT while training; the trainer checks it after each optimizer step."""

    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def number(self) -> int:
        """The signal's number, for the exit code: SIGTERM when it reached another DDP rank, not this one."""
        return self.signum if self.signum is not None else int(signal.SIGTERM)


_REQUEST = StopRequest()  # never set outside stop_signals()


def stop_requested() -> StopRequest:
    """The request the innermost ``stop_signals()`` sets (one that is never set, outside it)."""
    return _REQUEST


def _output_to_devnull() -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)


@contextlib.contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """While training: the first SIGTERM or SIGINT asks the trainer to stop after the current step (it writes
    a checkpoint, then raises Interrupted); a second one stops at once (KeyboardInterrupt). Outside the main
    thread signals cannot be caught, and the request simply never comes. A signal the process was started
    ignoring (SIGINT in a shell's background job, nohup's SIGHUP) stays ignored."""
    global _REQUEST
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame):
        if request:
            raise KeyboardInterrupt  # the second signal: stop now, without a checkpoint
        request.signum = signum
        from tqdm import tqdm

        try:
            tqdm.write(f"{signal.Signals(signum).name} received: finishing the current step and writing a "
                       "checkpoint (send it again to stop at once)")
        except OSError:  # the terminal is gone (a hangup passed on as SIGTERM: writes fail with EIO)
            _output_to_devnull()  # the rest of the run writes nowhere instead of failing before its checkpoint

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)
                if signal.getsignal(s) is not signal.SIG_IGN}
    outer, _REQUEST = _REQUEST, request
    try:
        yield request
    finally:
        _REQUEST = outer
        for s, h in previous.items():
            signal.signal(s, h)
