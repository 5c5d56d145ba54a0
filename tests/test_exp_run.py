"""`dvc exp run -S train.lr=0.0005` on the tiny GTSRB fixture served over loopback: the one shared `train`
section reruns every training stage (and what their models feed), nothing before them; the same experiment run
again is a new MLflow parent run with its metrics."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from _support import serve_directory
from test_e2e import FAST, TINY_SHA, TINY_ZIP, commit, copy_repo, dvc, set_params, sh

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not TINY_ZIP.is_file(), reason=f"fixture {TINY_ZIP} not found")]

QUICK = {"evaluate.bootstrap": 20, "evaluate.baseline_size": 0, "robustness.corruptions": ["noise"],
         "robustness.max_images": 20, "retrain.finetune.prefix_views": 1, "finetune.prefix_views": 1}
GTSRB = {"data.dataset": "gtsrb", "data.sha256": TINY_SHA,
         "data.known_classes": {12: "priority_road", 13: "give_way", 14: "stop", 17: "no_entry"},
         "split.by_group": False, "unknown.classes": [1, 25], "unknown.train_images": 60,
         "unknown.valid_images": 30, "unknown.test_images": 30, "unknown.holdout_classes": [38],
         "unknown.holdout_test_images": 30}
TRAINING = {"train_head", "finetune", "retrain", "evaluate@finetuned", "evaluate@retrained"}
BEFORE_TRAINING = {"download", "split", "decode@split", "decode@split_unknown", "add_unknown_class"}


def _parent_metrics(repo: Path, exp: str) -> set[str]:
    """The metric keys of the MLflow parent run of DVC experiment `exp` (tagged dvc_exp_name, no stage tag)."""
    db = sqlite3.connect(repo / "mlflow.db")
    try:
        [(run,)] = db.execute("select run_uuid from tags where key='dvc_exp_name' and value=? and run_uuid not in "
                              "(select run_uuid from tags where key='stage')", (exp,)).fetchall()
        return {k for (k,) in db.execute("select key from latest_metrics where run_uuid=?", (run,))}
    finally:
        db.close()


def test_train_lr_reruns_every_training_stage_and_nothing_before(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    with serve_directory(TINY_ZIP.parent) as base:
        set_params(repo, {**FAST, **QUICK, **GTSRB, "data.url": f"{base}/GTSRB_tiny.zip"})
        commit(repo, "tiny gtsrb")
        first = dvc("repro", cwd=repo)
        assert TRAINING | BEFORE_TRAINING <= set(re.findall(r"Running stage '([^']+)'", first)), first
        commit(repo, "results")
        exp = dvc("exp", "run", "-S", "train.lr=0.0005", cwd=repo)
    ran = set(re.findall(r"Running stage '([^']+)'", exp))
    assert TRAINING <= ran, exp
    assert not ran & BEFORE_TRAINING, ran
    changed = json.loads(dvc("metrics", "diff", "--json", cwd=repo))
    # the one DVC metrics file: the retrained model's head trains afresh at the new lr, so its test numbers move
    assert set(changed) == {"metrics/summary.json"} and changed["metrics/summary.json"], changed
    assert {"rt_acc", "rt_auroc"} & set(changed["metrics/summary.json"]), changed
    # every training stage's own numbers are DVC outputs in git: the head's changed with its lr
    assert sh(["git", "diff", "--name-only", "HEAD", "--", "metrics/head.json"], repo).strip() == "metrics/head.json"
    shown = dvc("params", "diff", "--json", cwd=repo)
    lr = json.loads(shown)["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (0.001, 0.0005), shown

    # the same experiment again, the workspace restored first: a new DVC experiment, so a new MLflow parent run,
    # and summary runs again to log its metrics there (DVC's run-cache would restore summary's outputs instead,
    # "Stage 'summary' is cached", and leave that parent run empty)
    sh(["git", "checkout", "--", "."], repo)
    dvc("checkout", cwd=repo)
    again = dvc("exp", "run", "-S", "train.lr=0.0005", cwd=repo)
    assert "Running stage 'summary'" in again and "Stage 'summary' is cached" not in again, again
    names = re.findall(r"Ran experiment\(s\): (\S+)", exp) + re.findall(r"Ran experiment\(s\): (\S+)", again)
    assert len(set(names)) == 2, names
    for name in names:
        headline = _parent_metrics(repo, name)
        assert {"finetuned.test_accuracy", "retrained.test_accuracy", "head.best_val_acc"} <= headline, (name, headline)

