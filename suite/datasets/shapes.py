"""A seeded, offline image-classification dataset: coloured geometric shapes on textured backgrounds.

The offline quickstart pretrains on some shape classes and fine-tunes on *other* classes with ~10 images
each. The class is carried by the outline alone: colour, position, scale, rotation, background texture,
noise and blur are drawn the same way for every class, so a model has to learn edges and corners, which
are exactly the features that transfer from one set of shapes to another.
"""
from __future__ import annotations

import difflib
import json
import math
import operator
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from suite.core.checkpoint import atomic_write_text
from suite.errors import UserError

SPLITS = ("train", "val", "test")
SUPERSAMPLE = 4  # draw outlines at 4x and downsample: clean anti-aliased edges at 64 px
MIN_CONTRAST = 0.45  # RGB distance between the shape colour and the background under it
FORMAT = 1  # stored in shapes.json; bump when rendering changes so an old folder is not reused
_PARTIAL = ".shapes-partial.json"  # marks a folder this module started filling, so a rerun may finish it


# ---------------------------------------------------------------- geometry (unit size, y pointing down)

def _circle(n: int = 64, radius: float = 1.0, start: float = math.pi / 2, stop: float | None = None):
    """Points on a circular arc (the full circle when stop is None); a small n gives a regular polygon."""
    if stop is None:
        angles = start + 2 * math.pi * np.arange(n) / n
    else:
        angles = np.linspace(start, stop, n)
    return radius * np.stack([np.cos(angles), -np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.42):
    angles = math.pi / 2 + math.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), -radii * np.sin(angles)], axis=1)


def _heart():
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([16 * np.sin(t) ** 3, -y], axis=1)


def _crescent():
    """Unit disc minus a disc of radius 0.8 centred at (0.5, 0), traced as one polygon."""
    x = (1 + 0.25 - 0.64) / (2 * 0.5)  # where the two circles cross
    outer = math.atan2(math.sqrt(1 - x * x), x)
    inner = math.atan2(math.sqrt(1 - x * x), x - 0.5)
    left_of_disc = _circle(48, 1.0, outer, 2 * math.pi - outer)
    bite = _circle(40, 0.8, 2 * math.pi - inner, inner) + [0.5, 0.0]
    return np.concatenate([left_of_disc, bite])


def _unit(*polygons):
    """Centre on the bounding box of the filled parts and scale so the farthest point is at radius 1:
    a pose's `scale` then means the same outline diameter for every class."""
    filled = np.concatenate([np.asarray(p, float) for p, fill in polygons if fill])
    centre = (filled.min(0) + filled.max(0)) / 2
    radius = np.linalg.norm(filled - centre, axis=1).max()
    return [((np.asarray(p, float) - centre) / radius, fill) for p, fill in polygons]


# Each class is a list of (polygon, fill): fill=False cuts a hole. Every class must stay distinct under
# rotation (so no plain "diamond" = square turned 45 degrees: ours is an elongated rhombus) and at 30% of
# 64 px (so no octagon, which is within a pixel of a circle there). tests/test_shapes.py checks both.
_GEOMETRY = {
    "circle": _unit((_circle(), True)),
    "square": _unit((_circle(4, start=math.pi / 4), True)),
    "triangle": _unit((_circle(3), True)),
    "star": _unit((_star(), True)),
    "hexagon": _unit((_circle(6), True)),
    "pentagon": _unit((_circle(5), True)),
    "cross": _unit(([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1),
                     (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3)], True)),
    "ring": _unit((_circle(), True), (_circle(radius=0.55), False)),
    "diamond": _unit(([(1, 0), (0, .55), (-1, 0), (0, -.55)], True)),
    "ellipse": _unit((_circle() * [1, .55], True)),
    "arrow": _unit(([(-1, -.2), (.15, -.2), (.15, -.55), (1, 0), (.15, .55), (.15, .2), (-1, .2)], True)),
    "heart": _unit((_heart(), True)),
    "crescent": _unit((_crescent(), True)),
    "semicircle": _unit((_circle(48, start=0, stop=math.pi), True)),
    "trapezoid": _unit(([(-1, .5), (1, .5), (.45, -.5), (-.45, -.5)], True)),
    "rectangle": _unit(([(-1, -.45), (1, -.45), (1, .45), (-1, .45)], True)),
}
SHAPES: tuple[str, ...] = tuple(_GEOMETRY)


