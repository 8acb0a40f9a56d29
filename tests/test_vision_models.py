"""suite.vision.models: registry, head replacement, freeze groups, weight loading (all offline)."""
from __future__ import annotations

import dataclasses
import os
import urllib.error
from collections import OrderedDict

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

from suite.core.groups import check_groups, describe_groups
from suite.errors import UserError
from suite.listing import groups as listed_groups
from suite.vision import models as vm
from suite.vision.transforms import Preprocess


REQUIRED = [
    "resnet18", "resnet34", "resnet50", "vgg11", "vgg16", "vgg16_bn", "efficientnet_b0", "efficientnet_b1",
    "efficientnet_b2", "efficientnet_b3", "mobilenet_v3_small", "mobilenet_v3_large", "convnext_tiny", "vit_b_16",
]
# ViT only runs at its 224 px image size; everything else is forwarded at 32 px.
NO_SMALL_FORWARD = {"vit_b_16"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny forwards are dominated by OpenMP hand-offs (seconds per model on a busy 2-core box); one
    thread keeps them at milliseconds. Restored for other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ids_by_name(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _named(groups) -> OrderedDict:
    """name -> ParamGroup, in model order."""
    return OrderedDict((g.name, g) for g in groups)


def _modules(groups) -> OrderedDict:
    """name -> every module of the group, descendants included (where BatchNorm layers are found)."""
    return OrderedDict((g.name, [m for top in g.modules for m in top.modules()]) for g in groups)


def _assert_groups_cover(model: nn.Module, groups) -> OrderedDict:
    """Independent of check_groups: every parameter in exactly one group, nothing foreign."""
    params = OrderedDict((g.name, g.params) for g in groups)
    names = _ids_by_name(model)
    flat = [id(p) for ps in params.values() for p in ps]
    assert len(flat) == len(set(flat)), "a parameter is in two groups"
    assert set(flat) == set(names), f"uncovered: {[names[i] for i in set(names) - set(flat)][:5]}"
    # a group's modules must not hold parameters attributed elsewhere
    for g in groups:
        own = {id(p) for m in g.modules for p in m.parameters()}
        assert own <= {id(p) for p in g.params}, g.name
    return params


def _state_equal(a: dict, b: dict, keys) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_list_models_has_the_registry():
    names = vm.list_models()
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("arch", vm.list_models())
def test_registry_model_head_groups_forward(arch):
    model, pre = vm.build_model(arch, 3)
    assert isinstance(pre, Preprocess) and (pre.size, pre.resize) == (224, 256)
    groups = _named(vm.model_groups(arch, model))
    params = _assert_groups_cover(model, groups.values())
    assert list(groups)[-1] == "head" and len(groups) >= 3

    # the head group holds the new head, whose last layer has num_outputs outputs
    heads = [m for m in model.modules() if isinstance(m, vm.HeadLinear)]  # no hidden/dropout: one Linear
    assert len(heads) == 1 and heads[0] in groups["head"].modules
    assert heads[0].out_features == 3
    assert {id(p) for p in params["head"]} == {id(p) for p in heads[0].parameters()}

    # input-to-output: the first conv is in the first group, and groups follow the model's layer order
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv in _modules(groups.values())[next(iter(groups))]
    order = {id(p): i for i, p in enumerate(model.parameters())}
    starts = [min(order[id(p)] for p in ps) for ps in params.values()]
    assert starts == sorted(starts) and all(params.values())

    # freezing through the groups reaches the model's own parameters (incl. ViT's raw tensors)
    for name, ps in params.items():
        for p in ps:
            p.requires_grad_(name == "head")
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params["head"]}

    if arch not in NO_SMALL_FORWARD:
        model.eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_vit_stem_holds_raw_parameters_via_view():
    model, _ = vm.build_model("vit_b_16", 4)
    groups = _named(vm.model_groups("vit_b_16", model))
    stem = groups["stem"].params
    assert any(p is model.class_token for p in stem) and any(p is model.encoder.pos_embedding for p in stem)
    assert [n for n in groups][1:3] == ["blocks.0", "blocks.1"] and list(groups)[-2:] == ["norm", "head"]
    # the raw tensors are listed as parameters; the group's modules are the model's own
    mods = _modules(groups.values())["stem"]
    assert model.conv_proj in mods and all(any(m is n for n in model.modules()) for m in mods)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 4)


