"""Benchmark 6: two training processes at once (what `dvc queue start -j 2` does) vs one, by OpenMP wait policy.

Each worker runs the same fixed workload: EfficientNet-Lite0 at 64 px, last 2 block groups unfrozen,
forward+backward+Adam steps over random batches. The table gives wall seconds per worker when it runs
alone and when two run together, under GNU OpenMP's default (threads spin at barriers) and with
OMP_WAIT_POLICY=PASSIVE (threads sleep), and the ratio two-at-once / alone: 2.0 means the cores are
shared fairly, far above 2.0 means spinning threads steal the cores from the other process.

    python bench/concurrency.py [--steps 40] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[1])
from tlpipe import models
from tlpipe.training.loop import set_modes
torch.manual_seed(0)
net = models.build("efficientnet_lite0", 10, pretrained=False).to(memory_format=torch.channels_last)
set_modes(net, models.freeze(net, 2), False)
opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
x = torch.randn(int(sys.argv[3]), 3, 64, 64).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (int(sys.argv[3]),))
t0 = time.perf_counter()
for _ in range(int(sys.argv[2])):
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
print(time.perf_counter() - t0)
"""


def run(n: int, policy: str | None, steps: int, batch: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    src = str(Path(__file__).resolve().parents[1] / "src")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, src, str(steps), str(batch)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, torch threads per process: default; {args.steps} steps of {args.batch} images")
    print(f"{'OMP_WAIT_POLICY':<16} {'alone s':>8} {'two at once s (each)':>22} {'ratio':>6}")
    for policy in (None, "PASSIVE"):
        alone = run(1, policy, args.steps, args.batch)[0]
        t0 = time.perf_counter()
        both = run(2, policy, args.steps, args.batch)
        _ = time.perf_counter() - t0
        print(f"{policy or 'default (spin)':<16} {alone:>8.1f} {both[0]:>10.1f} {both[1]:>10.1f} "
              f"{max(both) / alone:>6.2f}")


if __name__ == "__main__":
    main()
