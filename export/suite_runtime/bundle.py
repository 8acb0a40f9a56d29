"""A bundle folder (model.json plus ONNX variants) behind load / preprocess / run / predict.

The exporter (``suite export``) verifies every bundle through this class, so what a deployed app runs is
exactly what was checked against PyTorch. Image bundles are described in ``preprocess``, detection bundles in
``detection`` and speech bundles in ``audio``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from suite_runtime.audio import AudioInput, AudioSpec, ctc_greedy, preprocess_audio
from suite_runtime.detection import (BoxesPost, Detections, Image01Spec, LetterboxSpec, YoloPost, decode_yolo,
                                     image01, letterbox, scale_boxes, select_boxes)
from suite_runtime.onnxfile import NotOnnx, external_files, inside
from suite_runtime.preprocess import ImageInput, ImageSpec, preprocess_image

if TYPE_CHECKING:
    import onnxruntime as ort

    from suite_runtime.cascade import Cascade

FORMAT_VERSION = 1
EXPORT_HINT = "run `suite export RUN_DIR` to create one"
PREPROCESS_TYPES = {"image": ImageSpec.from_dict, "letterbox": LetterboxSpec.from_dict,
                    "image01": Image01Spec.from_dict, "audio": AudioSpec.from_dict}
POSTPROCESS_TYPES = ("softmax", "identity", "yolo", "boxes", "ctc_greedy")
DETECTION_TYPES = ("yolo", "boxes")


@dataclass
class Prediction:
    label: str | None  # classification: top-1 label
    score: float | None  # ... and its softmax probability
    scores: dict[str, float] = field(default_factory=dict)  # top_k labels -> probability, best first
    value: float | None = None  # regression output
    text: str | None = None  # speech recognition (CTC): the transcript


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
    if not isinstance(meta, dict):
        raise ValueError(f"{file} is not a bundle description (a JSON object with labels, preprocess, "
                         "postprocess and variants); re-export the bundle")
    version = meta.get("format_version", FORMAT_VERSION)
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


def _check_labels(root: Path, meta: dict) -> None:
    """Classification, detection and CTC bundles name their classes (or tokens); their outputs index into them."""
    post = meta.get("postprocess") if isinstance(meta.get("postprocess"), dict) else {}
    labels = meta.get("labels")
    if post.get("type") == "identity":
        return
    if not isinstance(labels, list) or not labels or not all(isinstance(x, (str, int)) for x in labels):
        raise ValueError(f"{root / 'model.json'} has no labels list, which a {post.get('type') or 'classification'} "
                         "bundle needs to name its outputs; re-export the bundle")


def _as_list(inputs, audio: bool = False) -> list:
    """One input or a sequence of them -> a list.

    A 4-D array is a batch of HWC images. For audio a 2-D array is a batch of mono clips [batch, time], as
    Hugging Face's feature extractors read it, and an (array, sample_rate) pair is one clip.
    """
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return list(inputs) if inputs.ndim == (2 if audio else 4) else [inputs]
    if audio and isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], np.ndarray) \
            and isinstance(inputs[1], (int, np.integer)):
        return [inputs]
    return list(inputs)


class Bundle:
    """An exported model: its metadata, one ONNX variant in an onnxruntime session, pre- and postprocessing."""

    def __init__(self, path: Path, meta: dict, variant: str, session: ort.InferenceSession, summary: dict):
        self.path, self.meta, self.variant = path, meta, variant
        self.session, self.session_options_summary = session, summary
        self.labels: list[str] = [str(x) for x in meta.get("labels", [])]
        self.input_name = session.get_inputs()[0].name  # the graph's own name is the one that cannot be wrong

    @classmethod
    def load(cls, path: str | os.PathLike, variant: str | None = None,
             threads: int | None = None) -> "Bundle | Cascade":
        """The bundle folder ``path``; a cascade bundle (task "cascade") gives a ``Cascade`` of two Bundles."""
        root = Path(path)
        if root.name == "model.json" and root.is_file():  # pointing at the metadata file is just as clear
            root = root.parent
        meta = read_meta(root)
        if meta.get("task") == "cascade":
            from suite_runtime.cascade import Cascade  # here: cascade imports this module

            return Cascade.load(root, variant, threads)
        variants = meta.get("variants") or {"fp32": {"file": "model.onnx"}}
        if not isinstance(variants, dict):
            raise ValueError(f"{root / 'model.json'}: variants must map names to {{\"file\": ...}}; re-export the bundle")
        name = variant or meta.get("default_variant") or next(iter(variants))
        if name not in variants:
            raise ValueError(f"bundle {root} has no variant '{name}'; it has: {', '.join(variants)}")
        file = variants[name].get("file") if isinstance(variants[name], dict) else None
        if not isinstance(file, str):
            raise ValueError(f"{root / 'model.json'}: variant '{name}' names no file; re-export the bundle")
        model = inside(root, file)
        if not model.is_file():
            raise FileNotFoundError(f"{model} (variant '{name}') not found in bundle {root}; {EXPORT_HINT}")
        try:
            external = external_files(model)
        except NotOnnx as e:
            raise ValueError(f"{model} is not a valid ONNX file ({e}): truncated or corrupt? re-export the bundle") \
                from None
        for location in external:  # onnxruntime reads external data relative to the model's own folder
            inside(root, str(Path(file).parent / location))
        _check_labels(root, meta)
        session, summary = make_session(model, threads)
        return cls(root, meta, name, session, summary)

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, task={self.meta.get('task')!r}, variant={self.variant!r})"

    @property
    def is_detector(self) -> bool:
        """True when predict() returns Detections (postprocess type yolo or boxes)."""
        return self._post_spec().get("type") in DETECTION_TYPES

    @cached_property
    def _pre_spec(self) -> ImageSpec | LetterboxSpec | Image01Spec | AudioSpec:
        spec = self.meta.get("preprocess")
        if not isinstance(spec, dict):
            raise ValueError(f"{self.path / 'model.json'} has no preprocess block")
        kind = spec.get("type", "image")
        if kind not in PREPROCESS_TYPES:
            raise ValueError(f"unknown preprocess type '{kind}'; this suite-runtime supports: "
                             f"{', '.join(PREPROCESS_TYPES)}")
        return PREPROCESS_TYPES[kind](spec)

    def _post_spec(self) -> dict:
        spec = self.meta.get("postprocess") or {}
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in POSTPROCESS_TYPES:
            raise ValueError(f"unknown postprocess type '{kind}'; this suite-runtime supports: "
                             f"{', '.join(POSTPROCESS_TYPES)}")
        return spec

    def preprocess(self, item: ImageInput | AudioInput) -> np.ndarray:
        """One input -> the model's input for one sample: (3, size, size) float32, (3, H, W) for image01, a
        1-D normalised waveform for audio, or (n_mels, frames) log-mel features for ``features: log_mel``."""
        spec = self._pre_spec
        if isinstance(spec, AudioSpec):
            return preprocess_audio(item, spec)
        if isinstance(spec, LetterboxSpec):
            return letterbox(item, spec)[0]
        if isinstance(spec, Image01Spec):
            return image01(item, spec)
        return preprocess_image(item, spec)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw first output for a preprocessed batch (NCHW float32 for images; one CHW image for image01;
        [batch, time] float32 for audio; [batch, n_mels, frames] for log-mel audio)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a preprocessed batch, by the graph's output names."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.input_name: x})))

    def predict(self, inputs, batch_size: int = 8, top_k: int = 1, *, conf: float | None = None,
                iou: float | None = None, multi_label: bool | None = None) -> list[Prediction] | list[Detections]:
        """Paths, PIL images, arrays or (array, sample_rate) pairs (one or a list) -> one result each, in order.

        Classification and regression bundles give a Prediction (``top_k`` labels); detection bundles give
        Detections, where ``conf`` and ``iou`` override model.json's score and NMS IoU thresholds, and
        ``multi_label`` (YOLO) keeps every class above ``conf`` per anchor, as mAP evaluation does. Speech
        bundles give a Prediction with labels and scores (keywords) or ``text`` (CTC); see ``_predict_audio``
        for how clips are batched.
        """
        if batch_size < 1 or top_k < 1:
            raise ValueError(f"batch_size and top_k must be >= 1 (got {batch_size}, {top_k})")
        post, spec = self._post_spec(), self._pre_spec  # validate before decoding anything
        items = _as_list(inputs, audio=isinstance(spec, AudioSpec))
        if isinstance(spec, AudioSpec) or post["type"] == "ctc_greedy":
            return self._predict_audio(items, batch_size, top_k, post)
        if post["type"] == "yolo":
            return self._detect_yolo(items, batch_size, YoloPost.from_dict(post, conf, iou, multi_label))
        if post["type"] == "boxes":
            return self._detect_boxes(items, BoxesPost.from_dict(post, conf, iou))
        head = self._classify if post["type"] == "softmax" else self._regress
        out: list[Prediction] = []
        for start in range(0, len(items), batch_size):  # bounded memory for long file lists
            batch = np.stack([self.preprocess(x) for x in items[start:start + batch_size]])
            out.extend(head(self.run(batch), top_k))
        return out

    def _needs(self, pre: type, post: str) -> None:
        if not isinstance(self._pre_spec, pre):
            have = self.meta["preprocess"].get("type", "image")
            want = {LetterboxSpec: "letterbox", Image01Spec: "image01", AudioSpec: "audio"}[pre]
            raise ValueError(f"postprocess type '{post}' needs preprocess type '{want}'; "
                             f"{self.path / 'model.json'} has '{have}'")

    def _predict_audio(self, items: list, batch_size: int, top_k: int, post: dict) -> list[Prediction]:
        """Clips -> Predictions. Only clips of equal length share a run; others run one at a time.

        The graph has no attention mask, so zero-padding a clip to its batch's longest would change its
        output (see ``audio.pad_batch``): results equal to PyTorch's on each clip are worth more than the
        throughput of padded batches. Clips are read ``batch_size`` at a time, which bounds memory; clips of
        one length (a keyword set cut to 1 s) still run ``batch_size`` at a time. Log-mel features all have
        one shape (every clip is padded or cut to ``window_samples`` first, as Whisper's extractor does), so
        they always share a run.
        """
        if post["type"] not in ("softmax", "identity", "ctc_greedy"):
            raise ValueError(f"postprocess type '{post['type']}' does not apply to audio; use softmax or ctc_greedy")
        self._needs(AudioSpec, post["type"])
        head = {"softmax": self._classify, "identity": self._regress, "ctc_greedy": self._transcribe}[post["type"]]
        dims = self.session.get_inputs()[0].shape
        fixed = dims[0] if isinstance(dims[0], int) else None
        out: list[Prediction] = []
        for start in range(0, len(items), batch_size):
            clips = [self.preprocess(x) for x in items[start:start + batch_size]]
            self._check_shape(clips, dims)
            out.extend(self._run_by_shape(clips, head, top_k, fixed))
        return out

    def _run_by_shape(self, clips: list[np.ndarray], head, top_k: int, fixed: int | None) -> list[Prediction]:
        """One run per group of equal-shape inputs (waveforms of one length, or log-mel features), ``fixed`` at a
        time for a graph with a fixed batch size."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, clip in enumerate(clips):
            groups.setdefault(clip.shape, []).append(i)
        results: list = [None] * len(clips)  # every slot is filled below
        for group in groups.values():
            size = fixed or len(group)
            for idx in (group[k:k + size] for k in range(0, len(group), size)):
                batch = np.stack([clips[i] for i in idx])
                if len(batch) < size:  # a graph exported with a fixed batch takes exactly that many
                    batch = np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])
                for i, p in zip(idx, head(self.run(batch)[:len(idx)], top_k)):
                    results[i] = p
        return results

    def _check_shape(self, clips: list[np.ndarray], dims: list) -> None:
        """The graph's input rank, and its fixed dims, fit the preprocessed clips: [batch, time] for waveforms,
        [batch, n_mels, frames] for log-mel features."""
        spec, file = self._pre_spec, self.path / "model.json"
        if spec.features == "log_mel":
            if len(dims) != 3:
                raise ValueError(f"{file} asks for log-mel features, which the model takes as [batch, n_mels, frames]; "
                                 f"this graph's input has shape {dims}; fix preprocess.features or re-export")
            got = clips[0].shape  # every clip's: log_mel pads or cuts each to window_samples
            if any(isinstance(d, int) and d != g for d, g in zip(dims[1:], got)):
                raise ValueError(f"the model takes [batch, n_mels, frames] = {dims} but {file} gives {list(got)} "
                                 f"(n_mels {spec.n_mels}; window_samples {spec.window_samples} // hop_length "
                                 f"{spec.hop_length} = {got[1]} frames); make preprocess match the graph")
            return
        if len(dims) != 2:
            hint = " (a Whisper graph, [batch, n_mels, frames], needs preprocess.features \"log_mel\")" \
                if len(dims) == 3 else ""
            raise ValueError(f"speech models take [batch, time] input; this graph's input has shape {dims}{hint}")
        if isinstance(dims[1], int) and any(len(c) != dims[1] for c in clips):
            rate = spec.sample_rate
            raise ValueError(f"the model takes clips of exactly {dims[1]} samples ({dims[1] / rate:g} s at {rate} Hz) "
                             f"but got {sorted({len(c) for c in clips})}; re-export it with a dynamic time axis")

    def _transcribe(self, raw: np.ndarray, top_k: int) -> list[Prediction]:
        post = self._post_spec()
        if raw.ndim != 3 or raw.shape[2] != len(self.labels):
            raise ValueError(f"CTC output has shape {raw.shape}; model.json has {len(self.labels)} vocabulary tokens, "
                             f"so expected [batch, frames, {len(self.labels)}]")
        texts = ctc_greedy(raw, self.labels, blank=post.get("blank", "<pad>"),
                           delimiter=post.get("word_delimiter", "|"), unk=post.get("unk", "<unk>"))
        return [Prediction(label=None, score=None, scores={}, text=t) for t in texts]

    def _detect_yolo(self, items: list, batch_size: int, post: YoloPost) -> list[Detections]:
        self._needs(LetterboxSpec, "yolo")
        spec = self._pre_spec
        dims = self.session.get_inputs()[0].shape
        if all(isinstance(d, int) for d in dims[2:]) and tuple(dims[2:]) != (spec.size, spec.size):
            raise ValueError(f"the model takes {dims[2]}x{dims[3]} inputs but model.json letterboxes to "
                             f"{spec.size}x{spec.size}; re-export the bundle")
        fixed = dims[0] if isinstance(dims[0], int) else None  # Ultralytics' default export has batch 1
        out: list[Detections] = []
        for start in range(0, len(items), fixed or batch_size):
            pairs = [letterbox(x, spec) for x in items[start:start + (fixed or batch_size)]]
            batch = np.stack([x for x, _ in pairs])
            if fixed and len(batch) < fixed:
                batch = np.concatenate([batch, np.zeros((fixed - len(batch), *batch.shape[1:]), batch.dtype)])
            raw = self.run(batch)[:len(pairs)]
            if raw.ndim != 3 or raw.shape[1] != 4 + len(self.labels):
                raise ValueError(f"YOLO output has shape {raw.shape}; model.json has {len(self.labels)} labels, "
                                 f"so expected [batch, {4 + len(self.labels)}, anchors]")
            decoded = decode_yolo(raw, post.conf_threshold, post.iou_threshold, post.max_det, post.agnostic,
                                  post.max_wh, post.max_nms, post.multi_label)
            out.extend(Detections(scale_boxes(boxes, geo), scores, classes, self.labels)
                       for (boxes, scores, classes), (_, geo) in zip(decoded, pairs))
        return out

    def _detect_boxes(self, items: list, post: BoxesPost) -> list[Detections]:
        self._needs(Image01Spec, "boxes")
        names = {o.name for o in self.session.get_outputs()}
        if not {"boxes", "labels", "scores"} <= names:
            raise ValueError(f"postprocess type 'boxes' needs outputs named boxes, labels and scores; the model "
                             f"has {', '.join(sorted(names))}")
        batched = len(self.session.get_inputs()[0].shape) == 4  # torchvision's graph takes one CHW image
        out: list[Detections] = []
        for item in items:  # one image per run: the graph resizes each to its own size
            x = image01(item, self._pre_spec)
            res = self.run_all(x[None] if batched else x)
            out.append(select_boxes(res["boxes"], res["scores"], res["labels"], post, self.labels))
        return out

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
