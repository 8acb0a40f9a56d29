"""Inference benchmark: torch eager and torch.compile vs onnxruntime fp32 and int8 variants.

Knows no modality: it gets a model (preferably a picklable factory), ONNX files, and the shape of
one input item (C, H, W or whatever the model takes after the batch axis).

How it measures (every setting is explicit and lands in bench.json):

- threads: ``torch.set_num_threads(threads)``; onnxruntime ``intra_op_num_threads=threads``,
  ``inter_op_num_threads=1``, ``ORT_ENABLE_ALL`` graph optimizations, sequential execution, CPU
  provider. Default threads: ``os.cpu_count()``.
- torch runs ``model.eval()`` under ``torch.inference_mode()``; torch.compile uses inductor with
  ``dynamic=False`` (one specialized graph per batch size, like the fixed-shape eager calls it is
  compared with) and inductor's ``freezing`` (see COMPILE_SETTINGS). Compiling takes tens of
  seconds per batch size on a small CPU, so an isolated torch.compile run is capped at
  ``compile_timeout_s`` (300 s by default): batch sizes it did not finish, or a compile that fails
  (no C++ compiler, unsupported op), become rows with NaN figures and the reason in ``note``
  instead of an exception.
- latency: ``warmup`` untimed calls, then ``iters`` calls timed one by one with ``time.perf_counter``;
  p50/p95 are ``numpy.percentile`` of those; items/s = batch / mean latency. Inputs are seeded
  random normals. ``repeats`` > 1 runs each configuration in that many workers, round-robin, and
  keeps the median one by p50 (fresh processes on a small VM differ far more than calls within one).
  A worker during which other processes used >= 5% of the CPUs says so in its rows' note.
- peak RSS: with ``isolate=True`` each (runtime, precision) runs in a fresh interpreter
  (``python -m suite.core.bench JOB ROWS``) and reports its own peak resident set after each batch
  size (so a later batch size's peak includes the earlier ones; see ``_peak_rss_mb`` for why that
  is VmHWM rather than ``getrusage(RUSAGE_SELF).ru_maxrss`` on Linux). onnxruntime
  workers never import torch. The torch side is rebuilt in the worker by calling the factory, so it
  has to be picklable (a module-level function or ``functools.partial`` of one); a module instance
  or an unpicklable factory runs in-process, and its row says so. With ``isolate=False`` everything
  runs in-process and peak RSS is the whole process's peak so far.
- size: the ONNX file's size; for torch, the bytes of the state_dict tensors (MB = 2**20 bytes).
"""
from __future__ import annotations

import functools
import json
import math
import os
import pickle
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from suite.core.checkpoint import atomic_write, atomic_write_text
from suite.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    ModelLike = Union[Callable[[], nn.Module], nn.Module]

# intra_op_num_threads is the benchmark's `threads`; the rest is fixed
ORT_SESSION = {"inter_op_num_threads": 1, "graph_optimization_level": "ORT_ENABLE_ALL",
               "execution_mode": "ORT_SEQUENTIAL", "providers": ["CPUExecutionProvider"]}
# freezing (weights folded into the graph as constants, oneDNN weight pre-packing) is inductor's CPU
# inference setting; without it ResNet-18 at batch 1 compiled ran 1.3-2x SLOWER than eager on the 2-core
# benchmark box (benchmarks/README.md). compile_threads=1: otherwise inductor starts a pool of compile
# worker processes that keep importing torch in the background *while the timed calls run*, which on
# 2 cores made the first ~40 compiled calls 1.5-3x slower. Both are set with torch._inductor.config.patch
# around the compiling calls: passed as torch.compile(options=...), freezing had no effect in torch 2.14.
COMPILE_SETTINGS = {"backend": "inductor", "mode": "default", "dynamic": False,
                    "inductor_config": {"freezing": True, "compile_threads": 1}}
COMPILE_TIMEOUT_S = 300.0
IN_PROCESS_NOTE = "in-process: peak RSS is the whole process's"
_REPO_ROOT = str(Path(__file__).resolve().parents[2])  # so `python -m suite.core.bench` finds this checkout


