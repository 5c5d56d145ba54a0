"""Benchmark 3: achieved GFLOP/s of the backbone's eval forward pass over this machine's fp32 matmul GFLOP/s.

FLOPs are counted by torch.utils.flop_counter (2 per multiply-add) for one forward pass; the
matmul peak is a 2048x2048 fp32 torch.mm measured in the same run. Also compares channels_last.

    python bench/backbone_efficiency.py [--backbone efficientnet_lite0] [--sizes 64 128 224] [--batch 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tlpipe import models  # noqa: E402


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_of(lambda: torch.mm(a, b), 5) / 1e9


@torch.no_grad()
def forward_flops(net: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops()


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    peak = matmul_gflops()
    net = models.build(args.backbone, 4, pretrained=False).eval()
    print(f"{args.backbone}, batch {args.batch}, {torch.get_num_threads()} threads; "
          f"fp32 matmul peak {peak:.1f} GFLOP/s\n")
    print("| input px | GFLOP/img | layout | img/s | GFLOP/s | / matmul peak |\n|---:|---:|---|---:|---:|---:|")
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size)
        flops = forward_flops(net, x) / args.batch
        for layout in ("contiguous", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            net_l, x_l = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            t = best_of(lambda: net_l(x_l), 3)
            ips = args.batch / t
            print(f"| {size} | {flops / 1e9:.3f} | {layout} | {ips:.0f} | {ips * flops / 1e9:.1f} | "
                  f"{ips * flops / 1e9 / peak:.2f} |")


if __name__ == "__main__":
    main()
