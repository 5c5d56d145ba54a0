"""Interruption safety: `dvc repro` SIGKILLed at random moments inside every stage, then run to completion,
gives metrics byte-identical to an uninterrupted run's, and no output is ever half-written.

One uninterrupted `dvc repro` (digits slice, tiny params) gives the reference outputs and how long each stage
takes. A fresh copy of the repository is then driven through the pipeline by repeated `dvc repro` runs, each
killed (SIGKILL to its whole process group: DVC and the stage's python) a seeded random time after the banner
of the stage under attack, KILLS_PER_STAGE times per stage. After every kill each declared output is either
absent or identical to the reference (checkpoints compared tensor by tensor). DVC's own leftovers are handled
by DVC itself: the rwlock entry of the dead process is removed with a warning on the next run, and the repo
lock is an fcntl lock the kernel releases. Finally one plain `dvc repro` completes the pipeline.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from test_e2e import FAST, commit, copy_repo, set_params

pytestmark = pytest.mark.slow

SEED = 20240611
MIN_KILLS = 18
KILLS_PER_STAGE = 1
TINY = {**FAST, "data.max_per_class": 40, "unknown.train_images": 40, "unknown.valid_images": 12,
        "unknown.test_images": 20, "train_head.epochs": 8, "retrain.head.epochs": 8}
BANNER = re.compile(r"Running stage '([^']+)'")
TORN = [("dvc.lock' validation failed", "dvc.lock"), ("dvc.lock' is invalid", "dvc.lock"),  # schema / YAML
        ("Unable to read RWLock-file", ".dvc/tmp/rwlock")]


def _env(mlflow_db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{mlflow_db}")
    return env


class Repro:
    """`dvc repro` in its own process group; its output lines, timestamped, arrive on a queue."""

    def __init__(self, repo: Path, env: dict[str, str], args: tuple[str, ...] = ()):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *args], cwd=repo, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic() - self.t0, line.rstrip("\n")))
        self.lines.put(None)

    def next_line(self, timeout: float) -> tuple[float, str] | None:
        item = self.lines.get(timeout=timeout)
        if item is not None:
            self.log.append(item[1])
        return item

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def tail(self) -> str:
        return "\n".join(self.log[-40:])


def reference_run(repo: Path, env: dict[str, str]) -> list[tuple[str, float]]:
    """Run the whole pipeline once; return (stage, seconds from its banner to the next) in run order."""
    run = Repro(repo, env)
    banners: list[tuple[str, float]] = []
    end = None
    while (item := run.next_line(timeout=600)) is not None:
        t, line = item
        if m := BANNER.search(line):
            banners.append((m.group(1), t))
        end = t
    assert run.proc.wait() == 0, run.tail()
    return [(name, (banners[i + 1][1] if i + 1 < len(banners) else end) - t) for i, (name, t) in enumerate(banners)]


def declared_outputs(repo: Path) -> dict[str, list[str]]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))
    return {stage: [o["path"] for o in st.get("outs", [])] for stage, st in lock["stages"].items()}


def _same_checkpoint(a: Path, b: Path) -> bool:
    import torch

    from tlpipe import checkpoint

    ca, cb = checkpoint.load(a), checkpoint.load(b)  # raises on a torn file
    return ca["meta"] == cb["meta"] and ca["state_dict"].keys() == cb["state_dict"].keys() and all(
        torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])


def half_written(repo: Path, ref: Path, outs: list[str]) -> list[str]:
    """Outputs that exist but differ from the reference run's (deterministic, so any difference is damage)."""
    bad = []
    for rel in outs:
        mine, theirs = repo / rel, ref / rel
        if not mine.exists():
            continue
        if theirs.is_dir():
            files = sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*") if p.is_file())
            want = sorted(p.relative_to(theirs).as_posix() for p in theirs.rglob("*") if p.is_file())
            if files != want:
                bad.append(f"{rel}/ holds {sorted(set(files) ^ set(want))[:5]} unlike the reference")
                continue
            pairs = [(mine / f, theirs / f) for f in files]
        else:
            pairs = [(mine, theirs)]
        for a, b in pairs:
            same = _same_checkpoint(a, b) if a.suffix == ".pt" else a.read_bytes() == b.read_bytes()
            if not same:
                bad.append(str(a.relative_to(repo)))
    return bad


