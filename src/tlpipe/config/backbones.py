"""Backbone names and their block-group counts, without importing torch (params validation uses this).

models.REGISTRY builds each backbone as a list of block groups; tests/test_failures.py checks these
counts against the built networks, so the two cannot drift apart.
"""

from __future__ import annotations

BLOCK_GROUPS: dict[str, int] = {
    "efficientnet_lite0": 9,  # stem, 7 block stages, head conv
    "efficientnet_lite1": 9,
    "efficientnet_lite2": 9,
    "resnet18": 5,  # stem, layer1..layer4
    "resnet34": 5,
    "resnet50": 5,
    "mobilenet_v2": 19,  # torchvision features[i]
    "mobilenet_v3_large": 17,
    "efficientnet_b0": 9,
    "vgg16": 6,  # five conv+pool groups, then the classifier's hidden layers
}
