"""Kill a real `suite run` with SIGKILL at random moments, resume it each time, and check what it ends with.

    python benchmarks/kill_resume.py --kills 50 --out /tmp/kill-resume

One tiny image recipe (ResNet-18 at 32 px, augmentation, dropout, EMA) is run once uninterrupted. Then the same
recipe is started, killed (SIGKILL: no handler, no checkpoint of its own) after a random delay, and resumed with
`suite run --resume`, again and again, until a resume finishes (a cycle); cycles repeat until --kills kills.
After every kill `checkpoints/last.pt` must load (weights_only) and hold a position no earlier than the last one
seen in its cycle; at the end of every cycle the best weights and the history must equal the uninterrupted
run's, tensor for tensor. Prints one line per kill and a summary; exit 1 on
any failure. Not part of `make test` (each kill costs a process start); the result is in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """\
name: kill-resume
task: image-classification
model: {{arch: resnet18, weights: none, head: {{hidden: [16], dropout: 0.2}}}}
data: {{format: synthetic:shapes, root: {root}, image_size: 32, resize: 40, augment: standard,
        synthetic: {{classes: [circle, square, star], train_per_class: 16, val_per_class: 4, size: 40}}}}
schedule:
  - {{epochs: 3, train: head, lr: 1.0e-3}}
  - {{epochs: 3, train: all, lr: 3.0e-4}}
train: {{batch_size: 4, ema: 0.9, seed: 3, checkpoint_every_s: 0}}  # last.pt after every epoch: the most writes to kill
"""


def suite(*args: str) -> list[str]:
    return [sys.executable, "-c", "from suite.cli import main; main()", *args]


def position(last: Path) -> tuple[int, int] | None:
    import torch

    if not last.exists():
        return None
    state = torch.load(last, map_location="cpu", weights_only=True)  # must load, whatever the kill hit
    return state["position"]["epoch"], state["position"].get("batch", 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--out", default="/tmp/kill-resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-delay", type=float, default=12.0, help="seconds after a start at most before the kill")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "recipe.yaml"
    recipe.write_text(RECIPE.format(root=out / "data"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole, cut = out / "whole", out / "cut"
    subprocess.run(suite("run", str(recipe), "--out", str(whole), "--overwrite"), env=env, check=True,
                   capture_output=True)
    rng = random.Random(args.seed)
    import torch
    from safetensors.torch import load_file

    from suite.core.report import read_history

    kills, starts, cycles = 0, 0, 0
    while kills < args.kills:  # a cycle: start, kill and resume until a resume finishes, then compare
        cycles += 1
        seen = (0, 0)
        subprocess.run(["rm", "-rf", str(cut)], check=True)
        while True:
            if (cut / "checkpoints" / "last.pt").exists():
                cmd = suite("run", "--resume", str(cut))
            else:  # killed before its first checkpoint: start it again
                cmd = suite("run", str(recipe), "--out", str(cut), "--overwrite")
            starts += 1
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if kills < args.kills:
                time.sleep(rng.uniform(0.5, args.max_delay))
            if kills < args.kills and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                now = position(cut / "checkpoints" / "last.pt")
                ok = now is None or now >= seen
                print(f"cycle {cycles} kill {kills:2d}: last.pt position (epoch, batch) {now} "
                      f"({'ok' if ok else 'WENT BACK'})", flush=True)
                if not ok:
                    return 1
                seen = now or seen
                continue
            err = proc.communicate()[1]
            if proc.returncode != 0:
                print(f"a resume failed with {proc.returncode}: {err[-1500:]}")
                return 1
            break
        a, b = (load_file(str(d / "checkpoints" / "best.safetensors")) for d in (whole, cut))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        history = read_history(whole / "history.csv", times=False) == read_history(cut / "history.csv", times=False)
        print(f"cycle {cycles} finished: best weights {'EQUAL' if same else 'DIFFER'} to the uninterrupted run's, "
              f"history {'equal' if history else 'DIFFERS'}", flush=True)
        if not (same and history):
            return 1
    print(f"{kills} kills, {starts} starts, {cycles} cycles: every cycle ended with the uninterrupted run's weights "
          "and history")
    return 0


if __name__ == "__main__":
    sys.exit(main())
