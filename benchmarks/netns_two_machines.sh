#!/usr/bin/env bash
# Two "machines" as Linux network namespaces joined by a veth pair (10.77.0.1 and 10.77.0.2), each with a folder
# and a cache of its own (no shared run directory, no shared data): `suite run --nnodes 2` with gloo across the
# link, then the same run stopped inside epoch 2 (SIGTERM to machine 0's launcher after rank 0's 4th step) and
# resumed with `--resume` on both machines, machine 1 holding no run folder; the resumed run's best weights and
# history are compared with the uninterrupted run's. Needs root and iproute2; removes the namespaces it made.
# KIND=yolo: YOLO11n in Ultralytics' DDP workers instead, stopped at the end of epoch 1 and resumed (Ultralytics
# draws other batches after a resume inside a stage, so that run is checked for both ranks agreeing, not bitwise).
#   sudo bash benchmarks/netns_two_machines.sh   [KIND=vision|yolo] [PY=.venv/bin/python] [WORK=/tmp/netns-two]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-.venv/bin/python}
[[ $PY = /* ]] || PY=$ROOT/$PY  # absolute, but not resolved: a venv's python is a symlink
WORK=${WORK:-/tmp/netns-two}
A=suite-m0 B=suite-m1
cleanup() { ip netns del $A 2>/dev/null || true; ip netns del $B 2>/dev/null || true; }
trap cleanup EXIT
cleanup
ip netns add $A && ip netns add $B
ip link add suite-v0 type veth peer name suite-v1
ip link set suite-v0 netns $A && ip link set suite-v1 netns $B
ip -n $A addr add 10.77.0.1/24 dev suite-v0 && ip -n $B addr add 10.77.0.2/24 dev suite-v1
for ns in $A $B; do ip -n $ns link set lo up; done
ip -n $A link set suite-v0 up && ip -n $B link set suite-v1 up
rm -rf "$WORK" && mkdir -p "$WORK/m0" "$WORK/m1" "$WORK/hook"
KIND=${KIND:-vision}
if [ "$KIND" = yolo ]; then
  cat > "$WORK/m0/r.yaml" <<'YAML'
name: netns-two-yolo
task: detection
model: {arch: yolo11n, weights: none}
data:
  format: synthetic:shapes
  root: data
  synthetic: {classes: [circle, square], train_per_class: 3, val_per_class: 2, size: 64, max_objects: 2}
  image_size: 64
  augment: none
schedule: [{epochs: 2, train: [neck, head], lr: 1.0e-2}]
train: {batch_size: 4, seed: 0}
export: {onnx: false}
YAML
  HOOK=STOP_AFTER_EPOCH STOP="STOP_AFTER_EPOCH=1"
else
  cat > "$WORK/m0/r.yaml" <<'YAML'
name: netns-two
task: image-classification
model: {arch: resnet18, weights: none}
data:
  format: synthetic:shapes
  root: data
  synthetic: {classes: [circle, square, triangle], train_per_class: 8, val_per_class: 3, size: 32}
  image_size: 32
  resize: 32
  augment: none
schedule: [{epochs: 2, train: head, lr: 1.0e-2}, {epochs: 1, train: all, lr: 1.0e-3}]
train: {batch_size: 8, seed: 0}
export: {onnx: false}
YAML
  HOOK=STOP_AFTER_STEP STOP="STOP_AFTER_STEP=4"
fi
cp "$WORK/m0/r.yaml" "$WORK/m1/r.yaml"
PYTHONPATH="$ROOT/tests:$ROOT" "$PY" -c "import test_ddp; print(test_ddp.$HOOK)" > "$WORK/hook/sitecustomize.py"

two() {  # PORT EXTRA-ENV ARGS...: machine 1's launch, then machine 0's; their exit codes in $WORK/rc
  local port=$1 extra=$2; shift 2
  for m in 1 0; do
    (cd "$WORK/m$m" && ip netns exec suite-m$m env SUITE_CACHE="$WORK/m$m/cache" PYTHONPATH="$ROOT:$ROOT/export" $extra \
      timeout 300 "$PY" -m suite.cli run "$@" --nproc 1 --nnodes 2 --node-rank $m --rdzv-endpoint 10.77.0.1:$port \
      --device cpu > "$WORK/m$m.log" 2>&1; echo $? > "$WORK/m$m.rc") &
    [ $m = 1 ] && sleep 1
  done
  wait
  echo "$(cat "$WORK/m0.rc") $(cat "$WORK/m1.rc")"
}
began=$(date +%s)
echo "uninterrupted: exit codes $(two 29531 X=1 r.yaml --out run)"
grep -E "ranks agree|run directory" "$WORK/m0.log"
echo "stopped: exit codes $(two 29532 "PYTHONPATH=$WORK/hook:$ROOT:$ROOT/export $STOP" r.yaml --out cut)"
grep "interrupted; continue" "$WORK/m0.log"
echo "machine 1's folder: $(ls "$WORK/m1" | tr '\n' ' ')"
echo "resumed: exit codes $(two 29533 X=1 --resume cut)"
grep -E "ranks agree" "$WORK/m0.log"
"$PY" - "$WORK" "$KIND" <<'PY'
import sys
import torch
from safetensors.torch import load_file
from suite.core.report import read_history
w, kind = sys.argv[1:]
a, b = (load_file(f"{w}/m0/{d}/checkpoints/best.safetensors") for d in ("run", "cut"))
same = all(torch.equal(a[k], b[k]) for k in a)
old, new = (read_history(f"{w}/m0/{d}/history.csv", False) for d in ("run", "cut"))
print(f"resumed vs uninterrupted: {len(a)} tensors bitwise equal: {same}; history equal: {old == new}; "
      f"epochs {[(r['epoch'], r['stage']) for r in new]}")
ok = same and old == new if kind == "vision" else [r["epoch"] for r in new] == [r["epoch"] for r in old]
sys.exit(0 if ok else 1)
PY
echo "$(( $(date +%s) - began )) s"
