"""Several processes through torchrun (torch.distributed.run) and DDP.

`suite run --nproc N` re-launches itself under torchrun; each worker finds WORLD_SIZE/RANK/LOCAL_RANK in its
environment, joins the process group (NCCL on GPUs, gloo on CPU), and trains a DDP replica. The global batch is
the recipe's `train.batch_size`: every rank draws the single-process run's batches, from the same seeded loader,
and trains on its slice (rank r takes samples r, r + N, ...), so each step averages the gradients of the same
samples a single process would see. Rank 0 alone writes the run directory; the others train and return. A YOLO
recipe's workers run Ultralytics' trainer as its own DDP workers on this process group (suite.detection.yolo).
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, TypeVar

import torch
import torch.distributed as td
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from suite.errors import PeerStopped, UserError

T = TypeVar("T")


_joined = False  # init() created the process group (finish() ends only that one)


def world() -> int:
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Inside a torchrun worker of a job with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group once (NCCL for CUDA, gloo otherwise); this rank's device."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    global _joined
    if not td.is_initialized():
        gloo_interface()  # also under NCCL: a resume's checkpoint goes to other machines over gloo
        td.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout())
        _joined = True
    return device


def gloo_interface() -> str | None:
    """For gloo across machines: GLOO_SOCKET_IFNAME, when unset, becomes the interface this machine reaches machine
    0 (MASTER_ADDR) through. Otherwise gloo advertises the address the host name resolves to, a loopback one where
    /etc/hosts maps it so (Debian's 127.0.1.1), and the other machines' connections are refused ("Gloo
    connectFullMesh failed ... remote=[127.0.0.1]", seen between two network namespaces here). Set under NCCL too
    (NCCL picks its own interface, but a resume sends the checkpoint over gloo). Returns the interface, or None."""
    env = os.environ
    if env.get("GLOO_SOCKET_IFNAME") or int(env.get("GROUP_WORLD_SIZE", "1")) < 2 or not env.get("MASTER_ADDR"):
        return None
    import socket

    def source(host: str, port: int) -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, port))  # UDP: no packet, just the route's source address
            return s.getsockname()[0]

    try:
        local = source(env["MASTER_ADDR"], int(env.get("MASTER_PORT", "29500")))
        if local.startswith("127."):  # machine 0 named by a host name /etc/hosts maps to loopback there
            local = source("192.0.2.1", 9)  # the default route's address (TEST-NET-1: nothing is sent)
        name = _interface_of(local)
    except (OSError, ValueError):  # no IPv4 route, or no interface list: gloo's own choice stands
        return None
    if name is None or local.startswith("127."):
        return None
    env["GLOO_SOCKET_IFNAME"] = name
    return name


def _interface_of(address: str) -> str | None:
    """The name of the interface holding IPv4 ``address``."""
    return next((name for name, held in ipv4_addresses().items() if held == address), None)


def ipv4_addresses() -> dict[str, str]:
    """Each interface's IPv4 address (Linux: SIOCGIFADDR on each interface; those without one are left out)."""
    import fcntl
    import socket
    import struct

    found = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:  # no IPv4 address on it
                continue
            found[name] = socket.inet_ntoa(raw[20:24])
    return found


TIMEOUT_ENV = "SUITE_DIST_TIMEOUT_S"


def timeout() -> timedelta:
    """How long a rank waits in a collective: 3 hours (Ultralytics' DDP timeout), or ``SUITE_DIST_TIMEOUT_S``.
    torch's defaults (NCCL 10 minutes, gloo 30) end a run whose rank 0 validates, generates data or exports
    alone for longer while the others wait at its broadcast. A rank that dies ends the job sooner: torchrun
    stops the others when one exits."""
    raw = os.environ.get(TIMEOUT_ENV, "10800")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 10**9:  # also inf and nan
        raise UserError(f"{TIMEOUT_ENV}={raw}: give the seconds a rank may wait for the others, e.g. 10800")
    return timedelta(seconds=seconds)


def finish() -> None:
    """Leave the process group, at the end of every worker's run (error or not). A gloo group left to the
    interpreter's shutdown aborts the process ("terminate called without an active exception", SIGABRT) when its
    worker threads still hold tensors: 9 of 15 four-rank torchrun jobs here, 0 of 15 with this call."""
    global _joined
    if _joined and td.is_initialized():  # a caller's own group is theirs to end
        td.destroy_process_group()
    _joined = False


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if world() == 1:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def local_rank() -> int:
    """This process's number on its own machine (torchrun's LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def machine() -> int:
    """This process's machine: torchrun's GROUP_RANK (the --node-rank under the suite's static rendezvous)."""
    return int(os.environ.get("GROUP_RANK", "0"))


def main_first(make: Callable[[], T], what: str) -> T:
    """``make()`` on rank 0, then on the first process of each other machine, then on the rest, so that each
    finds what the one before it wrote (generated data, a content-keyed folder) ready instead of writing it at the
    same time: on one machine, or several sharing a filesystem, rank 0's copy; on machines with disks of their
    own, that machine's first process's. When one fails, it raises its error; rank 0 names it in one line when
    it ran on another machine (so that the first machine's terminal says why), and the others raise PeerStopped
    (no line of their own) instead of failing in their next collective."""
    if world() == 1:
        return make()
    turn = 0 if is_main() else 1 if local_rank() == 0 else 2
    made = None
    for now in range(3):
        error: BaseException | None = None
        if turn == now:
            try:
                made = make()
            except BaseException as e:
                error = e
        news = all_ranks(None if error is None else (machine(), f"{type(error).__name__}: {error}"))
        if error is not None:
            raise error
        failed = [(r, *f) for r, f in enumerate(news) if f is not None]
        if failed:
            r, where, message = failed[0]
            if is_main() and where != machine():  # its own line is on another machine's terminal
                raise UserError(f"rank {r} (machine {where}) stopped while {what} ({message})")
            raise PeerStopped(f"rank {r} stopped while {what} ({message})")
    return made


def from_main(read: Callable[[], T], what: str) -> T:
    """``read()`` on rank 0 alone, and its result on every rank: for what only the first machine holds (the run
    directory, whose recipe and checkpoint a resumed run reads), so that the other machines need neither a copy
    nor a shared filesystem. When rank 0 fails the others raise PeerStopped."""
    if world() == 1:
        return read()
    if is_main():
        try:
            value = read()
        except BaseException as e:
            broadcast((False, f"{type(e).__name__}: {e}"))
            raise
        broadcast((True, value))
        return value
    ok, value = broadcast(None)
    if not ok:
        raise PeerStopped(f"rank 0 stopped while {what} ({value})")
    return value


def load_from_main(path: Path, load: Callable[[Path, BinaryIO | None], T], what: str) -> T:
    """``load(path, None)`` on each rank that sees rank 0's file (the same size and modification time: one machine,
    a shared disk, or a copy kept in sync), ``load(path, bytes of rank 0's file)`` on the others: for a checkpoint
    in the run directory, which machine 0 holds. The file's own bytes travel, once, to the ranks that need them
    (a gloo group of those, in CPU memory; not the loaded state pickled again, nor through the GPUs). When rank 0
    has no file it raises its own error and the others raise PeerStopped."""
    if world() == 1:
        return load(path, None)

    def stamp():
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    stamps = all_ranks(stamp())
    if stamps[0] is None:
        if is_main():
            return load(path, None)  # its error (no file: the caller checked; unreadable)
        raise PeerStopped(f"rank 0 stopped while {what} ({path} not readable there)")
    need = [r for r, s in enumerate(stamps) if s != stamps[0]]
    if not need:
        return load(path, None)
    read: list[torch.Tensor] = []  # rank 0 reads before anyone waits in the transfer: a failed read stops all
    from_main(lambda: read.append(_read_all(path, stamps[0][0], what)), what)
    group = td.new_group([0, *need], timeout=timeout(), backend="gloo")  # every rank creates it; these take part
    try:
        data = None
        if is_main():
            td.broadcast(read.pop(), src=0, group=group)
        elif rank() in need:
            blob = torch.empty(stamps[0][0], dtype=torch.uint8)
            td.broadcast(blob, src=0, group=group)
            data = io.BytesIO(blob.numpy().tobytes())
            del blob
    finally:
        td.destroy_process_group(group)
    return load(path, data)


def _read_all(path: Path, size: int, what: str) -> torch.Tensor:
    """The file's ``size`` bytes, read into one uint8 tensor."""
    blob = torch.empty(size, dtype=torch.uint8)
    view, done = memoryview(blob.numpy()), 0
    with open(path, "rb") as f:
        while done < size:  # one read returns at most ~2 GB on Linux
            got = f.readinto(view[done:])
            if not got:
                raise UserError(f"{path} shrank while {what}; run --resume again")
            done += got
    return blob


def all_ranks(obj) -> list:
    """Every rank's ``obj``, on every rank."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    td.all_gather_object(out, obj)
    return out


def gather(obj) -> list | None:
    """Every rank's ``obj``, on rank 0 (None elsewhere)."""
    if world() == 1:
        return [obj]
    out = [None] * world() if is_main() else None
    td.gather_object(obj, out, dst=0)
    return out


def _reduce_device() -> torch.device:
    """Where a small all-reduce's tensor lives: NCCL reduces CUDA tensors only (a CPU tensor there fails with "No
    backend type associated with device type cpu"), gloo CPU ones."""
    if td.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean(total: float, count: int) -> tuple[float, int]:
    """Sum ``total`` and ``count`` over the ranks."""
    if world() == 1:
        return total, count
    t = torch.tensor([float(total), float(count)], dtype=torch.float64, device=_reduce_device())
    td.all_reduce(t)
    return float(t[0]), int(t[1])


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a stop signal that reached one rank first)."""
    if world() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_reduce_device())
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t.item())


def wants_sync_batchnorm(setting: str, device: torch.device) -> bool:
    """``train.sync_batchnorm`` under this launch; ``true`` off CUDA is an error (torch's SyncBatchNorm runs on
    GPUs only)."""
    if world() == 1 or setting == "false":
        return False
    if device.type != "cuda" and setting == "true":
        raise UserError(f"train.sync_batchnorm: true needs CUDA devices (torch's SyncBatchNorm does not run on "
                        f"{device.type} with gloo); set it to auto or false")
    return device.type == "cuda"


def sync_batchnorm(model: nn.Module, groups: list, setting: str, device: torch.device) -> tuple[int, list[str]]:
    """Under DDP, BatchNorm layers -> SyncBatchNorm in place (``train.sync_batchnorm``: auto = on CUDA, true,
    false), so each step's statistics cover the global batch. The parameters and buffers stay the same objects
    under the same names (optimizer groups and checkpoints are unchanged); the groups' module lists are pointed
    at the new layers, so frozen groups still put theirs in eval mode. Returns how many layers were converted,
    and the class names of BatchNorm subclasses left per rank (see ``_synced``)."""
    if not wants_sync_batchnorm(setting, device):
        return 0, []
    from torch.nn.modules.batchnorm import _BatchNorm

    swapped: dict[int, nn.Module] = {}
    kept: list[str] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                synced = _synced(child)
                if synced is None:
                    kept.append(type(child).__name__)
                    continue
                swapped[id(child)] = synced
                setattr(parent, name, synced)
    for g in groups:
        g.modules[:] = [swapped.get(id(m), m) for m in g.modules]
    return len(swapped), sorted(set(kept))


def _synced(bn: nn.Module) -> nn.Module | None:
    """The synchronized twin of one BatchNorm layer, or None where none computes the same. nn.SyncBatchNorm's
    forward is a plain BatchNorm's: a subclass that adds to it would lose that (timm's BatchNormAct2d, whose
    activation is inside the layer: tf_efficientnet_lite0 lost 49 ReLU6 to a plain conversion). timm's own
    SyncBatchNormAct keeps it."""
    if type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    if type(bn).__module__.startswith("timm."):
        from timm.layers import BatchNormAct2d, convert_sync_batchnorm

        if type(bn) is BatchNormAct2d:
            return convert_sync_batchnorm(bn)
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP replica and/or torch.compile's wrapper (its attributes: config, ...)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, DistributedDataParallel):
            inner = model.module
        if inner is None:
            return model
        model = inner


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """A DDP replica for the stage's trainable parameters (frozen ones are not registered, so a stage that
    freezes most of the model sends only the trainable gradients). ``static_graph``: the same parameters take
    part in every step of a stage, which lets DDP skip a trainable parameter a forward never uses (a torchvision
    or timm classifier built by name may have one) without find_unused_parameters' graph walk at every step.
    benchmarks/bench_ddp_graph.py: 7-9% slower per step than plain DDP on a fully trainable ResNet-18 (gloo)."""
    if world() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, static_graph=True)


class _RankSlices(Sampler):
    def __init__(self, batches: list[list[int]], r: int, n: int):
        self.batches = [b[r::n] for b in batches if len(b) >= n]  # a batch smaller than the world is dropped

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def shard(loader: DataLoader) -> DataLoader:
    """This rank's part of ``loader``'s batches: the global batches the single-process run would draw (the same
    sampler and generator), each split across the ranks."""
    if world() == 1:
        return loader
    from suite.core.features import index_batches

    batches = [b.tolist() for b in index_batches(loader)]
    return DataLoader(loader.dataset, batch_sampler=_RankSlices(batches, rank(), world()),
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory)
