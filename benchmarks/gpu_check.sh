#!/usr/bin/env bash
# The GPU checks for a session lent the H200 (the device tool): one call, `bash benchmarks/gpu_check.sh`, under 8
# minutes (timeouts 180 + 60 + 90 + 150 s), every result as JSON in $OUT (the device tool's folder; /tmp/gpu-check
# elsewhere; 7 files: a part that fails leaves its error, and what it measured before, in its JSON). The image has
# torch, torchvision, transformers, tensorboard, click, safetensors, matplotlib and onnxruntime; the suite and its
# runtime run from this checkout through PYTHONPATH, and these checks need neither Ultralytics nor a pip install.
#   resnet50  img/s at 224 px, bf16 autocast + channels_last, with and without torch.compile, and the fraction of
#             the chip's bf16 peak (goal >= 4000 img/s; NVIDIA's A100 AMP figure is 2470)
#   wav2vec2  Wav2Vec2-base training clips/s (1 s clips, frozen feature encoder, bf16)
#   suite     `suite run` on CUDA: the fast-path settings it chose, and a run stopped after epoch 3 and resumed
#             against the uninterrupted one (AMP: max weight difference, goal < 1e-3)
#   training  benchmarks/bench_training.py --device cuda: suite run against the hand-written loop (goal <= 1.05x)
# Not run on a GPU yet (no session so far was lent one): `SMOKE=1 PY=.venv/bin/python bash benchmarks/gpu_check.sh`
# ran every part tiny on the 2-core CPU in 83 s (2026-12-03), which checks the script, not the GPU paths; so did
# `SMOKE=1 PY=/tmp/twin/bin/python ...` in 57 s, a Python 3.12 venv with the device image's torch 2.11.0,
# torchvision 0.26.0, transformers 5.17.0 and torchmetrics 1.9.0 (benchmarks/README.md, "GPU checks").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/export${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
SMOKE=${SMOKE:-}  # SMOKE=1: every part tiny and on the CPU, to check this script where there is no GPU
smoke=${SMOKE:+--smoke}
device=cuda
[ -n "$SMOKE" ] && device=cpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
status=0
timeout 180 "$PY" benchmarks/gpu_check.py resnet50 --out "$OUT" $smoke || status=1
timeout 60 "$PY" benchmarks/gpu_check.py wav2vec2 --out "$OUT" $smoke || status=1
timeout 90 "$PY" benchmarks/gpu_check.py suite --out "$OUT" $smoke > "$OUT/gpu-suite.log" 2>&1 || status=1
tail -3 "$OUT/gpu-suite.log"
# 1 repeat: 3 commands and 2 first-step runs, each a fresh process that starts CUDA
timeout 150 "$PY" benchmarks/bench_training.py --device $device --repeats 1 --out "$OUT/training" \
  > "$OUT/gpu-training.json" 2> "$OUT/gpu-training.log" || status=1
cat "$OUT/gpu-training.json"
rm -rf "$OUT/training" "$OUT/suite-check"  # data and run folders: only the JSON comes back
exit $status
