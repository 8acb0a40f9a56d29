"""torch -> ONNX bundles: export, quantization with onnxruntime's tools, and loud verification.

Knows no modality: the modality hands in the bundle's metadata (labels, preprocessing,
postprocessing), an example input, calibration batches and an evaluation function.
Verification runs through `suite_runtime`, the same code a deployed app runs.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from suite.core.checkpoint import atomic_write, atomic_write_text
from suite.errors import UserError

VARIANT_FILES = {"fp32": "model.onnx", "int8-static": "model.int8-static.onnx", "int8-dynamic": "model.int8-dynamic.onnx"}
# Measured on this project's 2-core AVX-512 VNNI CPU (benchmarks/README.md, ResNet-18): static U8S8 QDQ
# per-channel ran 2.9x faster than fp32; signed activations (S8S8) gave no speed-up (0.98x), and dynamically
# quantized convolutions ran 6-16x SLOWER than fp32. So int8-static uses QUInt8 activations, and int8-dynamic
# quantizes only MatMul/Gemm (Linear layers).
QUANT_CHOICES = {
    "int8-static": {"format": "QDQ", "activation": "QUInt8", "weight": "QInt8", "per_channel": True,
                    "calibration": "MinMax"},
    "int8-dynamic": {"weight": "QInt8", "op_types": ["MatMul", "Gemm"]},
}


@dataclass(frozen=True)
class Axis:
    """A dynamic axis of the graph's input: its name, and the range torch.export may assume."""

    name: str
    min: int = 1
    max: int = 4096


@dataclass(frozen=True)
class OnnxIO:
    """The graph's names and dynamic axes, and which torch.onnx exporters to try, in order."""

    input: str
    outputs: tuple[str, ...]
    axes: dict[int, Axis] = field(default_factory=lambda: {0: Axis("batch")})  # input axis -> Axis
    output_axes: dict[str, dict[int, str]] | None = None  # TorchScript only; None: every output's axis 0 = batch
    exporters: tuple[str, ...] = ("dynamo", "torchscript")  # dynamo first; TorchScript when it fails
    max_opset: int | None = None  # e.g. 18 for graphs the TorchScript exporter only knows up to 18


@dataclass
class ExportSpec:
    """What the modality tells the exporter about its bundle."""

    meta: dict  # task, labels, preprocess, postprocess (written into model.json)
    example: torch.Tensor  # one input batch, e.g. [2, 3, H, W]
    evaluate: Callable[[object], dict[str, float]]  # model-like -> prefixed val metrics
    metric: str  # the task metric compared across runtimes, e.g. "val/accuracy"
    io: OnnxIO  # the graph's input and output names, dynamic axes, exporters
    calibration: Callable[[int], Iterable[np.ndarray]] = lambda n: ()  # n samples -> batches for int8-static
    parity_batches: Sequence[int] = (1, 3, 8)  # () when the graph takes one sample (no batch axis)
    extra: dict = field(default_factory=dict)  # more model.json keys (may replace "input"/"outputs")
    module: nn.Module | None = None  # what is exported and compared, when not the model itself (e.g. a wrapper)
    quantizable: Sequence[str] | None = None  # variants that make sense for this graph; None: every kind
    relative_atol: bool = False  # tensor parity on |diff| / max(1, |reference|) (outputs in pixels, ...)
    quant_exclude: Callable[[Path], list[str]] | None = None  # ONNX file -> nodes int8 variants keep in float
    tensor_check: Callable[..., dict] | None = None  # (module, bundle, example, atol) -> tensor_parity's dict
    bench_item: tuple[int, ...] | None = None  # one input item's shape for `suite bench`; None: the example's
    bench_batch_axis: bool = True  # False: the graph takes one item per call (timed at batch 1 only)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, io: OnnxIO) -> str:
    """Write one self-contained .onnx file with ``io``'s names and dynamic axes; returns the exporter's name.

    Tries ``io.exporters`` in order: the dynamo exporter (torch.export), then the TorchScript one, which
    still handles many graphs dynamo breaks on (data-dependent control flow, some custom ops).
    """
    model = model.eval().cpu()
    opset = min(opset, io.max_opset) if io.max_opset else opset
    errors = []
    for kind in io.exporters:
        try:
            atomic_write(path, lambda tmp: _export(kind, model, example, tmp, opset, io))
        except Exception as e:  # unsupported op or graph break: the next exporter often still works
            errors.append(f"{kind}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            if kind != io.exporters[-1]:
                warnings.warn(f"{kind} ONNX export failed ({errors[-1]}); trying {io.exporters[-1]}")
            continue
        import onnx

        onnx.checker.check_model(str(path))
        return f"torch.onnx {kind}"
    raise UserError(f"ONNX export failed with every exporter ({'; '.join(errors)}); set export.onnx: false "
                    "or report the model and the message")


def _export(kind: str, model: nn.Module, example: torch.Tensor, path: str, opset: int, io: OnnxIO) -> None:
    names = dict(input_names=[io.input], output_names=list(io.outputs), opset_version=opset)
    if kind == "dynamo":
        dims = {axis: torch.export.Dim(a.name, min=a.min, max=a.max) for axis, a in io.axes.items()}
        torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=(dims,), verbose=False,
                          external_data=False, **names)  # one file: quantization tools and apps expect it
        return
    outputs = io.output_axes if io.output_axes is not None else {o: {0: "batch"} for o in io.outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), path, dynamo=False, **names,
                          dynamic_axes={io.input: {axis: a.name for axis, a in io.axes.items()}, **outputs})


