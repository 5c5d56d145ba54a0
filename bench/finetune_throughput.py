"""Benchmark 2: fine-tuning throughput through the real data path over the bare model's forward+backward.

Real path (what the finetune stage runs per step): uint8 images -> batched augmentation ->
normalise -> frozen prefix under no_grad -> unfrozen blocks + head forward/backward -> Adam step.
Bare model: the same network with the same frozen/unfrozen split, forward+backward+step on random
float tensors of the same shape (no data path, autograd decides what to track).

    python bench/finetune_throughput.py [--backbone efficientnet_lite0] [--size 64] [--unfreeze 2]
                                        [--images 1024] [--batch 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tlpipe import models  # noqa: E402
from tlpipe.config.phases import Phase  # noqa: E402
from tlpipe.data.splitdir import Data  # noqa: E402
from tlpipe.inference import Preproc  # noqa: E402
from tlpipe.runtime import set_seed  # noqa: E402
from tlpipe.training.loop import fit, set_modes  # noqa: E402

AUG = {"crop_scale_min": 0.8, "rotation": 10, "hflip": 0.0, "color_jitter": 0.2}


def bare(net: models.Net, n: int, batch: int, size: int, unfreeze: int, cl: bool) -> float:
    """Images/s of forward+backward+step on random normalised tensors, same freeze split."""
    set_modes(net, models.freeze(net, unfreeze), False)  # same train/eval modes as the finetune stage
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    xs = torch.randn(batch, 3, size, size)
    if cl:
        net.to(memory_format=torch.channels_last)
        xs = xs.contiguous(memory_format=torch.channels_last)
    ys = torch.randint(0, 4, (batch,))
    t0 = time.perf_counter()
    for _ in range(n // batch):
        loss = loss_fn(net(xs), ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (n // batch) * batch / (time.perf_counter() - t0)


def ours(net: models.Net, n: int, batch: int, size: int, unfreeze: int, cl: bool) -> float:
    """Images/s of one partial fine-tuning epoch (training.loop.fit) over n uint8 images (validation set kept tiny, excluded)."""
    imgs = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    train = Data(imgs, torch.randint(0, 4, (n,)))
    valid = Data(imgs[:batch], train.targets[:batch])
    sp = models.spec("efficientnet_lite0")
    pp = Preproc(sp.mean, sp.std, size, torch.device("cpu"), channels_last=cl)
    if cl:
        net.to(memory_format=torch.channels_last)
    ph = Phase(epochs=1, batch_size=batch, optimizer="adam", lr=1e-4, weight_decay=0.0, momentum=0.9,
               label_smoothing=0.0, scheduler="none", step_size=1, gamma=1.0, unfreeze_blocks=unfreeze,
               bn_train=False)
    times = {}

    def hook(rec):  # noqa: ARG001 - called after the epoch
        times["end"] = time.perf_counter()

    times["start"] = time.perf_counter()
    fit(net, train, valid, ph, pp, AUG, hook)
    return n / (times["end"] - times["start"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--unfreeze", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    print(f"{args.backbone} at {args.size}px, batch {args.batch}, {args.images} images, "
          f"{torch.get_num_threads()} threads\n")
    print("| unfrozen groups | layout | bare fwd+bwd img/s | ours img/s | ours / bare |\n|---:|---|---:|---:|---:|")
    for u in args.unfreeze:
        for cl in (False, True):
            set_seed(0)
            b = bare(models.build(args.backbone, 4, pretrained=False), args.images, args.batch, args.size, u, cl)
            set_seed(0)
            o = ours(models.build(args.backbone, 4, pretrained=False), args.images, args.batch, args.size, u, cl)
            layout = "channels_last" if cl else "contiguous"
            print(f"| {u} | {layout} | {b:.0f} | {o:.0f} | {o / b:.2f} |")


if __name__ == "__main__":
    main()
