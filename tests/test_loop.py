"""fit() on a tiny model: frozen groups stay bitwise fixed, per-group LRs, exact resume, guards."""
import math

import pytest
import torch
from torch import nn
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from suite.core import checkpoint
from suite.core.groups import ParamGroup, check_groups
from suite.core.loop import FitOptions, Hooks, fit, stage_optimizer
from suite.core.metrics import EvalResult
from suite.core.schedule import Stage
from suite.errors import TrainingDiverged, UserError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8)
        self.drop, self.fc = nn.Dropout(0.2), nn.Linear(8, 3)

    def forward(self, x):
        x = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))).mean((2, 3))
        return self.fc(self.drop(x))


def tiny_groups(m: Tiny) -> list[ParamGroup]:
    spec = {"stem": [m.conv1, m.bn1], "body": [m.conv2, m.bn2], "head": [m.fc]}
    return [ParamGroup(n, [p for mod in mods for p in mod.parameters()], mods) for n, mods in spec.items()]


DATA = TensorDataset(torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                     torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(1)))


def make_hooks(on_epoch_end=(), loss_fn=None):
    def loss(model, batch):
        return loss_fn(model, batch) if loss_fn else nn.functional.cross_entropy(model(batch[0]), batch[1])

    def evaluate(model):
        model.eval()
        with torch.no_grad():
            return EvalResult({"loss": nn.functional.cross_entropy(model(DATA.tensors[0]), DATA.tensors[1]).item()})

    def loader(epoch):
        return DataLoader(DATA, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(epoch))

    return Hooks(loss=loss, evaluate=evaluate, train_loader=loader, on_epoch_end=on_epoch_end)


