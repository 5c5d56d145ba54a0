"""train.distributed: training under torchrun with 2 CPU processes (gloo) matches one process.

fit() level: each global batch split over 2 ranks gives the one-process step (cached features / prefix
activations), the ranks end bit-identical. Pipeline level: `dvc repro finetune` on the tiny GTSRB fixture re-runs
train_head and finetune under torchrun, writes every output once (one MLflow run per stage) and reaches the
single-process validation accuracy within 2 points."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _support import REPO, serve_directory
from test_e2e import FAST, TINY_SHA, TINY_ZIP, commit, copy_repo, dvc, set_params

pytestmark = pytest.mark.slow
GTSRB = {"data.dataset": "gtsrb", "data.sha256": TINY_SHA,
         "data.known_classes": {12: "priority_road", 13: "give_way", 14: "stop", 17: "no_entry"},
         "split.by_group": False}


def test_fit_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
    script = str(REPO / "tests/_dist_fit.py")
    subprocess.run([sys.executable, script, str(tmp_path / "one")], check=True, timeout=900)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
                    str(tmp_path / "two")], check=True, timeout=900)
    one, r0, r1 = (torch.load(tmp_path / p, weights_only=False) for p in ("one/rank0.pt", "two/rank0.pt", "two/rank1.pt"))
    assert (one["world"], r0["world"], r1["world"]) == (1, 2, 2)
    for kind in ("head", "cached", "fresh"):
        assert all(torch.equal(v, r1[kind]["state"][k]) for k, v in r0[kind]["state"].items()), kind
    for kind in ("head", "cached"):  # no per-step augmentation: the same steps up to float summation order
        for k, v in one[kind]["state"].items():
            assert torch.allclose(v.float(), r0[kind]["state"][k].float(), atol=1e-3), (kind, k)
        assert [round(h["val_acc"], 6) for h in one[kind]["history"]] == \
            [round(h["val_acc"], 6) for h in r0[kind]["history"]]


def _runs(repo: Path) -> dict[str, list[str]]:
    db = sqlite3.connect(repo / "mlflow.db")
    out: dict[str, list[str]] = {}
    for run_uuid, status in db.execute("select run_uuid, status from runs"):
        tag = db.execute("select value from tags where run_uuid=? and key='stage'", (run_uuid,)).fetchone()
        out.setdefault(tag[0] if tag else "", []).append(status)  # untagged: not a stage's run
    db.close()
    return out


@pytest.mark.skipif(not TINY_ZIP.is_file(), reason=f"fixture {TINY_ZIP} not found (CI puts ../shared beside the clone)")
def test_finetune_with_two_processes(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    with serve_directory(TINY_ZIP.parent) as base:
        set_params(repo, {**FAST, **GTSRB, "data.url": f"{base}/GTSRB_tiny.zip"})
        commit(repo, "one process")
        dvc("repro", "finetune", cwd=repo)
    single = {n: json.loads((repo / f"metrics/{n}.json").read_text()) for n in ("head", "finetuned")}
    set_params(repo, {"train.distributed": True, "train.nproc_per_node": 2})
    commit(repo, "two processes")
    out = dvc("repro", "finetune", cwd=repo)
    assert "Running stage 'train_head'" in out and "Running stage 'finetune'" in out, out
    assert out.count("train.distributed: -m torch.distributed.run") == 2, out
    assert out.count("[finetune] epoch 1:") == 1 and out.count("finetune: best epoch") == 1, out  # rank 0 prints
    runs = _runs(repo)
    assert runs["train_head"] == ["FINISHED"] * 2 and runs["finetune"] == ["FINISHED"] * 2, runs  # one per repro
    assert not list((repo / "models/.resume").glob("*.pt"))
    ckpt = torch.load(repo / "models/finetuned.pt", weights_only=True)
    assert "precision" not in ckpt["meta"]  # fp32: the checkpoint meta is as before
    for name, m in single.items():
        dist = json.loads((repo / f"metrics/{name}.json").read_text())
        assert abs(dist["best_val_acc"] - m["best_val_acc"]) <= 0.02, (name, dist, m)
