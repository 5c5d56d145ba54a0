"""The one place that talks to MLflow: URI, experiment, run naming, params, metrics, artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from .atomic import alive
from .errors import PipelineError
from .config.params import flatten


def store_root(root: Path) -> Path:
    """Where the default store lives: the repository DVC runs for. A queued or --temp experiment runs in a
    throwaway copy under .dvc/tmp/exps/; DVC_ROOT names the real repository, so its runs land in the same
    store as the workspace's instead of vanishing with the copy."""
    return Path(os.environ.get("DVC_ROOT") or root)


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a sqlite file in the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(store_root(root) / 'mlflow.db').resolve()}"


def exp_name() -> str:
    """The DVC experiment this process runs for ("workspace" for a plain `dvc repro`)."""
    return os.environ.get("DVC_EXP_NAME") or "workspace"


def run_name(stage: str) -> str:
    return f"{exp_name()}-{stage}"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def baseline_commit(root: Path) -> str:
    """The commit a pipeline run starts from: DVC's baseline for `dvc exp run` (queued ones included), else HEAD."""
    return os.environ.get("DVC_EXP_BASELINE_REV") or git_commit(root)


def metric_key(name: str) -> str:
    """MLflow accepts letters, digits, '_', '-', '.', ' ' and '/' in metric names; map the rest to '_'."""
    return re.sub(r"[^A-Za-z0-9_\-./]", "_", name.replace(" ", "_"))


class Tracker:
    """Thin handle over the active MLflow run. Every write holds `lock` (see `store_lock`); a write the store
    refuses (a tracking server that died mid-stage, after MLflow's own retries) is one PipelineError naming `uri`."""

    def __init__(self, mlflow_module: Any, lock: Callable[[], ContextManager[None]] = nullcontext, uri: str = ""):
        self._mlflow = mlflow_module
        self._lock = lock
        self._uri = uri

    @contextmanager
    def guard(self) -> Iterator[None]:
        """The block under the store lock; whatever MLflow raises in it becomes one PipelineError."""
        try:
            with self._lock():
                yield
        except PipelineError:
            raise
        except Exception as exc:  # noqa: BLE001
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise PipelineError(f"mlflow: tracking store {self._uri or '?'} failed during the stage: {first}") from exc

    def epoch(self, rec: dict[str, float], prefix: str = "") -> None:
        step = int(rec["epoch"])
        with self.guard():
            self._mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in rec.items() if k != "epoch"}, step=step)

    def metrics(self, values: dict[str, Any], prefix: str = "") -> None:
        flat = {f"{prefix}{k}": float(v) for k, v in flatten(values).items() if isinstance(v, (int, float))}
        with self.guard():
            self._mlflow.log_metrics({metric_key(k): v for k, v in flat.items()})

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        if Path(path).exists():
            with self.guard():
                self._mlflow.log_artifact(str(path), artifact_path=folder)


def _experiment(mlflow: Any, name: str, root: Path, local: bool) -> str:
    """Create (if new) and activate experiment `name`; return its id."""
    if mlflow.get_experiment_by_name(name) is None:
        location = (store_root(root) / "mlartifacts").resolve().as_uri() if local else None
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - a concurrent stage may have created it first
            if mlflow.get_experiment_by_name(name) is None:
                raise
    experiment = mlflow.set_experiment(name)
    _ui_tags(experiment)
    return experiment.experiment_id


PID_TAG, HOST_TAG = "tlpipe.pid", "tlpipe.host"
PIPELINE_TAG, PARENT_TAG = "tlpipe.pipeline_key", "mlflow.parentRunId"
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # MLflow 3's "Machine learning" kind
VIEW_KEY = "tlpipe"  # the runs view the README links to: ...?viewStateShareKey=tlpipe
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
MODELS = ("finetuned", "retrained")
PIPELINE_COLUMNS = (*(f"{m}.{k}" for m in MODELS for k in ("test_accuracy", "test_macro_f1", "test_auroc")),
                    *(f"{m}.best_val_acc" for m in ("head", *MODELS)))
"""The parent run's headline metrics (see tlpipe.summary), the runs table's columns in the linked view."""


def view_state() -> str:
    """The shared view state (what MLflow's "Share" button stores as an experiment tag): the headline metric
    columns ticked, everything else as on a fresh visit."""
    return json.dumps({"selectedColumns": [f"metrics.`{c}`" for c in PIPELINE_COLUMNS]}, separators=(",", ":"))


def _ui_tags(experiment: Any) -> None:
    """Mark the experiment "Machine learning" (unless a user chose otherwise) and store the linked runs view."""
    from mlflow.tracking import MlflowClient

    tags = experiment.tags or {}
    wanted = {VIEW_TAG: view_state(), **({} if tags.get(KIND_TAG) else {KIND_TAG: KIND})}
    for key, value in wanted.items():
        if tags.get(key) != value:
            MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)