def _pose(shape: str, angle: float, radius: float, centre) -> list:
    """The class outline rotated by `angle`, scaled to `radius` pixels and moved to `centre`."""
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, -s], [s, c]])
    return [(p @ rotation.T * radius + centre, fill) for p, fill in _GEOMETRY[shape]]


def _random_pose(rng: np.random.Generator, shape: str, size: int) -> list:
    angle = rng.uniform(0, 2 * math.pi)
    radius = rng.uniform(0.3, 0.8) * size / 2
    polygons = _pose(shape, angle, radius, np.zeros(2))
    filled = np.concatenate([p for p, fill in polygons if fill])
    low, high = filled.min(0), filled.max(0)
    # The whole outline stays inside the frame, 2 px clear so the anti-aliased edge does not touch it.
    centre = rng.uniform(2 - low, size - 2 - high)
    return [(p + centre, fill) for p, fill in polygons]


def _mask(polygons: list, size: int) -> np.ndarray:
    """Coverage in [0, 1], size x size, anti-aliased by supersampling."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    for points, fill in polygons:
        draw.polygon([tuple(p) for p in (points * SUPERSAMPLE).tolist()], fill=255 if fill else 0)
    small = big.resize((size, size), Image.LANCZOS)
    return np.asarray(small, dtype=np.float32) / 255


# ---------------------------------------------------------------- backgrounds: a texture t in [0, 1]

def _along(rng: np.random.Generator, size: int) -> np.ndarray:
    """Pixel coordinate along a random direction."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    return x * math.cos(angle) + y * math.sin(angle)


def _stretch(t: np.ndarray) -> np.ndarray:
    return (t - t.min()) / max(float(np.ptp(t)), 1e-6)


def _noise(rng, size):  # smooth value noise: a coarse random grid upsampled
    cells = int(rng.integers(3, 13))
    coarse = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    return np.asarray(coarse.resize((size, size), Image.BICUBIC)).clip(0, 1)


def _stripes(rng, size):
    phase = 2 * math.pi * _along(rng, size) / rng.uniform(4, 16) + rng.uniform(0, 2 * math.pi)
    wave = np.sin(phase)
    return (wave > 0).astype(np.float32) if rng.random() < 0.5 else (wave + 1) / 2


def _checker(rng, size):
    u, v = _along(rng, size), _along(rng, size)  # two random directions: skewed, rotated checks
    cell = rng.uniform(4, 16)
    return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)


def _gradient(rng, size):
    return _stretch(_along(rng, size))


def _blotches(rng, size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    t = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, size, 2)
        sigma = rng.uniform(0.05, 0.2) * size
        t += rng.choice([-1.0, 1.0]) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    return _stretch(t)


_PATTERNS = (_noise, _stripes, _checker, _gradient, _blotches)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two nearby colours mixed by a random texture: low-to-medium contrast, so the shape stays visible."""
    first = rng.uniform(0.1, 0.9, 3)
    second = np.clip(first + rng.uniform(-0.3, 0.3, 3), 0, 1)
    t = _PATTERNS[int(rng.integers(len(_PATTERNS)))](rng, size)
    return first + (second - first) * t[..., None]


def _shape_colour(rng: np.random.Generator, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A uniformly random colour, redrawn until it stands out from the background under the shape.
    The rule never looks at the class, so colour carries no class information."""
    local = (background * alpha[..., None]).sum((0, 1)) / alpha.sum()
    for _ in range(50):
        colour = rng.random(3)
        if np.linalg.norm(colour - local) >= MIN_CONTRAST:
            return colour
    return (local < 0.5).astype(np.float64)  # the farthest corner of the RGB cube