def test_sigkill_in_every_stage_then_repro_gives_identical_metrics(tmp_path: Path) -> None:
    started = time.monotonic()
    env = _env(tmp_path / "mlflow.db")
    ref = copy_repo(tmp_path / "reference")
    set_params(ref, TINY)
    commit(ref, "tiny")
    timings = reference_run(ref, env)
    outs = declared_outputs(ref)
    stages = [name for name, _ in timings]
    assert set(stages) == set(outs), (stages, sorted(outs))
    ref_metrics = {p.name: p.read_bytes() for p in sorted((ref / "metrics").glob("*.json"))}
    assert ref_metrics
    reference_seconds = time.monotonic() - started

    repo = copy_repo(tmp_path / "interrupted")
    set_params(repo, TINY)
    commit(repo, "tiny")
    rng = random.Random(SEED)
    per_stage = max(KILLS_PER_STAGE, -(-MIN_KILLS // len(stages)))
    plan = [(name, rng.uniform(0.0, 0.7 * seconds)) for name, seconds in timings for _ in range(per_stage)]
    planned = len(plan)
    landed: dict[str, int] = {}
    kills = []
    torn_locks = 0
    for i, (target, delay) in enumerate(plan):
        # a plain `dvc repro` reaches the target unless an earlier kill landed after it had completed (stage
        # times vary between runs); then the target is rerun on its own, so every stage is attacked
        attempts = [(), ("--force", "--single-item", target)]
        while attempts:
            args = attempts.pop(0)
            run = Repro(repo, env, args)
            current, deadline, ended = None, None, False
            while True:
                wait = 600.0 if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = run.next_line(timeout=wait)
                except queue.Empty:
                    break  # the moment to kill has come
                if item is None:
                    ended = True
                    break  # dvc exited on its own: it must not have failed
                if m := BANNER.search(item[1]):
                    current = m.group(1)
                    if current == target and deadline is None:
                        deadline = time.monotonic() + delay
            # its output ends a moment before the process can be reaped: poll() alone may still say None then
            exited = run.proc.wait(timeout=60) if ended else run.proc.poll()
            run.kill()
            torn = [f for msg, f in TORN if exited not in (None, 0) and msg in run.tail()]
            if torn:
                # DVC writes dvc.lock and .dvc/tmp/rwlock in place: the previous kill tore one. What README
                # tells a user: delete it and rerun (stages then rerun and rewrite identical outputs)
                (repo / torn[0]).unlink()
                torn_locks += 1
                attempts.insert(0, args)
                continue
            assert exited in (None, 0), f"dvc repro failed before the kill ({exited}):\n{run.tail()}"
            if deadline is not None:
                break
        assert deadline is not None, f"stage {target} never started:\n{run.tail()}"
        if exited is None:
            landed[current] = landed.get(current, 0) + 1
            kills.append((target, current, round(delay, 2)))
        damaged = half_written(repo, ref, [o for st in outs.values() for o in st])
        assert damaged == [], f"after a kill in {current} ({delay:.2f} s after {target} began): {damaged}"
        if i == planned - 1:  # the plan grows once: a stage that ran faster than in the reference gets an early kill
            plan += [(name, 0.2 * seconds) for name, seconds in timings if name not in landed]

    assert len(kills) >= MIN_KILLS, kills
    assert set(stages) <= set(landed), f"stages never killed while running: {set(stages) - set(landed)}; {kills}"

    final = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=900)
    assert final.returncode == 0, (final.stdout + final.stderr)[-6000:]
    metrics = {p.name: p.read_bytes() for p in sorted((repo / "metrics").glob("*.json"))}
    assert metrics == ref_metrics, [k for k in ref_metrics if metrics.get(k) != ref_metrics[k]]
    assert half_written(repo, ref, [o for st in outs.values() for o in st]) == []
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)
    assert json.loads(status.stdout or "{}") == {}, status.stdout + status.stderr
    # killed writers' temporaries go when the stage next runs: every killed stage has rerun by now
    leftovers = [p.relative_to(repo).as_posix() for p in repo.rglob("*.tmp") if ".dvc" not in p.parts]
    assert leftovers == [], leftovers
    total = time.monotonic() - started
    print(f"\ninterrupt: {len(kills)} SIGKILLs ({torn_locks} tore DVC's own dvc.lock or rwlock), per stage "
          f"{dict(sorted(landed.items()))}; reference run "
          f"{reference_seconds:.0f} s, whole test {total:.0f} s; stage seconds "
          f"{ {n: round(s, 1) for n, s in timings} }")