def end_dead_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of the experiment whose stage process (this host, by pid) is gone:
    SIGKILL leaves a run no chance to end itself. Runs of live processes (a concurrent queued
    experiment) and of other hosts are left alone. Returns the run ids it ended."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000):
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() \
                and not alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
            parent = tags.get(PARENT_TAG)
            if parent and client.get_run(parent).info.status == "RUNNING":
                client.set_terminated(parent, status="KILLED")
    return ended


def params_hash(params: dict[str, Any]) -> str:
    """12 hex digits of a sha256 over the flattened params, the `tracking` section left out (not a DVC dep)."""
    items = sorted((k, repr(v)) for k, v in flatten(params).items() if not k.startswith("tracking."))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:12]


def pipeline_key(params: dict[str, Any], commit: str) -> str:
    """What makes one pipeline run: DVC experiment name (or "workspace"), baseline commit and params. Every
    stage of one `dvc exp run` / queued experiment, a rerun after a kill and a `dvc repro` of one stage
    with the same params and commit share it; new params or a new commit make a new pipeline run."""
    return f"{exp_name()}@{commit or 'no-git'}:{params_hash(params)}".replace("'", "_")


def param_items(params: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, str(v)[:500]) for k, v in flatten(params).items()]


def pipeline_parent(client: Any, experiment_id: str, params: dict[str, Any], commit: str) -> str:
    """The id of this pipeline run's parent run: the oldest live run tagged with its key, else a new one named
    after the DVC experiment, with every param. Call with the store lock held, so no stage makes a second."""
    from mlflow.entities import Param

    key = pipeline_key(params, commit)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'",
                               order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        return found[0].info.run_id
    run_id = client.create_run(experiment_id, run_name=exp_name(), tags={
        PIPELINE_TAG: key, "dvc_exp_name": exp_name(), "git_commit": commit, "tlpipe.params_hash": params_hash(params),
        "mlflow.note.content": "tlpipe pipeline run: its stages are nested below; metrics are the models' headline "
                               "numbers (metrics/*.json)"}).info.run_id
    items = param_items(params)
    for i in range(0, len(items), 90):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 90]])
    return run_id


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


@contextmanager
def store_lock(uri: str, timeout: float) -> Iterator[None]:
    """For a sqlite store: one process at a time writes to it. A flock on `<db>-lock`; no-op for other stores.

    Two stages starting together on a fresh store (`dvc queue start -j 2`) both run MLflow's schema
    migrations and one fails ("Online migration expected to match one row"; seen, and tested). Later writes
    hold it too: MLflow does not retry a sqlite "database is locked", so concurrent stages take turns rather
    than rely on sqlite's own waiting. The kernel drops the lock of a killed process. Waits up to
    6 x `timeout` (creating the tables or logging a model takes seconds)."""
    import fcntl
    import time

    path = sqlite_file(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + "-lock"), "a+") as fh:
        deadline = time.monotonic() + max(timeout, 1) * 6  # creating the tables takes a few seconds
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PipelineError(f"mlflow: tracking store {uri} is busy: another process has held its "
                                        f"write lock {fh.name} for over {max(timeout, 1) * 6:g} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_sqlite(uri: str, timeout: float) -> None:
    """Fail within `timeout` seconds when the sqlite store is locked by another process or is not a
    database (MLflow itself would wait 20 s per query and retry engine creation for minutes)."""
    path = sqlite_file(uri)
    if path is None or not path.is_file():
        return  # a new store: MLflow creates it
    con = None
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")  # takes the write lock, as logging will
        con.execute("ROLLBACK")
    except sqlite3.Error as exc:
        hint = f" after waiting {timeout:g} s (another process holds it)" if "locked" in str(exc) else ""
        raise PipelineError(f"mlflow: tracking store {uri} is not usable: {exc}{hint}") from exc
    finally:
        if con is not None:
            con.close()


@contextmanager
def bounded_http(timeout: int) -> Iterator[None]:
    """While the stage checks its store: one retry and `timeout` s per HTTP request, unless the user set
    MLflow's own limits (its defaults, 7 retries with backoff, take minutes to give up on a dead server)."""
    bounds = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout))}
    added = {k: v for k, v in bounds.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextmanager
def store(root: Path) -> Iterator[str]:
    """Point MLflow at tracking_uri(root) for the block; yields the URI. MLflow exports the URI to the
    environment: afterwards MLFLOW_TRACKING_URI is as before (unset stays unset)."""
    import mlflow

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        if env_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def guarded(uri: str, timeout: int, fn: Callable[[], Any]) -> Any:
    """fn() under bounded HTTP waits and the store lock; any MLflow failure becomes one PipelineError."""
    try:
        with bounded_http(timeout), store_lock(uri, timeout):
            return fn()
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"mlflow: tracking store {uri} is not usable: {str(exc).splitlines()[0][:200]}") from exc