@dataclass
class BenchRow:
    runtime: str  # "torch" | "torch.compile" | "onnxruntime"
    precision: str  # "fp32" | "int8-static" | "int8-dynamic" | ...
    batch: int
    p50_ms: float  # NaN when the configuration was skipped (see note)
    p95_ms: float
    items_per_s: float
    size_mb: float | None
    peak_rss_mb: float
    threads: int
    note: str = ""
    warmup: int = 0
    iters: int = 0

    @property
    def measured(self) -> bool:
        return math.isfinite(self.p50_ms)

    def to_json(self) -> dict:
        """Plain JSON: NaN (skipped) becomes null."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "BenchRow":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("p50_ms", "p95_ms", "items_per_s", "peak_rss_mb"):
            kw[k] = math.nan if kw.get(k) is None else float(kw[k])
        return cls(**kw)


# ---------------------------------------------------------------- measuring


def _peak_rss_mb() -> float:
    """This process's peak resident set, MiB.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is the portable figure, but on Linux a fork+exec'd worker
    inherits its parent's high-water mark in it (the kernel folds the pre-exec address space into
    ``signal->maxrss`` at exec), so a worker started from a big parent would report the parent's peak.
    ``VmHWM`` in /proc/self/status is the same peak for the worker's own address space only; it is
    used where it exists, ru_maxrss elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _time(call: Callable[[], Any], batch: int, warmup: int, iters: int) -> tuple[float, float, float]:
    for _ in range(warmup):
        call()
    seconds = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        call()
        seconds[i] = time.perf_counter() - start
    ms = seconds * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(batch / seconds.mean())


def _skipped(runtime: str, precision: str, batch: int, threads: int, size_mb: float | None, reason: str,
             warmup: int = 0, iters: int = 0) -> BenchRow:
    nan = math.nan
    return BenchRow(runtime, precision, batch, nan, nan, nan, size_mb, nan, threads, f"skipped: {reason}",
                    warmup, iters)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _check(input_shape: Sequence[int], batch_sizes: Sequence[int], threads: int, warmup: int,
           iters: int) -> tuple[tuple[int, ...], list[int]]:
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise UserError(f"input_shape must be the positive sizes of one item, e.g. (3, 224, 224); got {input_shape!r}")
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise UserError(f"batch sizes must be positive integers; got {list(batch_sizes)!r}")
    if not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be a positive integer; got {threads!r}")
    if warmup < 0 or iters < 1:
        raise UserError(f"need warmup >= 0 and iters >= 1; got warmup={warmup}, iters={iters}")
    return shape, sizes


def _state_dict_mb(model) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20


def _inputs(batch: int, shape: tuple[int, ...], batch_axis: bool) -> tuple[int, ...]:
    """The array shape of one call: a batch of items, or one item for a graph without a batch axis."""
    return (batch, *shape) if batch_axis else tuple(shape)


def _torch_rows(model_factory, input_shape, batch_sizes, threads, warmup, iters, compile, note,
                batch_axis: bool = True) -> Iterator[BenchRow]:
    import torch
    from torch import nn

    runtime = "torch.compile" if compile else "torch"
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = model_factory if isinstance(model_factory, nn.Module) else model_factory()
        model = model.eval()
        size = _state_dict_mb(model)
        run = model
        failed = None
        if compile:
            try:
                from torch._inductor import config as inductor_config

                with inductor_config.patch(**COMPILE_SETTINGS["inductor_config"]):  # see COMPILE_SETTINGS
                    run = torch.compile(model, **{k: v for k, v in COMPILE_SETTINGS.items() if k != "inductor_config"})
            except Exception as e:  # e.g. a Python version torch.compile does not support
                failed = f"torch.compile unavailable ({_first_line(e)})"
        gen = torch.Generator().manual_seed(0)
        for b in batch_sizes:
            x = torch.randn(_inputs(b, input_shape, batch_axis), generator=gen)
            if failed:
                yield _skipped(runtime, "fp32", b, threads, size, failed, warmup, iters)
                continue
            parts = [note] if note else []
            with torch.inference_mode():
                if compile:
                    start = time.perf_counter()
                    try:
                        with inductor_config.patch(**COMPILE_SETTINGS["inductor_config"]):
                            run(x)  # compiles the graph for this batch size
                    except Exception as e:  # no C++ compiler, an op inductor cannot lower, ...
                        failed = f"torch.compile failed ({_first_line(e)})"
                        yield _skipped(runtime, "fp32", b, threads, size, failed, warmup, iters)
                        continue
                    parts.append(f"compile + first call {time.perf_counter() - start:.1f} s")
                p50, p95, ips = _time(lambda: run(x), b, warmup, iters)
            yield BenchRow(runtime, "fp32", b, p50, p95, ips, size, _peak_rss_mb(), threads, "; ".join(parts),
                           warmup, iters)
    finally:
        torch.set_num_threads(previous)


