"""Stop signals and disk faults: a run stopped by SIGTERM/SIGINT writes the checkpoint of its exact position and
resumes to the same weights, bit for bit; a refused write leaves the previous checkpoint intact; a kill at
any moment leaves a loadable last.pt."""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from suite.core import checkpoint
from suite.core.loop import _Trainer
from suite.core.report import read_history
from suite.core.stages import Interrupted, stop_signals
from suite.errors import DiskError
from suite.runner import run

RECIPE = """\
name: stop
task: image-classification
model: {{arch: resnet18, weights: none, head: {{hidden: [16], dropout: 0.2}}}}
data: {{format: synthetic:shapes, root: {root}, image_size: 32, resize: 40, augment: standard,
        synthetic: {{classes: [circle, square, star], train_per_class: {n}, val_per_class: 2, size: 40}}}}
schedule:
  - {{epochs: 2, train: head, lr: 1.0e-3}}
  - {{epochs: 1, train: all, lr: 3.0e-4}}
train: {{batch_size: 2, ema: 0.9, seed: 3}}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop")
    path = root / "r.yaml"
    path.write_text(RECIPE.format(root=root / "data", n=4))  # 12 images: 6 steps an epoch
    return path


def _same_files(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "checkpoints" / "best.safetensors")), load_file(str(b / "checkpoints" / "best.safetensors"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    last_a = torch.load(a / "checkpoints" / "last.pt", weights_only=True)["model"]
    last_b = torch.load(b / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)
    assert read_history(a / "history.csv", times=False) == read_history(b / "history.csv", times=False)


@pytest.mark.parametrize("workers, stop_after, position", [(0, 9, (1, 3)), (2, 6, (1, 0))])
def test_sigterm_inside_an_epoch_checkpoints_there_and_resumes_bitwise(recipe, tmp_path, monkeypatch, workers,
                                                                         stop_after, position):
    """Stopped at the 3rd of 6 steps of epoch 2, or with 2 loader workers at the end of epoch 1. The workers are
    kept across epochs (persistent), each reseeded from (seed, epoch, worker) at an epoch's first sample: the
    resumed run's fresh workers draw epoch 2's augmentations as the first run's kept ones did, and the kept
    loader's own generator leaves the global RNG (the head's dropout) as a resumed run finds it."""
    over = [f"data.num_workers={workers}"]
    whole = run(recipe, over, tmp_path / "whole")
    steps, real = [0], _Trainer._step

    def step_then_signal(self):
        real(self)
        steps[0] += 1
        if steps[0] == stop_after:  # 9: augmentation, dropout and EMA all mid-way through epoch 2
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(_Trainer, "_step", step_then_signal)
    with pytest.raises(Interrupted) as stopped:
        run(recipe, over, tmp_path / "cut")
    monkeypatch.undo()
    assert stopped.value.exit_code == 143 and stopped.value.run_dir == tmp_path / "cut"
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["position"]["epoch"], saved["position"]["batch"]) == position
    assert saved["ema"] is not None and saved["optimizer"]["state"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back

    resumed = run(None, resume=tmp_path / "cut")
    _same_files(whole.run_dir, resumed.run_dir)
    assert resumed.metrics["val"] == whole.metrics["val"]


def test_a_second_sigint_stops_at_once():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (whatever ran pytest)
    try:
        with stop_signals() as request:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs between bytecodes
            assert request.signum == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell's background job: SIGINT stays ignored
        with stop_signals() as request:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert not request
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_stop_whose_terminal_is_gone_still_stops_at_the_step(monkeypatch):
    """After a hangup (passed on as SIGTERM by `suite run --nproc`) writes to the terminal fail with EIO: the
    stop request still holds, and the output goes to /dev/null instead of failing the run before its
    checkpoint."""
    from tqdm import tqdm

    from suite.core import stages

    def gone(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    detached = []
    monkeypatch.setattr(tqdm, "write", gone)
    monkeypatch.setattr(stages, "_output_to_devnull", lambda: detached.append(True))
    with stop_signals() as request:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert request.signum == signal.SIGTERM and detached == [True]


def test_cli_sigterm_exits_143_with_the_resume_hint_and_resume_finishes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path / "data", n=8))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-c", "from suite.cli import main; main()"]
    proc = subprocess.Popen([*cmd, "run", str(recipe), "--out", str(out)], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 300
    while not (out / "labels.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)  # labels.json is written just before training starts
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and time.monotonic() - sent < 30
    assert f"interrupted; continue with: suite run --resume {out}" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    done = subprocess.run([*cmd, "run", "--resume", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + 3  # every epoch, once


# ----------------------------------------------------------------------------- disk faults


def test_a_full_disk_during_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    first = {"position": {"epoch": 1}, "model": {"w": torch.arange(1000.0)}}
    checkpoint.save_state(path, first)

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskError) as err:
        checkpoint.save_state(path, {"position": {"epoch": 2}, "model": {"w": torch.zeros(2**20)}})
    message = str(err.value)
    assert "no space left" in message and str(path.parent) in message and "needs about 4.0 MiB" in message
    assert "\n" not in message and "--resume" in message
    monkeypatch.undo()
    assert torch.equal(checkpoint.load_state(path)["model"]["w"], first["model"]["w"])
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind


def test_a_run_whose_disk_fills_stops_with_exit_2_and_resumes(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "save", _failing_save(torch.save, 3))
    from suite.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", str(recipe), "--out", str(tmp_path / "run"), "-s", "train.checkpoint_every_s=0"])  # each epoch
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "no space left" in err and "checkpoints" in err
    monkeypatch.undo()
    saved = checkpoint.load_state(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["position"]["epoch"] == 2  # epochs 1 and 2 were saved, the third write failed
    result = run(None, resume=tmp_path / "run")
    assert len(result.metrics["val"]) > 0
    assert len((tmp_path / "run" / "history.csv").read_text().strip().splitlines()) == 1 + 3


def _failing_save(real, nth: int):
    count = [0]

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "position" in obj:
            count[0] += 1
            if count[0] == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    return save


def test_fifty_kills_at_random_moments_leave_a_complete_checkpoint(tmp_path):
    """A writer process saving ever newer checkpoints, killed (SIGKILL) at 50 random moments: each time last.pt
    loads, and holds either the state before the interrupted write or the one it was writing."""
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    # built here: after a fork, the child must not run torch ops (an OpenMP pool does not survive fork)
    states = [{"position": {"epoch": n}, "model": {"w": torch.full((50_000,), float(n))}} for n in range(1, 400)]
    counter = 0
    for _ in range(50):
        pid = os.fork()
        if pid == 0:  # the child: a training loop that does nothing but write checkpoints
            try:
                for state in states[counter:]:
                    checkpoint.save_state(path, state)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.01, 0.25))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if not path.exists():
            continue
        state = checkpoint.load_state(path)
        n = state["position"]["epoch"]
        assert n >= counter and torch.equal(state["model"]["w"], torch.full((50_000,), float(n)))
        counter = n
    assert counter > 0
    for leftover in tmp_path.glob(".last.pt.*.tmp"):  # a killed writer's temp file: never the checkpoint
        leftover.unlink()
