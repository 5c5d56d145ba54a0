"""Benchmark: the whole pipeline on a dataset preset, wall time and peak RSS per stage.

Copies the repository to a temporary git repo, applies a preset (default gtsrb), serves the
archive over loopback (the full GTSRB mirror in ../shared by default), downloads once, then runs
every stage on its own (`dvc repro -s <stage>`) and prints a table.

    python bench/pipeline.py [--preset gtsrb] [--archive ../shared/datasets/gtsrb/GTSRB_Final_Training_Images.zip]
                             [-S key=value ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _support import REPO, SHARED, serve_directory  # noqa: E402

STAGES = ["split", "add_unknown_class", "decode@split", "decode@split_unknown", "train_head", "finetune",
          "retrain", "evaluate@finetuned", "evaluate@retrained"]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Run a command; return wall seconds, peak RSS (GiB) of it and its children, output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-4000:]}")
    return wall, usage.ru_maxrss / 2**20, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gtsrb")
    ap.add_argument("--archive", type=Path, default=SHARED / "datasets/gtsrb/GTSRB_Final_Training_Images.zip")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="params override key=value")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="tlpipe-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    from test_e2e import commit, copy_repo, set_params  # the same copy the end-to-end test makes

    repo = copy_repo(work / "repo")
    py = sys.executable
    subprocess.run([py, "-m", "tlpipe.config.presets", args.preset], cwd=repo, env={**env, "PYTHONPATH": str(repo / "src")},
                   check=True)
    with serve_directory(args.archive.parent) as base:
        sets = [f"data.url={base}/{args.archive.name}", *args.sets]
        set_params(repo, {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in sets)})
        commit(repo, "bench")
        wall, rss, _ = run([py, "-m", "dvc", "repro", "-s", "download"], repo, env)
    rows = [("download (loopback)", wall, rss)]
    for stage in STAGES:
        wall, rss, _ = run([py, "-m", "dvc", "repro", "-s", stage], repo, env)
        rows.append((stage, wall, rss))
    total = sum(w for _, w, _ in rows[1:])
    print(f"\npreset {args.preset}, overrides {args.sets or 'none'}; repo {repo}\n")
    print("| stage | wall s | peak RSS GiB |\n|---|---:|---:|")
    for name, wall, rss in rows:
        print(f"| {name} | {wall:.1f} | {rss:.2f} |")
    print(f"| **total without download** | **{total:.1f}** | |")
    for name in ("finetuned", "retrained"):
        m = json.loads((repo / f"reports/{name}/metrics.json").read_text())
        print(f"test accuracy {name}: {m['accuracy']:.4f} (n={m['n_images']}), macro-F1 {m['macro_f1']:.4f}")



if __name__ == "__main__":
    main()
