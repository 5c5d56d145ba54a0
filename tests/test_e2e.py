"""End to end: copy the repository into a temporary git repo and run the real DVC pipeline."""

from __future__ import annotations

import csv

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _support import REPO, SHARED, serve_directory

pytestmark = pytest.mark.slow

TINY_ZIP = SHARED / "datasets/gtsrb/tiny/GTSRB_tiny.zip"
TINY_SHA = "f7793ad7148e710a5a023ad812bcfd17b1c4fd7e020e70664480ff3dbcb44e43"
TRAINING_STAGES = ("train_head", "finetune", "retrain")
EVAL_STAGES = ("evaluate_finetuned", "evaluate_retrained")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def sh(args: list[str], cwd: Path, check: bool = True) -> str:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}")
    return out


def dvc(*args: str, cwd: Path, check: bool = True) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd, check)


def copy_repo(dst: Path) -> Path:
    """Tracked and untracked-but-not-ignored files of the working tree, in a fresh git repo."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("data/", "models/", "metrics/", "plots/", "reports/")) \
                and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    sh(["git", "init", "-q"], dst)
    sh(["git", "config", "user.email", "test@example.com"], dst)
    sh(["git", "config", "user.name", "test"], dst)
    return dst


def set_params(repo: Path, changes: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def commit(repo: Path, msg: str) -> None:
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", msg], repo)


# the report stages on few images and draws (each still runs its whole code path): CI time goes to training
LIGHT_REPORTS = {"evaluate.bootstrap": 50, "evaluate.gallery_images": 6, "audit.folds": 2, "audit.gallery_images": 4,
                 "robustness.corruptions": ["white_balance", "noise"], "robustness.max_images": 40}
FAST = {
    "model.input_size": 32,
    "train_head.epochs": 20, "train_head.feature_views": 2,
    "finetune.epochs": 2, "finetune.batch_size": 32,
    "retrain.head.epochs": 20, "retrain.head.feature_views": 2,
    "retrain.finetune.epochs": 1,
    **LIGHT_REPORTS,
}


def declared_outputs(repo: Path) -> list[Path]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return [repo / o["path"] for st in lock["stages"].values() for o in st.get("outs", [])]


def check_mlflow(repo: Path, epochs: dict[str, int]) -> None:
    """A FINISHED run per training/eval stage, with params, and per-epoch val_acc for training stages, all
    nested under one parent run "workspace" that has the params and both models' test metrics."""
    db = sqlite3.connect(repo / "mlflow.db")
    runs, parents = {}, {}
    for run_uuid, status, name in db.execute("select run_uuid, status, name from runs"):
        stage = db.execute("select value from tags where run_uuid=? and key='stage'", (run_uuid,)).fetchone()
        if stage is None:
            parents[run_uuid] = (status, name)
        else:
            runs[stage[0]] = (run_uuid, status, name)
    assert list(parents.values()) == [("FINISHED", "workspace")], parents
    [parent] = parents
    nested = {u for (u,) in db.execute("select run_uuid from tags where key='mlflow.parentRunId' and value=?", (parent,))}
    assert {u for u, _, _ in runs.values()} <= nested, (runs, nested)
    headline = {k for (k,) in db.execute("select key from latest_metrics where run_uuid=?", (parent,))}
    assert {"finetuned.test_accuracy", "retrained.test_accuracy", "retrained.test_macro_f1", "head.best_val_acc"} <= headline
    assert db.execute("select count(*) from params where run_uuid=?", (parent,)).fetchone()[0] >= 5
    for stage in TRAINING_STAGES + EVAL_STAGES:
        assert stage in runs, f"no MLflow run for {stage}: {runs}"
        run_uuid, status, name = runs[stage]
        assert status == "FINISHED", (stage, status)
        assert name == f"workspace-{stage}"
        n_params = db.execute("select count(*) from params where run_uuid=?", (run_uuid,)).fetchone()[0]
        assert n_params >= 5, (stage, n_params)
    for stage, n in epochs.items():
        steps = db.execute("select count(distinct step) from metrics where run_uuid=? and key='val_acc'",
                           (runs[stage][0],)).fetchone()[0]
        assert steps == n, (stage, steps, n)
    db.close()


