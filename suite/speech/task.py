"""The speech modality: Wav2Vec2 keyword spotting (speech-classification) and CTC recognition (speech-ctc)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from suite.core import dist, report
from suite.core.data import loader_workers
from suite.core.export import Axis, ExportSpec, OnnxIO, OnnxModel, as_bundle
from suite.core.features import CacheSpec
from suite.core.groups import ParamGroup
from suite.core.loop import Hooks
from suite.core.metrics import ClassificationEvaluator, EvalResult, TranscriptionEvaluator, check_metric_names
from suite.errors import UserError
from suite.recipe import Recipe
from suite.speech import data as sdata
from suite.speech import wav2vec2, whisper

SYNTHETIC = "synthetic:speech"
SAMPLE_RATE = 16000  # every Wav2Vec2 checkpoint's rate; clips at other rates are resampled when read
MASK_TIME_PROB = {"none": 0.0, "light": 0.05, "standard": 0.05}  # SpecAugment-style masking in the model
SPEECH_INPUT = "input_values"
# [batch, time], both dynamic: clips of any length from 50 ms to a minute
EXPORT_IO = OnnxIO(input=SPEECH_INPUT, outputs=("logits",),
                   axes={0: Axis("batch", 1, 1024), 1: Axis("time", 800, SAMPLE_RATE * 60)})


def _ctc(recipe: Recipe) -> bool:
    return recipe.task == "speech-ctc"


def _whisper(recipe: Recipe) -> bool:
    return whisper.is_whisper(recipe.model.arch)


ARCHS = (*wav2vec2.SIZES, *whisper.SIZES)
WHISPER_INPUT = "input_features"


# [batch, 80, frames]: the batch dynamic, the window fixed (Whisper's positions are a fixed table)
WHISPER_IO = OnnxIO(input=WHISPER_INPUT, outputs=("logits",), axes={0: Axis("batch", 1, 1024)})


def _features(recipe: Recipe):
    return whisper.LogMel(recipe.model.context_seconds) if _whisper(recipe) else None


class SpeechModality:
    """Satisfies suite.tasks.Modality for speech-classification and speech-ctc."""

    def resolve_weights(self, recipe: Recipe) -> str:
        if _whisper(recipe):
            return whisper.resolve_weights(recipe.model.weights)
        return wav2vec2.resolve_weights(recipe.model.weights)

    def load_data(self, recipe: Recipe) -> sdata.SpeechData:
        d = recipe.data
        if recipe.model.arch not in ARCHS:
            raise UserError(f"model.arch '{recipe.model.arch}' is not a speech model; use one of {', '.join(ARCHS)}")
        if _whisper(recipe) and _ctc(recipe):
            raise UserError(f"model.arch {recipe.model.arch}: speech-ctc needs a Wav2Vec2 (a frame-level encoder "
                            f"trained for CTC); use one of {', '.join(wav2vec2.SIZES)}, or task: speech-classification")
        if recipe.model.context_seconds is not None and not _whisper(recipe):
            raise UserError(f"model.context_seconds applies to Whisper encoders; {recipe.model.arch} takes clips "
                            "of any length: remove it")
        check_metric_names(recipe.eval.metrics, "transcription" if _ctc(recipe) else "classification")
        fmt, root = d.format, d.root
        if fmt == SYNTHETIC:
            root = Path(root or f"data/{recipe.name}")
            _make_speech(d.synthetic, root, _ctc(recipe))
            fmt, root = ("manifest", root / "sentences" / "manifest.csv") if _ctc(recipe) else ("audiofolder", root)
        if not str(root):
            raise UserError(f"data.root is empty; point it at your data: -s data.root=PATH ({fmt})")
        data = sdata.load_speech(fmt, root, recipe.task, SAMPLE_RATE, d.val_split, recipe.train.seed,
                                 d.max_seconds or 30.0)
        if _whisper(recipe):
            window = whisper.window_samples(recipe.model.context_seconds) / SAMPLE_RATE
            longer = sum(c.seconds > window for c in [*data.train, *data.val, *(data.test or [])])
            if longer:
                data.report.notes.append(f"{longer} clips are longer than the encoder's {window:g} s window and are "
                                         f"cut to their first {window:g} s (raise model.context_seconds to keep more)")
        return data

    def build_model(self, recipe: Recipe, labels: list[str], weights: str) -> nn.Module:
        m = recipe.model
        if _whisper(recipe):
            return whisper.build_model(m.arch, len(labels), weights, m.context_seconds, trust=m.trust_weights,
                                       dropout=m.encoder_dropout)
        return wav2vec2.build_model(m.arch, len(labels), weights, _ctc(recipe), pad_id=0,
                                    mask_time_prob=MASK_TIME_PROB.get(recipe.data.augment, 0.05),
                                    trust=m.trust_weights, dropout=m.encoder_dropout)

    def groups(self, recipe: Recipe, model: nn.Module) -> list[ParamGroup]:
        return whisper.groups(model) if _whisper(recipe) else wav2vec2.groups(model)

    def trainer(self, recipe: Recipe, data):
        return None  # the suite's own loop

    def own_trainer(self, recipe: Recipe) -> str | None:
        return None

    def models(self) -> list[str]:
        return [f"{arch}  (speech: keywords and CTC, transformers)" for arch in wav2vec2.SIZES] + \
            [f"{arch}  (speech: keywords and audio classes, transformers)" for arch in whisper.SIZES]

    def task_for(self, arch: str) -> str | None:
        return "speech-classification" if arch in ARCHS else None

    def evaluate_source(self, recipe: Recipe, model: nn.Module, device: torch.device) -> dict | None:
        """Forgetting of a keyword model pre-trained by a suite run: that run's head and labels.json score the
        source clips (``eval.source.root``: class folders, all of them scored) before and after fine-tuning."""
        if recipe.eval.source is None:
            return None
        from suite.core import transfer
        from suite.core import weights as W

        m = recipe.model
        source = W.parse(m.weights)
        if source.kind != W.FILE:
            raise UserError(f"eval.source: a speech model's source head comes from a suite run's best.safetensors; "
                            f"{m.weights} carries none the suite knows the classes of")
        run = transfer.source_run(source.value, m.arch, "pretrain it with `suite run` first")
        family = whisper if _whisper(recipe) else wav2vec2
        before = self.build_model(recipe, run.labels, source.value)
        after = transfer.with_backbone(before, model, family.head_prefixes(before), family.head_prefixes(model))
        found = sdata.load_audiofolder(recipe.eval.source.root, SAMPLE_RATE, 0.5, recipe.train.seed,
                                       recipe.data.max_seconds or 30.0)
        unknown = sorted(set(found.labels) - set(run.labels))
        if unknown:
            raise UserError(f"eval.source: class folder '{unknown[0]}' in {recipe.eval.source.root} is not a class of "
                            f"the source head ({', '.join(run.labels)})")
        index = [run.labels.index(name) for name in found.labels]
        clips = [dataclasses.replace(c, label=index[c.label]) for c in [*found.train, *found.val, *(found.test or [])]]
        data = dataclasses.replace(found, labels=list(run.labels), val=clips)
        scores = {}
        for when, net in (("before", before), ("after", after)):
            net.to(device).eval()
            with torch.inference_mode():
                scored = [(net(**_inputs(net, b, device)).logits.float().cpu(), b["labels"])
                          for b in self._eval_loader(recipe, data, "val")]
            scores[when] = transfer.source_scores(torch.cat([o for o, _ in scored]), torch.cat([y for _, y in scored]),
                                                  len(run.labels))
        return {"source": recipe.eval.source.root, "samples": len(clips), "classes": len(run.labels), **scores}

    def default_metric(self, recipe: Recipe) -> str:
        # CER moves before WER does on a small model, so it picks the best epoch more reliably
        return "val/cer" if _ctc(recipe) else "val/accuracy"

    def hooks(self, recipe: Recipe, data, device: torch.device) -> Hooks:
        def loss(model: nn.Module, batch) -> torch.Tensor:
            return model(**_inputs(model, batch, device), labels=batch["labels"].to(device)).loss

        def evaluate(model: nn.Module) -> EvalResult:
            return self.evaluate(recipe, model, data, "val", device)

        # one training dataset for every epoch (kept loader workers hold copies of it)
        ds = sdata.AudioDataset(data.train, data, recipe.task, train=True, augment=recipe.data.augment,
                                max_seconds=recipe.data.max_seconds, seed=recipe.train.seed, features=_features(recipe))

        def train_loader(epoch: int) -> DataLoader:
            from transformers.trainer_pt_utils import LengthGroupedSampler

            ds.set_epoch(epoch)  # here; in worker processes the kept loader calls it on their copies
            gen = torch.Generator().manual_seed(recipe.train.seed * 100_003 + epoch)
            n, bs = len(ds), recipe.train.batch_size
            # Whisper: every clip becomes the same window, so there is no padding to save
            lengths = [0] if _whisper(recipe) else [round(c.seconds * SAMPLE_RATE) for c in data.train]
            # clips of similar length batched together (transformers' group_by_length): less zero padding, which
            # costs time and, without an attention mask, moves a group-norm Wav2Vec2's features
            order = dict(sampler=LengthGroupedSampler(bs, lengths=lengths, generator=gen)) if len(set(lengths)) > 1 \
                else dict(shuffle=True, generator=gen)
            return DataLoader(ds, batch_size=bs, collate_fn=sdata.collate, num_workers=loader_workers(recipe.data.num_workers),
                              drop_last=n > bs and n % bs == 1, **order)

        def cache(model: nn.Module) -> CacheSpec:
            if _whisper(recipe):
                parts, why = whisper.cache_spec_parts(model), None
            else:
                parts, why = wav2vec2.cache_spec_parts(model, _uses_mask(model))
            point, extract, head = parts or (model, None, None)
            return CacheSpec(point=point, extract=extract, head=head, blocker=why or _cache_blocker(recipe, data),
                             loss=lambda out, y: nn.functional.cross_entropy(out.float(), y.to(device)),
                             inputs=lambda batch: _inputs(model, batch, device), targets=lambda batch: batch["labels"],
                             val_loader=lambda: self._eval_loader(recipe, data, "val"),
                             val_metrics=lambda scored: _score_classes(data, scored).prefixed("val"))

        return Hooks(loss=loss, evaluate=evaluate, train_loader=train_loader,
                     cache=cache if not _ctc(recipe) else "speech-ctc scores every frame, not one vector per clip")

    def _eval_loader(self, recipe: Recipe, data, split: str) -> DataLoader:
        clips = getattr(data, split)
        ds = sdata.AudioDataset(clips, data, recipe.task, train=False, max_seconds=recipe.data.max_seconds,
                                features=_features(recipe))
        bs = recipe.train.eval_batch_size or recipe.train.batch_size
        if not _whisper(recipe) and (_ctc(recipe) or len({round(c.seconds * SAMPLE_RATE) for c in clips}) > 1):
            # zero padding without a mask moves a group-norm Wav2Vec2's outputs: clips of different lengths
            # are scored one at a time, exactly as the deployed runtime runs them
            bs = 1
        return DataLoader(ds, batch_size=bs, shuffle=False, collate_fn=sdata.collate,
                          num_workers=loader_workers(recipe.data.num_workers))

    def evaluate(self, recipe: Recipe, model: nn.Module, data, split: str, device: torch.device) -> EvalResult | None:
        clips = getattr(data, split)
        if not clips:
            return None
        loader = self._eval_loader(recipe, data, split)
        ctc = _ctc(recipe)
        ev = TranscriptionEvaluator() if ctc else ClassificationEvaluator(data.labels)
        model.eval()
        done = 0
        with torch.inference_mode():
            for batch in tqdm(loader, desc=f"eval {split}", leave=False, dynamic_ncols=True, disable=None):
                out = model(**_inputs(model, batch, device), labels=batch["labels"].to(device))
                logits = out.logits.float().cpu()
                n = len(logits)
                if ctc:
                    frames = [sdata.wav2vec2_frames(int(k)) for k in batch["attention_mask"].sum(1)]
                    refs = [c.text or "" for c in clips[done:done + n]]
                    ev.update(data.vocab.greedy_decode(logits, lengths=frames), refs, loss=float(out.loss))
                else:
                    ev.update(logits, batch["labels"], loss=float(out.loss), n=n)
                done += n
        return ev.compute()

    def plots(self, result: EvalResult, data, plot_dir: Path) -> list[Path]:
        if result.confusion is None:
            return []
        return [report.plot_confusion(result.confusion, data.labels, plot_dir / "confusion_val.png")]

    def report_sections(self, recipe: Recipe, result: EvalResult) -> list[tuple[str, str]]:
        samples = result.extra.get("samples")
        if not samples:
            return []
        rows = ["| reference | greedy CTC transcript |", "|---|---|"]
        rows += [f"| {ref} | {hyp} |" for ref, hyp in samples]
        return [("Validation transcripts", "\n".join(rows))]

    # ----- export ----------------------------------------------------------------------------
    def export_module(self, recipe: Recipe, model: nn.Module) -> nn.Module:
        return wav2vec2.ExportWrapper(model)  # Whisper's too: the first input is its features

    def bundle_meta(self, recipe: Recipe, data) -> dict:
        post = ({"type": "ctc_greedy", "blank": data.vocab.blank, "word_delimiter": data.vocab.delimiter,
                 "unk": data.vocab.unk} if _ctc(recipe) else {"type": "softmax"})
        if _whisper(recipe):
            context = recipe.model.context_seconds
            pre = {"type": "audio", "sample_rate": SAMPLE_RATE, "normalize": False, "features": "log_mel",
                   "n_mels": 80, "n_fft": whisper.N_FFT, "hop_length": whisper.HOP,
                   "window_samples": whisper.window_samples(context), "max_seconds": recipe.data.max_seconds}
            encoder = {"family": "whisper", "window_seconds": context or whisper.WINDOW_SECONDS,
                       "positions": whisper.positions(context),
                       "context": "shortened: the positional table is cut to the window" if context is not None
                       and context < whisper.WINDOW_SECONDS else "Whisper's full 30 s window"}
            return {"task": recipe.task, "labels": list(data.labels), "preprocess": pre, "postprocess": post,
                    "encoder": encoder}
        return {"task": recipe.task, "labels": list(data.labels),
                "preprocess": {"type": "audio", "sample_rate": SAMPLE_RATE, "normalize": True,
                               "max_seconds": recipe.data.max_seconds},
                "postprocess": post}

    def export_spec(self, recipe: Recipe, data, model: nn.Module) -> ExportSpec:
        meta = self.bundle_meta(recipe, data)
        if _whisper(recipe):
            frames = meta["preprocess"]["window_samples"] // whisper.HOP
            return ExportSpec(
                meta=meta, example=torch.randn(2, 80, frames, generator=torch.Generator().manual_seed(0)),
                evaluate=lambda m: runtime_metrics(m, data.val, data, meta), metric="val/accuracy",
                module=self.export_module(recipe, model), io=WHISPER_IO, quantizable=("int8-dynamic",),
                parity_batches=(1, 3), calibration=lambda n: (),
                extra={"input": {"name": WHISPER_INPUT, "shape": ["batch", 80, frames], "dtype": "float32",
                                 "layout": "log_mel", "sample_rate": SAMPLE_RATE},
                       "outputs": [{"name": "logits", "shape": ["batch", len(data.labels)]}]})
        ctc = _ctc(recipe)
        out_shape = ["batch", "frames", len(data.labels)] if ctc else ["batch", len(data.labels)]
        return ExportSpec(
            meta=meta, example=torch.randn(2, SAMPLE_RATE, generator=torch.Generator().manual_seed(0)),
            evaluate=lambda m: runtime_metrics(m, data.val, data, meta),
            metric="val/wer" if ctc else "val/accuracy", module=self.export_module(recipe, model), io=EXPORT_IO,
            quantizable=("int8-dynamic",), tensor_check=tensor_parity, bench_item=(SAMPLE_RATE,),  # 1 s clips
            extra={"input": {"name": SPEECH_INPUT, "shape": ["batch", "time"], "dtype": "float32",
                             "layout": "waveform", "sample_rate": SAMPLE_RATE},
                   "outputs": [{"name": "logits", "shape": out_shape}]})

    def evaluate_bundle(self, recipe: Recipe, bundle, data, split: str) -> dict[str, float] | None:
        clips = getattr(data, split)
        if not clips:
            return None
        got = runtime_metrics(OnnxModel(bundle), clips, data, self.bundle_meta(recipe, data))
        return {k.replace("val/", f"{split}/"): v for k, v in got.items()}


def _score_classes(data, scored) -> EvalResult:
    """Classification metrics of (logits, labels) batches: the model's, or its head's on cached features."""
    ev = ClassificationEvaluator(data.labels)
    for logits, labels in scored:
        ev.update(logits, labels, loss=float(nn.functional.cross_entropy(logits, labels)), n=len(logits))
    return ev.compute()


def _cache_blocker(recipe: Recipe, data) -> str | None:
    """Why this data's training clips are not a fixed function of the file (None: they are)."""
    if recipe.data.augment != "none":
        return f"data.augment is {recipe.data.augment} (random noise and shifts, and Wav2Vec2's time masking, " \
               "change the features every epoch); set data.augment: none to cache"
    lengths = {round(c.seconds * SAMPLE_RATE) for c in data.train}
    if len(lengths) > 1 and not _whisper(recipe):  # Whisper pads every clip to its window on its own
        return "training clips differ in length, so a clip's features depend on the padding of its batch"
    top = recipe.data.max_seconds
    if top and any(c.seconds > top for c in data.train):
        return f"clips longer than data.max_seconds ({top} s) are cropped at random"
    return None


