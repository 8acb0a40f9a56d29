"""The hand-written loop `bench_training.py` compares `suite run` with: ImageFolder, ResNet-18, AdamW, cosine LR,
per-epoch validation accuracy. Prints one line per epoch and the whole process's time at the end.
--tuned: the three process-level changes the suite makes, for a fair second comparison: AdamW's fused kernel,
torch imported with the cyclic collector off (then frozen) and gc.freeze() before the interpreter's exit."""
import argparse
import gc
import sys
import time

if "--tuned" in sys.argv:
    gc.disable()  # the imports' objects: no full collections while they are made
import torch
import torchvision
from torch import nn
from torchvision import transforms as T

if "--tuned" in sys.argv:
    gc.freeze()
    gc.enable()

ap = argparse.ArgumentParser()
ap.add_argument("root")
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--size", type=int, default=64)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--tuned", action="store_true")
ap.add_argument("--device", default="cpu")  # cuda: bf16 autocast training, channels_last, pinned memory, 8 workers
a = ap.parse_args()
torch.manual_seed(0)
tf = T.Compose([T.Resize(a.size), T.CenterCrop(a.size), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406],
                                                                                   [0.229, 0.224, 0.225])])
train = torchvision.datasets.ImageFolder(f"{a.root}/train", tf)
val = torchvision.datasets.ImageFolder(f"{a.root}/val", tf)
gpu = a.device == "cuda"
dl = {"num_workers": 8, "pin_memory": True, "persistent_workers": True} if gpu else {}
train_dl = torch.utils.data.DataLoader(train, batch_size=a.batch, shuffle=True, **dl)
val_dl = torch.utils.data.DataLoader(val, batch_size=a.batch * 2, **dl)
fmt = torch.channels_last if gpu else torch.contiguous_format
model = torchvision.models.resnet18(num_classes=len(train.classes)).to(a.device, memory_format=fmt)
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, **({"fused": True} if a.tuned else {}))
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * len(train_dl))
loss_fn = nn.CrossEntropyLoss()
for epoch in range(a.epochs):
    began = time.perf_counter()
    model.train()
    for x, y in train_dl:
        x, y = x.to(a.device, non_blocking=True, memory_format=fmt), y.to(a.device, non_blocking=True)
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=gpu):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in val_dl:
            out = model(x.to(a.device, non_blocking=True, memory_format=fmt))  # fp32, as the suite evaluates
            correct += int((out.argmax(1).cpu() == y).sum())
    print(f"epoch {epoch + 1} seconds={time.perf_counter() - began:.3f} val_accuracy={correct / len(val):.4f}",
          flush=True)
if a.tuned:
    gc.freeze()  # the interpreter's exit then skips collecting the ~340k objects the imports made
