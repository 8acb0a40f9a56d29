"""Faster R-CNN under our loop: groups, the BatchNorm policy, box augmentation, a tiny end-to-end run."""
import json

import pytest
import torch
from safetensors.torch import save_file
from torchvision import tv_tensors
from torchvision.ops.misc import FrozenBatchNorm2d

from suite.detection import frcnn
from suite.runner import run

LABELS = ["circle", "square", "triangle"]
ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _norms(model):
    body = model.backbone.body
    return ([m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)],
            [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d)])


@pytest.mark.parametrize("arch", [ARCH, "fasterrcnn_resnet50_fpn_v2"])
def test_groups_cover_the_model_and_end_with_the_new_box_predictor(arch):
    model = frcnn.build_model(arch, LABELS, "none")
    groups = frcnn.groups(model)
    names = [g.name for g in groups]
    assert names[:2] == ["backbone.stem", "backbone.layer1"] and names[-4:] == ["fpn", "rpn", "roi_heads", "head"]
    assert "backbone.layer4" in names
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert model.roi_heads.box_predictor.cls_score.out_features == len(LABELS) + 1


def test_batchnorm_frozen_only_for_pretrained_backbones(tmp_path):
    scratch = frcnn.build_model(ARCH, LABELS, "none")
    bn, frozen = _norms(scratch)
    assert bn and not frozen  # from scratch the backbone's BatchNorm must learn (torchvision PR 5443)
    file = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in scratch.state_dict().items()}, str(file))
    tuned = frcnn.build_model(ARCH, ["a", "b"], str(file))  # other classes: a new box predictor
    bn, frozen = _norms(tuned)
    assert frozen and not bn
    assert torch.equal(tuned.backbone.body["0"][0].weight, scratch.backbone.body["0"][0].weight)
    assert tuned.roi_heads.box_predictor.cls_score.out_features == 3


@pytest.mark.parametrize("seed", range(6))
def test_box_augmentation_moves_boxes_with_the_pixels(seed):
    torch.manual_seed(seed)
    h, w = 120, 160
    boxes = torch.tensor([[20.0, 30.0, 70.0, 90.0], [100.0, 10.0, 150.0, 50.0]])
    mask = torch.zeros(2, h, w, dtype=torch.uint8)  # one mask per box: geometry follows, colour ops do not
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        mask[i, y1:y2, x1:x2] = 1
    image = tv_tensors.Image(torch.randint(0, 255, (3, h, w), dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
              "labels": torch.tensor([1, 2]), "masks": tv_tensors.Mask(mask)}
    out_img, out = frcnn.train_transforms("standard")(image, target)
    assert out_img.dtype == torch.float32 and out_img.shape[-2:] == out["masks"].shape[-2:]
    for box, m in zip(out["boxes"], out["masks"]):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert len(xs), "a kept box must keep pixels"
        expected = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(box, expected, atol=2.0), (box, expected)


def test_tiny_run_trains_and_evaluates(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
name: frcnn-tiny
task: detection
model: {{arch: {ARCH}, weights: none}}
data:
  format: synthetic:shapes
  root: {tmp_path / 'data'}
  synthetic: {{classes: {LABELS}, train_per_class: 2, val_per_class: 1, size: 64, seed: 0, max_objects: 2}}
  image_size: 64
  augment: light
schedule:
  - {{epochs: 1, train: head, lr: 0.01}}
  - {{epochs: 1, train: [roi_heads, head], lr: 0.005}}
optim: {{name: sgd, weight_decay: 0.0001}}
train: {{batch_size: 2, seed: 0}}
export: {{onnx: true, opset: 17, quantize: [int8-static, int8-dynamic]}}
bench: {{batch_sizes: []}}
""")
    result = run(recipe, out=tmp_path / "run")
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val/map50_95" in history[0]
    assert set(result.metrics["val"]) >= {"val/map50", "val/map50_95", "val/mar100"}
    assert (tmp_path / "run" / "plots" / "predictions_val.png").is_file()
    # TorchScript export, batch 1 and any H/W; int8-static is refused for this graph, int8-dynamic is verified
    meta = json.loads((tmp_path / "run" / "export" / "model.json").read_text())
    assert meta["input"]["shape"] == [3, "height", "width"] and meta["postprocess"]["type"] == "boxes"
    assert set(meta["variants"]) == {"fp32", "int8-dynamic"} and meta["exporter"] == "torch.onnx torchscript"
    verify = json.loads((tmp_path / "run" / "export" / "verify.json").read_text())
    assert verify["passed"] and verify["variants"]["fp32"]["tensor"]["shapes"][0]["max_abs_diff"] <= 1e-4
