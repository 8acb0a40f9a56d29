"""How DDP learns which parameters a step uses, when a stage freezes most of the model: the suite's
``static_graph=True`` against ``find_unused_parameters=True`` (the other way to survive a trainable parameter a
forward skips) and plain DDP, per optimizer step, under torchrun with gloo on the CPU.

    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/bench_ddp_graph.py --out /tmp/ddp.json

Models as the suite builds them (random init): ResNet-18 at 64 px, batch 16 per rank, with the head alone
trainable (the usual first stage) and with everything trainable; wav2vec2-tiny on 1 s clips, batch 4 per rank,
everything trainable. Plain DDP fails at a stage's second step where a trainable parameter sits out a forward (none
of these does; the except branch below records such a failure). Each variant: a fresh DDP wrapper, 3 warm-up steps, then --steps timed; the variants
alternate over --rounds; medians reported by rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel as DDP

from suite.core.groups import group_names, set_trainable
from suite.speech import wav2vec2
from suite.vision import models as vm

VARIANTS = {"static_graph": dict(static_graph=True), "find_unused_parameters": dict(find_unused_parameters=True),
            "plain": {}}


def cases():
    net, _ = vm.build_model("resnet18", 10, "none")
    groups = vm.model_groups("resnet18", net)
    x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
    loss = lambda m: torch.nn.functional.cross_entropy(m(x), y)  # noqa: E731
    yield "resnet18 head only", net, groups, group_names(groups)[-1:], loss
    yield "resnet18 all", net, groups, group_names(groups), loss
    w = wav2vec2.build_model("wav2vec2-tiny", 5, "none", ctc=False)
    wg = wav2vec2.groups(w)
    a, t = torch.randn(4, 16000), torch.randint(0, 5, (4,))
    yield "wav2vec2-tiny all", w, wg, group_names(wg), lambda m: torch.nn.functional.cross_entropy(m(a).logits, t)


def timed(model, opt, loss, steps: int) -> float:
    for _ in range(3):
        loss(model).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    began = time.perf_counter()
    for _ in range(steps):
        loss(model).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - began) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="/tmp/bench-ddp-graph.json")
    a = ap.parse_args()
    td.init_process_group("gloo")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for name, model, groups, trainable, loss in cases():
        model.train()
        set_trainable(groups, trainable)
        params = [p for p in model.parameters() if p.requires_grad]
        seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
        failed: dict[str, str] = {}
        for _ in range(a.rounds):
            for variant, kw in VARIANTS.items():
                if variant in failed:
                    continue
                ddp = DDP(model, **kw)
                opt = torch.optim.SGD(params, lr=1e-4)
                try:
                    seconds[variant].append(timed(ddp, opt, loss, a.steps))
                except RuntimeError as e:  # plain DDP with a skipped trainable parameter
                    failed[variant] = str(e).splitlines()[0][:160]
                    td.barrier()
        row = {"case": name, "trainable_tensors": len(params), "of": len(list(model.parameters()))}
        for variant in VARIANTS:
            row[variant] = failed.get(variant) or round(statistics.median(seconds[variant]) * 1000, 1)
        rows.append(row)
    if td.get_rank() == 0:
        doc = {"command": "python -m torch.distributed.run --standalone --nproc-per-node 2 "
                          f"benchmarks/bench_ddp_graph.py --rounds {a.rounds} --steps {a.steps}", "unit": "ms per optimizer step (median)",
               "processes": td.get_world_size(), "threads_per_process": 1, "machine": platform.processor() or
               platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__, "rows": rows}
        text = json.dumps(doc, indent=1)
        print(text)
        with open(a.out, "w") as f:
            f.write(text + "\n")
    td.destroy_process_group()


if __name__ == "__main__":
    main()
