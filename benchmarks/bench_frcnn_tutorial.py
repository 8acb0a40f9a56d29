"""Training-step time of the tutorial Faster R-CNN (MobileNetV2 features) with torchvision's default box head vs
the suite's CPU-sized one, side by side in one process.

    python benchmarks/bench_frcnn_tutorial.py --size 384 --steps 3

Both models: FasterRCNN on mobilenet_v2().features (1280 channels), anchors 32-512 x 3 ratios, RoIAlign 7x7,
4 images of 192 px resized to --size, 2 boxes each, SGD. "tutorial": TwoMLPHead 62,720 -> 1024, 512 RoIs per
image, torchvision's proposal counts; "suite": the model `fasterrcnn_mobilenet_v2` builds (256 wide, 64 RoIs,
fewer proposals); "suite-s16": `fasterrcnn_mobilenet_v2_s16`, the same on the features cut at stride 16
(96 channels; anchors 32-256). Backbone frozen (as the quickstart trains) and trained. Prints seconds per step.
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from suite.detection import frcnn


def tutorial(n: int, size: int) -> torch.nn.Module:
    backbone = torchvision.models.mobilenet_v2(weights=None).features
    backbone.out_channels = 1280
    anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    return FasterRCNN(backbone, num_classes=n, rpn_anchor_generator=anchors, box_roi_pool=pool, min_size=size,
                      max_size=size)


def step_time(model: torch.nn.Module, frozen: bool, steps: int) -> float:
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 192, 192, generator=g) for _ in range(4)]
    targets = [{"boxes": torch.tensor([[20.0, 20, 80, 80], [100, 90, 170, 160]]), "labels": torch.tensor([1, 2])}
               for _ in range(4)]

    def one():
        loss = sum(model(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad()

    one()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    models = {"tutorial": tutorial(5, args.size),
              "suite": frcnn.build_model(frcnn.TUTORIAL, list("abcd"), "none", min_size=args.size),
              "suite-s16": frcnn.build_model(frcnn.TUTORIAL_S16, list("abcd"), "none", min_size=args.size)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 4 images at {args.size} px")
    for frozen in (True, False):
        for name, model in models.items():
            print(f"{name:10s} backbone {'frozen ' if frozen else 'trained'}: {step_time(model, frozen, args.steps):6.2f} "
                  "s per step", flush=True)


if __name__ == "__main__":
    main()
