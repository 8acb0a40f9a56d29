"""The hand-written loop `bench_training.py` compares `suite run` with: ImageFolder, ResNet-18, AdamW, cosine LR,
per-epoch validation accuracy. Prints one line per epoch and the whole process's time at the end.
--tuned: the two process-level changes the suite makes, for a fair second comparison: AdamW's fused kernel and
gc.freeze() before the interpreter's exit."""
import argparse
import time

import torch
import torchvision
from torch import nn
from torchvision import transforms as T

ap = argparse.ArgumentParser()
ap.add_argument("root")
ap.add_argument("--epochs", type=int, default=3)
ap.add_argument("--size", type=int, default=64)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--tuned", action="store_true")
a = ap.parse_args()
torch.manual_seed(0)
tf = T.Compose([T.Resize(a.size), T.CenterCrop(a.size), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406],
                                                                                   [0.229, 0.224, 0.225])])
train = torchvision.datasets.ImageFolder(f"{a.root}/train", tf)
val = torchvision.datasets.ImageFolder(f"{a.root}/val", tf)
train_dl = torch.utils.data.DataLoader(train, batch_size=a.batch, shuffle=True)
val_dl = torch.utils.data.DataLoader(val, batch_size=a.batch * 2)
model = torchvision.models.resnet18(num_classes=len(train.classes))
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01, **({"fused": True} if a.tuned else {}))
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * len(train_dl))
loss_fn = nn.CrossEntropyLoss()
for epoch in range(a.epochs):
    began = time.perf_counter()
    model.train()
    for x, y in train_dl:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in val_dl:
            correct += int((model(x).argmax(1) == y).sum())
    print(f"epoch {epoch + 1} seconds={time.perf_counter() - began:.3f} val_accuracy={correct / len(val):.4f}",
          flush=True)
if a.tuned:
    import gc

    gc.freeze()  # the interpreter's exit then skips collecting the ~340k objects the imports made
