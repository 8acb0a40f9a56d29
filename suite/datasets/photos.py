"""Real photos that installed packages ship (scikit-image, matplotlib, Ultralytics), labelled with the ImageNet-1k
class a person would give them: a small offline source-task set to measure forgetting of ImageNet
(`eval.source: {format: imagenet-photos}`). Photos with no fitting ImageNet class (an astronaut, a city bus)
are left out; the labels are what the photo shows, not what a model predicts."""
from __future__ import annotations

import shutil
from pathlib import Path

from suite.core.checkpoint import atomic_write
from suite.errors import UserError

# (package, path inside it, ImageNet-1k class name as torchvision lists it)
PHOTOS = (
    ("skimage", "data/coffee.png", "espresso"),
    ("skimage", "data/chelsea.png", "tabby"),
    ("skimage", "data/rocket.jpg", "missile"),
    ("skimage", "data/motorcycle_left.png", "moped"),
    ("skimage", "data/motorcycle_right.png", "moped"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "military uniform"),
    ("ultralytics", "assets/zidane.jpg", "suit"),
)


def photo_files() -> list[tuple[Path, str]]:
    """(file, ImageNet class) of every photo; a UserError naming the package when one is missing."""
    import importlib.util

    out = []
    for package, rel, label in PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise UserError(f"eval.source imagenet-photos needs the photos {package} ships: pip install "
                            f"{'scikit-image' if package == 'skimage' else package} (make install does)")
        path = Path(spec.origin).parent / rel
        if not path.is_file():
            raise UserError(f"{path} is missing from the installed {package}; reinstall it")
        out.append((path, label))
    return out


def make_photos(root: str | Path) -> Path:
    """Copy the photos into ``root/<class>/`` (a class-folder set), once; files already there are kept."""
    root = Path(root)
    for path, label in photo_files():
        target = root / label / path.name
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp, src=path: shutil.copyfile(src, tmp))
    return root
