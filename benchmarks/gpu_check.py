"""The GPU checks of benchmarks/gpu_check.sh, one part per subcommand; each prints one JSON line and writes it to
--out. `--smoke` runs each part tiny, on the CPU when there is no GPU, to check the script itself.

    python benchmarks/gpu_check.py resnet50 --out /tmp/gpu     # img/s at 224 px, bf16 + channels_last, +- compile
    python benchmarks/gpu_check.py wav2vec2 --out /tmp/gpu     # Wav2Vec2-base training clips/s
    python benchmarks/gpu_check.py suite --out /tmp/gpu        # AMP resume equality and the fast-path settings

Peak: the H200's dense bf16 tensor-core rate, 989 TFLOP/s in NVIDIA's datasheet (the device notes measured about
790). ResNet-50 training is counted as 3 x 4.09 GMAC x 2 = 24.5 GFLOP per 224 px image (forward + backward).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PEAK_BF16_TFLOPS = 989.0
RESNET50_TRAIN_GFLOP = 3 * 4.09 * 2


def _device(smoke: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not smoke:
        sys.exit("no CUDA GPU: these checks need one (--smoke runs them tiny on the CPU)")
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_steps(step, device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    began = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return time.perf_counter() - began


def resnet50(a) -> dict:
    import torchvision

    device = _device(a.smoke)
    batch, size = (4, 64) if a.smoke else (256, 224)
    torch.backends.cudnn.benchmark = True
    rows = []
    for compiled in (False,) if a.smoke else (False, True):  # inductor takes 70 s on the 2-core CPU
        model = torchvision.models.resnet50().to(device, memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
        net = torch.compile(model) if compiled else model
        x = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,), device=device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        began = time.perf_counter()
        step()
        _sync(device)
        first = time.perf_counter() - began
        iters = 2 if a.smoke else 50
        seconds = _timed_steps(step, device, 1 if a.smoke else 10, iters)
        ips = batch * iters / seconds
        tflops = ips * RESNET50_TRAIN_GFLOP * (size / 224) ** 2 / 1000
        rows.append({"compile": compiled, "batch": batch, "size": size, "img_per_s": round(ips, 1),
                     "tflops": round(tflops, 1), "peak_fraction": round(tflops / PEAK_BF16_TFLOPS, 4),
                     "first_step_s": round(first, 2)})
        result = {"check": "resnet50", "device": _name(device), "rows": rows,
                  "goal_img_per_s": 4000, "nvidia_a100_reference_img_per_s": 2470}
        _write(a, "resnet50", {**result, "partial": True})  # the eager row survives a compile that overruns
    return result


def wav2vec2(a) -> dict:
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    device = _device(a.smoke)
    cfg = Wav2Vec2Config(num_labels=35) if not a.smoke else Wav2Vec2Config(
        num_labels=35, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7)
    model = Wav2Vec2ForSequenceClassification(cfg).to(device)
    model.freeze_feature_encoder()
    batch, seconds_audio = (2, 1) if a.smoke else (64, 1)
    x = torch.randn(batch, 16000 * seconds_audio, device=device)
    y = torch.randint(0, 35, (batch,), device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(input_values=x).logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    iters = 2 if a.smoke else 30
    took = _timed_steps(step, device, 1 if a.smoke else 5, iters)
    return {"check": "wav2vec2", "device": _name(device), "batch": batch, "clip_s": seconds_audio,
            "clips_per_s": round(batch * iters / took, 1), "audio_s_per_s": round(batch * iters * seconds_audio / took, 1),
            "feature_encoder": "frozen", "precision": "bf16 autocast"}


def suite_checks(a) -> dict:
    """A tiny recipe through `suite.runner.run` on the GPU: the fast-path settings it chose, and a run stopped
    after epoch 2 and resumed against the uninterrupted one (AMP: within a tolerance, not bitwise)."""
    from safetensors.torch import load_file

    from suite.core.data import loader_workers
    from suite.datasets.shapes import make_shapes
    from suite.runner import run

    device = _device(a.smoke)
    root = Path(a.out) / "suite-check"
    data = make_shapes(root / "data", ["circle", "square", "star"], 16, 8, 0, size=64, seed=0)
    recipe = root / "r.yaml"
    recipe.write_text(f"""\
name: gpu-check
task: image-classification
model: {{arch: resnet18, weights: none}}
data: {{format: imagefolder, root: {data}, image_size: 64, resize: 64, augment: light}}
schedule: [{{epochs: 2, train: head, lr: 1.0e-3}}, {{epochs: 2, train: all, lr: 3.0e-4}}]
train: {{batch_size: 8, checkpoint_every_s: 0}}
""")
    full = run(recipe, [], root / "full", device=device.type, overwrite=True)

    class Stop(Exception):
        pass

    def stop(pos):
        if pos.epoch == 3:
            raise Stop

    try:
        run(recipe, [], root / "cut", device=device.type, overwrite=True, on_epoch_end=[stop])
    except Stop:
        pass
    run(None, resume=root / "cut", device=device.type)
    a_w = load_file(str(root / "full" / "checkpoints" / "best.safetensors"))
    b_w = load_file(str(root / "cut" / "checkpoints" / "best.safetensors"))
    diff = max(float((a_w[k].float() - b_w[k].float()).abs().max()) for k in a_w if a_w[k].is_floating_point())
    return {"check": "suite", "device": _name(device), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "num_workers_auto": loader_workers("auto"), "val_accuracy": full.metrics["val"].get("val/accuracy"),
            "resume_max_abs_weight_diff": diff, "resume_within_1e-3": diff < 1e-3,
            "bitwise": diff == 0.0}


def _name(device: torch.device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["resnet50", "wav2vec2", "suite"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/gpu-check"))
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"gpu-{a.part}.json").unlink(missing_ok=True)  # an earlier run's, which an error would be merged into
    try:
        result = {"resnet50": resnet50, "wav2vec2": wav2vec2, "suite": suite_checks}[a.part](a)
    except Exception as e:  # the one GPU run must bring back why a part failed, next to what it measured before
        kept = json.loads(path.read_text()) if (path := a.out / f"gpu-{a.part}.json").is_file() else {}
        _write(a, a.part, {**kept, "check": a.part, "error": f"{type(e).__name__}: {e}"[:2000]})
        raise
    print(_write(a, a.part, result), flush=True)


def _write(a, part: str, result: dict) -> str:
    text = json.dumps({**result, "torch": torch.__version__})
    (a.out / f"gpu-{part}.json").write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
