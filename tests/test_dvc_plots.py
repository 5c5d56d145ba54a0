"""dvc.yaml's top-level plots: `dvc plots show` and `dvc plots diff` render every figure from the files the
stages write (written here by the stages' own writers on small fabricated results, in a scratch DVC repo)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from _support import REPO
from tlpipe import evaluation

DVC = [sys.executable, "-m", "dvc"]
KNOWN = ["zero", "one", "two"]


def _top_level_plots() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    return {k: v for entry in spec["plots"] for k, v in entry.items()}


def _write_outputs(root: Path, seed: int) -> None:
    """The CSVs the training and evaluate stages write, for a fake run; `seed` varies the numbers."""
    g = torch.Generator().manual_seed(seed)
    plots = root / "plots"
    for stem, epochs in (("head", 5), ("finetuned", 3), ("retrained", 4)):
        hist = [{"epoch": e, "train_loss": 1.0 / e + seed / 100, "train_acc": 1 - 0.2 / e, "val_loss": 1.1 / e,
                 "val_acc": 1 - 0.25 / e, "lr": 0.001} for e in range(1, epochs + 1)]
        evaluation.write_history_csv(plots / f"{stem}.csv", hist)
    for name, classes in (("finetuned", KNOWN), ("retrained", KNOWN + ["unknown"])):
        target = torch.arange(len(classes)).repeat(10)
        logits = torch.nn.functional.one_hot(target, len(classes)).float() * 2 + torch.randn(len(target), len(classes),
                                                                                             generator=g)
        evaluation.write_confusion_csv(plots / f"confusion_{name}.csv", target, logits, classes)
        per_class = evaluation.compute(target, logits, classes)["per_class"]
        evaluation.write_per_class_csv(plots / f"per_class_{name}.csv", per_class)
        is_known = (torch.arange(40) % 4 != 0).numpy()
        evaluation.write_roc_csv(plots / f"roc_{name}.csv", is_known, torch.randn(40, generator=g).numpy() + is_known)


def _dvc(root: Path, *args: str) -> dict:
    out = subprocess.run([*DVC, *args], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=root, check=True,
                   capture_output=True, timeout=60)


@pytest.fixture
def workspace(tmp_path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git not found")
    root = tmp_path / "ws"
    root.mkdir()
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, root / f)
    _git(root, "init", "-q")
    subprocess.run([*DVC, "init", "-q"], cwd=root, check=True, timeout=120)
    _write_outputs(root, seed=1)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "run 1")
    return root


def _rendered(result: dict, plot_id: str) -> list[dict]:
    """The rows DVC feeds to the plot's vega-lite spec (one list over every revision)."""
    (entry,) = result["data"][plot_id]
    assert entry["type"] == "vega"
    return entry["content"]["data"]["values"]


@pytest.mark.slow  # a few dvc subprocesses: ~10-20 s
def test_plots_show_renders_every_figure(workspace) -> None:
    plots = _top_level_plots()
    # curves per training stage, a confusion matrix and F1 bars per evaluated model, the ROC curves
    for stage in ("train_head", "finetune", "retrain"):
        assert {f"{stage} loss", f"{stage} accuracy"} <= plots.keys()
    for model in ("finetuned", "retrained"):
        assert plots[f"confusion {model}"]["template"].startswith("confusion")
        assert plots[f"f1 {model}"]["template"].startswith("bar_horizontal")
    result = _dvc(workspace, "plots", "show", "--json")
    csv_errors = [e for e in result.get("errors", []) if e["source"].endswith(".csv")]
    assert not csv_errors
    for plot_id, spec in plots.items():
        rows = _rendered(result, plot_id)
        assert rows, plot_id
        assert all(spec["x"] in r for r in rows), plot_id
        for fields in spec["y"].values():
            for f in [fields] if isinstance(fields, str) else fields:
                assert all(f in r for r in rows), (plot_id, f)
        if len(spec["y"]) > 1:  # several files in one figure: every file's rows are there, told apart
            assert {r["filename"] for r in rows} == {Path(f).name for f in spec["y"]}, plot_id
    # the confusion matrix sees every (actual, predicted) row; F1 bars one per class, unknown included
    conf = _rendered(result, "confusion retrained")
    assert len(conf) == 40 and {r["actual"] for r in conf} == set(KNOWN + ["unknown"])
    assert sorted(r["class"] for r in _rendered(result, "f1 retrained")) == sorted(KNOWN + ["unknown"])
    html = workspace / "html"
    subprocess.run([*DVC, "plots", "show", "-o", str(html)], cwd=workspace, check=True, capture_output=True,
                   timeout=300)
    page = (html / "index.html").read_text()
    assert all(spec.get("title", pid) in page for pid, spec in plots.items())


@pytest.mark.slow
def test_plots_diff_compares_two_runs(workspace) -> None:
    _git(workspace, "tag", "run-1")
    _write_outputs(workspace, seed=2)  # another run's results, uncommitted: the workspace
    result = _dvc(workspace, "plots", "diff", "run-1", "--json")
    for plot_id in _top_level_plots():
        (entry,) = result["data"][plot_id]
        assert sorted(entry["revisions"]) == ["run-1", "workspace"], plot_id
        assert {r["rev"] for r in entry["content"]["data"]["values"]} == {"run-1", "workspace"}, plot_id
    loss = [r for r in _rendered(result, "train_head loss") if r["epoch"] == "1" and r["field"] == "train_loss"]
    assert sorted((r["rev"], r["train_loss"]) for r in loss) == [("run-1", "1.01"), ("workspace", "1.02")]