def test_vgg16_hidden_head_replaces_whole_classifier():
    model, _ = vm.build_model("vgg16", 10, hidden=[4096, 4096])
    head = model.classifier
    assert isinstance(head, vm.Head)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(25088, 4096), (4096, 4096), (4096, 10)]
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    groups = _named(vm.model_groups("vgg16", model))
    assert "classifier" not in groups
    assert list(groups) == [f"features.{i}" for i in range(5)] + ["head"]
    assert groups["head"].modules == [head]
    _assert_groups_cover(model, groups.values())
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_vgg_without_hidden_keeps_classifier_group():
    model, _ = vm.build_model("vgg11", 5)
    groups = _named(vm.model_groups("vgg11", model))
    assert list(groups)[-2:] == ["classifier", "head"]
    assert isinstance(model.classifier[6], vm.HeadLinear) and model.classifier[0].out_features == 4096
    assert [m.out_features for m in groups["classifier"].modules if isinstance(m, nn.Linear)] == [4096, 4096]


def test_make_head_hidden_and_dropout_layout():
    head = vm.make_head(512, [64, 32], 0.5, 7)
    assert [type(m) for m in head] == [
        nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear
    ]
    assert head[1].in_features == 512 and head[4].in_features == 64 and head[-1].out_features == 7
    assert head[0].p == 0.5
    assert type(vm.make_head(8, [], 0.0, 2)) is vm.HeadLinear  # keys stay torchvision's (fc.weight)


@pytest.mark.parametrize("arch, parent", [
    ("resnet18", lambda m: m.fc),
    ("efficientnet_b0", lambda m: m.classifier[1]),
    ("mobilenet_v3_small", lambda m: m.classifier[3]),
])
def test_head_hidden_dropout_shapes(arch, parent):
    model, _ = vm.build_model(arch, 6, hidden=[64], dropout=0.25)
    head = parent(model)
    assert isinstance(head, vm.Head)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[4].in_features == 64 and head[4].out_features == 6
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 6)


@pytest.mark.parametrize("kwargs", [dict(num_outputs=0), dict(dropout=1.0), dict(hidden=[0])])
def test_bad_head_arguments_are_user_errors(kwargs):
    args = dict(num_outputs=3, hidden=(), dropout=0.0) | kwargs
    with pytest.raises(UserError, match="head|num_outputs"):
        vm.build_model("resnet18", **args)


def test_group_helpers_and_check_groups():
    model, _ = vm.build_model("resnet18", 3)
    listed = vm.model_groups("resnet18", model)
    groups = _named(listed)
    assert list(groups) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in _modules(listed)["stem"])
    assert any(isinstance(m, nn.BatchNorm2d) for m in _modules(listed)["layer4"])
    desc = describe_groups(listed)
    assert [n for n, _ in desc] == list(groups)
    assert sum(c for _, c in desc) == sum(p.numel() for p in model.parameters())
    assert dict(desc)["head"] == 512 * 3 + 3

    missing = [g for g in listed if g.name != "layer2"]
    with pytest.raises(RuntimeError, match="in none"):
        check_groups(model, missing)
    twice = [dataclasses.replace(g, params=g.params + list(model.layer2[0].parameters())) if g.name == "layer1" else g
             for g in listed]
    with pytest.raises(RuntimeError, match="in several groups"):
        check_groups(model, twice)


def test_generic_torchvision_fallback_groups():
    model, _ = vm.build_model("mobilenet_v2", 3)  # not in the registry; EfficientNet-like layout
    groups = _named(vm.model_groups("mobilenet_v2", model))
    assert list(groups)[0] == "stem" and list(groups)[-2:] == ["top", "head"]
    _assert_groups_cover(model, groups.values())
    model, _ = vm.build_model("regnet_y_400mf", 3)  # unknown family: top-level children
    groups = _named(vm.model_groups("regnet_y_400mf", model))
    assert list(groups) == ["stem", "trunk_output", "head"]
    _assert_groups_cover(model, groups.values())


