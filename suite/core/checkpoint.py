"""Atomic writes, safe loads, and the resume state of a run."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable

from suite.errors import DiskError, UserError

# What a full, failing or read-only disk raises: the run stops with exit 2 and the previous file intact.
DISK_ERRNOS = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], size_hint: int | None = None) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path`` and fsync the folder: a crash or a kill at
    any moment leaves either the previous file or the new complete one, never a half file.

    A disk that refuses the write (full, failing, read-only, no permission) raises DiskError naming the folder,
    what the disk said and, with ``size_hint``, about how many bytes the file needs; ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _disk_error(path, e, size_hint) from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself reaches the disk
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            raise _disk_error(path, e, size_hint or _size(tmp)) from None
        if isinstance(e, RuntimeError) and _disk_cause(e) is not None:  # torch.save wraps the OSError
            raise _disk_error(path, _disk_cause(e), size_hint) from None
        raise
    return path


def _disk_cause(e: BaseException) -> OSError | None:
    while e is not None:
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return e
        text = str(e)
        if "No space left" in text or "Disk quota" in text:
            return OSError(errno.ENOSPC, text)
        e = e.__cause__ or e.__context__
    return None


def _size(tmp: str) -> int | None:
    try:
        return os.path.getsize(tmp) or None
    except OSError:
        return None


def _disk_error(path: Path, e: OSError, size_hint: int | None) -> DiskError:
    folder = path.parent
    try:
        free = f", {shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        free = ""
    need = f"; {path.name} needs about {size_hint / 2**20:.1f} MiB" if size_hint else ""
    what = DISK_ERRNOS.get(e.errno, e.strerror or str(e))
    return DiskError(f"cannot write {path.name} in {folder} ({what}{free}){need}; free space or point --out "
                     f"elsewhere, then continue with --resume (the previous checkpoint is intact)")


def _fsync(file: str) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def save_state(path: str | os.PathLike, state: dict, background: bool = False,
               weights: tuple[Path, dict] | None = None) -> Path:
    """The full resume state (``checkpoints/last.pt``): plain containers and tensors only,
    so it loads back with ``weights_only=True``.

    ``background``: copy the tensors to CPU now and write (and fsync) the copy on a writer thread while training
    goes on; the next save, and ``wait_saves()``, wait for it and raise its error. One write at a time, so a kill
    leaves the previous complete file or the new one, as with a direct write.
    ``weights``: (path, ``weights_copy()``) written first (best.safetensors), so the position last.pt records
    never names a best checkpoint that is not on disk yet.
    """
    import torch

    path = Path(path)
    if not background:
        wait_saves()
        if weights is not None:
            save_weights(*weights, copied=True)
        return atomic_write(path, lambda tmp: torch.save(state, tmp), _tensor_bytes(state))
    snapshot = _cpu_copy(state)  # the live tensors change in the next optimizer step
    wait_saves()
    _PENDING["weights"] = weights

    def write() -> None:
        try:
            if weights is not None:
                save_weights(*weights, copied=True)
            atomic_write(path, lambda tmp: torch.save(snapshot, tmp), _tensor_bytes(snapshot))
        except BaseException as e:  # raised in the training thread by the next wait_saves()
            _PENDING["error"] = e

    thread = threading.Thread(target=write, name="suite-checkpoint")
    _PENDING["thread"] = thread
    thread.start()
    return path


# the background save_state in flight (one at a time), and the (path, weights) it writes with last.pt
_PENDING: dict = {"thread": None, "error": None, "weights": None}


def wait_saves() -> None:
    """Wait for a background ``save_state``; its error (a full disk: DiskError) is raised here."""
    thread = _PENDING["thread"]
    if thread is not None:
        thread.join()
        _PENDING["thread"] = None
    _PENDING["weights"] = None
    error, _PENDING["error"] = _PENDING["error"], None
    if error is not None:
        raise error


def load_weights(path: str | os.PathLike) -> dict:
    """A ``save_weights`` file's tensors; while a background save is still writing ``path``, the copy it writes
    (the same tensors, without waiting for the disk)."""
    pending = _PENDING["weights"]
    if pending is not None and Path(pending[0]) == Path(path):
        return dict(pending[1])
    from safetensors.torch import load_file

    return load_file(str(path))


def _cpu_copy(obj):
    """Containers rebuilt and tensors copied to CPU memory: a snapshot later training cannot change."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _tensor_bytes(obj) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_state(path: str | os.PathLike, data: BinaryIO | None = None) -> dict:
    """A resume state written by ``save_state``: tensors and plain containers only (``weights_only=True``), so
    a file that was swapped for one carrying code is refused, not run. ``data``: the file's bytes, received from
    the machine that holds ``path`` (dist.load_from_main)."""
    import torch

    try:
        state = torch.load(path if data is None else data, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated by a full disk, replaced, or not written by this suite
        detail = " ".join(str(e).split())[:200]
        raise UserError(f"cannot read the checkpoint {path} ({type(e).__name__}: {detail}); it was not written "
                        "completely by this suite: start the run again with --overwrite") from None
    if not isinstance(state, dict) or "position" not in state:
        raise UserError(f"{path} is not a checkpoint of this suite (no position); start again with --overwrite")
    return state


def weights_copy(state_dict: dict) -> dict:
    """The state_dict's tensors copied to CPU memory, each its own contiguous storage (what safetensors needs)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in state_dict.items()}


def save_weights(path: str | os.PathLike, state_dict: dict, copied: bool = False) -> Path:
    """``best.safetensors``: the model's own state_dict names, tensors copied off shared storage
    (``copied``: ``state_dict`` is already a ``weights_copy()``)."""
    from safetensors.torch import save_file

    tensors = state_dict if copied else weights_copy(state_dict)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp), _tensor_bytes(tensors))


def rng_state() -> dict:
    """Every RNG a training epoch draws from, as tensors and ints (weights_only-loadable)."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a checkpoint from a machine with more GPUs: those shown
        for i, cuda in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda, i)


def _tuples(value):
    # torch.save keeps tuples, but be lenient with lists from older files: random.setstate needs tuples.
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
