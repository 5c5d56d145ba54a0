"""Fixed cost of each stage before any work: imports + argparse (`python stages/<stage>.py --help`).

    python bench/startup.py [--baseline /path/to/old/checkout] [--repeats 5]

Runs every stage script of this checkout (and of the baseline checkout, alternating, so both see the same
machine) and prints the median wall time per stage and the ratio. Also lists the five slowest imports of a
training stage (`python -X importtime`). Measure with nothing else running."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "split", "decode", "train_head", "finetune", "add_unknown_class", "retrain", "evaluate")


def wall(repo: Path, stage: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(repo / "stages" / f"{stage}.py"), "--help"], cwd=repo, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def slowest_imports(repo: Path, stage: str, n: int = 5) -> list[tuple[float, str]]:
    out = subprocess.run([sys.executable, "-X", "importtime", str(repo / "stages" / f"{stage}.py"), "--help"],
                         cwd=repo, capture_output=True, text=True, check=True).stderr
    rows = []
    for line in out.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = (x.strip() for x in line[len("import time:"):].split("|"))
            if cum.isdigit() and name.count(".") == 0 and not name.startswith(" "):
                rows.append((int(cum) / 1e6, name))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another checkout of the project (e.g. a git worktree)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    repos = [REPO] + ([args.baseline] if args.baseline else [])
    times = {(r, s): [] for r in repos for s in STAGES}
    for _ in range(args.repeats):
        for s in STAGES:
            for r in repos:
                times[r, s].append(wall(r, s))
    print("| stage | this checkout s | baseline s | ratio |\n|---|---:|---:|---:|")
    for s in STAGES:
        now = statistics.median(times[REPO, s])
        base = statistics.median(times[args.baseline, s]) if args.baseline else float("nan")
        print(f"| {s} | {now:.2f} | {base:.2f} | {now / base:.2f} |")
    print("\nslowest top-level imports of train_head (s, cumulative):",
          ", ".join(f"{name} {t:.2f}" for t, name in slowest_imports(REPO, "train_head")))


if __name__ == "__main__":
    main()
