"""Queued experiments: `dvc exp run --queue` twice, `dvc queue start -j 2`; both finish, both show in
`dvc exp show` and in the repository's MLflow store under their own run names."""

from __future__ import annotations

import json
import sqlite3
import time
import warnings
from pathlib import Path

import pytest

from test_e2e import FAST, commit, copy_repo, dvc, set_params

pytestmark = pytest.mark.slow

LRS = ("0.0005", "0.002")


def _wait_for_queue(repo: Path, n: int, timeout: float = 1200) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=repo)
        done = status.count("Success") + status.count("Failed")
        if done >= n and "Running" not in status and "Queued" not in status:
            return status
        time.sleep(5)
    raise AssertionError(f"queue did not finish in {timeout} s:\n{status}")


def _failure_report(repo: Path, status: str) -> tuple[bool, str]:
    """(did a pipeline stage fail?, the failed tasks' logs and the queue workers' logs)."""
    logs, stage_failed = [], False
    for line in status.splitlines():
        if "Failed" in line:
            name = line.split()[1]
            text = dvc("queue", "logs", name, cwd=repo, check=False)
            stage_failed |= "failed to run" in text or "\nerror: " in text
            logs.append(f"--- dvc queue logs {name} ---\n{text[-6000:]}")
    for out in sorted((repo / ".dvc" / "tmp" / "exps" / "celery").glob("*.out")):
        logs.append(f"--- {out.name} (last 6000 characters) ---\n" + out.read_text(errors="replace")[-6000:])
    return stage_failed, status + "\n" + "\n".join(logs)


def _finished_lrs(repo: Path) -> dict[str, tuple[str, dict]]:
    exps = {}
    for rev in json.loads(dvc("exp", "show", "--json", cwd=repo)):
        for exp in rev.get("experiments") or []:
            data = exp["revs"][0]["data"]
            lr = data["params"]["params.yaml"]["data"]["finetune"]["lr"]
            exps[str(lr)] = (exp["name"], data["metrics"])
    return exps


def _run_queue(repo: Path, lrs: tuple[str, ...]) -> str:
    for lr in lrs:
        dvc("exp", "run", "--queue", "-S", f"finetune.lr={lr}", cwd=repo)
    dvc("queue", "start", "-j", "2", cwd=repo)
    return _wait_for_queue(repo, len(LRS))


def test_two_queued_experiments_run_in_parallel(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    set_params(repo, {**FAST, "data.max_per_class": 30, "train_head.epochs": 5, "retrain.head.epochs": 5,
                      "unknown.train_images": 30, "unknown.valid_images": 10, "unknown.test_images": 20})
    commit(repo, "baseline")
    status = _run_queue(repo, LRS)
    if status.count("Success") != len(LRS):
        stage_failed, report = _failure_report(repo, status)
        if stage_failed:  # one of our stages failed: that is ours to fix
            raise AssertionError(report)
        # DVC's celery queue itself sometimes fails a task with -j > 1 before or after the pipeline runs
        # (treeverse/dvc#10673, open); queue the missing experiment again, once, and say why
        warnings.warn(f"DVC failed a queued task outside the pipeline; queued it again:\n{report}")
        print(report)
        missing = tuple(lr for lr in LRS if str(float(lr)) not in _finished_lrs(repo))
        dvc("queue", "remove", "--failed", cwd=repo, check=False)
        status = _run_queue(repo, missing)
        if status.count("Success") != len(LRS):
            raise AssertionError(_failure_report(repo, status)[1])

    exps = _finished_lrs(repo)
    assert set(exps) == {str(float(lr)) for lr in LRS}, exps
    metrics = [m for _, m in exps.values()]
    for m in metrics:
        assert "metrics/evaluate_retrained.json" in m and "metrics/finetune.json" in m, m.keys()
    # same upstream params: the two concurrent runs trained the same head, bit for bit
    heads = [m["metrics/train_head.json"]["data"] for m in metrics]
    assert heads[0] == heads[1]

    # both in the repository's store (not the throwaway copies), under their own experiment names
    db = sqlite3.connect(repo / "mlflow.db")
    names = {n for (n,) in db.execute("select name from runs where status='FINISHED'")}
    db.close()
    for name, _ in exps.values():
        for stage in ("train_head", "finetune", "retrain", "evaluate_finetuned", "evaluate_retrained"):
            assert f"{name}-{stage}" in names, (name, stage, sorted(names))