def _uses_mask(model: nn.Module) -> bool:
    return getattr(dist.unwrap(model).config, "feat_extract_norm", "group") == "layer"  # DDP, compile: the model


def _inputs(model: nn.Module, batch: dict, device: torch.device) -> dict:
    """input_values, plus the attention mask only for layer-norm feature encoders: Wav2Vec2 models with
    group norm (base) were trained on zero-padded batches without one (transformers' own advice)."""
    if "input_features" in batch:  # Whisper
        return {"input_features": batch["input_features"].to(device)}
    out = {"input_values": batch["input_values"].to(device)}
    if _uses_mask(model):
        out["attention_mask"] = batch["attention_mask"].to(device)
    return out


def _make_speech(s, root: Path, ctc: bool) -> None:
    from suite.datasets.speech import make_speech

    make_speech(root, s.classes, s.train_per_class, s.val_per_class, s.test_per_class,
                sentences=s.sentences if ctc else 0, seed=s.seed, progress=True, sentence_style=s.sentence_style)


def runtime_metrics(m, clips, data, meta: dict) -> dict[str, float]:
    """Accuracy, or WER/CER, of ``m`` (a torch module or an OnnxModel) through suite_runtime's own audio
    reading, resampling, normalisation and decoding: the exact path a deployed app takes."""
    pre = meta["preprocess"]
    if pre.get("features") == "log_mel":
        shape = ["batch", pre["n_mels"], pre["window_samples"] // pre["hop_length"]]
        bundle = as_bundle(m, meta, shape, ["logits"], WHISPER_INPUT)
    else:
        bundle = as_bundle(m, meta, ["batch", "time"], ["logits"], SPEECH_INPUT)
    preds = []
    for start in range(0, len(clips), 16):
        preds += bundle.predict([str(c.path) for c in clips[start:start + 16]])
    if meta["postprocess"]["type"] == "ctc_greedy":
        ev = TranscriptionEvaluator()
        ev.update([p.text or "" for p in preds], [c.text or "" for c in clips])
        r = ev.compute().metrics
        return {"val/wer": r["wer"], "val/cer": r["cer"]}
    labels = list(data.labels)
    hits = [labels.index(p.label) == c.label for p, c in zip(preds, clips)]
    return {"val/accuracy": float(np.mean(hits))}


PARITY_SHAPES = ((1, 8000), (3, 8000), (2, 20800))  # other batch sizes and lengths than the export example


def tensor_parity(module: nn.Module, bundle, example: torch.Tensor, atol: float) -> dict:
    """Logits torch vs onnxruntime on batches and clip lengths other than the export example's."""
    gen = torch.Generator().manual_seed(0)
    rows, ok = [], True
    for shape in PARITY_SHAPES:
        x = torch.randn(*shape, generator=gen)
        with torch.inference_mode():
            ref = module(x).float().numpy()
        got = np.asarray(bundle.session.run(None, {bundle.input_name: x.numpy()})[0])
        finite = bool(np.isfinite(got).all())
        diff = float(np.abs(ref - got).max()) if finite and got.shape == ref.shape else float("inf")
        passed = finite and diff <= atol
        ok &= passed
        rows.append({"shape": list(shape), "max_abs_diff": diff if finite else None, "nan": not finite,
                     "passed": passed})
    return {"atol": atol, "shapes": rows, "passed": ok}

