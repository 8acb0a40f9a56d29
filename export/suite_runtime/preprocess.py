"""Image preprocessing with numpy and PIL only, equal (within 1e-6) to the training side's eval pipeline.

The training side (``suite.vision.transforms``) imports ``to_rgb``, ``_to_uint8``, ``limit_aspect`` and
``MAX_ASPECT`` from here, so each fact about turning a file into pixels lives in one place. The resize and
centre-crop arithmetic mirrors torchvision.transforms.v2 on PIL images (``_compute_resized_output_size``,
``_center_crop_compute_crop_anchor``), because a one-pixel shift there is a silent accuracy loss.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image, ImageOps

# Resizing the shorter side of a 2x2000 banner to 256 px would make a 256x256000 image. Images longer
# than this aspect ratio are centre-cropped first; eval output is unchanged (its centre crop never sees
# the ends) and memory stays bounded.
MAX_ASPECT = 4
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# The same PIL filters torchvision's pil_modes_mapping picks for each InterpolationMode name.
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}

ImageInput = Union[Image.Image, str, os.PathLike, np.ndarray]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is composited on white; 16-bit/float values are rescaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        # a 2-D uint8 array is mode "L" already; passing mode= is deprecated in recent Pillow
        return Image.fromarray(_to_uint8(np.asarray(img))).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Map a high-bit-depth grayscale array onto 0..255 (PIL's own I->L conversion clips at 255)."""
    is_float = a.dtype.kind == "f"
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if is_float and lo >= 0 and hi <= 1:
        a = a * 255  # float images in 0..1
    elif lo >= 0 and hi <= 255:
        pass  # already 8-bit range
    elif lo >= 0 and hi <= 65535:
        a = a / 257  # 16-bit: 65535 -> 255
    else:
        a = (a - lo) / (hi - lo) * 255  # anything else: stretch to the full range
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def limit_aspect(img: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side so it is at most ``max_aspect`` times the short side."""
    w, h = img.size
    # int(): identical to the training side for its integer MAX_ASPECT, and a pixel box for a float one
    if w > max_aspect * h:
        keep = int(max_aspect * h)
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    if h > max_aspect * w:
        keep = int(max_aspect * w)
        top = (h - keep) // 2
        return img.crop((0, top, w, top + keep))
    return img


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, fully decode, apply EXIF orientation, convert to RGB, as the training side's loader does.

    Any failure becomes a ValueError naming the file, so callers report one clear line.
    """
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not halfway through a batch
            upright(im)
    # decoders raise a zoo of types (OSError, SyntaxError, EOFError, struct.error, DecompressionBombError)
    except Exception as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot read image {os.fspath(path)}: {reason}") from None
    return to_rgb(im)  # leaving the ``with`` closed the file only: the decoded pixels stay


def upright(im: Image.Image) -> Image.Image:
    """A decoded ``im`` turned by its EXIF orientation, in place: an image without one keeps its pixels where
    they are (a 12 MP JPEG loaded in 75 ms, against 105 ms when every image was copied). Malformed EXIF leaves
    the image as it is: orientation is cosmetic, the image is not."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:
        pass
    return im


def as_pil(item: ImageInput) -> Image.Image:
    """A path, PIL image or array (HWC uint8 RGB/RGBA, or HW grayscale of any dtype) as a PIL image."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)
    if isinstance(item, np.ndarray):
        a = item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item
        if a.ndim == 3 and (a.shape[-1] not in (3, 4) or a.dtype != np.uint8):
            raise ValueError(f"image arrays must be HxWx3 (or 4) uint8 or HxW grayscale, got {a.shape} {a.dtype}")
        if a.ndim not in (2, 3):
            raise ValueError(f"image arrays must be HxWxC or HxW, got shape {item.shape}")
        # 2-D arrays of other dtypes become I;16/I/F images, which to_rgb rescales like decoded files
        return Image.fromarray(np.ascontiguousarray(a))
    raise TypeError(f"cannot preprocess {type(item).__name__}; pass a path, a PIL image or a numpy array")


@dataclass(frozen=True)
class ImageSpec:
    """The validated ``preprocess`` block of model.json for ``type: image``."""

    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    scale: float = 255.0
    max_aspect: float = MAX_ASPECT

    @classmethod
    def from_dict(cls, spec: dict) -> "ImageSpec":
        kind = spec.get("type", "image")
        if kind != "image":
            raise ValueError(f"unknown preprocess type '{kind}'; this suite-runtime supports: image")
        missing = [k for k in ("size", "resize", "mean", "std") if k not in spec]
        if missing:
            raise ValueError(f"preprocess spec lacks {', '.join(missing)}")
        known = {k: spec[k] for k in cls.__dataclass_fields__ if k in spec}  # unknown keys are ignored
        out = cls(**{**known, "mean": tuple(map(float, spec["mean"])), "std": tuple(map(float, spec["std"]))})
        if out.interpolation not in RESAMPLE:
            raise ValueError(f"unknown interpolation '{out.interpolation}'; use one of {', '.join(RESAMPLE)}")
        if out.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"unknown channel_order '{out.channel_order}'; use RGB or BGR")
        if len(out.mean) != 3 or len(out.std) != 3 or min(out.std) <= 0 or min(out.size, out.resize) <= 0:
            raise ValueError(f"bad preprocess spec: need size/resize > 0, 3 means and 3 stds > 0 (got {spec})")
        return out


def resize_shorter(img: Image.Image, resize: int, interpolation: str = "bilinear") -> Image.Image:
    """Shorter side -> ``resize``, long side int(resize * long / short): torchvision's v2.Resize(int) on PIL."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample=RESAMPLE[interpolation])


def center_crop(a: np.ndarray, size: int) -> np.ndarray:
    """HWC centre crop to size x size, zero-padding first when smaller (torchvision's v2.CenterCrop)."""
    h, w = a.shape[:2]
    if size > h or size > w:
        top, left = max(size - h, 0) // 2, max(size - w, 0) // 2
        bottom, right = max(size - h + 1, 0) // 2, max(size - w + 1, 0) // 2
        a = np.pad(a, ((top, bottom), (left, right), (0, 0)))
        h, w = a.shape[:2]
    # round() is Python's half-to-even, exactly what torchvision computes the anchor with
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return a[top:top + size, left:left + size]


def preprocess_image(img: ImageInput, spec: dict | ImageSpec) -> np.ndarray:
    """One image -> normalised (3, size, size) float32 CHW array, the model's input for one sample."""
    s = spec if isinstance(spec, ImageSpec) else ImageSpec.from_dict(spec)
    pil = to_rgb(as_pil(img))
    if min(pil.size) == 0:
        raise ValueError(f"cannot preprocess an empty image ({pil.size[0]}x{pil.size[1]})")
    pil = resize_shorter(limit_aspect(pil, s.max_aspect), s.resize, s.interpolation)
    a = center_crop(np.asarray(pil, dtype=np.uint8), s.size)
    if s.channel_order == "BGR":
        a = a[..., ::-1]
    # float32 throughout, in torchvision's order (x * (1/scale) - mean) / std, so results match bit for bit
    x = a.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / s.scale)
    mean = np.asarray(s.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(s.std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)