def setup(mlflow: Any, params: dict[str, Any], experiment: str, root: Path, commit: str, local: bool) -> str:
    """Experiment set up, runs of killed stages ended, the pipeline run's parent found or made: its id."""
    from mlflow.tracking import MlflowClient

    experiment_id = _experiment(mlflow, experiment, root, local=local)
    end_dead_runs(experiment_id)
    return pipeline_parent(MlflowClient(), experiment_id, params, commit)


def _start_run(mlflow: Any, stage: str, params: dict[str, Any], experiment: str, root: Path, uri: str,
               timeout: int, commit: str, local: bool) -> str:
    """This stage's run started, nested under the pipeline run's parent (then RUNNING); returns the parent id."""
    from mlflow.tracking import MlflowClient

    def start() -> str:
        parent = setup(mlflow, params, experiment, root, commit, local)
        MlflowClient().update_run(parent, status="RUNNING")
        mlflow.start_run(run_name=run_name(stage), tags={PARENT_TAG: parent})
        return parent

    return guarded(uri, timeout, start)


def _log_run_info(mlflow: Any, stage: str, params: dict[str, Any], commit: str, tracker: Tracker) -> None:
    """Tags (stage, git commit, DVC experiment, pid, host and, where torch is loaded, the CPU kernels it runs:
    cpu_isa's effect) and every param, flattened."""
    tags = {"stage": stage, "git_commit": commit, "dvc_exp_name": exp_name(),
            PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    if (torch := sys.modules.get("torch")) is not None:  # never imported here: a stage without torch skips it
        tags["cpu_kernels"] = torch.backends.cpu.get_cpu_capability()
    items = param_items(params)
    with tracker.guard():
        mlflow.set_tags(tags)
        for i in range(0, len(items), 90):
            mlflow.log_params(dict(items[i : i + 90]))


def _end_run(mlflow: Any, tracker: Tracker, finished: bool, parent: str) -> None:
    """FINISHED or FAILED, the parent run too (it shows how the last stage under it ended); on failure, the
    stage's own error is the one reported."""
    from mlflow.tracking import MlflowClient

    if mlflow.active_run() is None:
        return
    status = "FINISHED" if finished else "FAILED"
    try:
        with tracker.guard():
            mlflow.end_run(status=status)
            MlflowClient().set_terminated(parent, status=status)
    except PipelineError:
        if finished:
            raise


@contextmanager
def stage_run(stage: str, params: dict[str, Any], experiment: str, root: Path = Path(".")) -> Iterator[Tracker]:
    """One MLflow run for a stage, nested under its pipeline run's parent (see `pipeline_key`): params, tags;
    FAILED if the block raises. Fails early if unreachable."""
    import mlflow

    local = not os.environ.get("MLFLOW_TRACKING_URI")  # read before store() exports the URI
    uri = tracking_uri(root)
    timeout = int(params["tracking"]["connect_timeout"])
    commit = baseline_commit(root)
    check_sqlite(uri, timeout)  # before MLflow's own waits and retries
    with store(root):
        parent = _start_run(mlflow, stage, params, experiment, root, uri, timeout, commit, local)
        lock = partial(store_lock, uri, timeout)
        tracker, finished = Tracker(mlflow, lock, uri), False
        try:
            _log_run_info(mlflow, stage, params, commit, tracker)
            yield tracker
            finished = True
        finally:
            _end_run(mlflow, tracker, finished, parent)


def pipeline_summary(params: dict[str, Any], metrics: dict[str, float], files: list[Path],
                     root: Path = Path(".")) -> str:
    """Log `metrics` and `files` (under metrics/) to the pipeline run's parent and mark it FINISHED; no run of
    its own. Returns the parent's id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    local = not os.environ.get("MLFLOW_TRACKING_URI")  # read before store() exports the URI
    uri, timeout = tracking_uri(root), int(params["tracking"]["connect_timeout"])
    check_sqlite(uri, timeout)

    def log() -> str:
        parent = setup(mlflow, params, params["tracking"]["experiment"], root, baseline_commit(root), local)
        client = MlflowClient()
        client.log_batch(parent, metrics=_metrics(metrics))
        for f in files:
            client.log_artifact(parent, str(f), artifact_path="metrics")
        client.set_terminated(parent, status="FINISHED")
        return parent

    with store(root):
        return guarded(uri, timeout, log)


def _metrics(values: dict[str, float]) -> list[Any]:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(metric_key(k), float(v), now, 0) for k, v in values.items()]