def quantize(fp32: Path, kind: str, out: Path, calibration: Iterable[np.ndarray],
             exclude: Callable[[Path], list[str]] | None = None, input_name: str | None = None,
             choice: dict | None = None) -> dict:
    """int8-static (QDQ, U8S8, per-channel, MinMax calibration) or int8-dynamic (MatMul/Gemm only), with
    onnxruntime's quantization tools; returns the settings used (model.json records them).

    ``choice`` replaces ``QUANT_CHOICES[kind]`` (benchmarks compare other formats: QOperator, S8S8,
    per-tensor, dynamic convolutions with ``op_types: None``). ``exclude(onnx_path)`` names nodes to keep in
    float (e.g. a detector's box decoding), computed on the pre-processed graph that is actually quantized.
    """
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    choice = dict(choice or QUANT_CHOICES[kind])
    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    input_name = input_name or _input_name(fp32)
    try:
        skip = exclude(pre) if exclude else []
        if kind == "int8-dynamic":
            atomic_write(out, lambda tmp: quantize_dynamic(
                str(pre), tmp, weight_type=QuantType[choice["weight"]], op_types_to_quantize=choice.get("op_types"),
                nodes_to_exclude=skip))
        else:
            batches = [{input_name: b.astype(np.float32)} for b in calibration]
            if not batches:
                raise UserError("int8-static needs calibration samples, and the training split gave none")

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter(batches)

                def get_next(self):
                    return next(self.it, None)

            atomic_write(out, lambda tmp: quantize_static(
                str(pre), tmp, Reader(), quant_format=QuantFormat[choice["format"]],
                per_channel=choice["per_channel"], activation_type=QuantType[choice["activation"]],
                weight_type=QuantType[choice["weight"]], nodes_to_exclude=skip))
    finally:
        pre.unlink(missing_ok=True)
    if skip:
        choice["float_nodes"] = len(skip)
    choice["covers"] = coverage(fp32, out)
    return choice


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INTEGER_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm")


def coverage(fp32: Path, quantized: Path) -> dict:
    """How much of the graph a variant runs in int8: the weighted ops (Conv, Gemm, MatMul) of the fp32 graph,
    and how many of them the quantized graph runs on int8 (integer ops, or QDQ with a dequantized weight). A CNN's
    int8-dynamic covers only its final Gemm: fp32 size and speed, which bench.json and report.md then say."""
    import onnx

    total = sum(n.op_type in WEIGHTED_OPS for n in onnx.load(str(fp32), load_external_data=False).graph.node)
    graph = onnx.load(str(quantized), load_external_data=False).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    inits = {i.name for i in graph.initializer}
    covered = sum(n.op_type in INTEGER_OPS or (n.op_type in WEIGHTED_OPS and len(n.input) > 1
                                                 and n.input[1] in dequantized and n.input[1] not in inits)
                  for n in graph.node)
    share = covered / total if total else 0.0
    note = "" if share >= 0.5 else (f"only {covered} of {total} weighted ops run in int8 (convolutions stay fp32): "
                                    "expect fp32 size and speed")
    return {"int8_ops": covered, "weighted_ops": total, "note": note}


def _input_name(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


class OnnxModel:
    """An onnxruntime bundle variant behind the call signature the evaluators expect of a torch model."""

    def __init__(self, bundle):
        self.bundle = bundle

    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.bundle.run(x.detach().cpu().numpy().astype(np.float32))))


