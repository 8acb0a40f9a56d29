"""`suite run --nproc 2 --device cpu`: torchrun + DDP with gloo. Both ranks end with the same weights (the run
checks it and says so), only rank 0 writes the run directory, and with BatchNorm frozen (a head-only stage) the
result equals a single-process run with the same global batch to float rounding."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from suite.core.report import read_history
from suite.runner import run

RECIPE = """\
name: ddp
task: image-classification
model: {{arch: resnet18, weights: none}}
data:
  format: synthetic:shapes
  root: {root}
  synthetic: {{classes: [circle, square, triangle], train_per_class: 8, val_per_class: 3, size: 32}}
  image_size: 32
  resize: 32
  augment: none
schedule: [{{epochs: 2, train: head, lr: 1.0e-2}}]
train: {{batch_size: 8, seed: 0}}
export: {{onnx: false}}
"""


def test_two_gloo_processes_train_like_one(tmp_path):
    """3 batches an epoch, accumulated in windows of 2: from the second window on, a window's first batch keeps
    its gradients local (DDP no_sync) and its last all-reduces them."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path / "data").replace("seed: 0}", "seed: 0, grad_accum: 2}"))
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "suite.cli", "run", str(recipe), "--nproc", "2", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "training on cpu x 2 processes (DDP, global batch 8)" in log
    assert "2 ranks agree: 62 parameter tensors" in log  # rank 0 compared every rank's checksums
    assert log.count("run directory:") == 1 and not (tmp_path / "runs").exists()  # one writer, one folder
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.safetensors", "last.pt"]

    single = run(recipe, [], tmp_path / "single", device="cpu")
    plain, ddp = read_history(tmp_path / "single" / "history.csv", False), read_history(out / "history.csv", False)
    for a, b in zip(plain, ddp, strict=True):
        assert all(b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6) for k in a), (a, b)
    assert single.metrics["val"]["val/accuracy"] == pytest.approx(
        read_history(out / "history.csv")[-1]["val/accuracy"])
    x, y = load_file(tmp_path / "single" / "checkpoints" / "best.safetensors"), load_file(out / "checkpoints" /
                                                                                         "best.safetensors")
    assert all(torch.allclose(x[k].float(), y[k].float(), atol=1e-5) for k in x)

    # Stopped inside epoch 2 (SIGTERM to the launcher, which passes it on once), then --resume under DDP: the
    # same history (the epoch's loss over both ranks' batches) and weights as the uninterrupted DDP run above.
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(STOP_AFTER_STEP)
    cut = tmp_path / "cut"
    stopped = subprocess.run([sys.executable, "-m", "suite.cli", "run", str(recipe), "--nproc", "2", "--device", "cpu",
                              "--out", str(cut)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                             env={**env, "PYTHONPATH": str(tmp_path / "hook"), "STOP_AFTER_STEP": "3"})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    hint = f"interrupted; continue with: suite run --resume {cut} --nproc 2 --device cpu"
    assert (stopped.stdout + stopped.stderr).count("interrupted; continue with") == 1 and hint in stopped.stderr
    assert torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["position"]["batch"] == 2
    again = subprocess.run([sys.executable, "-m", "suite.cli", "run", "--resume", str(cut), "--nproc", "2", "--device",
                            "cpu"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_history(cut / "history.csv", False) == read_history(out / "history.csv", False)
    x, y = load_file(out / "checkpoints" / "best.safetensors"), load_file(cut / "checkpoints" / "best.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)


# Loaded by every process of the stopped run above (PYTHONPATH): rank 0 signals the launcher (its grandparent:
# worker -> torchrun -> `suite run --nproc`) after its Nth optimizer step and waits for the signal to come back
# round, so the stop lands at that step.
STOP_AFTER_STEP = """\
import os, signal, time
if os.environ.get("RANK") == "0" and os.environ.get("STOP_AFTER_STEP"):
    from suite.core import loop
    real, steps = loop._Trainer._step, [0]
    def _step(self):
        real(self)
        steps[0] += 1
        if steps[0] == int(os.environ["STOP_AFTER_STEP"]):
            launcher = int(open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()[1])
            os.kill(launcher, signal.SIGTERM)
            for _ in range(1000):  # 10 s at most
                if self.stop:
                    break
                time.sleep(0.01)
    loop._Trainer._step = _step
"""


OTHER_LOOPS = {  # the suite's own loop for the other modalities: a frozen stage, then everything trained
    "speech": """\
name: ddp-speech
task: speech-classification
model: {{arch: wav2vec2-tiny, weights: none}}
data:
  format: synthetic:speech
  root: {root}
  synthetic: {{classes: [up, down], train_per_class: 2, val_per_class: 1}}
schedule: [{{epochs: 1, train: head, lr: 1.0e-3}}, {{epochs: 1, train: all, lr: 1.0e-4}}]
train: {{batch_size: 4, seed: 0}}
export: {{onnx: false}}
""",
    "frcnn": """\
name: ddp-frcnn
task: detection
model: {{arch: fasterrcnn_mobilenet_v2_s16, weights: none}}
data:
  format: synthetic:shapes
  root: {root}
  synthetic: {{classes: [circle, square], train_per_class: 2, val_per_class: 1, size: 64, max_objects: 2}}
  image_size: 64
schedule: [{{epochs: 1, train: [rpn, roi_heads, head], lr: 1.0e-2}}, {{epochs: 1, train: all, lr: 1.0e-3}}]
train: {{batch_size: 2, seed: 0}}
export: {{onnx: false}}
"""}


@pytest.mark.parametrize("kind", sorted(OTHER_LOOPS))
def test_speech_and_faster_rcnn_train_under_two_gloo_processes(kind, tmp_path):
    """Wav2Vec2 (its loss reads the model's config through the DDP wrapper) and Faster R-CNN (a frozen backbone,
    then all of it) under DDP: every rank ends with the same weights and one run directory is written. Faster
    R-CNN runs as two machines of one process each (`--nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT`, two
    launches here), each in a folder of its own with its own cache, as machines without a shared filesystem:
    the launch given --node-rank 0 holds rank 0 (the run directory, the log) even when the other machine joins
    first (torchrun's c10d rendezvous ignores --node-rank; the static one keeps it), each machine generates its
    own copy of the data, and a run stopped inside its first epoch resumes with the run directory on machine 0
    only: the same history and weights as the uninterrupted run."""
    if kind == "speech":
        recipe = tmp_path / "r.yaml"
        recipe.write_text(OTHER_LOOPS[kind].format(root=tmp_path / "data"))
        out = tmp_path / "ddp"
        done = subprocess.run([sys.executable, "-m", "suite.cli", "run", str(recipe), "--nproc", "2", "--device", "cpu",
                               "--out", str(out)], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        log = done.stdout + done.stderr
    else:
        machines = [tmp_path / "m0", tmp_path / "m1"]
        for m in machines:
            m.mkdir()
            (m / "r.yaml").write_text(OTHER_LOOPS[kind].format(root="data"))  # relative: each machine's own
        codes, logs = _two_machines(machines, ["r.yaml", "--out", "run"])
        assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
        assert "run directory:" not in logs[1] and "training on" not in logs[1]  # node 1: a worker, no writer
        assert not (machines[1] / "run").exists()  # nor a folder
        assert (machines[1] / "data").is_dir()  # machine 1 made its own copy of the generated data
        log, out = logs[0], machines[0] / "run"
    assert "x 2 processes (DDP" in log and "2 ranks agree:" in log and log.count("run directory:") == 1
    assert len(read_history(out / "history.csv")) == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.safetensors", "last.pt"]
    if kind == "speech":
        return
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(STOP_AFTER_STEP)
    codes, logs = _two_machines(machines, ["r.yaml", "--out", "cut"],
                                {"PYTHONPATH": str(tmp_path / "hook"), "STOP_AFTER_STEP": "1"})
    assert codes == [143, 143] and "interrupted; continue with: suite run --resume cut --nproc 1" in logs[0], logs
    assert torch.load(machines[0] / "cut" / "checkpoints" / "last.pt", weights_only=True)["position"]["batch"] == 1
    assert not (machines[1] / "cut").exists()  # machine 1 has no copy of the run directory
    codes, logs = _two_machines(machines, ["--resume", "cut"])
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    cut = machines[0] / "cut"
    assert read_history(cut / "history.csv", False) == read_history(out / "history.csv", False)
    x, y = load_file(out / "checkpoints" / "best.safetensors"), load_file(cut / "checkpoints" / "best.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)


def _two_machines(machines: list[Path], args: list[str], env: dict | None = None) -> tuple[list[int], list[str]]:
    """`suite run ARGS` as two machines of one process each, machine i in folder ``machines[i]`` with a cache of
    its own: node 1's launch first, then (once its torchrun is up, so that c10d would rank it 0: the lowest pid of
    one host goes first) node 0's. Exit codes and outputs, node 0's first."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def node(rank: int) -> subprocess.Popen:
        cwd = machines[rank]
        return subprocess.Popen([sys.executable, "-m", "suite.cli", "run", *args, "--nproc", "1", "--nnodes", "2",
                                 "--node-rank", str(rank), "--rdzv-endpoint", f"127.0.0.1:{port}", "--device", "cpu"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "SUITE_CACHE": str(cwd / "cache"),
                                     **(env or {})})

    second = node(1)
    children = Path(f"/proc/{second.pid}/task/{second.pid}/children")
    for _ in range(300):
        if not children.exists() or children.read_text().strip():
            break
        time.sleep(0.05)
    first = node(0)
    logs = [p.communicate(timeout=300)[0] for p in (first, second)]
    return [first.returncode, second.returncode], logs


def test_sync_batchnorm_swaps_layers_in_place_and_keeps_groups_freezing_them(monkeypatch):
    """train.sync_batchnorm under DDP (converted here as for CUDA ranks; torch runs SyncBatchNorm on GPUs only):
    every BatchNorm becomes SyncBatchNorm with the same parameters and state_dict names, and a frozen group
    still puts its (new) layers in eval mode. On CPU, auto leaves them and true is a one-line error."""
    from suite.core import dist
    from suite.core.groups import freeze_batchnorm
    from suite.errors import UserError
    from suite.vision import models as vm

    model, _ = vm.build_model("resnet18", 3, "none")
    groups = vm.model_groups("resnet18", model)
    params, keys = [id(p) for p in model.parameters()], list(model.state_dict())
    monkeypatch.setattr(dist, "world", lambda: 2)
    assert dist.sync_batchnorm(model, groups, "auto", torch.device("cpu")) == (0, [])
    with pytest.raises(UserError, match="sync_batchnorm: true needs CUDA"):
        dist.sync_batchnorm(model, groups, "true", torch.device("cpu"))
    assert dist.sync_batchnorm(model, groups, "auto", torch.device("cuda")) == (20, [])
    assert not [m for m in model.modules() if type(m) is torch.nn.BatchNorm2d]
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    stem = groups[0]
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in stem.modules)  # the group's own list points at it
    model.train()
    freeze_batchnorm(groups, [g.name for g in groups[1:]])
    assert all(not m.training for m in stem.modules if isinstance(m, torch.nn.SyncBatchNorm))


def test_sync_batchnorm_keeps_the_activation_inside_timm_batchnorm_layers(monkeypatch):
    """timm's BatchNormAct2d applies its activation inside the layer; a plain SyncBatchNorm would drop it (49
    ReLU6 in tf_efficientnet_lite0). It becomes timm's SyncBatchNormAct: the same outputs in eval mode. A
    BatchNorm subclass with no synchronized twin stays as it is, and is named."""
    import timm

    from suite.core import dist

    class Custom(torch.nn.BatchNorm2d):
        pass

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    model.bn2 = Custom(model.bn2.num_features).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    monkeypatch.setattr(dist, "world", lambda: 2)
    n, kept = dist.sync_batchnorm(model, [], "auto", torch.device("cuda"))
    with torch.no_grad():
        after = model(x)
    assert n == 48 and kept == ["Custom"] and type(model.bn2) is Custom
    assert torch.allclose(before, after, atol=1e-6)


def test_each_run_leaves_the_process_group_it_joined_even_on_an_error(tmp_path, monkeypatch):
    """A gloo group left to the interpreter's shutdown can abort a rank (SIGABRT, "terminate called without an
    active exception"; seen in CI): run() leaves the group it joined, also when the run fails, and leaves a
    group the caller made alone. One process stands in for a rank (world size 1)."""
    import socket

    import torch.distributed as td

    from suite.core import dist
    from suite.errors import UserError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(dist, "launched", lambda: True)
    bad = tmp_path / "r.yaml"
    bad.write_text(RECIPE.format(root=tmp_path / "data").replace("batch_size", "batch_sise"))
    with pytest.raises(UserError, match="batch_sise"):
        run(bad, [], tmp_path / "out", device="cpu")
    assert not td.is_initialized()

    td.init_process_group("gloo")  # the caller's own group
    try:
        with pytest.raises(UserError, match="batch_sise"):
            run(bad, [], tmp_path / "out", device="cpu")
        assert td.is_initialized()
    finally:
        td.destroy_process_group()


def test_the_launcher_passes_each_signal_on_once_to_torchrun_in_its_own_process_group(tmp_path):
    """`suite run --nproc`'s supervision of torchrun (here a stand-in child): the child runs in a process group of
    its own (a terminal's Ctrl-C reaches only the launcher) with the launcher's signals unblocked, a hangup is
    passed on as SIGTERM, and the launcher exits 128 + the signal."""
    import signal
    import threading
    import time

    from suite.launch import _supervise

    child = tmp_path / "child.py"
    child.write_text(f"""\
import os, signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
open({str(tmp_path / "ready")!r}, "w").write(str(os.getpgid(0)))
deadline = time.time() + 20
while not got and time.time() < deadline:
    time.sleep(0.01)
open({str(tmp_path / "got")!r}, "w").write(" ".join(map(str, got)))
""")

    def hang_up_when_ready():
        for _ in range(2000):
            if (tmp_path / "ready").exists():
                os.kill(os.getpid(), signal.SIGHUP)
                return
            time.sleep(0.01)

    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (not under nohup)
    try:
        threading.Thread(target=hang_up_when_ready, daemon=True).start()
        assert _supervise([sys.executable, str(child)], dict(os.environ)) == 128 + signal.SIGHUP
        assert (tmp_path / "got").read_text() == str(int(signal.SIGTERM))
        assert int((tmp_path / "ready").read_text()) != os.getpgid(0)
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, [])  # nothing left blocked here
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # the launcher's handlers are gone again
    finally:
        signal.signal(signal.SIGHUP, before)


YOLO = """\
name: ddp-yolo
task: detection
model: {{arch: yolo11n, weights: none}}
data:
  format: synthetic:shapes
  root: {root}
  synthetic: {{classes: [circle, square], train_per_class: 3, val_per_class: 2, size: 64, max_objects: 2}}
  image_size: 64
  augment: none
schedule: [{{epochs: 2, train: [neck, head], lr: 1.0e-2}}]
train: {{batch_size: 4, seed: 0}}
export: {{onnx: false}}
"""

# Rank 0 signals the launcher when its Nth epoch is recorded (Ultralytics runs the epochs: YOLO stops at an
# epoch's end), and waits for the signal to come back round through torchrun.
STOP_AFTER_EPOCH = """\
import os, signal, time
if os.environ.get("RANK") == "0" and os.environ.get("STOP_AFTER_EPOCH"):
    from suite.core import stages
    real = stages.end_epoch
    def end_epoch(pos, *args, **kwargs):
        stop = real(pos, *args, **kwargs)
        if pos.epoch == int(os.environ["STOP_AFTER_EPOCH"]):
            launcher = int(open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()[1])
            os.kill(launcher, signal.SIGTERM)
            for _ in range(1000):
                if stages.stop_requested():
                    break
                time.sleep(0.01)
        return stop
    stages.end_epoch = end_epoch
"""


def test_yolo_trains_under_two_gloo_processes_in_ultralytics_ddp_and_resumes(tmp_path):
    """Every worker runs Ultralytics' trainer as one of its DDP workers (its sampler and DDP wrap) on the suite's
    gloo group: a SIGTERM to the launcher after epoch 1 stops both ranks at that epoch's end with one checkpoint
    (Ultralytics' optimizer and EMA inside it), `--resume --nproc 2` finishes the stage, both ranks end with the
    same weights, and rank 0 alone wrote the run directory, evaluated and reported."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(YOLO.format(root=tmp_path / "data"))
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(STOP_AFTER_EPOCH)
    out, env = tmp_path / "ddp", {**os.environ, "PYTHONUNBUFFERED": "1"}
    stopped = subprocess.run([sys.executable, "-m", "suite.cli", "run", str(recipe), "--nproc", "2", "--device", "cpu",
                              "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                             env={**env, "PYTHONPATH": str(tmp_path / "hook"), "STOP_AFTER_EPOCH": "1"})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "training on cpu x 2 processes (DDP, global batch 4)" in stopped.stdout + stopped.stderr
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["inside"]["epoch"] == 1 and saved["inside"]["optimizer"]["param_groups"]
    again = subprocess.run([sys.executable, "-m", "suite.cli", "run", "--resume", str(out), "--nproc", "2", "--device",
                            "cpu"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "2 ranks agree:" in log and log.count("run directory:") == 1 and not (tmp_path / "runs").exists()
    assert [(r["epoch"], r["stage"]) for r in read_history(out / "history.csv", False)] == [(1, 0), (2, 0)]
    assert "val/map50_95" in json.loads((out / "metrics.json").read_text())["val"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.safetensors", "last.pt"]


@pytest.mark.parametrize("train, nproc, says", [
    ("{sync_batchnorm: true}", 2, "train.sync_batchnorm: true applies to the suite's own loop; yolo11n"),
    ("{batch_size: 5}", 2, "train.batch_size 5 does not split over 2 processes (each rank trains its share of the "
                           "global batch): use a multiple of 2"),
])
def test_what_ultralytics_ddp_cannot_do_is_refused_before_any_process_starts(train, nproc, says, tmp_path, capsys):
    """Ultralytics' DDP keeps BatchNorm per rank and gives each rank batch // N: `train.sync_batchnorm: true` (the
    suite's loop's setting) and a batch that does not split are one line and exit 2 before torchrun starts, and
    nothing is replaced even with --overwrite."""
    from suite.cli import main

    recipe = tmp_path / "y.yaml"
    recipe.write_text("name: y\ntask: detection\nmodel: {arch: yolo11n, weights: none}\n"
                      "data: {format: yolo, root: data}\nschedule: [{epochs: 1, train: all, lr: 1.0e-3}]\n"
                      f"train: {train}\n")
    old = tmp_path / "old"
    old.mkdir()
    (old / "recipe.yaml").write_text("kept")
    with pytest.raises(SystemExit) as stop:
        main(["run", str(recipe), "--nproc", str(nproc), "--device", "cpu", "--out", str(old), "--overwrite"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err
    assert (old / "recipe.yaml").read_text() == "kept"


def test_more_processes_than_gpus_and_a_bad_timeout_are_one_line_errors(monkeypatch):
    """--nproc above the GPUs CUDA shows fails every extra worker with "invalid device ordinal": the launcher
    says so first (CPU processes are not counted). The collectives' timeout is 3 hours unless set."""
    from suite import launch
    from suite.core import dist
    from suite.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    launch._check_gpus("auto", 2)
    launch._check_gpus("cpu", 8)
    with pytest.raises(UserError, match="--nproc 4 on CUDA: this machine shows 2 GPUs .*use --nproc 2"):
        launch._check_gpus("cuda", 4)
    assert dist.timeout().total_seconds() == 3 * 3600
    monkeypatch.setenv(dist.TIMEOUT_ENV, "90")
    assert dist.timeout().total_seconds() == 90
    for bad in ("3h", "inf"):
        monkeypatch.setenv(dist.TIMEOUT_ENV, bad)
        with pytest.raises(UserError, match=f"SUITE_DIST_TIMEOUT_S={bad}: give the seconds"):
            dist.timeout()


def test_a_batch_smaller_than_the_world_is_refused_for_the_suites_loop(tmp_path):
    """The suite's loop slices each global batch over the ranks (one sample each at least)."""
    from suite.errors import UserError
    from suite.runner import refuse_under_ddp
    from suite.tasks import load_recipe, modality_for

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path / "data"))
    parsed = load_recipe(recipe, ["train.batch_size=3"])
    refuse_under_ddp(parsed, modality_for(parsed.task), 3)  # 3 samples, 3 ranks: one each
    with pytest.raises(UserError, match="train.batch_size 3 does not split over 4 processes .* use at least 4"):
        refuse_under_ddp(parsed, modality_for(parsed.task), 4)
    refuse_under_ddp(parsed, modality_for(parsed.task), None)  # several machines: their workers know the world


@pytest.mark.parametrize("endpoint", [None, "host", "host:port", ":29500"])
def test_several_machines_need_host_and_port(endpoint, tmp_path, capsys):
    from suite.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path / "data"))
    args = ["run", str(recipe), "--nproc", "1", "--nnodes", "2", "--node-rank", "1", "--device", "cpu"]
    with pytest.raises(SystemExit) as stop:
        main(args + (["--rdzv-endpoint", endpoint] if endpoint else []))
    assert stop.value.code == 2
    assert f"--nnodes > 1 needs --rdzv-endpoint HOST:PORT (machine 0's address and a free port there), got " \
           f"{endpoint or 'none'}" in capsys.readouterr().err


def test_small_reductions_use_a_tensor_the_backend_reduces(monkeypatch):
    """NCCL reduces CUDA tensors only: the stop flag and loss sums go on this rank's GPU there, on the CPU
    with gloo (the suite's loop and the YOLO path call them every step and every epoch)."""
    from suite.core import dist

    monkeypatch.setattr(dist.td, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert dist._reduce_device() == torch.device("cuda", 1)
    monkeypatch.setattr(dist.td, "get_backend", lambda group=None: "gloo")
    assert dist._reduce_device() == torch.device("cpu")


def test_a_data_mistake_under_nproc_is_one_line_and_exit_2(tmp_path):
    """Rank 0 finds the data root missing: it prints the one-line error, the other rank stops with it (not with
    gloo's "connection closed" in its next collective), and torchrun's traceback is not shown."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path / "nothere").replace("synthetic:shapes", "imagefolder"))
    done = subprocess.run([sys.executable, "-m", "suite.cli", "run", str(recipe), "--nproc", "2", "--device", "cpu",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 2, log[-3000:]
    assert log.count("error: data root") == 1 and "nothere does not exist" in log
    assert "Traceback" not in log and "Connection closed" not in log


def _main_first_rank(rank: int, port: int, folder: str) -> None:
    """One of 4 gloo ranks on '2 machines' of 2 (LOCAL_RANK 0, 1, 0, 1): main_first three times, the second with
    rank 2 (machine 1's first process) failing, the third with rank 1 (machine 0's second); what each call did
    goes to folder/RANK.json."""
    import torch.distributed as td

    from suite.core import dist
    from suite.errors import PeerStopped, UserError

    os.environ["LOCAL_RANK"], os.environ["GROUP_RANK"] = str(rank % 2), str(rank // 2)
    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=4)
    spans, results = [], []

    def make(fail: bool):
        began = time.monotonic()
        time.sleep(0.05)
        spans.append((began, time.monotonic()))
        if fail:
            raise UserError("disk full")
        return rank

    for fail in (False, rank == 2, rank == 1):
        try:
            results.append(["made", dist.main_first(lambda: make(fail), "loading the data")])
        except PeerStopped as e:
            results.append(["peer", str(e)])
        except UserError as e:
            results.append(["error", str(e)])
    td.destroy_process_group()
    Path(folder, f"{rank}.json").write_text(json.dumps({"spans": spans, "results": results}))


def test_main_first_goes_rank_0_then_each_machines_first_process_then_the_rest(tmp_path):
    """Machines with disks of their own: rank 0 makes first, then each other machine's first process (which
    writes that machine's copy), then the rest, which find it made. A failure is that rank's error, a silent stop
    elsewhere, and one line on rank 0 naming it when it happened on another machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_main_first_rank, args=(port, str(tmp_path)), nprocs=4)
    done = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(4)]
    assert [d["results"][0] for d in done] == [["made", r] for r in range(4)]
    first = [d["spans"][0] for d in done]
    assert first[0][1] <= first[2][0] and first[2][1] <= min(first[1][0], first[3][0])  # 0, then 2, then 1 and 3
    second = [d["results"][1] for d in done]
    assert second[2] == ["error", "disk full"] and second[0] == ["error", "rank 2 (machine 1) stopped while loading "
                                                                          "the data (UserError: disk full)"]
    assert second[1][0] == second[3][0] == "peer"
    third = [d["results"][2] for d in done]  # machine 0's terminal has rank 1's line: rank 0 adds none
    assert third[1] == ["error", "disk full"] and third[0][0] == third[2][0] == third[3][0] == "peer"
    assert [len(d["spans"]) for d in done] == [3, 2, 3, 2]  # rank 3 stopped before its turn in the second


def test_gloo_across_machines_uses_the_interface_that_reaches_machine_0(monkeypatch):
    """gloo advertises the address the host name resolves to, loopback where /etc/hosts says so, and the other
    machines are refused (benchmarks/netns_two_machines.sh); across machines the interface that routes to
    MASTER_ADDR is set instead, unless the user set one. One machine, or a loopback route: left to gloo."""
    import _socket
    import socket

    from suite.core import dist

    monkeypatch.setattr(socket.socket, "connect", _socket.socket.connect)  # a UDP connect: a route, no packet
    addresses = dist.ipv4_addresses()
    assert addresses.get("lo") == "127.0.0.1"
    outside = {name: ip for name, ip in addresses.items() if not ip.startswith("127.")}
    assert outside, f"no non-loopback IPv4 interface here: {addresses}"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "")  # recorded as it was, so what the function sets is undone after
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    monkeypatch.setenv("MASTER_PORT", "29500")
    for name, ip in outside.items():
        monkeypatch.setenv("MASTER_ADDR", ip)
        monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
        assert dist.gloo_interface() is None and "GLOO_SOCKET_IFNAME" not in os.environ  # one machine
        monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
        assert dist.gloo_interface() == name and os.environ["GLOO_SOCKET_IFNAME"] == name
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "mine0")
        assert dist.gloo_interface() is None and os.environ["GLOO_SOCKET_IFNAME"] == "mine0"  # the user's stays
        monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # machine 0's own name, loopback in its /etc/hosts: the
    rows = [line.split() for line in Path("/proc/net/route").read_text().splitlines()[1:]]  # default route's
    default = next((r[0] for r in rows if r[1] == "00000000" and r[0] in outside), None)   # interface, if any
    assert dist.gloo_interface() == default and os.environ.get("GLOO_SOCKET_IFNAME") == default