def fresh(seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    groups = tiny_groups(model)
    check_groups(model, groups)
    return model, groups


def snapshot(module: nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_frozen_stage_keeps_params_and_bn_stats_bitwise(tmp_path):
    model, groups = fresh()
    before = snapshot(model)
    after_stage0 = {}

    def grab(pos):
        if pos.epoch == 2:
            after_stage0.update(snapshot(model))

    stages = [Stage(epochs=2, train="head", lr=1e-2), Stage(epochs=1, train="all", lr=1e-2)]
    fit(model, groups, stages, make_hooks([grab]), FitOptions(), tmp_path, torch.device("cpu"))
    frozen = [k for k in before if not k.startswith("fc.")]
    assert any("running_mean" in k for k in frozen)
    for k in frozen:  # weights, biases, running stats, num_batches_tracked
        assert torch.equal(before[k], after_stage0[k]), k
    assert not torch.equal(before["fc.weight"], after_stage0["fc.weight"])
    final = snapshot(model)
    for k in ("conv1.weight", "bn1.running_mean", "bn2.running_var", "conv2.weight"):
        assert not torch.equal(after_stage0[k], final[k]), f"{k} did not train once unfrozen"


def test_each_group_gets_its_lr():
    model, groups = fresh()
    stage = Stage(epochs=1, train="all", lr=1e-3, layer_decay=0.5, lr_mult={"stem": 0.1})
    trainable, opt = stage_optimizer(groups, stage, FitOptions(weight_decay=0.05))
    assert trainable == ["stem", "body", "head"]
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(1e-3) and lrs["head/no_decay"] == pytest.approx(1e-3)
    assert lrs["body"] == pytest.approx(5e-4)
    assert lrs["stem"] == pytest.approx(1e-3 * 0.25 * 0.1)
    wd = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert wd["body"] == 0.05 and wd["body/no_decay"] == 0.0  # no decay on biases and norm weights

    _, opt = stage_optimizer(groups, Stage(epochs=1, train={"last": 1}, lr=1e-3), FitOptions())
    assert {g["name"] for g in opt.param_groups} == {"head", "head/no_decay"}
    assert not any(p.requires_grad for g in groups[:2] for p in g.params)


def test_scheduler_follows_lr_factor_within_a_stage(tmp_path):
    model, groups = fresh()
    seen = []
    hooks = make_hooks()
    hooks.on_epoch_end = [lambda pos: seen.append(pos.history[-1]["lr"])]
    fit(model, groups, [Stage(epochs=3, train="head", lr=1e-2, scheduler="cosine")], hooks, FitOptions(),
        tmp_path, torch.device("cpu"))
    total = 3 * 5  # 24 samples / batch 5 -> 5 steps per epoch
    expected = [1e-2 * 0.5 * (1 + math.cos(math.pi * min(1.0, (5 * (e + 1)) / total))) for e in range(3)]
    assert seen == pytest.approx(expected)


@pytest.mark.parametrize("late", [True, False])  # dropped before the window's first backward (CPU) or after the step
def test_gradient_accumulation_matches_a_plain_loop_and_the_epoch_frees_the_gradients(tmp_path, monkeypatch, late):
    """Wherever the gradients are dropped (suite.core.loop.late_zero): the same updates as the textbook loop,
    and none are held once the epoch is over."""
    import copy

    from suite.core import loop

    monkeypatch.setattr(loop, "late_zero", lambda device: late)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    ref = copy.deepcopy(model)
    groups = [ParamGroup("body", [*model[0].parameters(), *model[1].parameters()], [model[0], model[1]]),
              ParamGroup("head", list(model[5].parameters()), [model[5]])]
    opts = FitOptions(optimizer="sgd", momentum=0.0, weight_decay=0.0, grad_accum=2)
    fit(model, groups, [Stage(epochs=1, train="all", lr=0.1, warmup=0.0, scheduler="constant")], make_hooks(), opts,
        tmp_path, torch.device("cpu"))

    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    batches = list(make_hooks().train_loader(0))  # 5 batches: windows (1, 2), (3, 4), (5)
    ref.train()
    for i, (x, y) in enumerate(batches):
        (nn.functional.cross_entropy(ref(x), y) / 2).backward()
        if i % 2 == 1 or i == len(batches) - 1:
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    assert all(p.grad is None for p in model.parameters())


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_after", [1, 3])  # mid-stage and at a stage boundary
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, kill_after):
    stages = [Stage(epochs=1, train="head", lr=1e-2), Stage(epochs=3, train={"last": 2}, lr=5e-3, layer_decay=0.5)]
    opts = FitOptions(grad_accum=2, clip_grad=1.0, ema=0.9, seed=3)

    model, groups = fresh()
    fit(model, groups, stages, make_hooks(), opts, tmp_path / "full", torch.device("cpu"))
    full = snapshot(model)

    def kill(pos):
        if pos.epoch == kill_after:
            raise Killed

    model, groups = fresh()
    with pytest.raises(Killed):
        fit(model, groups, stages, make_hooks([kill]), opts, tmp_path / "cut", torch.device("cpu"))
    model, groups = fresh(seed=123)  # a new process: different init, restored from last.pt
    pos = fit(model, groups, stages, make_hooks(), opts, tmp_path / "cut", torch.device("cpu"), resume=True)
    resumed = snapshot(model)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert len(pos.history) == 4
    best_full = checkpoint.load_state(tmp_path / "full" / "checkpoints" / "last.pt")["ema"]
    best_cut = checkpoint.load_state(tmp_path / "cut" / "checkpoints" / "last.pt")["ema"]
    assert all(torch.equal(best_full[k], best_cut[k]) for k in best_full)


@pytest.mark.parametrize("every", [0.0, 3600.0])
def test_last_pt_every_epoch_or_at_stage_ends_with_its_best_weights(tmp_path, monkeypatch, every):
    """checkpoint_every_s 0 writes last.pt after each epoch; a long interval only at each stage's end, and a best
    epoch's weights go to disk with the last.pt after it (never behind the position that last.pt records)."""
    writes, real = [], checkpoint.save_state

    def save_state(path, state, background=False, weights=None):
        writes.append((state["position"]["epoch"], weights is not None))
        return real(path, state, background, weights)

    monkeypatch.setattr(checkpoint, "save_state", save_state)
    stages = [Stage(epochs=2, train="head", lr=1e-2), Stage(epochs=3, train="all", lr=1e-2)]
    model, groups = fresh()
    fit(model, groups, stages, make_hooks(), FitOptions(checkpoint_every_s=every), tmp_path, torch.device("cpu"))
    assert [e for e, _ in writes] == ([1, 2, 3, 4, 5] if every == 0 else [2, 5])
    best = checkpoint.load_state(tmp_path / "checkpoints" / "last.pt")["position"]["best_epoch"]
    assert next(has_best for e, has_best in writes if e >= best)  # the first last.pt after the best epoch


def test_a_best_epoch_not_yet_written_is_written_when_training_fails(tmp_path):
    def fail(pos):
        if pos.epoch == 2:
            raise Killed

    model, groups = fresh()
    with pytest.raises(Killed):
        fit(model, groups, [Stage(epochs=4, train="all", lr=1e-2)], make_hooks([fail]),
            FitOptions(checkpoint_every_s=3600.0), tmp_path, torch.device("cpu"))
    assert not (tmp_path / "checkpoints" / "last.pt").exists()  # no stage ended, the interval did not pass
    assert set(load_file(tmp_path / "checkpoints" / "best.safetensors")) == set(model.state_dict())


def test_optimizers_use_the_fused_kernel_where_the_parameters_allow():
    from suite.core.groups import make_optimizer

    cpu = [{"params": [nn.Parameter(torch.zeros(3))]}]
    for name in ("adamw", "adam", "sgd"):
        assert make_optimizer(name, cpu).defaults["fused"] is True
    meta = [{"params": [nn.Parameter(torch.zeros(3, device="meta"))]}]
    assert not make_optimizer("adamw", meta).defaults.get("fused")
    assert not make_optimizer("adamw", cpu, fused=False).defaults.get("fused")  # the YOLO path: as Ultralytics


def test_checkpoints_are_written_and_load_weights_only(tmp_path):
    model, groups = fresh()
    fit(model, groups, [Stage(epochs=2, train="all", lr=1e-2)], make_hooks(), FitOptions(), tmp_path,
        torch.device("cpu"))
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["epoch"] == 2 and len(state["history"]) == 2
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "checkpoints" / "best.safetensors")) == set(model.state_dict())
    assert (tmp_path / "history.csv").read_text().count("\n") == 3
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # atomic writes leave no temp files


