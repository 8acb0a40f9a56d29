"""Speech end to end on tiny Wav2Vec2 models: groups, the schedule, keyword and CTC runs, export, odd audio."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from suite.cli import main
from suite.core import checkpoint
from suite.core.report import read_history
from suite.errors import UserError
from suite.runner import run
from suite.speech import wav2vec2

KEYWORDS = """\
name: kw-tiny
task: speech-classification
model: {{arch: wav2vec2-tiny, weights: {weights}}}
data:
  format: {fmt}
  root: {root}
  synthetic: {{classes: ["yes", "no", "up"], train_per_class: 3, val_per_class: 2, seed: 0}}
  augment: standard
schedule:
  - {{epochs: 1, train: head, lr: 1.0e-3}}
  - {{epochs: 1, train: [encoder, head], lr: 1.0e-3, layer_decay: 0.8}}
optim: {{name: adamw, weight_decay: 0.01}}
train: {{batch_size: 4, seed: 0}}
{extra}"""


@pytest.fixture(scope="module")
def speech_root(tmp_path_factory):
    return tmp_path_factory.mktemp("speech") / "data"


def _recipe(path, root, weights="none", fmt="synthetic:speech", extra=""):
    path.write_text(KEYWORDS.format(weights=weights, root=root, fmt=fmt, extra=extra))
    return path


@pytest.mark.parametrize("ctc", [False, True])
def test_groups_cover_the_model_in_order(ctc):
    model = wav2vec2.build_model("wav2vec2-tiny", 5, "none", ctc)
    groups = wav2vec2.groups(model)
    assert [g.name for g in groups] == ["feature_encoder", "feature_projection", "encoder.0", "encoder.1", "head"]
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_a_frozen_feature_encoder_sends_no_gradient_through_its_convs():
    """transformers' feature encoder asks for its input's gradient while its `_requires_grad` flag is on, frozen
    or not: set_trainable turns the flag with the group, so a frozen conv stack is left out of the backward."""
    from suite.core.groups import set_trainable

    model = wav2vec2.build_model("wav2vec2-tiny", 5, "none", ctc=False).train()
    groups = wav2vec2.groups(model)
    seen = []
    model.wav2vec2.feature_projection.register_forward_hook(lambda m, args, out: seen.append(args[0].requires_grad))
    for trainable in ([g.name for g in groups[1:]], [g.name for g in groups]):
        set_trainable(groups, trainable)
        model(torch.randn(1, 4000)).logits.sum().backward()
    assert seen == [False, True]


def test_missing_hub_weights_offline_is_a_clear_error():
    with pytest.raises(UserError, match=r"facebook/wav2vec2-base.*huggingface-cli download facebook/wav2vec2-base"):
        wav2vec2.build_model("wav2vec2-base", 3, "facebook/wav2vec2-base", ctc=False)


def test_keyword_run_fine_tunes_exports_and_keeps_the_feature_encoder_frozen(tmp_path, speech_root, capsys):
    first = run(_recipe(tmp_path / "a.yaml", speech_root), out=tmp_path / "pre")
    assert 0.0 <= first.metrics["val"]["val/accuracy"] <= 1.0
    weights = tmp_path / "pre" / "checkpoints" / "best.safetensors"
    extra = "export: {onnx: true, quantize: [int8-dynamic]}\nbench: {batch_sizes: [1], warmup: 1, iters: 3}\n"
    out = tmp_path / "ft"
    tuned = run(_recipe(tmp_path / "b.yaml", speech_root, weights=weights, extra=extra), out=out,
                overrides=[f"eval.source={{root: {speech_root / 'val'}}}"])
    forgot = tuned.metrics["transfer"]["forgetting"]  # the pretrain run's head on its own validation clips
    assert forgot["samples"] == 6 and forgot["classes"] == 3
    assert forgot["before"]["accuracy"] == pytest.approx(first.metrics["val"]["val/accuracy"])
    assert forgot["before"]["loss"] == pytest.approx(first.metrics["val"]["val/loss"], rel=1e-4)
    assert set(forgot["drop"]) == {"accuracy", "top5_accuracy", "loss"} and forgot["verdict"]
    before = load_file(str(weights))
    after = checkpoint.load_state(out / "checkpoints" / "last.pt")["model"]  # after every stage
    frozen = [k for k in before if k.startswith("wav2vec2.feature_extractor.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # never in a stage's train list
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("wav2vec2.encoder.layers."))

    meta = json.loads((out / "export" / "model.json").read_text())
    assert meta["preprocess"] == {"type": "audio", "sample_rate": 16000, "normalize": True, "max_seconds": None}
    assert meta["postprocess"]["type"] == "softmax" and meta["labels"] == ["no", "up", "yes"]
    assert meta["input"]["shape"] == ["batch", "time"]
    verify = json.loads((out / "export" / "verify.json").read_text())
    assert verify["passed"] and set(verify["variants"]) == {"fp32", "int8-dynamic"}
    shapes = [r["shape"] for r in verify["variants"]["fp32"]["tensor"]["shapes"]]
    assert len({s[1] for s in shapes}) > 1 and len({s[0] for s in shapes}) > 1  # other lengths and batches
    fp32 = verify["variants"]["fp32"]["task"]
    assert fp32["torch"] == fp32["onnxruntime"]

    capsys.readouterr()
    clip = sorted((speech_root / "val" / "yes").iterdir())[0]
    main(["predict", str(out / "export"), str(clip)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(str(clip)) and line.split("\t")[1].split()[0] in meta["labels"]


def test_ctc_run_decodes_and_exports(tmp_path, capsys):
    root = tmp_path / "data"
    recipe = tmp_path / "c.yaml"
    recipe.write_text(f"""\
