"""A bundle folder (model.json plus ONNX variants) behind load / preprocess / run / predict.

The exporter (``suite export``) verifies every bundle through this class, so what a deployed app runs is
exactly what was checked against PyTorch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image

from suite_runtime.preprocess import ImageInput, ImageSpec, preprocess_image

if TYPE_CHECKING:
    import onnxruntime as ort

FORMAT_VERSION = 1
EXPORT_HINT = "run `suite export RUN_DIR` to create one"


@dataclass
class Prediction:
    label: str | None  # classification: top-1 label
    score: float | None  # ... and its softmax probability
    scores: dict[str, float] = field(default_factory=dict)  # top_k labels -> probability, best first
    value: float | None = None  # regression output


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable: subtracting the row max keeps exp() from overflowing on large logits."""
    z = np.asarray(x, dtype=np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def read_meta(root: Path) -> dict:
    """model.json of the bundle folder ``root``; missing pieces raise FileNotFoundError saying how to make one."""
    if not root.is_dir():
        raise FileNotFoundError(f"bundle folder {root} does not exist; {EXPORT_HINT}")
    file = root / "model.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found, so {root} is not an exported bundle; {EXPORT_HINT}")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); re-export the bundle") from None
    version = meta.get("format_version", FORMAT_VERSION) if isinstance(meta, dict) else None
    if version is None or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{file} has format_version {version!r}; this suite-runtime reads up to "
                         f"{FORMAT_VERSION}, upgrade finetune-suite-runtime")
    return meta


def make_session(model: Path, threads: int | None) -> tuple[ort.InferenceSession, dict]:
    """An InferenceSession with every option set explicitly, so benchmark reports can state them."""
    # imported here: the training side imports this package for to_rgb and should not load onnxruntime
    import onnxruntime as ort

    if threads is not None and (not isinstance(threads, int) or threads < 0):
        raise ValueError(f"threads must be a positive integer, or 0 for all CPUs (got {threads!r})")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1  # one model, one request stream: parallelism lives inside ops
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(model), sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise ValueError(f"onnxruntime cannot load {model}: {str(e).strip().splitlines()[0]}") from None
    summary = {"intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
               "graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
               "providers": session.get_providers(), "onnxruntime_version": ort.__version__}
    return session, summary


def _as_list(inputs) -> list:
    """One input or a sequence of them -> a list; a 4-D array is a batch of HWC images."""
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return list(inputs) if inputs.ndim == 4 else [inputs]
    return list(inputs)


class Bundle:
    """An exported model: its metadata, one ONNX variant in an onnxruntime session, pre- and postprocessing."""

    def __init__(self, path: Path, meta: dict, variant: str, session: ort.InferenceSession, summary: dict):
        self.path, self.meta, self.variant = path, meta, variant
        self.session, self.session_options_summary = session, summary
        self.labels: list[str] = [str(x) for x in meta.get("labels", [])]
        self.input_name = session.get_inputs()[0].name  # the graph's own name is the one that cannot be wrong

    @classmethod
    def load(cls, path: str | os.PathLike, variant: str | None = None, threads: int | None = None) -> "Bundle":
        root = Path(path)
        if root.name == "model.json" and root.is_file():  # pointing at the metadata file is just as clear
            root = root.parent
        meta = read_meta(root)
        variants = meta.get("variants") or {"fp32": {"file": "model.onnx"}}
        name = variant or meta.get("default_variant") or next(iter(variants))
        if name not in variants:
            raise ValueError(f"bundle {root} has no variant '{name}'; it has: {', '.join(variants)}")
        model = root / variants[name]["file"]
        if not model.is_file():
            raise FileNotFoundError(f"{model} (variant '{name}') not found in bundle {root}; {EXPORT_HINT}")
        session, summary = make_session(model, threads)
        return cls(root, meta, name, session, summary)

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, task={self.meta.get('task')!r}, variant={self.variant!r})"

    @cached_property
    def _image_spec(self) -> ImageSpec:
        spec = self.meta.get("preprocess")
        if not isinstance(spec, dict):
            raise ValueError(f"{self.path / 'model.json'} has no preprocess block")
        return ImageSpec.from_dict(spec)  # raises for preprocess types other than image

    def preprocess(self, item: ImageInput) -> np.ndarray:
        """One input -> the model's input for one sample, e.g. (3, size, size) float32."""
        return preprocess_image(item, self._image_spec)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw first output for a preprocessed batch (NCHW float32 for images)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def predict(self, inputs, batch_size: int = 8, top_k: int = 1) -> list[Prediction]:
        """Paths, PIL images or arrays (one or a list) -> one Prediction each, in order."""
        if batch_size < 1 or top_k < 1:
            raise ValueError(f"batch_size and top_k must be >= 1 (got {batch_size}, {top_k})")
        items, post = _as_list(inputs), self._postprocessor()
        spec = self._image_spec  # validate before decoding anything
        out: list[Prediction] = []
        for start in range(0, len(items), batch_size):  # bounded memory for long file lists
            batch = np.stack([preprocess_image(x, spec) for x in items[start:start + batch_size]])
            out.extend(post(self.run(batch), top_k))
        return out

    def _postprocessor(self) -> Callable[[np.ndarray, int], list[Prediction]]:
        kind = (self.meta.get("postprocess") or {}).get("type")
        table = {"softmax": self._classify, "identity": self._regress}
        if kind not in table:
            raise ValueError(f"unknown postprocess type '{kind}'; this suite-runtime supports: {', '.join(table)}")
        return table[kind]

    def _classify(self, raw: np.ndarray, top_k: int) -> list[Prediction]:
        logits = raw.reshape(len(raw), -1)
        if logits.shape[1] != len(self.labels):
            raise ValueError(f"model gives {logits.shape[1]} scores but model.json has {len(self.labels)} labels")
        probs = softmax(logits)
        # stable sort: ties keep label order, so results never depend on the batch they came in
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        return [_top(self.labels, p, o) for p, o in zip(probs, order)]

    def _regress(self, raw: np.ndarray, top_k: int) -> list[Prediction]:
        values = raw.reshape(len(raw), -1)
        if values.shape[1] != 1:
            raise ValueError(f"regression bundle gives {values.shape[1]} values per input; expected 1")
        return [Prediction(label=None, score=None, scores={}, value=float(v)) for v in values[:, 0]]


def _top(labels: Sequence[str], probs: np.ndarray, order: np.ndarray) -> Prediction:
    best = int(order[0])
    return Prediction(label=labels[best], score=float(probs[best]),
                      scores={labels[int(j)]: float(probs[j]) for j in order})