def test_nonfinite_losses_are_skipped_then_stop(tmp_path):
    calls = {"n": 0}

    def sometimes_nan(model, batch):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        return loss * float("nan") if calls["n"] % 2 == 0 else loss

    model, groups = fresh()
    pos = fit(model, groups, [Stage(epochs=2, train="all", lr=1e-2)], make_hooks(loss_fn=sometimes_nan),
              FitOptions(max_nonfinite=2), tmp_path / "a", torch.device("cpu"))
    assert all(math.isfinite(p.sum().item()) for p in model.parameters())
    assert math.isfinite(pos.history[-1]["train/loss"])

    model, groups = fresh()
    with pytest.raises(TrainingDiverged, match="3 batches in a row"):
        fit(model, groups, [Stage(epochs=2, train="all", lr=1e-2)],
            make_hooks(loss_fn=lambda m, b: m(b[0]).sum() * float("inf")),
            FitOptions(max_nonfinite=3), tmp_path / "b", torch.device("cpu"))


def test_early_stop_ends_the_stage_not_the_run(tmp_path):
    model, groups = fresh()
    hooks = make_hooks()
    hooks.evaluate = lambda model: EvalResult({"accuracy": 0.5})  # never improves after the first epoch
    stages = [Stage(epochs=5, train="head", lr=1e-2), Stage(epochs=2, train="all", lr=1e-3)]
    pos = fit(model, groups, stages, hooks, FitOptions(select_metric="val/accuracy", early_stop_patience=2),
              tmp_path, torch.device("cpu"))
    assert [row["stage"] for row in pos.history] == [0, 0, 0, 1, 1]


