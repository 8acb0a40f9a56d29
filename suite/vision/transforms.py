"""Image preprocessing: what a model expects (``Preprocess``) and the train/eval pipelines built from it.

Only ``torchvision.transforms.v2`` is used. Every pipeline starts with ``to_rgb`` so images of any PIL
mode (grayscale, 16-bit, float, CMYK, palette, with alpha) become 8-bit RGB before resizing; that
keeps the eval pipeline safe to reuse at deploy time on whatever image a user hands in.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from suite.errors import UserError
# One definition of image decoding for training and the deployed runtime, so their tensors agree.
from suite_runtime.preprocess import MAX_ASPECT, to_rgb  # noqa: F401  (re-exported)
from suite_runtime.preprocess import limit_aspect as _limit_aspect

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INTERPOLATIONS: dict[str, InterpolationMode] = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
AUGMENTS = ("none", "light", "standard")


@dataclass(frozen=True)
class Preprocess:
    """What the model expects. Plain data: ``Preprocess(**dataclasses.asdict(p))`` round-trips via JSON."""

    size: int = 224  # final square crop
    resize: int = 256  # shorter side before the centre crop
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # JSON gives lists; store tuples so the frozen dataclass stays hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not (isinstance(self.size, int) and self.size > 0):
            raise UserError(f"preprocess.size must be a positive integer (got {self.size!r})")
        if not (isinstance(self.resize, int) and self.resize >= self.size):
            raise UserError(
                f"preprocess.resize ({self.resize!r}) must be an integer >= preprocess.size ({self.size}); "
                "it is the shorter side before the centre crop"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserError(f"preprocess.mean/std need 3 values each and std > 0 (got {self.mean}, {self.std})")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(
                f"preprocess.interpolation '{self.interpolation}' is unknown; use one of {', '.join(INTERPOLATIONS)}"
            )


def build_transforms(pre: Preprocess, augment: str = "standard") -> tuple[Callable, Callable]:
    """``(train_tf, eval_tf)``: each takes a PIL image and returns a float32 CHW tensor normalised by ``pre``."""
    if augment not in AUGMENTS:
        close = difflib.get_close_matches(str(augment), AUGMENTS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown augment '{augment}'{hint}; choose one of {', '.join(AUGMENTS)}")
    interp = INTERPOLATIONS[pre.interpolation]
    resize = v2.Resize(pre.resize, interpolation=interp, antialias=True)
    eval_ops = [resize, v2.CenterCrop(pre.size)]
    if augment == "standard":
        train_ops = [
            v2.RandomResizedCrop(pre.size, scale=(0.5, 1.0), interpolation=interp, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    elif augment == "light":
        # Same scale as eval (resize, then crop), plus a small shift; padding gives a shift even when
        # resize == size (e.g. CIFAR-sized models).
        pad = max(1, pre.size // 8)
        train_ops = [resize, v2.RandomCrop(pre.size, padding=pad, pad_if_needed=True), v2.RandomHorizontalFlip()]
    else:
        train_ops = list(eval_ops)
    return _compose(train_ops, pre), _compose(eval_ops, pre)


def _compose(ops: list, pre: Preprocess) -> v2.Compose:
    return v2.Compose(
        [
            # module-level functions, so the pipeline pickles into DataLoader workers
            v2.Lambda(to_rgb, Image.Image),
            v2.Lambda(_limit_aspect, Image.Image),
            *ops,
            v2.Lambda(ToNormalized(pre.mean, pre.std), Image.Image, torch.Tensor),
        ]
    )


class ToNormalized:
    """PIL image (or uint8/float CHW tensor) -> plain float32 tensor, scaled to 0..1 and normalised: the
    functional kernels of v2's ``ToImage, ToDtype(float32, scale=True), Normalize, ToPureTensor``, with the same
    arithmetic (bit-identical output), as one step. The four transforms' per-call dispatch was ~half of the
    eval pipeline's time on a 64 px image (117 -> 87 us per image, benchmarks/README.md). A plain tensor comes
    out, so batches collate and export without tv_tensors metadata. Picklable, for DataLoader workers."""

    def __init__(self, mean, std):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, image):
        x = F.pil_to_tensor(image) if isinstance(image, Image.Image) else image.as_subclass(torch.Tensor)
        return F.normalize(F.to_dtype(x, torch.float32, scale=True), self.mean, self.std)

    def __repr__(self) -> str:
        return f"ToNormalized(mean={self.mean}, std={self.std})"