def make_ort_session(path: str | os.PathLike, threads: int, overrides: dict | None = None):
    """An onnxruntime CPU session with every option set explicitly; returns (session, settings)."""
    import onnxruntime as ort

    settings = {"intra_op_num_threads": threads, **ORT_SESSION, **(overrides or {})}
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(settings["intra_op_num_threads"])
    so.inter_op_num_threads = int(settings["inter_op_num_threads"])
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings["graph_optimization_level"])
    so.execution_mode = getattr(ort.ExecutionMode, settings["execution_mode"])
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=list(settings["providers"]))
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise UserError(f"onnxruntime cannot load {path}: {_first_line(e)}") from None
    settings["providers"] = session.get_providers()
    return session, settings


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _onnx_rows(path, input_shape, batch_sizes, threads, precision, warmup, iters, note,
               session_options, batch_axis: bool = True) -> Iterator[BenchRow]:
    path = Path(path)
    size = path.stat().st_size / 2**20
    session, settings = make_ort_session(path, threads, session_options)
    inp = session.get_inputs()[0]
    dtype = _ORT_DTYPES.get(inp.type, np.float32)
    parts = [note] if note else []
    if session_options:
        parts.append("session " + ", ".join(f"{k}={v}" for k, v in session_options.items()))
    rng = np.random.default_rng(0)
    for b in batch_sizes:
        x = rng.standard_normal(_inputs(b, input_shape, batch_axis)).astype(dtype)
        try:
            session.run(None, {inp.name: x})
        except Exception as e:  # e.g. a graph exported with a fixed batch size
            yield _skipped("onnxruntime", precision, b, threads, size, f"onnxruntime failed ({_first_line(e)})",
                           warmup, iters)
            continue
        p50, p95, ips = _time(lambda: session.run(None, {inp.name: x}), b, warmup, iters)
        yield BenchRow("onnxruntime", precision, b, p50, p95, ips, size, _peak_rss_mb(), threads, "; ".join(parts),
                       warmup, iters)


def bench_torch(model_factory: ModelLike, input_shape: tuple[int, ...], batch_sizes: Sequence[int], threads: int,
                warmup: int = 5, iters: int = 30, compile: bool = False) -> list[BenchRow]:
    """torch eager (or torch.compile) in this process, one row per batch size."""
    shape, sizes = _check(input_shape, batch_sizes, threads, warmup, iters)
    return list(_torch_rows(model_factory, shape, sizes, threads, warmup, iters, compile, IN_PROCESS_NOTE))


def bench_onnx(path: str | os.PathLike, input_shape: tuple[int, ...], batch_sizes: Sequence[int], threads: int,
               precision: str, warmup: int = 5, iters: int = 30,
               session_options: dict | None = None) -> list[BenchRow]:
    """One ONNX file through onnxruntime in this process, one row per batch size.

    ``session_options`` overrides entries of ORT_SESSION (e.g. ``{"graph_optimization_level":
    "ORT_ENABLE_BASIC"}``) for experiments; the override is written into each row's note.
    """
    shape, sizes = _check(input_shape, batch_sizes, threads, warmup, iters)
    if not Path(path).is_file():
        raise UserError(f"ONNX file {path} not found")
    return list(_onnx_rows(path, shape, sizes, threads, precision, warmup, iters, IN_PROCESS_NOTE, session_options))


# ---------------------------------------------------------------- isolation


def _worker(job_file: str, rows_file: str) -> int:
    """Entry point of an isolated run: rows are rewritten to ``rows_file`` after each batch size,
    so a run killed at its time cap still returns what it finished."""
    job = pickle.loads(Path(job_file).read_bytes())
    if job["kind"] == "torch":
        rows = _torch_rows(job["factory"], job["input_shape"], job["batch_sizes"], job["threads"], job["warmup"],
                           job["iters"], job["compile"], "", job.get("batch_axis", True))
    else:
        rows = _onnx_rows(job["path"], job["input_shape"], job["batch_sizes"], job["threads"], job["precision"],
                          job["warmup"], job["iters"], "", job.get("session_options"), job.get("batch_axis", True))
    done = []
    for row in rows:
        done.append(row.to_json())
        atomic_write_text(rows_file, json.dumps(done))
    return 0


