"""tracking.py: one MLflow run per stage with params, tags and per-epoch metrics, nested under one parent run
per pipeline run; FAILED on error; an unusable tracking store is a PipelineError naming the URI."""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tlpipe import tracking
from tlpipe.errors import PipelineError

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def restore_tracking_env():
    """MLflow's set_tracking_uri() also exports MLFLOW_TRACKING_URI; don't let it leak into other tests."""
    import os

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """An initialised (migrated) empty MLflow sqlite store; creating one takes seconds, copying it doesn't."""
    db = tmp_path_factory.mktemp("mlflow_template") / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path, template_db, monkeypatch) -> str:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # any default ./mlruns artifact folder lands here
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _runs(uri: str, experiment: str):
    """(client, stage runs, parent runs) of the experiment."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if "stage" in r.data.tags], [r for r in runs if "stage" not in r.data.tags]


def _only_run(uri: str, experiment: str):
    """The one stage run, checked to be nested under the one parent run."""
    client, stages, parents = _runs(uri, experiment)
    assert len(stages) == 1 and len(parents) == 1, (stages, parents)
    assert stages[0].data.tags[tracking.PARENT_TAG] == parents[0].info.run_id
    return client, stages[0]


def test_finished_run_records_params_tags_and_epochs(store, tmp_path):
    with tracking.stage_run("train_head", PARAMS, "unit", root=REPO) as tr:
        for epoch in (1, 2, 3):
            tr.epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.3 * epoch})
        tr.metrics({"best_val_acc": 0.9, "nested": {"value": 2, "label": "text is skipped"}, "flag": True})
    assert mlflow.active_run() is None
    client, run = _only_run(store, "unit")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "workspace-train_head"
    p = run.data.params
    assert p["seed"] == str(PARAMS["seed"])
    assert p["finetune.epochs"] == str(PARAMS["finetune"]["epochs"])
    assert p["retrain.head.epochs"] == str(PARAMS["retrain"]["head"]["epochs"])
    assert "data.known_classes" in p
    assert run.data.tags["stage"] == "train_head"
    assert len(run.data.tags["git_commit"]) in (0, 40)
    assert run.data.tags["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()  # what cpu_isa pinned
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert len(history) == 3
    assert [(m.step, round(m.value, 6)) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.3), (2, 0.6),
                                                                                            (3, 0.9)]
    assert "epoch" not in run.data.metrics
    assert run.data.metrics["best_val_acc"] == 0.9
    assert run.data.metrics["nested.value"] == 2.0
    assert "nested.label" not in run.data.metrics


def test_exception_marks_run_failed_and_propagates(store):
    class StageBroke(RuntimeError):
        pass

    with pytest.raises(StageBroke):
        with tracking.stage_run("finetune", PARAMS, "unit-fail", root=REPO) as tr:
            tr.epoch({"epoch": 1, "val_acc": 0.5})
            raise StageBroke("disk full")
    assert mlflow.active_run() is None
    client, run = _only_run(store, "unit-fail")
    assert run.info.status == "FAILED"
    assert run.data.metrics["val_acc"] == 0.5


def test_pipeline_error_inside_also_fails_run(store):
    with pytest.raises(PipelineError, match="bad manifest"):
        with tracking.stage_run("evaluate", PARAMS, "unit-perr", root=REPO):
            raise PipelineError("bad manifest")
    assert _only_run(store, "unit-perr")[1].info.status == "FAILED"


def test_two_runs_same_experiment_and_exp_name(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-lr01")
    for stage in ("train_head", "finetune"):
        with tracking.stage_run(stage, PARAMS, "unit-two", root=REPO):
            pass
    _, runs, parents = _runs(store, "unit-two")
    assert sorted(r.info.run_name for r in runs) == ["exp-lr01-finetune", "exp-lr01-train_head"]
    assert all(r.info.status == "FINISHED" and r.data.tags["dvc_exp_name"] == "exp-lr01" for r in runs)
    assert [p.info.run_name for p in parents] == ["exp-lr01"]  # one parent run, both stages under it
    assert {r.data.tags[tracking.PARENT_TAG] for r in runs} == {parents[0].info.run_id}


def test_long_param_values_are_truncated_not_rejected(store):
    params = copy.deepcopy(PARAMS)
    params["data"]["known_classes"] = {i: f"class name number {i} " * 3 for i in range(43)}  # > 500 chars
    with tracking.stage_run("split", params, "unit-long", root=REPO):
        pass
    _, run = _only_run(store, "unit-long")
    assert run.info.status == "FINISHED"
    assert len(run.data.params["data.known_classes"]) == 500


def test_artifact_logged_when_present(store, tmp_path):
    report = tmp_path / "metrics.json"
    report.write_text('{"accuracy": 1.0}\n', encoding="utf-8")
    with tracking.stage_run("evaluate", PARAMS, "unit-art", root=REPO) as tr:
        tr.artifact(report)
        tr.artifact(tmp_path / "absent.png")  # silently skipped
        tr.artifact(report, folder="reports")
    client, run = _only_run(store, "unit-art")
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert top == {"metrics.json", "reports"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "reports")] == ["reports/metrics.json"]


def test_per_class_metric_names_with_punctuation(store):
    """evaluate logs per-class metrics keyed by readable class names from params (e.g. GTSRB sign names)."""
    per_class = {"speed limit (30km/h)": {"precision": 1.0, "recall": 0.5},
                 "no entry, all vehicles": {"precision": 0.25, "recall": 1.0},
                 "stop": {"precision": 1.0, "recall": 1.0}}
    with tracking.stage_run("evaluate", PARAMS, "unit-names", root=REPO) as tr:
        tr.metrics(per_class, prefix="test_")
    _, run = _only_run(store, "unit-names")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_stop.recall"] == 1.0
    assert len(run.data.metrics) == 6


def test_default_store_is_sqlite_in_root_with_local_artifacts(tmp_path, template_db, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copyfile(template_db, root / "mlflow.db")
    assert tracking.tracking_uri(root) == f"sqlite:///{(root / 'mlflow.db').resolve()}"
    with tracking.stage_run("split", PARAMS, "unit-default", root=root):
        pass
    client = MlflowClient(tracking_uri=tracking.tracking_uri(root))
    exp = client.get_experiment_by_name("unit-default")
    run = _only_run(tracking.tracking_uri(root), "unit-default")[1]
    assert run.info.status == "FINISHED"
    assert run.data.tags["git_commit"] == ""  # not a git repository
    # without MLFLOW_TRACKING_URI the experiment's artifacts belong in <root>/mlartifacts, not <cwd>/mlruns
    assert exp.artifact_location == (root / "mlartifacts").resolve().as_uri()


def test_unusable_sqlite_uri(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be", encoding="utf-8")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError) as info:
        with tracking.stage_run("split", PARAMS, "unit", root=tmp_path):
            pytest.fail("the block must not run")
    assert uri in str(info.value)
    assert mlflow.active_run() is None


def test_unreachable_http_server(tmp_path, monkeypatch, closed_port):
    uri = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError) as info:
        with tracking.stage_run("split", PARAMS, "unit", root=tmp_path):
            pytest.fail("the block must not run")
    assert uri in str(info.value) and "\n" not in str(info.value)


def test_run_name_and_git_commit(monkeypatch, tmp_path):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert tracking.run_name("evaluate_finetuned") == "workspace-evaluate_finetuned"
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-tuna")
    assert tracking.run_name("retrain") == "bushy-tuna-retrain"
    assert tracking.git_commit(tmp_path) == ""
    commit = tracking.git_commit(REPO)
    assert commit == "" or (len(commit) == 40 and all(c in "0123456789abcdef" for c in commit))


def test_queued_experiment_copy_writes_to_the_repository_store(tmp_path, monkeypatch):
    """dvc queue / --temp run stages in .dvc/tmp/exps/<copy>/ with DVC_ROOT naming the real repository."""
    from tlpipe.tracking import tracking_uri

    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmp_abc"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert tracking_uri(copy) == f"sqlite:///{(tmp_path / 'repo' / 'mlflow.db').resolve()}"
    monkeypatch.delenv("DVC_ROOT")
    assert tracking_uri(copy) == f"sqlite:///{(copy / 'mlflow.db').resolve()}"


_START = r"""
import os, sys, time, yaml
sys.path.insert(0, sys.argv[1])
from tlpipe import tracking
params = yaml.safe_load(open(sys.argv[2]))
while time.time() < float(sys.argv[3]):  # start together
    time.sleep(0.005)