def test_unknown_arch_suggests_and_lists():
    with pytest.raises(UserError) as exc:
        vm.build_model("resnet81", 3)
    msg = str(exc.value)
    assert "did you mean" in msg and "resnet18" in msg and "suite ls models" in msg and "vit_b_16" in msg


# ------------------------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def tv_resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def _backbone_keys(state):
    return [k for k in state if not k.startswith("fc.")]


@pytest.mark.parametrize("fmt", ["pth", "wrapped_pt", "safetensors"])
def test_local_weights_load_backbone_and_new_head(tmp_path, tv_resnet18_state, fmt):
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        safetensors.torch.save_file(tv_resnet18_state, str(path))
    else:
        path = tmp_path / ("w.pth" if fmt == "pth" else "w.pt")
        torch.save(tv_resnet18_state if fmt == "pth" else {"model": tv_resnet18_state, "epoch": 3}, path)
    model, pre = vm.build_model("resnet18", 5, weights=str(path))
    got = model.state_dict()
    assert _state_equal(got, tv_resnet18_state, _backbone_keys(tv_resnet18_state))
    assert got["fc.weight"].shape == (5, 512)  # new head, under torchvision's own key
    assert pre == Preprocess()
    report = vm.load_weights_file(model, path, ["fc."], arch="resnet18")
    assert report.head_skipped == 2 and report.loaded == len(_backbone_keys(tv_resnet18_state))


def test_run_checkpoint_reloads_into_other_num_outputs(tmp_path):
    torch.manual_seed(1)
    trained, _ = vm.build_model("resnet18", 3)
    path = tmp_path / "best.safetensors"
    safetensors.torch.save_file(trained.state_dict(), str(path))
    src = trained.state_dict()

    other, _ = vm.build_model("resnet18", 7, weights=str(path))
    got = other.state_dict()
    assert _state_equal(got, src, [k for k in src if not k.startswith("fc.")])
    assert got["fc.weight"].shape == (7, 512)

    same, _ = vm.build_model("resnet18", 3, weights=str(path))  # same task: the head comes back too
    assert _state_equal(same.state_dict(), src, list(src))


def test_head_is_all_or_nothing(tmp_path):
    torch.manual_seed(3)
    trained, _ = vm.build_model("resnet18", 3, hidden=[16])
    path = tmp_path / "best.pth"
    torch.save(trained.state_dict(), path)
    other, _ = vm.build_model("resnet18", 7, hidden=[16])
    report = vm.load_weights_file(other, path, arch="resnet18")
    # fc.0 (512->16) has the same name and shape, but the head as a whole differs: nothing of it loads
    assert report.head_skipped == 4
    assert not torch.equal(other.fc[0].weight, trained.fc[0].weight)
    assert torch.equal(other.layer4[1].conv2.weight, trained.layer4[1].conv2.weight)


def test_weights_from_other_arch_is_user_error(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(UserError, match=r"does not fit arch resnet18.*unexpected layer1\.2\..*check model.arch"):
        vm.build_model("resnet18", 3, weights=str(path))
    path50 = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path50)
    with pytest.raises(UserError, match=r"does not fit arch resnet50.*missing layer1\.0\.conv3\.weight"):
        vm.build_model("resnet50", 3, weights=str(path50))


