"""Benchmark: the whole pipeline on a dataset preset, wall time and peak RSS per stage; optionally beside
another checkout (e.g. a `git worktree` of an older commit), both in one run, one after the other.

Copies the repository (and the baseline checkout) to a temporary git repo, applies a preset (default gtsrb),
serves the archive over loopback (the full GTSRB mirror in ../shared by default; none for `--preset digits`,
the default run's bundled data), downloads once, then runs
every stage of that checkout's dvc.yaml on its own (`dvc repro -s <stage>`, dependencies first) and
prints a table; with --baseline, the two side by side and the ratio of the totals (download left out).

    python bench/pipeline.py [--preset gtsrb] [--archive ../shared/datasets/gtsrb/GTSRB_Final_Training_Images.zip]
                             [-S key=value ...] [--keep DIR] [--baseline OTHER_CHECKOUT]
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


ORDER = """
import networkx as nx
from dvc.repo import Repo
repo = Repo(".")
order = {s.addressing: i for i, s in enumerate(repo.index.stages)}
for s in nx.lexicographical_topological_sort(repo.index.graph.reverse(), key=lambda s: order[s.addressing]):
    print(s.addressing)
"""


def stages(repo: Path, env: dict[str, str]) -> list[str]:
    """Every stage after download, dependencies first, ties in dvc.yaml order (`dvc repro --dry` cannot list
    them before the data exists: it stops at the first stage whose dependency is not there yet)."""
    out = subprocess.run([sys.executable, "-c", ORDER], cwd=repo, env=env, capture_output=True, text=True,
                         check=True).stdout
    return [n for n in out.split() if n != "download"]


def bench(source: Path, work: Path, preset: str, archive: Path | None, sets: list[str], env: dict[str, str]) -> dict:
    """One checkout's pipeline: {stage: (wall s, peak RSS GiB)} and its test accuracies (archive None: the
    preset's dataset comes with the install, as digits does)."""
    from test_e2e import commit, set_params  # the same copy the end-to-end test makes

    repo = copy_tree(source, work)
    py = sys.executable
    module = "tlpipe.config.presets" if (repo / "src/tlpipe/config/presets.py").is_file() else "tlpipe.presets"  # older
    subprocess.run([py, "-m", module, preset], cwd=repo, env={**env, "PYTHONPATH": str(repo / "src")}, check=True)
    if archive is None:  # a bundled dataset (digits): nothing to serve
        set_params(repo, {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in sets)})
        commit(repo, "bench")
        rows = {"download (bundled)": run([py, "-m", "dvc", "repro", "-s", "download"], repo, env)[:2]}
    else:
        with serve_directory(archive.parent) as base:
            overrides = [f"data.url={base}/{archive.name}", *sets]
            set_params(repo, {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in overrides)})
            commit(repo, "bench")
            rows = {"download (loopback)": run([py, "-m", "dvc", "repro", "-s", "download"], repo, env)[:2]}
    for stage in stages(repo, env):
        rows[stage] = run([py, "-m", "dvc", "repro", "-s", stage], repo, env)[:2]
    acc = {}
    for name in ("finetuned", "retrained"):
        for rel in (f"reports/{name}/metrics.json", f"metrics/evaluate_{name}.json"):  # new layout, then old
            if (repo / rel).is_file():
                m = json.loads((repo / rel).read_text())
                acc[name] = f"{m['accuracy']:.4f} (n={m.get('n_images', '?')})"
                break
    return {"rows": rows, "acc": acc, "repo": repo}


def copy_tree(source: Path, work: Path) -> Path:
    """test_e2e.copy_repo of `source` (its tracked and untracked-but-not-ignored files) into work/repo."""
    import test_e2e

    here = test_e2e.REPO
    try:
        test_e2e.REPO = source.resolve()
        return test_e2e.copy_repo(work / "repo")
    finally:
        test_e2e.REPO = here


def _total(rows: dict) -> float:
    return sum(w for k, (w, _) in rows.items() if not k.startswith("download"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gtsrb")
    ap.add_argument("--archive", type=Path, default=SHARED / "datasets/gtsrb/GTSRB_Final_Training_Images.zip")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="params override key=value")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it")
    ap.add_argument("--baseline", type=Path, help="another checkout to run the same way, first (e.g. a worktree)")
    args = ap.parse_args()
    if args.preset == "digits":  # scikit-learn's bundled images: no archive to serve
        args.archive = None
    work = args.keep or Path(tempfile.mkdtemp(prefix="tlpipe-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    runs = {}
    if args.baseline:
        runs["baseline"] = bench(args.baseline, work / "baseline", args.preset, args.archive, args.sets, env)
    runs["this"] = bench(REPO, work / "this", args.preset, args.archive, args.sets, env)
    print(f"\npreset {args.preset}, overrides {args.sets or 'none'}; work {work}\n")
    names = list(dict.fromkeys(k for r in runs.values() for k in r["rows"]))
    print("| stage | " + " | ".join(f"{n} wall s | {n} peak RSS GiB" for n in runs) + " |")
    print("|---|" + "---:|---:|" * len(runs))
    for name in names:
        cells = [f"{r['rows'][name][0]:.1f} | {r['rows'][name][1]:.2f}" if name in r["rows"] else "- | -"
                 for r in runs.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| **total without download** | " + " | ".join(f"**{_total(r['rows']):.1f}** | " for r in runs.values()) + "|")
    if args.baseline:
        this, base = runs["this"]["rows"], runs["baseline"]["rows"]
        both = [k for k in base if k in this and not k.startswith("download")]
        same = sum(this[k][0] for k in both), sum(base[k][0] for k in both)
        print(f"\nratio this / baseline (total without download): {_total(this) / _total(base):.2f}; over the "
              f"{len(both)} stages both have: {same[0]:.1f} / {same[1]:.1f} s = {same[0] / same[1]:.2f}; the stages "
              f"only this has: {_total(this) - same[0]:.1f} s")
    for n, r in runs.items():
        print(f"{n}: peak RSS {max(v[1] for v in r['rows'].values()):.2f} GiB; test accuracy {r['acc']}")


if __name__ == "__main__":
    main()