name: ctc-tiny
task: speech-ctc
model: {{arch: wav2vec2-tiny, weights: none}}
data:
  format: synthetic:speech
  root: {root}
  synthetic: {{classes: ["yes"], train_per_class: 1, val_per_class: 1, sentences: 6, seed: 0}}
  augment: light
schedule:
  - {{epochs: 1, train: head, lr: 1.0e-3}}
  - {{epochs: 1, train: [feature_projection, encoder, head], lr: 5.0e-4}}
train: {{batch_size: 4, seed: 0}}
export: {{onnx: true}}
bench: {{batch_sizes: []}}
""")
    result = run(recipe, out=tmp_path / "run")
    assert set(result.metrics["val"]) >= {"val/wer", "val/cer"}
    meta = json.loads((tmp_path / "run" / "export" / "model.json").read_text())
    assert meta["postprocess"] == {"type": "ctc_greedy", "blank": "<pad>", "word_delimiter": "|", "unk": "<unk>"}
    assert meta["labels"][0] == "<pad>" and "|" in meta["labels"]
    verify = json.loads((tmp_path / "run" / "export" / "verify.json").read_text())
    assert verify["passed"] and verify["metric"] == "val/wer"
    assert "## Validation transcripts" in (tmp_path / "run" / "report.md").read_text()
    capsys.readouterr()
    clip = sorted((root / "sentences" / "val").glob("*.wav"))[0]
    main(["predict", str(tmp_path / "run" / "export"), str(clip)])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"{clip}\t")


def test_8khz_stereo_recordings_run_without_changes(tmp_path, speech_root):
    """Real recordings differ from the synthetic set: 8 kHz, stereo, int16, uneven lengths; a manifest."""
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for digit in ("zero", "one"):
        for i in range(4):
            n = int(8000 * rng.uniform(0.5, 1.4))
            t = np.arange(n) / 8000
            tone = 0.3 * np.sin(2 * np.pi * (300 if digit == "zero" else 900) * t) + 0.02 * rng.standard_normal(n)
            stereo = (np.stack([tone, 0.8 * tone], 1) * 32767).astype(np.int16)
            sf.write(tmp_path / f"{digit}_{i}.wav", stereo, 8000, subtype="PCM_16")
            rows.append(f"{digit}_{i}.wav,{digit}")
    (tmp_path / "digits.csv").write_text("\n".join(rows) + "\n")
    recipe = _recipe(tmp_path / "d.yaml", tmp_path / "digits.csv", fmt="manifest")
    result = run(recipe, ["data.val_split=0.25", "schedule.1.epochs=1"], tmp_path / "run")
    assert 0.0 <= result.metrics["val"]["val/accuracy"] <= 1.0
    assert "kept" in (tmp_path / "run" / "report.md").read_text()


def test_training_batches_group_clips_of_similar_length(tmp_path):
    """Zero padding costs time and, without a mask, moves group-norm features: batches hold similar lengths."""
    from suite.recipe import load_recipe
    from suite.tasks import modality_for

    rng = np.random.default_rng(0)
    lengths = [int(8000 * s) for s in rng.uniform(0.3, 3.0, 64)]
    rows = ["path,label"]
    for i, n in enumerate(lengths):
        sf.write(tmp_path / f"{i}.wav", 0.1 * rng.standard_normal(n), 8000, subtype="PCM_16")
        rows.append(f"{i}.wav,{'ab'[i % 2]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    recipe = load_recipe(_recipe(tmp_path / "r.yaml", tmp_path / "m.csv", fmt="manifest"),
                         ["data.augment=none", "data.val_split=0.001", "train.batch_size=4"])
    mod = modality_for(recipe.task)
    data = mod.load_data(recipe)
    loader = mod.hooks(recipe, data, torch.device("cpu")).train_loader(0)
    padded = sum(int((1 - b["attention_mask"]).sum()) for b in loader)
    seconds = sorted(round(c.seconds * 16000) for c in data.train)
    assert sum(len(b["labels"]) for b in loader) == len(data.train)
    order = np.random.default_rng(1).permutation(seconds)  # the same clips in random batches of 4
    random_pad = sum(int(max(chunk) * len(chunk) - sum(chunk)) for chunk in np.array_split(order, len(order) // 4))
    assert padded < 0.6 * random_pad, (padded, random_pad)


def test_keyword_head_on_cached_features_matches_the_uncached_head(tmp_path, speech_root, capsys):
    """Speech caches the clip's mean encoder state (the projector is linear, so it commutes with transformers'
    mean pooling): equal to the uncached head up to float rounding, not bitwise. 1 s clips, same length."""
    recipe = _recipe(tmp_path / "c.yaml", speech_root)
    same = ["data.augment=none", "schedule=[{epochs: 2, train: head, lr: 1.0e-2}]", "export.onnx=false"]
    run(recipe, same, tmp_path / "encoder-dropout")  # the config's own dropout 0.1: the encoder is not fixed
    assert "features not cached: dropout wav2vec2." in capsys.readouterr().out
    runs = {mode: tmp_path / mode for mode in ("false", "true")}
    for mode, out in runs.items():
        run(recipe, [*same, "model.encoder_dropout=0", f"train.cache_features={mode}"], out)
    assert "stage 0: head trained on cached features (9 samples, (32,) each" in capsys.readouterr().out
    plain, cached = (read_history(runs[m] / "history.csv", times=False) for m in ("false", "true"))
    for a, b in zip(plain, cached, strict=True):
        assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7) for k in a)
    a, b = (load_file(runs[m] / "checkpoints" / "best.safetensors") for m in ("false", "true"))
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_a_run_with_kept_loader_workers_stopped_inside_an_epoch_resumes_bitwise(tmp_path, monkeypatch):
    """Speech seeds its augmentation by epoch (AudioDataset.set_epoch): with 2 kept loader workers the call reaches
    each worker's copy, so a run stopped inside epoch 2 and resumed equals the one never stopped, bit for bit."""
    import os
    import signal

    from suite.core.loop import _Trainer
    from suite.core.stages import Interrupted

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
name: sp
task: speech-classification
model: {{arch: wav2vec2-tiny, weights: none}}
data:
  format: synthetic:speech
  root: {tmp_path / "data"}
  synthetic: {{classes: [up, down], train_per_class: 4, val_per_class: 1}}
  augment: standard
  num_workers: 2
schedule: [{{epochs: 2, train: all, lr: 1.0e-3}}]
train: {{batch_size: 2, seed: 1, cache_features: false}}
export: {{onnx: false}}
""")
    whole = run(recipe, [], tmp_path / "whole")
    steps, real = [0], _Trainer._step

    def step_then_signal(self):
        real(self)
        steps[0] += 1
        if steps[0] == 5:  # 4 steps an epoch: the 1st of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(_Trainer, "_step", step_then_signal)
    with pytest.raises(Interrupted):
        run(recipe, [], tmp_path / "cut")
    monkeypatch.undo()
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["position"]["batch"] == 1
    resumed = run(None, resume=tmp_path / "cut")
    a = load_file(str(whole.run_dir / "checkpoints" / "best.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints" / "best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_history(whole.run_dir / "history.csv", False) == read_history(resumed.run_dir / "history.csv", False)