def test_unknown_select_metric_is_a_user_error(tmp_path):
    model, groups = fresh()
    with pytest.raises(UserError, match="val/f1.*val/loss"):
        fit(model, groups, [Stage(epochs=1, train="all", lr=1e-2)], make_hooks(),
            FitOptions(select_metric="val/f1"), tmp_path, torch.device("cpu"))


def test_auto_precision_is_native_bf16_or_fp16_on_a_gpu_and_fp32_on_cpu(monkeypatch):
    """train.precision: auto. torch calls bf16 "supported" on pre-Ampere GPUs by emulating it (slow): only native
    bf16 counts. A task may ask fp16 for auto (Faster R-CNN: box coordinates under autocast)."""
    from suite.core.loop import autocast_dtype

    gpu = torch.device("cuda")
    native = {"ampere": True, "turing": False}
    for arch, has in native.items():
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, has=has:
                            has or including_emulation)
        assert autocast_dtype("auto", gpu) == (torch.bfloat16 if has else torch.float16), arch
        assert autocast_dtype("auto", gpu, torch.float16) == torch.float16
        assert autocast_dtype("bf16", gpu) == torch.bfloat16 and autocast_dtype("fp32", gpu) is None
    assert autocast_dtype("auto", torch.device("cpu")) is None


def test_cuda_rng_states_from_a_machine_with_more_gpus_restore_those_shown(monkeypatch):
    """last.pt keeps every visible GPU's RNG; resumed where fewer are shown, the first ones are restored
    (torch's set_rng_state_all would fail at CUDA's first use with an IndexError)."""
    state = checkpoint.rng_state()
    state["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((int(s[0]), i)))
    checkpoint.set_rng_state(state)
    assert restored == [(0, 0), (1, 1)]


class _EpochProbe(torch.utils.data.Dataset):
    """Each item: the worker's pid, the epoch its copy was told, and a draw from torch's RNG."""

    def __init__(self):
        self.epoch = -1

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 4

    def __getitem__(self, i):
        import os
        return torch.tensor([os.getpid(), self.epoch, i]), torch.rand(())


def test_kept_loader_workers_serve_every_epoch_and_draw_what_fresh_ones_would():
    """One worker process for both epochs, told each epoch (set_epoch on its copy); the same batches as the
    modality's loader; epoch 2's draws equal those of a fresh server that starts at epoch 2 (a resumed run)."""
    from suite.core.loop import _Workers

    probe = _EpochProbe()

    def loader(epoch):
        gen = torch.Generator().manual_seed(epoch)
        return DataLoader(probe, batch_size=2, shuffle=True, generator=gen, num_workers=1)

    kept, fresh = _Workers(seed=3), _Workers(seed=3)
    try:
        epochs = [list(kept.serve(loader(e), e)) for e in (0, 1)]
        resumed = list(fresh.serve(loader(1), 1))
    finally:
        kept.close()
        fresh.close()
    pids = {int(x[0]) for batches in epochs for ids, _ in batches for x in ids}
    assert len(pids) == 1  # kept, not started again
    for e, batches in enumerate(epochs):
        assert all(int(x[1]) == e for ids, _ in batches for x in ids)
        order = [[int(x[2]) for x in ids] for ids, _ in batches]  # as the modality's loader, without workers
        assert order == [[int(x[2]) for x in ids] for ids, _ in
                         DataLoader(probe, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(e))]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(epochs[1], resumed))
    assert not torch.equal(epochs[0][0][1], epochs[1][0][1])
