"""The MLflow UI, in a real headless Chromium, shows one run per pipeline stage with its metrics.

A store is written the way the stages write it (tlpipe.tracking.stage_run: sqlite file plus mlartifacts/
in the repository root, runs named `workspace-<stage>`, per-epoch curves and final metrics), `mlflow ui`
serves it on 127.0.0.1, and Chromium opens the experiment's runs table, ticks the metric columns and
must show every stage's run with its own values. Skipped only when no chromium/chromedriver is installed
(CI installs Debian's `chromium` and `chromium-driver`). Set TLPIPE_SCREENSHOT_DIR to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

import _mlflow_ui as ui
from _support import REPO
from tlpipe import tracking

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
EXPERIMENT = PARAMS["tracking"]["experiment"]

# stage -> (epochs, summary metrics) for training stages, as training.stage.save_training logs them
TRAINING = {
    "train_head": (6, {"best_epoch": 5, "best_val_acc": 0.953704, "best_val_loss": 0.201695}),
    "finetune": (4, {"best_epoch": 2, "best_val_acc": 0.972222, "best_val_loss": 0.109952}),
    "retrain": (5, {"best_epoch": 4, "best_val_acc": 0.952703, "best_val_loss": 0.150918}),
}
# model -> closed-set test metrics, logged by stages/evaluate.py with the prefix test_
EVALUATE = {
    "finetuned": {"accuracy": 0.962963, "macro_f1": 0.962401, "loss": 0.101234},
    "retrained": {"accuracy": 0.941489, "macro_f1": 0.938712, "loss": 0.187654},
}
COLUMNS = ["best_val_acc", "test_accuracy", "test_macro_f1"]


@pytest.fixture
def browser() -> tuple[str, str]:
    paths = ui.browser_paths()
    if paths is None:
        pytest.skip("no chromium + chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    return paths


@pytest.fixture
def project_store(tmp_path, monkeypatch) -> tuple[str, str, dict[str, str]]:
    """A project-layout store in tmp_path: (tracking URI, experiment id, stage -> run id)."""
    for var in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    for stage, (epochs, summary) in TRAINING.items():
        with tracking.stage_run(stage, PARAMS, EXPERIMENT, root=tmp_path) as tr:
            for e in range(1, epochs + 1):
                tr.epoch({"epoch": e, "train_loss": 1.0 / e, "train_acc": 1 - 0.1 / e, "val_loss": 1.2 / e,
                          "val_acc": 1 - 0.15 / e, "lr": 0.001})
            tr.metrics(summary)
    for model, metrics in EVALUATE.items():
        with tracking.stage_run(f"evaluate_{model}", PARAMS, EXPERIMENT, root=tmp_path) as tr:
            tr.metrics(metrics, prefix="test_")
    uri = tracking.tracking_uri(tmp_path)
    assert uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.data.tags["stage"]: r.info.run_id for r in client.search_runs([exp.experiment_id])}
    assert len(runs) == len(TRAINING) + len(EVALUATE)
    return uri, exp.experiment_id, runs


@pytest.mark.slow
def test_runs_page_shows_every_stage_and_its_metrics(browser, project_store, tmp_path) -> None:
    uri, exp_id, run_ids = project_store
    expected: dict[str, dict[str, float]] = {s: {"best_val_acc": m["best_val_acc"]} for s, (_, m) in TRAINING.items()}
    expected |= {f"evaluate_{m}": {f"test_{k}": v for k, v in vals.items() if f"test_{k}" in COLUMNS}
                 for m, vals in EVALUATE.items()}
    shot = tmp_path / "mlflow_ui.png"
    with ui.mlflow_ui(uri, tmp_path / "mlflow_ui.log", tmp_path) as base, ui.chromium(*browser) as d:
        d.get(ui.runs_page(base, exp_id))
        names = [tracking.run_name(stage) for stage in run_ids]
        ui.wait_for_text(d, names)
        ui.close_assistant(d)
        # the metric columns in, three empty attribute columns out (room for the metrics in the screenshot)
        ui.set_columns(d, {**{c: True for c in COLUMNS}, "Dataset": False, "Source": False, "Models": False})
        from selenium.webdriver.support.ui import WebDriverWait

        def rendered(d):
            rows = ui.table(d)
            ok = all(rows.get(rid, {}).get(ui.metric_col(c), "-") not in ("", "-")
                     for stage, rid in run_ids.items() for c in expected[stage])
            return rows if ok else False

        rows = WebDriverWait(d, ui.RENDER_WAIT_S).until(rendered)
        d.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    for stage, rid in run_ids.items():
        row = rows[rid]
        assert row[ui.RUN_NAME_COL].splitlines()[-1] == f"workspace-{stage}", row
        for col, value in expected[stage].items():
            assert float(row[ui.metric_col(col)]) == pytest.approx(value), (stage, col, row)
        # a training run has no test metrics and an evaluation run no training summary
        others = set(COLUMNS) - set(expected[stage])
        assert all(row.get(ui.metric_col(c), "-") == "-" for c in others), (stage, row)
    if os.environ.get("TLPIPE_SCREENSHOT_DIR"):
        out = Path(os.environ["TLPIPE_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out / "mlflow_ui.png")
