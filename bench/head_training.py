"""Benchmark 1: head training, the textbook loop against tlpipe's decode-once + frozen-feature cache.

Textbook: every epoch, every image is read and decoded with PIL, resized, and pushed through the
frozen backbone (in train mode, as tutorials leave it), and only the head learns. Ours: decode once
into uint8, one eval-mode feature pass, then the head trains on cached features. Both use the same
backbone, input size, data, optimizer and epochs. The floor for both is one feature pass.

    python bench/head_training.py [--archive ...GTSRB_Final_Training_Images.zip] [--size 64]
                                  [--epochs 10 80] [--textbook-epochs 2]

The textbook loop is timed for --textbook-epochs epochs and its per-epoch time scaled to each
--epochs value (marked "scaled" in the table); pass --textbook-epochs 80 to run it all.
"""

from __future__ import annotations


import argparse
import io
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _support import SHARED  # noqa: E402
from tlpipe import models  # noqa: E402
from tlpipe.data import images, manifest, sources  # noqa: E402
from tlpipe.data.transforms import normalize  # noqa: E402
from tlpipe.config.phases import Phase  # noqa: E402
from tlpipe.data.splitdir import Data  # noqa: E402
from tlpipe.inference import Preproc, run_groups  # noqa: E402
from tlpipe.runtime import set_seed  # noqa: E402
from tlpipe.training.loop import fit  # noqa: E402

KNOWN = {"12": 0, "13": 1, "14": 2, "17": 3}


def load_rows(archive: Path, seed: int) -> dict[str, list[dict[str, str]]]:
    rows = [r for r in sources.gtsrb_index(archive) if r["label"] in KNOWN]
    return manifest.split(rows, {"train": 0.8, "valid": 0.1, "test": 0.1}, seed)


def textbook_epoch(net: models.Net, rows, reader: images.Reader, size: int, mean, std, opt, loss_fn, batch: int):
    """One tutorial-style epoch: PIL decode + resize per image, backbone forward in train mode."""
    net.train()
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        arrs = []
        for r in chunk:
            img = Image.open(io.BytesIO(reader.read(r["path"]))).convert("RGB").resize((size, size))
            arrs.append(torch.from_numpy(__import__("numpy").array(img)).permute(2, 0, 1))
        x = normalize(torch.stack(arrs), mean, std)
        y = torch.tensor([KNOWN[r["label"]] for r in chunk])
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(net: models.Net, data: Data, pp: Preproc) -> float:
    logits = net.head(run_groups(net, data.images, pp, None))
    return float((logits.argmax(1) == data.targets).float().mean())


def load(rows, archive: Path, size: int) -> Data:
    arr = images.load_array([r["path"] for r in rows], archive.parent, size)
    return Data(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), torch.tensor([KNOWN[r["label"]] for r in rows]))


def phase(epochs: int) -> Phase:
    return Phase(epochs=epochs, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=0.0, momentum=0.9,
                 label_smoothing=0.0, scheduler="none", step_size=1, gamma=1.0, feature_views=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, default=SHARED / "datasets/gtsrb/GTSRB_Final_Training_Images.zip")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 80])
    ap.add_argument("--textbook-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    split = load_rows(args.archive, args.seed)
    sp = models.spec("efficientnet_lite0")
    pp = Preproc(sp.mean, sp.std, args.size, torch.device("cpu"), channels_last=True)  # as the pipeline runs
    t0 = time.perf_counter()
    train, valid = load(split["train"], args.archive, args.size), load(split["valid"], args.archive, args.size)
    t_decode = time.perf_counter() - t0
    print(f"{len(train.targets)} training and {len(valid.targets)} validation images at {args.size}px, "
          f"{torch.get_num_threads()} threads")

    # the floor: one eval-mode feature pass over the decoded training and validation images
    set_seed(args.seed)
    net = models.build("efficientnet_lite0", 4, pretrained=True)
    run_groups(net, valid.images[:64], pp, None)  # warm-up
    t0 = time.perf_counter()
    run_groups(net, train.images, pp, None)
    run_groups(net, valid.images, pp, None)
    t_pass = time.perf_counter() - t0

    ours = {}
    for ep in args.epochs:
        set_seed(args.seed)
        net = models.build("efficientnet_lite0", 4, pretrained=True)
        t0 = time.perf_counter()
        res = fit(net, train, valid, phase(ep), pp, {})  # unfreeze_blocks 0: the head on cached features
        ours[ep] = (time.perf_counter() - t0, res.history[-1]["val_acc"])

    set_seed(args.seed)
    net = models.build("efficientnet_lite0", 4, pretrained=True)
    models.freeze(net, 0)
    opt = torch.optim.Adam(net.head.parameters(), lr=1e-3)
    reader = images.Reader(args.archive.parent)
    order = torch.randperm(len(split["train"]), generator=torch.Generator().manual_seed(args.seed)).tolist()
    rows = [split["train"][i] for i in order]
    t0 = time.perf_counter()
    for _ in range(args.textbook_epochs):
        textbook_epoch(net, rows, reader, args.size, pp.mean, pp.std, opt, nn.CrossEntropyLoss(), 64)
    per_epoch = (time.perf_counter() - t0) / args.textbook_epochs
    tb_acc = accuracy(net, valid, pp)

    print(f"\ndecode once (train + valid, uint8, {args.size}px): {t_decode:.1f} s; one eval-mode feature pass "
          f"(train + valid): {t_pass:.1f} s; textbook epoch: {per_epoch:.1f} s (measured over "
          f"{args.textbook_epochs} epochs, val acc after them {tb_acc:.4f}, backbone BatchNorm in train mode)\n")
    print("| epochs | textbook s | ours: fit_head s | fit_head / feature pass | ours + decode s "
          "| textbook / (ours + decode) | val acc ours |\n|---:|---:|---:|---:|---:|---:|---:|")
    for ep in args.epochs:
        tb = per_epoch * ep
        mark = "" if ep == args.textbook_epochs else " (scaled)"
        t, acc = ours[ep]
        print(f"| {ep} | {tb:.0f}{mark} | {t:.1f} | {t / t_pass:.2f} | {t + t_decode:.1f} | "
              f"{tb / (t + t_decode):.1f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