def render_image(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of `shape` with every nuisance (pose, colours, texture, noise, blur) drawn from rng."""
    background = _background(rng, size)
    alpha = _mask(_random_pose(rng, shape, size), size)
    colour = _shape_colour(rng, background, alpha)
    image = background * (1 - alpha[..., None]) + colour * alpha[..., None]
    image = image + rng.normal(0, rng.uniform(0, 0.04), image.shape)
    pil = Image.fromarray((image.clip(0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return pil


# ---------------------------------------------------------------- the dataset folder

def _check_classes(classes: Sequence[str]) -> list[str]:
    classes = [classes] if isinstance(classes, str) else list(classes)
    if not classes:
        raise UserError(f"no shape classes given; valid: {', '.join(SHAPES)}")
    for name in classes:
        if name not in _GEOMETRY:
            close = difflib.get_close_matches(str(name), SHAPES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown shape class {name!r}{hint}; valid: {', '.join(SHAPES)}")
    if len(set(classes)) != len(classes):
        raise UserError(f"shape classes repeat: {', '.join(classes)}")
    return classes


def _check_count(name: str, value: int, minimum: int, maximum: int | None = None) -> int:
    try:
        number = operator.index(value)  # ints and numpy ints; not floats or strings from a sloppy recipe
    except TypeError:
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise UserError(f"{name} must be an integer {bounds}, got {value!r}")
    return int(number)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable: treated as "different parameters", never overwritten


def _differing(old, params: dict) -> str:
    """' (seed, size)': the parameter names that differ, for the refusal message."""
    if not isinstance(old, dict):
        return ""
    keys = [k for k in params if old.get(k) != params[k]] + [k for k in old if k not in params]
    return f" ({', '.join(keys)})" if keys else ""


def _claim(out: Path, params: dict, kind: str = "shapes", partial_name: str = _PARTIAL) -> bool:
    """True if `out` already holds exactly this dataset (``out/<kind>.json``). Otherwise mark `out` as ours and
    return False, or raise UserError: a folder holding anything else is the user's and is never written into."""
    advice = "choose another --out or delete that folder"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder: choose another --out")
    done, partial = out / f"{kind}.json", out / partial_name
    if done.exists():
        old = _read_json(done)
        if old == params:
            return True
        raise UserError(f"{out} holds a {kind} dataset made with different parameters"
                        f"{_differing(old, params)}: {advice}")
    if partial.exists():  # an earlier run with these parameters was interrupted: finish it
        old = _read_json(partial)
        if old == params:
            return False
        raise UserError(f"{out} holds an unfinished {kind} dataset with different parameters"
                        f"{_differing(old, params)}: {advice}")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a {kind} dataset: {advice}")
    atomic_write_text(partial, json.dumps(params) + "\n")
    return False


def make_shapes(out, classes: Sequence[str], train_per_class: int, val_per_class: int,
                test_per_class: int = 0, size: int = 64, seed: int = 0, progress: bool = False) -> Path:
    """Write out/train/<class>/<i>.png, out/val/<class>/<i>.png and (if test_per_class > 0)
    out/test/<class>/<i>.png, then out/shapes.json (the parameters) last.

    Idempotent: if shapes.json already records these parameters, returns at once without writing.
    A folder holding anything else raises UserError. Each image depends only on (seed, split, class,
    index, size), so results are reproducible and independent of which other classes are generated.
    """
    out = Path(out)
    counts = {
        "train": _check_count("train_per_class", train_per_class, 1),
        "val": _check_count("val_per_class", val_per_class, 0),
        "test": _check_count("test_per_class", test_per_class, 0),
    }
    params = {"format": FORMAT, "classes": _check_classes(classes),
              **{f"{split}_per_class": n for split, n in counts.items()},
              "size": _check_count("size", size, 16), "seed": _check_count("seed", seed, 0)}
    if _claim(out, params):
        return out
    jobs = [(split, name, i) for split in SPLITS for name in params["classes"] for i in range(counts[split])]
    for split, name, i in tqdm(jobs, desc=f"shapes -> {out}", unit="img", disable=None if progress else True):
        rng = np.random.default_rng([params["seed"], SPLITS.index(split), SHAPES.index(name), i])
        path = out / split / name / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        render_image(name, size, rng).save(path)
    atomic_write_text(out / "shapes.json", json.dumps(params, indent=2) + "\n")
    (out / _PARTIAL).unlink(missing_ok=True)  # after shapes.json: a crash in between still reads as done
    return out