def test_missing_or_unsupported_weights_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match="nope.pth does not exist"):
        vm.build_model("resnet18", 3, weights=str(missing))
    txt = tmp_path / "w.txt"
    txt.write_text("x")
    with pytest.raises(UserError, match=r"must end with one of \.pth"):
        vm.build_model("resnet18", 3, weights=str(txt))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        vm.build_model("resnet18", 3, weights=str(junk))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A private torch hub dir, and downloads that fail like an offline machine (recording their URLs)."""
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub" / "checkpoints", calls


def test_enum_offline_is_user_error_naming_cache_folder(hub):
    folder, calls = hub
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    with pytest.raises(UserError) as exc:
        vm.build_model("resnet18", 3, weights="IMAGENET1K_V1")
    msg = str(exc.value)
    assert calls == [url]
    assert str(folder) in msg and url in msg and "offline" in msg and "IMAGENET1K_V1" in msg


@pytest.mark.parametrize("arch, weights, expect", [
    ("resnet18", "IMAGENET1K_V1", (224, 256, "bilinear")),
    ("resnet18", "ResNet18_Weights.IMAGENET1K_V1", (224, 256, "bilinear")),
    ("resnet18", "DEFAULT", (224, 256, "bilinear")),
    ("efficientnet_b1", "IMAGENET1K_V1", (240, 256, "bicubic")),
])
def test_enum_from_hub_cache_loads_with_enum_preprocess(hub, arch, weights, expect):
    folder, calls = hub
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    if weights != "DEFAULT":
        enum = enum.__class__[weights.rpartition(".")[2]]
    torch.manual_seed(2)
    state = torchvision.models.get_model(arch).state_dict()
    folder.mkdir(parents=True)
    torch.save(state, folder / os.path.basename(enum.url))

    model, pre = vm.build_model(arch, 4, weights=weights)
    assert calls == []
    assert (pre.size, pre.resize, pre.interpolation) == expect
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406))
    got = model.state_dict()
    head = tuple(vm.head_prefixes_of(model))
    assert _state_equal(got, state, [k for k in state if not k.startswith(head)])


def test_enum_name_errors(hub):
    with pytest.raises(UserError, match="unknown weights 'IMAGENET1K_V9' for resnet18: use one of IMAGENET1K_V1"):
        vm.build_model("resnet18", 3, weights="IMAGENET1K_V9")
    with pytest.raises(UserError, match="are not for resnet18: use ResNet18_Weights"):
        vm.build_model("resnet18", 3, weights="ResNet34_Weights.IMAGENET1K_V1")


# ---------------------------------------------------------------------------------------------- timm


def test_timm_resnet18_builds_and_groups_cover():
    model, pre = vm.build_model("timm:resnet18", 3)
    groups = _named(vm.model_groups("timm:resnet18", model))
    _assert_groups_cover(model, groups.values())
    assert list(groups)[0] == "stem" and list(groups)[-1] == "head"
    assert groups["head"].modules == [model.fc] and isinstance(model.fc, vm.HeadLinear)
    assert model.conv1 in _modules(groups.values())["stem"]
    assert pre.interpolation == "bicubic" and pre.size == 224
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_timm_weights_file_round_trip(tmp_path):
    torch.manual_seed(4)
    trained, _ = vm.build_model("timm:resnet18", 3)
    path = tmp_path / "best.safetensors"
    safetensors.torch.save_file(trained.state_dict(), str(path))
    other, _ = vm.build_model("timm:resnet18", 5, weights=str(path))
    src, got = trained.state_dict(), other.state_dict()
    assert _state_equal(got, src, [k for k in src if not k.startswith("fc.")])
    assert got["fc.weight"].shape == (5, 512)
    with pytest.raises(UserError, match="does not fit arch timm:resnet34"):
        vm.build_model("timm:resnet34", 3, weights=str(path))


def test_describe_groups_without_model_builds_one():
    desc = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in listed_groups("resnet18", 1000)}
    assert desc["head"] == 512 * 1000 + 1000 and desc["stem"] == 64 * 3 * 7 * 7 + 2 * 64


def test_timm_hidden_head_and_raw_params():
    model, _ = vm.build_model("timm:vit_tiny_patch16_224", 2, hidden=[8])
    groups = _named(vm.model_groups("timm:vit_tiny_patch16_224", model))
    params = _assert_groups_cover(model, groups.values())
    assert any(p is model.cls_token for p in params["stem"])
    assert list(groups)[-2:] == ["top", "head"] and model.head[-1].out_features == 2


def test_timm_unknown_name():
    with pytest.raises(UserError, match="unknown timm model 'resnet81'.*resnet18"):
        vm.build_model("timm:resnet81", 3)
