"""The MLflow UI, in a real headless Chromium: a first visit shows one row per pipeline run with its headline
metrics; unfolded, a pipeline run shows one run per stage with its metrics; the compare view puts two
experiments' pipeline runs side by side.

A store is written the way the stages write it (tlpipe.tracking.stage_run + tlpipe.summary: sqlite file plus
mlartifacts/ in the repository root, stage runs named `<experiment>-<stage>` nested under a parent run named
after the experiment), `mlflow ui` serves it on 127.0.0.1, and a fresh Chromium profile opens the README's
link. Skipped only when no chromium/chromedriver is installed (CI installs Debian's `chromium` and
`chromium-driver`). Set TLPIPE_SCREENSHOT_DIR to keep the screenshots.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

import _mlflow_ui as ui
from selenium.webdriver.support.ui import WebDriverWait
from _support import REPO
from tlpipe import summary, tracking

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
    _summary(tmp_path, PARAMS, 0.0)
    uri = tracking.tracking_uri(tmp_path)
    assert uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.data.tags["stage"]: r.info.run_id for r in client.search_runs([exp.experiment_id]) if "stage" in r.data.tags}
    assert len(runs) == len(TRAINING) + len(EVALUATE)
    return uri, exp.experiment_id, runs


def _metrics_files(folder: Path, shift: float) -> tuple[dict[str, Path], dict[str, Path]]:
    """metrics/*.json as the stages write them (headline keys only), every number lowered by `shift`."""
    folder.mkdir(exist_ok=True)
    training = {}
    for stage, model in (("train_head", "head"), ("finetune", "finetuned"), ("retrain", "retrained")):
        training[model] = folder / f"{model}.json"
        training[model].write_text(json.dumps({k: round(v - shift, 6) for k, v in TRAINING[stage][1].items()}))
    evaluation = {}
    for model, m in EVALUATE.items():
        evaluation[model] = folder / f"evaluate_{model}.json"
        evaluation[model].write_text(json.dumps({**{k: round(v - shift, 6) for k, v in m.items()},
                                                 "auroc": round(AUROC[model] - shift, 6)}))
    return training, evaluation


def _summary(root: Path, params: dict, shift: float) -> dict[str, float]:
    return summary.summarize(*_metrics_files(root / "metrics", shift), params)


AUROC = {"finetuned": 0.847288, "retrained": 0.912345}
OTHER = "lr-2e-3"  # a second DVC experiment: other params, every number 0.05 lower


@pytest.fixture
def two_pipeline_runs(project_store, tmp_path, monkeypatch) -> tuple[str, str, dict[str, str], dict[str, dict]]:
    """The project store plus a second experiment's pipeline run: (URI, experiment id, name -> parent run id,
    name -> headline metrics)."""
    uri, exp_id, _ = project_store
    values = {"workspace": _summary(tmp_path, PARAMS, 0.0)}
    monkeypatch.setenv("DVC_EXP_NAME", OTHER)
    other = copy.deepcopy(PARAMS)
    other["finetune"]["epochs"] += 1
    with tracking.stage_run("finetune", other, EXPERIMENT, root=tmp_path):
        pass
    values[OTHER] = _summary(tmp_path, other, 0.05)
    client = MlflowClient(tracking_uri=uri)
    parents = {r.info.run_name: r.info.run_id for r in client.search_runs([exp_id]) if "stage" not in r.data.tags}
    assert set(parents) == {"workspace", OTHER}
    return uri, exp_id, parents, values


@pytest.mark.slow
def test_runs_page_shows_every_stage_and_its_metrics(browser, project_store, tmp_path) -> None:
    uri, exp_id, run_ids = project_store
    expected: dict[str, dict[str, float]] = {s: {"best_val_acc": m["best_val_acc"]} for s, (_, m) in TRAINING.items()}
    expected |= {f"evaluate_{m}": {f"test_{k}": v for k, v in vals.items() if f"test_{k}" in COLUMNS}
                 for m, vals in EVALUATE.items()}
    shot = tmp_path / "mlflow_ui.png"
    with ui.mlflow_ui(uri, tmp_path / "mlflow_ui.log", tmp_path) as base, ui.chromium(*browser) as d:
        d.get(ui.runs_page(base, exp_id))
        ui.wait_for_text(d, ["workspace"])
        parent = MlflowClient(tracking_uri=uri).get_run(run_ids["train_head"]).data.tags[tracking.PARENT_TAG]
        WebDriverWait(d, ui.RENDER_WAIT_S).until(lambda d: parent in ui.table(d))
        ui.expand(d, parent)  # the stage runs are nested under their pipeline run
        names = [tracking.run_name(stage) for stage in run_ids]
        ui.wait_for_text(d, names)
        ui.close_assistant(d)
        # the metric columns in, three empty attribute columns out (room for the metrics in the screenshot)
        ui.set_columns(d, {**{c: True for c in COLUMNS}, **{c: False for c in tracking.PIPELINE_COLUMNS}})

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
        shutil.copyfile(shot, out / "mlflow_ui_stages.png")


def _keep(shot: Path, name: str) -> None:
    if os.environ.get("TLPIPE_SCREENSHOT_DIR"):
        out = Path(os.environ["TLPIPE_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out / name)


@pytest.mark.slow
def test_first_visit_shows_pipeline_runs_with_headline_metrics(browser, two_pipeline_runs, tmp_path) -> None:
    """A fresh profile opens the README's link: one row per pipeline run (stage runs folded under it), the
    headline metric columns already shown, nothing ticked."""
    uri, exp_id, parents, values = two_pipeline_runs
    shot = tmp_path / "mlflow_ui.png"
    with ui.mlflow_ui(uri, tmp_path / "mlflow_ui.log", tmp_path) as base, ui.chromium(*browser) as d:
        d.get(ui.runs_page(base, exp_id))
        ui.close_assistant(d)
        shown = [c for c in tracking.PIPELINE_COLUMNS if c.startswith("finetuned.")]  # wide enough for these

        def rendered(d):
            rows = ui.table(d)
            ok = all(rows.get(rid, {}).get(ui.metric_col(c), "-") not in ("", "-") for rid in parents.values()
                     for c in shown)
            return rows if ok else False

        rows = WebDriverWait(d, ui.RENDER_WAIT_S).until(rendered)
        d.save_screenshot(str(shot))
    assert set(rows) == set(parents.values()), rows  # only the pipeline runs: stage runs are folded
    for name, rid in parents.items():
        assert rows[rid][ui.RUN_NAME_COL].splitlines()[-1] == name
        for c in shown:
            assert float(rows[rid][ui.metric_col(c)]) == pytest.approx(values[name][c], abs=5e-3), (name, c)
    _keep(shot, "mlflow_ui.png")


@pytest.mark.slow
def test_compare_view_puts_two_experiments_side_by_side(browser, two_pipeline_runs, tmp_path) -> None:
    uri, exp_id, parents, values = two_pipeline_runs
    shot = tmp_path / "mlflow_compare.png"
    order = ["workspace", OTHER]
    with ui.mlflow_ui(uri, tmp_path / "mlflow_ui.log", tmp_path) as base, ui.chromium(*browser) as d:
        d.get(ui.compare_page(base, exp_id, [parents[n] for n in order]))
        try:
            ui.wait_for_text(d, ["Comparing 2 Runs", "finetune.epochs", "finetuned.test_accuracy", *order])
        finally:
            text = d.find_element("tag name", "body").text
            d.save_screenshot(str(shot))
    lines = text.splitlines()
    # params: one row per key, the two experiments' values side by side
    row = next(line for line in lines if line.startswith("finetune.epochs "))
    assert row.split()[1:3] == [str(PARAMS["finetune"]["epochs"]), str(PARAMS["finetune"]["epochs"] + 1)], row
    # metrics: the table lists headline metrics with both runs' values (3 decimals; the UI renders the first
    # rows of a long table only, so the finetuned.* rows are the ones checked)
    assert "finetuned.test_accuracy" in text and "finetuned.test_auroc" in text, text[-3000:]
    shown = set(lines)
    for metric in ("finetuned.test_accuracy", "finetuned.test_auroc"):
        for name in order:
            assert f"{values[name][metric]:.3f}" in shown, (metric, name, values[name][metric], text[-3000:])
    _keep(shot, "mlflow_compare.png")
