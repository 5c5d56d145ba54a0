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
from tlpipe.evaluation import metrics, plots
from tlpipe.evaluation.robustness_stage import write_csv as write_robustness_csv
from tlpipe.training.lr_find import Sweep, rates

DVC = [sys.executable, "-m", "dvc"]
KNOWN = ["zero", "one", "two"]


def _top_level_plots() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    return {k: v for entry in spec["plots"] for k, v in entry.items()}


def _write_outputs(root: Path, seed: int) -> None:
    """The CSVs the training and evaluate stages write, for a fake run; `seed` varies the numbers."""
    g = torch.Generator().manual_seed(seed)
    out = root / "plots"
    for stem, epochs in (("head", 5), ("finetuned", 3), ("retrained", 4)):
        hist = [{"epoch": e, "train_loss": 1.0 / e + seed / 100, "train_acc": 1 - 0.2 / e, "val_loss": 1.1 / e,
                 "val_acc": 1 - 0.25 / e, "lr": 0.001} for e in range(1, epochs + 1)]
        plots.write_history_csv(out / f"{stem}.csv", hist)
    for name, classes in (("finetuned", KNOWN), ("retrained", KNOWN + ["unknown"])):
        target = torch.arange(len(classes)).repeat(10)
        logits = torch.nn.functional.one_hot(target, len(classes)).float() * 2 + torch.randn(len(target), len(classes),
                                                                                             generator=g)
        plots.write_confusion_csv(out / f"confusion_{name}.csv", target, logits, classes)
        per_class = metrics.compute(target, logits, classes)["per_class"]
        plots.write_per_class_csv(out / f"per_class_{name}.csv", per_class)
        is_known = (torch.arange(40) % 4 != 0).numpy()
        plots.write_roc_csv(out / f"roc_{name}.csv", is_known, torch.randn(40, generator=g).numpy() + is_known)
        write_robustness_csv(out / f"robustness_{name}.csv", {"corruptions": {
            c: {"1": 0.9, "2": 0.8, "3": 0.7 - seed / 100, "mean": 0.8} for c in ("noise", "jpeg")}})
    lrs = rates(1e-6, 1.0, 30)
    for name in ("head", "finetune"):
        loss = [2.0 - i / 20 + seed / 100 for i in range(30)]
        plots.write_rows_csv(out / f"lr_find_{name}.csv", Sweep(lrs, loss, loss, lrs[20], lrs[20] / 10, False).rows())


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
    shutil.copytree(REPO / "vendor", root / "vendor")
    _git(root, "init", "-q")
    subprocess.run([*DVC, "init", "-q"], cwd=root, check=True, timeout=120)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")  # the offline page template
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


@pytest.mark.slow
def test_plots_page_draws_every_chart_offline_in_a_browser(workspace, tmp_path) -> None:
    """The page `dvc plots show` writes (the project's .dvc/config template: Vega inlined, no CDN) draws every
    chart in headless Chromium with no network; a screenshot is kept next to the page."""
    import re

    from _mlflow_ui import browser_paths, chromium
    from selenium.webdriver.support.ui import WebDriverWait

    paths = browser_paths()
    if paths is None:
        pytest.skip("chromium and chromedriver not installed (CI installs Debian's packages)")
    html = tmp_path / "html"
    subprocess.run([*DVC, "plots", "show", "-o", str(html)], cwd=workspace, check=True, capture_output=True,
                   timeout=300)
    page = (html / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and not re.search(r"<script[^>]*\bsrc=", page)  # nothing to fetch
    ids = re.findall(r"vegaEmbed\('#([^']+)'", page)
    assert len(ids) == len(_top_level_plots())
    with chromium(*paths) as d:
        d.set_window_size(1400, 5200)
        d.get(html.joinpath("index.html").as_uri())
        drawn = """return arguments[0].map(id => {
            const el = document.getElementById(id);
            const svg = el && el.querySelector('svg.marks');
            return svg ? svg.querySelectorAll('path, rect, line, text').length : 0; })"""
        WebDriverWait(d, 60).until(lambda d: all(n > 0 for n in d.execute_script(drawn, ids)))
        counts = dict(zip(ids, d.execute_script(drawn, ids)))
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        d.save_screenshot(str(html / "screenshot.png"))
    assert all(n > 20 for n in counts.values()), counts  # axes, ticks, labels and the data marks
    assert not errors, errors