class TorchSession:
    """A torch module behind the slice of onnxruntime's InferenceSession that ``Bundle`` uses, so PyTorch
    and the exported graph are scored through exactly the same runtime pre- and postprocessing."""

    def __init__(self, module: nn.Module, input_shape: list, output_names: list[str], input_name: str):
        self.module = module.eval().cpu()
        self._inputs = [SimpleNamespace(name=input_name, shape=input_shape)]
        self._outputs = [SimpleNamespace(name=n) for n in output_names]

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def run(self, names, feeds: dict) -> list[np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(feeds[self._inputs[0].name], dtype=np.float32)))
        outs = [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
        every = [o.name for o in self._outputs]
        return outs if names is None else [outs[every.index(n)] for n in names]


def as_bundle(m, meta: dict, input_shape: list, output_names: list[str], input_name: str):
    """``m`` as a suite_runtime Bundle: an OnnxModel's own, or a torch module behind TorchSession."""
    from suite_runtime import Bundle

    if isinstance(m, OnnxModel):
        return m.bundle
    return Bundle(Path("."), meta, "torch", TorchSession(m, input_shape, output_names, input_name), {})


def tensor_parity(model: nn.Module, bundle, example: torch.Tensor, batches: Sequence[int], atol: float,
                  relative: bool = False) -> dict:
    """Max abs diff torch vs onnxruntime on batch sizes other than the export example's; NaN fails.

    With no ``batches`` (a graph without a batch axis) the example itself is compared, every output.
    ``relative``: the diff is divided by max(1, |reference|) (outputs in pixels, where 1e-4 of 640 is noise).
    """
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(b, *example.shape[1:], generator=gen) for b in batches] or [example]
    rows, ok = [], True
    for x in inputs:
        with torch.inference_mode():
            out = model(x)
        refs = [o.float().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
        if len(refs) == 1:  # Bundle.run: the exact path an app takes
            gots = [np.asarray(bundle.run(x.numpy()))]
        else:
            gots = [np.asarray(g) for g in bundle.session.run(None, {bundle.input_name: x.numpy()})]
        finite = all(bool(np.isfinite(g).all()) for g in gots)
        diff = 0.0
        for ref, got in zip(refs, gots):
            scale = np.maximum(1.0, np.abs(ref)) if relative else 1.0
            same = got.shape == ref.shape
            diff = max(diff, float((np.abs(ref - got) / scale).max(initial=0.0)) if finite and same else math.inf)
        passed = finite and diff <= atol
        ok &= passed
        rows.append({"shape": list(x.shape), "max_abs_diff": diff if finite else None, "nan": not finite,
                     "passed": passed})
    return {"atol": atol, "shapes": rows, "passed": ok}


def task_parity(torch_metrics: dict, onnx_metrics: dict, metric: str, max_drop: float) -> dict:
    """The same evaluator through PyTorch and onnxruntime; fail when the metric drops > max_drop points."""
    a, b = torch_metrics[metric], onnx_metrics[metric]
    name = metric.rsplit("/", 1)[-1]
    lower_better = name in ("loss", "mse", "mae", "wer", "cer")
    drop = (b - a) if lower_better else (a - b)
    # points = percentage points for rates (accuracy, mAP, WER, CER); raw units for loss, mse, mae
    drop_points = drop if name in ("loss", "mse", "mae") else drop * 100
    passed = math.isfinite(b) and drop_points <= max_drop
    return {"metric": metric, "torch": a, "onnxruntime": b, "delta": b - a, "drop_points": drop_points,
            "max_drop_points": max_drop, "passed": passed}


def write_json(path: Path, doc: dict) -> Path:
    return atomic_write_text(path, json.dumps(doc, indent=2, default=float) + "\n")


def model_json(spec: ExportSpec, exporter: str, opset: int, variants: dict) -> dict:
    """model.json: the modality's metadata, the graph's input and outputs, the variants, and versions.
    ``bench`` is the input item `suite bench` times, and whether the graph takes a batch of them."""
    import onnx
    import onnxruntime

    c, *rest = spec.example.shape[1:]
    item = spec.bench_item if spec.bench_item is not None else tuple(spec.example.shape[1:])
    return {
        "format_version": 1, **spec.meta,
        "input": {"name": spec.io.input, "shape": ["batch", c, *rest], "dtype": "float32", "layout": "NCHW"},
        "outputs": [{"name": spec.io.outputs[0], "shape": ["batch", len(spec.meta.get("labels", [])) or 1]}],
        "variants": variants, "default_variant": "fp32",
        "exporter": exporter, "opset": opset, "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bench": {"item_shape": list(item), "batch_axis": spec.bench_batch_axis}, **spec.extra,
    }