with tracking.stage_run(sys.argv[4], params, "race"):
    pass
"""


def test_two_stages_starting_together_on_a_fresh_store(tmp_path):
    """`dvc queue start -j 2` starts two stages at once on a store nobody created yet: both must get a run
    (without the setup lock one died in MLflow's schema migration)."""
    import subprocess
    import sys
    import time

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    at = str(time.time() + 6)
    procs = [subprocess.Popen([sys.executable, "-c", _START, str(REPO / "src"), str(REPO / "params.yaml"), at,
                               f"stage{i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    db = sqlite3.connect(tmp_path / "fresh.db")
    names = sorted(n for (n,) in db.execute("select name from runs where status='FINISHED'"))
    parents = {v for (v,) in db.execute("select value from tags where key='mlflow.parentRunId'")}
    db.close()
    assert names == ["workspace", "workspace-stage0", "workspace-stage1"]  # one parent run, made under the lock
    assert len(parents) == 1


def _hold_store_lock(uri: str):
    import fcntl

    fh = open(str(tracking.sqlite_file(uri)) + "-lock", "a+")
    fcntl.flock(fh, fcntl.LOCK_EX)
    return fh


def test_writes_wait_for_the_store_write_lock(store):
    """Two queued experiments write to one sqlite store; each write holds `<db>-lock`, so a writer waits for
    the other (sqlite alone may answer "database is locked" at once, which MLflow does not retry)."""
    import threading
    import time

    released = threading.Event()

    def other_writer(fh) -> None:
        time.sleep(1.5)
        released.set()
        fh.close()  # releases the lock

    with tracking.stage_run("train_head", PARAMS, "unit", root=REPO) as tr:
        holder = threading.Thread(target=other_writer, args=(_hold_store_lock(store),))
        holder.start()
        tr.metrics({"best_val_acc": 0.5})
        assert released.is_set()  # the write went in only after the other writer let go
        run_id = mlflow.active_run().info.run_id
        holder.join()
    run = MlflowClient(tracking_uri=store).get_run(run_id)
    assert run.data.metrics["best_val_acc"] == 0.5 and run.info.status == "FINISHED"


def test_write_lock_held_too_long_is_one_clear_error(store):
    params = {**PARAMS, "tracking": {**PARAMS["tracking"], "connect_timeout": 1}}
    held = _hold_store_lock(store)
    try:
        with pytest.raises(PipelineError) as err:
            with tracking.stage_run("train_head", params, "unit", root=REPO):
                pass
    finally:
        held.close()
    assert store in str(err.value) and "-lock" in str(err.value)


def test_runs_of_killed_stages_are_marked_killed_by_the_next_stage(store):
    """SIGKILL leaves a stage's run RUNNING; the next stage to start ends it as KILLED. A run whose process
    still lives (a concurrent queued experiment) or that ran on another host is left alone."""
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    client = MlflowClient(tracking_uri=store)
    exp_id = client.create_experiment("unit")
    host = socket.gethostname()
    runs = {}
    for label, pid, where in (("dead", dead.pid, host), ("live", live.pid, host), ("elsewhere", dead.pid, "other-host"),
                              ("untagged", None, None)):
        tags = {} if pid is None else {tracking.PID_TAG: str(pid), tracking.HOST_TAG: where}
        runs[label] = client.create_run(exp_id, tags=tags, run_name=label).info.run_id
    try:
        with tracking.stage_run("finetune", PARAMS, "unit", root=REPO):
            pass
        status = {label: client.get_run(rid).info.status for label, rid in runs.items()}
    finally:
        live.kill()
    assert status == {"dead": "KILLED", "live": "RUNNING", "elsewhere": "RUNNING", "untagged": "RUNNING"}


def _parents(uri: str, experiment: str):
    return _runs(uri, experiment)[2]


def test_one_parent_per_pipeline_run_with_params_found_not_duplicated(store, monkeypatch):
    """Stages of one pipeline run (same DVC experiment, commit and params) nest under one parent run that
    carries every param; other params or another experiment name make another parent."""
    for stage in ("train_head", "finetune", "evaluate_finetuned"):
        with tracking.stage_run(stage, PARAMS, "unit-nest", root=REPO):
            pass
    client, stages, parents = _runs(store, "unit-nest")
    assert len(stages) == 3 and len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "workspace" and parent.info.status == "FINISHED"
    assert {r.data.tags[tracking.PARENT_TAG] for r in stages} == {parent.info.run_id}
    assert parent.data.params["finetune.epochs"] == str(PARAMS["finetune"]["epochs"])
    assert parent.data.tags[tracking.PIPELINE_TAG] == tracking.pipeline_key(PARAMS, tracking.git_commit(REPO))
    assert parent.data.tags[tracking.PIPELINE_TAG].startswith("workspace@")

    changed = copy.deepcopy(PARAMS)
    changed["finetune"]["epochs"] = PARAMS["finetune"]["epochs"] + 1
    with tracking.stage_run("finetune", changed, "unit-nest", root=REPO):
        pass
    renamed = copy.deepcopy(PARAMS)
    renamed["tracking"]["connect_timeout"] += 1  # not a DVC dependency: the same pipeline run
    with tracking.stage_run("evaluate_retrained", renamed, "unit-nest", root=REPO):
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    with tracking.stage_run("train_head", PARAMS, "unit-nest", root=REPO):
        pass
    _, stages, parents = _runs(store, "unit-nest")
    by_name = sorted((p.info.run_name, p.data.params["finetune.epochs"]) for p in parents)
    assert by_name == sorted([("workspace", str(PARAMS["finetune"]["epochs"])),
                              ("workspace", str(changed["finetune"]["epochs"])), ("exp-a", str(PARAMS["finetune"]["epochs"]))])
    assert sum(r.data.tags[tracking.PARENT_TAG] == parent.info.run_id for r in stages) == 4
    exp_a = next(p for p in parents if p.info.run_name == "exp-a")
    assert exp_a.data.tags[tracking.PIPELINE_TAG].startswith(f"exp-a@{'0' * 40}:")


def test_failed_stage_fails_the_parent_until_a_stage_finishes(store):
    with pytest.raises(PipelineError):
        with tracking.stage_run("finetune", PARAMS, "unit-pfail", root=REPO):
            raise PipelineError("broke")
    assert [p.info.status for p in _parents(store, "unit-pfail")] == ["FAILED"]
    with tracking.stage_run("finetune", PARAMS, "unit-pfail", root=REPO):
        assert [p.info.status for p in _parents(store, "unit-pfail")] == ["RUNNING"]
    assert [p.info.status for p in _parents(store, "unit-pfail")] == ["FINISHED"]


_KILLED = r"""
import sys, time, yaml
sys.path.insert(0, sys.argv[1])
from tlpipe import tracking
params = yaml.safe_load(open(sys.argv[2]))
with tracking.stage_run("finetune", params, "unit-kill", root=sys.argv[3]):
    print("started", flush=True)
    time.sleep(300)
"""


def test_rerun_after_a_kill_lands_under_the_same_parent(store):
    """SIGKILL mid-stage: the rerun marks the dead run and its parent KILLED, then runs under that same
    parent, which ends FINISHED."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(REPO / "src"), str(REPO / "params.yaml"), str(REPO)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": store})
    try:
        assert proc.stdout.readline().strip() == "started"
    finally:
        proc.kill()
        proc.wait()
    [parent] = _parents(store, "unit-kill")
    assert parent.info.status == "RUNNING"
    with tracking.stage_run("finetune", yaml.safe_load((REPO / "params.yaml").read_text()), "unit-kill", root=REPO):
        assert _parents(store, "unit-kill")[0].info.status == "RUNNING"
    _, stages, parents = _runs(store, "unit-kill")
    assert [p.info.run_id for p in parents] == [parent.info.run_id] and parents[0].info.status == "FINISHED"
    assert sorted(r.info.status for r in stages) == ["FINISHED", "KILLED"]
    assert {r.data.tags[tracking.PARENT_TAG] for r in stages} == {parent.info.run_id}


def test_experiment_opens_as_machine_learning_with_the_headline_view(store):
    with tracking.stage_run("split", PARAMS, "unit-ui", root=REPO):
        pass
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("unit-ui")
    assert exp.tags[tracking.KIND_TAG] == "custom_model_development"
    import json

    view = json.loads(exp.tags[tracking.VIEW_TAG])
    assert view["selectedColumns"] == [f"metrics.`{c}`" for c in tracking.PIPELINE_COLUMNS]
    client.set_experiment_tag(exp.experiment_id, tracking.KIND_TAG, "genai_development")  # a user's choice stays
    with tracking.stage_run("split", PARAMS, "unit-ui", root=REPO):
        pass
    assert client.get_experiment_by_name("unit-ui").tags[tracking.KIND_TAG] == "genai_development"


def test_summary_fills_the_parent_from_metrics_files_alone(store, tmp_path):
    """A fresh clone's `dvc repro` runs no stage but summary: the parent run it makes gets every param,
    the headline numbers of both models and the files; later stage runs of that pipeline run join it."""
    from tlpipe import summary

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    files = {}
    for name, m in {"head": {"best_val_acc": 0.91, "best_epoch": 3}, "finetuned": {"best_val_acc": 0.95},
                    "retrained": {"best_val_acc": 0.93, "best_val_loss": 0.2}}.items():
        files[name] = metrics / f"{name}.json"
        files[name].write_text(json.dumps(m))
    evals = {}
    for name, acc in (("finetuned", 0.96), ("retrained", 0.94)):
        evals[name] = metrics / f"evaluate_{name}.json"
        evals[name].write_text(json.dumps({  # the headline file evaluate writes (detail is in reports/)
            "accuracy": acc, "accuracy_lo": acc - 0.02, "accuracy_hi": acc + 0.01, "macro_f1": acc - 0.01,
            "loss": 0.1, "ece_scaled": 0.03, "auroc": acc - 0.1, "unknown_recall_unseen": 0.3,
            "note": "not a number"}))
    params = {**PARAMS, "tracking": {**PARAMS["tracking"], "experiment": "unit-summary"}}
    values = summary.summarize(files, evals, params)
    assert set(tracking.PIPELINE_COLUMNS) <= set(values)
    client, stages, [parent] = _runs(store, "unit-summary")
    assert not stages and parent.info.status == "FINISHED" and parent.info.run_name == "workspace"
    m = parent.data.metrics
    assert m["finetuned.test_accuracy"] == 0.96 and m["retrained.test_auroc"] == pytest.approx(0.84)
    assert m["head.best_val_acc"] == 0.91 and m["retrained.test_unknown_recall_unseen"] == 0.3
    assert m["finetuned.test_ece_scaled"] == 0.03 and m["finetuned.test_accuracy_lo"] == pytest.approx(0.94)
    assert not any("note" in k for k in m)
    assert parent.data.params["seed"] == str(PARAMS["seed"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "metrics")} == \
        {f"metrics/{p.name}" for p in [*files.values(), *evals.values()]}
    summary.summarize(files, evals, params)  # every repro: the same parent, no second one
    with tracking.stage_run("evaluate_finetuned", params, "unit-summary", root=tmp_path):  # summary's root: cwd
        pass
    _, stages, parents = _runs(store, "unit-summary")
    assert [p.info.run_id for p in parents] == [parent.info.run_id]
    assert stages[0].data.tags[tracking.PARENT_TAG] == parent.info.run_id


def test_a_store_failing_mid_stage_is_one_error_naming_the_uri():
    """A tracking server that dies mid-stage: MLflow raises (after its retries) on the next write; the stage
    gets one PipelineError naming the store, not a traceback from deep inside MLflow."""
    from tlpipe.errors import PipelineError

    class DeadServer:
        @staticmethod
        def log_metrics(*_a, **_k):
            raise ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=5999): Max retries exceeded\nmore")

        @staticmethod
        def log_artifact(*_a, **_k):
            raise RuntimeError("API request to endpoint /api/2.0/mlflow-artifacts failed")

    tr = tracking.Tracker(DeadServer, uri="http://127.0.0.1:5999")
    for write in (lambda: tr.epoch({"epoch": 1, "val_acc": 0.5}), lambda: tr.metrics({"accuracy": 0.5}),
                  lambda: tr.artifact(__file__)):
        with pytest.raises(PipelineError) as err:
            write()
        msg = str(err.value)
        assert msg.startswith("mlflow: tracking store http://127.0.0.1:5999 failed during the stage: ")
        assert "\n" not in msg