def _cpu_busy_s() -> float | None:
    """CPU-seconds all CPUs have spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _children_cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


OTHERS_NOTE_MIN = 0.05  # share of all CPUs other processes may use during a worker before its rows say so


def _run_isolated(job: dict, runtime: str, precision: str, size_mb: float | None,
                  timeout: float | None) -> list[BenchRow]:
    with tempfile.TemporaryDirectory(prefix="suite-bench-") as tmp:
        job_file, rows_file = Path(tmp) / "job.pkl", Path(tmp) / "rows.json"
        atomic_write(job_file, lambda t: Path(t).write_bytes(pickle.dumps(job)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        # its own session (process group), so a capped torch.compile run goes down with its compile workers
        busy0, children0, wall0 = _cpu_busy_s(), _children_cpu_s(), time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "suite.core.bench", str(job_file), str(rows_file)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            timed_out = True
        busy1, children1, wall = _cpu_busy_s(), _children_cpu_s(), time.monotonic() - wall0
        rows = [BenchRow.from_json(r) for r in json.loads(rows_file.read_text())] if rows_file.is_file() else []
    if busy0 is not None and busy1 is not None and wall > 0:
        # a shared box: CPU time nobody of ours used while the worker ran makes its timings suspect
        others = ((busy1 - busy0) - (children1 - children0)) / (wall * (os.cpu_count() or 1))
        if others >= OTHERS_NOTE_MIN:
            for r in rows:
                r.note = "; ".join(p for p in (r.note, f"other processes used {others:.0%} of the CPUs meanwhile") if p)
    if not timed_out and proc.returncode == 0:
        return rows
    tail = " | ".join(output.decode("utf-8", "replace").strip().splitlines()[-3:])[-600:]
    if timed_out:
        reason = f"did not finish within the {timeout:.0f} s cap"
    else:
        reason = f"worker exited with {proc.returncode}: {tail}"
        if runtime != "torch.compile":  # eager and onnxruntime failing is a real problem, not a skip
            raise RuntimeError(f"benchmark worker for {runtime} {precision} failed ({reason})")
    finished = {r.batch for r in rows}
    return rows + [_skipped(runtime, precision, b, job["threads"], size_mb, reason, job["warmup"], job["iters"])
                   for b in job["batch_sizes"] if b not in finished]


def _picklable(obj) -> str | None:
    """None if ``obj`` survives pickling, else why not."""
    try:
        pickle.dumps(obj)
    except Exception as e:
        return _first_line(e)
    return None


def _median_row(rows: list[BenchRow], repeats: int) -> BenchRow:
    """One row from the same configuration run in ``repeats`` workers: the median by p50 (the lower
    middle for an even count), with the highest peak RSS, and the spread in the note."""
    measured = sorted((r for r in rows if r.measured), key=lambda r: r.p50_ms)
    if repeats == 1 or not measured:
        return rows[0]
    pick = measured[(len(measured) - 1) // 2]
    extra = [f"median of {len(measured)} runs by p50 (p50 {measured[0].p50_ms:.2f}-{measured[-1].p50_ms:.2f} ms)"]
    if len(measured) < len(rows):
        extra.append(f"{len(rows) - len(measured)} of {len(rows)} runs skipped")
    others = [n for r in rows for n in r.note.split("; ") if n.startswith("other processes")]
    notes = [n for n in pick.note.split("; ") if n and not n.startswith("other processes")] + extra + others
    return BenchRow(pick.runtime, pick.precision, pick.batch, pick.p50_ms, pick.p95_ms, pick.items_per_s,
                    pick.size_mb, max(r.peak_rss_mb for r in measured), pick.threads, "; ".join(notes),
                    pick.warmup, pick.iters)


def run_bench(torch_model: ModelLike | None, onnx_variants: dict[str, Path], input_shape: tuple[int, ...],
              batch_sizes: Sequence[int], threads: int | None = None, compile: bool = True, isolate: bool = True,
              *, warmup: int = 5, iters: int = 30, repeats: int = 1, compile_timeout_s: float = COMPILE_TIMEOUT_S,
              session_options: dict | None = None, batch_axis: bool = True,
              progress: Callable[[str], None] | None = None) -> list[BenchRow]:
    """torch eager (+ torch.compile) and every ONNX variant (name = precision), each batch size.

    ``torch_model`` is best a picklable zero-argument factory (a module-level function or a
    ``functools.partial``), so the torch side can be rebuilt in its own process; ``None`` benchmarks
    the ONNX files only. ``repeats`` > 1 runs every configuration that many times, round-robin (so a
    slow spell of a shared or virtual machine is spread over all of them), and keeps the median
    worker by p50: on the 2-vCPU benchmark box one fresh worker's p50 differed from the next one's by
    up to 2x while each worker's own p50/p95 stayed within 10%. ``batch_axis=False``: the model takes one
    item per call (a torchvision detector's [3, H, W] image), so only batch 1 is timed.
    """
    threads = threads or os.cpu_count() or 1
    shape, sizes = _check(input_shape, batch_sizes if batch_axis else [1], threads, warmup, iters)
    if not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"repeats must be a positive integer; got {repeats!r}")
    variants = {str(k): Path(v) for k, v in onnx_variants.items()}
    for name, path in variants.items():
        if not path.is_file():
            raise UserError(f"ONNX file for variant '{name}' not found: {path}")
    say = progress or (lambda msg: None)
    common = {"input_shape": shape, "batch_sizes": sizes, "threads": threads, "warmup": warmup, "iters": iters,
              "batch_axis": batch_axis}
    jobs: list[tuple[str, Callable[[], list[BenchRow]]]] = []  # (what, run it once)

    if torch_model is not None:
        from torch import nn

        in_process = None
        if not isolate:
            in_process = IN_PROCESS_NOTE
        elif isinstance(torch_model, nn.Module):
            in_process = f"{IN_PROCESS_NOTE} (a module instance, not a factory, cannot be rebuilt in a worker)"
        elif (why := _picklable(torch_model)) is not None:
            in_process = f"{IN_PROCESS_NOTE} (factory not picklable: {why})"
        for comp in ([False, True] if compile else [False]):
            runtime = "torch.compile" if comp else "torch"
            if in_process:
                run = functools.partial(lambda c: list(_torch_rows(torch_model, shape, sizes, threads, warmup, iters,
                                                                   c, in_process, batch_axis)), comp)
            else:
                job = {"kind": "torch", "factory": torch_model, "compile": comp, **common}
                run = functools.partial(_run_isolated, job, runtime, "fp32", None,
                                        compile_timeout_s if comp else None)
            jobs.append((f"{runtime} fp32", run))

    for precision, path in variants.items():
        if isolate:
            job = {"kind": "onnx", "path": str(path), "precision": precision, "session_options": session_options,
                   **common}
            run = functools.partial(_run_isolated, job, "onnxruntime", precision, path.stat().st_size / 2**20, None)
        else:
            run = functools.partial(lambda p, q: list(_onnx_rows(p, shape, sizes, threads, q, warmup, iters,
                                                                 IN_PROCESS_NOTE, session_options, batch_axis)),
                                    path, precision)
        jobs.append((f"onnxruntime {precision} ({path.name})", run))

    groups: dict[tuple[str, str, int], list[BenchRow]] = {}
    for rep in range(repeats):
        for what, run in jobs:
            say(f"{what}, batch {sizes}, {threads} threads" + (f", run {rep + 1}/{repeats}" if repeats > 1 else ""))
            for row in run():
                groups.setdefault((row.runtime, row.precision, row.batch), []).append(row)
    return [_median_row(g, repeats) for g in groups.values()]


# ---------------------------------------------------------------- reporting


def _cpu_info() -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def machine_info() -> dict:
    """CPU, cores, memory and library versions: what a benchmark figure depends on."""
    model, flags = _cpu_info()
    info: dict[str, Any] = {
        "cpu_model": model,
        "cpu_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                                     "amx_tile", "amx_int8", "amx_bf16", "fma"}),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_mkldnn"] = torch.backends.mkldnn.is_available()
    except ImportError:
        info["torch"] = None
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        import onnx

        info["onnx"] = onnx.__version__
    except ImportError:
        pass
    return info


def bench_payload(rows: Sequence[BenchRow], **extra) -> dict:
    """What bench.json holds: the rows, the machine, and every setting the figures depend on."""
    threads = sorted({r.threads for r in rows})
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "threads": threads,
        "ort_session": {"intra_op_num_threads": threads[0] if len(threads) == 1 else threads, **ORT_SESSION},
        "torch_settings": {"set_num_threads": threads[0] if len(threads) == 1 else threads, "eval": True,
                           "inference_mode": True, "compile": COMPILE_SETTINGS},
        "method": {"timer": "time.perf_counter per call after warm-up", "percentiles": "numpy.percentile",
                   "items_per_s": "batch / mean latency", "peak_rss": "VmHWM (Linux; else getrusage ru_maxrss) of the "
                   "process that ran the row (a fresh worker per runtime/precision unless the note says in-process)",
                   "size_mb": "ONNX file size, or torch state_dict tensor bytes; MB = 2**20 bytes"},
        **extra,
        "rows": [r.to_json() for r in rows],
    }


def _series(rows: Sequence[BenchRow]) -> list[str]:
    out: list[str] = []
    for r in rows:
        key = f"{r.runtime} {r.precision}"
        if key not in out:
            out.append(key)
    return out


def write_bench_plot(rows: Sequence[BenchRow], path: str | os.PathLike, title: str = "") -> Path:
    """Bar chart of items/s per runtime/precision, grouped by batch size (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    measured = [r for r in rows if r.measured]
    series = _series(measured)
    batches = sorted({r.batch for r in measured})
    fig = Figure(figsize=(max(6.0, 1.2 + 0.55 * len(series) * max(len(batches), 1)), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if not measured:
        ax.text(0.5, 0.5, "no measurements", ha="center", va="center", transform=ax.transAxes)
    width = 0.8 / max(len(series), 1)
    values = {(f"{r.runtime} {r.precision}", r.batch): r.items_per_s for r in measured}
    for i, name in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j, b in enumerate(batches) if (name, b) in values]
        ys = [values[(name, b)] for b in batches if (name, b) in values]
        bars = ax.bar(xs, ys, width=width * 0.95, label=name)
        ax.bar_label(bars, labels=[f"{y:.0f}" if y >= 10 else f"{y:.1f}" for y in ys], fontsize=7, rotation=90,
                     padding=2)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_ylabel("items / s (higher is better)")
    threads = sorted({r.threads for r in rows})
    ax.set_title(title or f"Inference throughput, {', '.join(map(str, threads))} thread(s)")
    ax.margins(y=0.2)
    if series:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def write_bench_error(out_dir: str | os.PathLike, reason: str) -> Path:
    """bench.json for a benchmark that could not run: no rows, and why."""
    payload = bench_payload([], error=reason)
    return atomic_write_text(Path(out_dir) / "bench.json", json.dumps(payload, indent=2) + "\n")


def write_bench(rows: Sequence[BenchRow], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """DIR/bench.json (rows, machine, settings) and DIR/plots/bench.png."""
    out_dir = Path(out_dir)
    js = atomic_write_text(out_dir / "bench.json", json.dumps(bench_payload(rows), indent=2) + "\n")
    png = write_bench_plot(rows, out_dir / "plots" / "bench.png")
    return js, png


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ratio(x: float, base: float | None) -> str:
    return "—" if base is None or not (math.isfinite(x) and math.isfinite(base)) or base <= 0 else f"{x / base:.2f}x"


def bench_table(rows: Sequence[BenchRow]) -> str:
    """Markdown table by batch size; speed-ups (items/s ratios) vs torch eager fp32 at the same batch size,
    and for onnxruntime rows vs onnxruntime fp32 (the int8 gain)."""
    torch_fp32 = {r.batch: r.items_per_s for r in rows if r.runtime == "torch" and r.precision == "fp32" and r.measured}
    ort_fp32 = {r.batch: r.items_per_s for r in rows
                if r.runtime == "onnxruntime" and r.precision == "fp32" and r.measured}
    lines = ["| runtime | precision | batch | p50 ms | p95 ms | items/s | vs torch eager fp32 | vs ORT fp32 "
             "| size MB | peak RSS MB | threads | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    order = {id(r): i for i, r in enumerate(rows)}
    for r in sorted(rows, key=lambda r: (r.batch, order[id(r)])):
        vs_ort = _ratio(r.items_per_s, ort_fp32.get(r.batch)) if r.runtime == "onnxruntime" else "—"
        note = r.note.replace("|", "/").replace("\n", " ")
        lines.append(f"| {r.runtime} | {r.precision} | {r.batch} | {_fmt(r.p50_ms, 2)} | {_fmt(r.p95_ms, 2)} | "
                     f"{_fmt(r.items_per_s)} | {_ratio(r.items_per_s, torch_fp32.get(r.batch))} | {vs_ort} | "
                     f"{_fmt(r.size_mb)} | {_fmt(r.peak_rss_mb, 0)} | {r.threads} | {note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m suite.core.bench JOB.pkl ROWS.json  (the worker of run_bench(isolate=True))")
    sys.exit(_worker(sys.argv[1], sys.argv[2]))