def test_default_dataset_slice(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    set_params(repo, {**FAST, "data.max_per_class": 40, "unknown.train_images": 40,
                      "unknown.valid_images": 12, "unknown.test_images": 20})
    commit(repo, "baseline")
    out = dvc("repro", cwd=repo)
    for stage in ("download", "split", "train_head", "finetune", "evaluate@finetuned", "add_unknown_class",
                  "retrain", "evaluate@retrained"):
        assert f"Running stage '{stage}'" in out, stage
    for path in declared_outputs(repo):
        assert path.exists(), path
    for name in ("finetuned", "retrained"):
        m = json.loads((repo / f"metrics/evaluate_{name}.json").read_text())
        chance = 1 / (6 if name == "finetuned" else 7)
        assert m["accuracy"] > chance + 0.3, (name, m["accuracy"])
    check_mlflow(repo, {"train_head": 20, "finetune": 2, "retrain": 21})

    again = dvc("repro", cwd=repo)
    assert re.findall(r"Running stage '([^']+)'", again) == [], again
    assert json.loads(dvc("status", "--json", cwd=repo) or "{}") == {}
    # a fresh clone lacks the summary (a DVC cache output, absent from git) and has neither DVC's cache nor its
    # run cache to restore it from: only that stage runs, into the same parent run
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    [md5] = [o["md5"] for o in lock["stages"]["summary"]["outs"] if o["path"] == "reports/summary.json"]
    (repo / "reports/summary.json").unlink()
    (repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()
    shutil.rmtree(repo / ".dvc/cache/runs")
    again = dvc("repro", cwd=repo)
    assert re.findall(r"Running stage '([^']+)'", again) == ["summary"], again
    summary = json.loads((repo / "reports/summary.json").read_text())
    assert summary["retrained.test_accuracy"] == json.loads((repo / "metrics/evaluate_retrained.json").read_text())["accuracy"]
    check_mlflow(repo, {"train_head": 20, "finetune": 2, "retrain": 21})  # the same parent run, no second one

    # exact reruns: the same params give byte-identical metrics files
    before = {p.name: p.read_bytes() for p in sorted((repo / "metrics").glob("*.json"))}
    dvc("repro", "--force", cwd=repo)
    after = {p.name: p.read_bytes() for p in sorted((repo / "metrics").glob("*.json"))}
    assert before == after, [k for k in before if before[k] != after.get(k)]
    commit(repo, "results")

    finetuned = (repo / "models/finetuned.pt").read_bytes()
    exp = dvc("exp", "run", "-S", "finetune.lr_scale=4", cwd=repo)  # finetune lr 0.002
    ran = set(re.findall(r"Running stage '([^']+)'", exp))
    assert "finetune" in ran, exp
    assert not ran & {"download", "split", "train_head", "add_unknown_class"}, ran
    # what follows finetune reruns only if its model changed (checkpoints are byte-identical for equal
    # weights: when no epoch beats the starting head, the new lr leaves models/finetuned.pt as it was)
    downstream = {"retrain", "evaluate@finetuned", "evaluate@retrained"}
    if (repo / "models/finetuned.pt").read_bytes() != finetuned:
        assert downstream <= ran, exp
    else:
        assert not ran & downstream, ran
    diff = dvc("metrics", "diff", "--json", cwd=repo)
    changed = json.loads(diff)
    assert set(changed) <= {"metrics/summary.json"}, diff  # the one DVC metrics file
    if (repo / "models/finetuned.pt").read_bytes() != finetuned:
        assert sh(["git", "status", "--porcelain", "metrics/finetuned.json"], repo).strip(), "finetune's numbers"
    else:  # the starting head was kept: the headline numbers are the same
        assert not changed.get("metrics/summary.json"), diff


@pytest.mark.skipif(not TINY_ZIP.is_file(), reason=f"fixture {TINY_ZIP} not found (CI puts ../shared beside the clone)")
def test_gtsrb_tiny_over_loopback(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    with serve_directory(TINY_ZIP.parent) as base:
        set_params(repo, {**FAST, "data.dataset": "gtsrb", "data.url": f"{base}/GTSRB_tiny.zip",
                          "data.sha256": TINY_SHA,
                          "data.known_classes": {12: "priority_road", 13: "give_way", 14: "stop", 17: "no_entry"},
                          "split.by_group": False,  # the fixture has two tracks per class
                          "unknown.classes": [1, 25], "unknown.train_images": 60,
                          "unknown.valid_images": 30, "unknown.test_images": 30,
                          "unknown.holdout_classes": [38], "unknown.holdout_test_images": 30})
        commit(repo, "gtsrb tiny")
        dvc("repro", cwd=repo)
    index = (repo / "data/raw/index.csv").read_text().splitlines()
    assert len(index) == 421 and (repo / "data/raw/GTSRB_tiny.zip").is_file()
    for path in declared_outputs(repo):
        assert path.exists(), path
    m = json.loads((repo / "reports/finetuned/metrics.json").read_text())
    assert m["accuracy"] > 0.6, m
    assert set(m["per_class"]) == {"priority_road", "give_way", "stop", "no_entry"}
    r = json.loads((repo / "reports/retrained/metrics.json").read_text())
    assert "unknown" in r["per_class"] and r["accuracy"] > 0.5, r
    # every misclassified test image `accuracy` counts (not the held-out classes' unknowns) by its manifest path
    # and track, most confident first
    n_errors = 0
    for name, split, result in (("finetuned", "split", m), ("retrained", "split_unknown", r)):
        rows = {row["path"]: row for row in csv.DictReader(open(repo / f"data/{split}/test.csv"))
                if row.get("origin") != "38"}
        errors = list(csv.DictReader(open(repo / f"reports/{name}/errors.csv")))
        assert len(errors) == round((1 - result["accuracy"]) * len(rows)), name
        n_errors += len(errors)
        for e in errors:
            assert rows[e["path"]]["group"] == e["group"] and rows[e["path"]]["label"] == e["actual"] != e["predicted"]
        assert [float(e["confidence"]) for e in errors] == sorted((float(e["confidence"]) for e in errors), reverse=True)
    assert n_errors > 0  # the rows above were checked
    check_mlflow(repo, {"train_head": 20})
    assert re.findall(r"Running stage '([^']+)'", dvc("repro", cwd=repo)) == []
