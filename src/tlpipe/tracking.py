"""The one place that talks to MLflow: URI, experiment, run naming, params, metrics, artifacts."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
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


def run_name(stage: str) -> str:
    return f"{os.environ.get('DVC_EXP_NAME') or 'workspace'}-{stage}"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def metric_key(name: str) -> str:
    """MLflow accepts letters, digits, '_', '-', '.', ' ' and '/' in metric names; map the rest to '_'."""
    return re.sub(r"[^A-Za-z0-9_\-./]", "_", name.replace(" ", "_"))


class Tracker:
    """Thin handle over the active MLflow run. Every write holds `lock` (see `store_lock`)."""

    def __init__(self, mlflow_module: Any, lock: Callable[[], ContextManager[None]] = nullcontext):
        self._mlflow = mlflow_module
        self._lock = lock

    def epoch(self, rec: dict[str, float], prefix: str = "") -> None:
        step = int(rec["epoch"])
        with self._lock():
            self._mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in rec.items() if k != "epoch"}, step=step)

    def metrics(self, values: dict[str, Any], prefix: str = "") -> None:
        flat = {f"{prefix}{k}": float(v) for k, v in flatten(values).items() if isinstance(v, (int, float))}
        with self._lock():
            self._mlflow.log_metrics({metric_key(k): v for k, v in flat.items()})

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        if Path(path).exists():
            with self._lock():
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
    return mlflow.set_experiment(name).experiment_id


PID_TAG, HOST_TAG = "tlpipe.pid", "tlpipe.host"


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
    return ended


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


def _start_run(mlflow: Any, stage: str, experiment: str, root: Path, uri: str, timeout: int, local: bool) -> None:
    """Experiment set up, runs of killed stages ended, this stage's run started; one error if unusable."""
    try:
        with bounded_http(timeout), store_lock(uri, timeout):
            end_dead_runs(_experiment(mlflow, experiment, root, local=local))
            mlflow.start_run(run_name=run_name(stage))
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"mlflow: tracking store {uri} is not usable: {str(exc).splitlines()[0][:200]}") from exc


def _log_run_info(mlflow: Any, stage: str, params: dict[str, Any], root: Path,
                  lock: Callable[[], ContextManager[None]]) -> None:
    """Tags (stage, git commit, DVC experiment, pid and host) and every param, flattened."""
    tags = {"stage": stage, "git_commit": git_commit(root), "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
            PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    items = [(k, str(v)[:500]) for k, v in flatten(params).items()]
    with lock():
        mlflow.set_tags(tags)
        for i in range(0, len(items), 90):
            mlflow.log_params(dict(items[i : i + 90]))


def _end_run(mlflow: Any, lock: Callable[[], ContextManager[None]], finished: bool) -> None:
    """FINISHED or FAILED; on failure, the stage's own error is the one reported."""
    if mlflow.active_run() is None:
        return
    try:
        with lock():
            mlflow.end_run(status="FINISHED" if finished else "FAILED")
    except Exception:  # noqa: BLE001
        if finished:
            raise


@contextmanager
def stage_run(stage: str, params: dict[str, Any], experiment: str, root: Path = Path(".")) -> Iterator[Tracker]:
    """One MLflow run for a stage: params, tags; FAILED if the block raises. Fails early if unreachable."""
    import mlflow

    local = not os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri(root)
    timeout = int(params["tracking"]["connect_timeout"])
    check_sqlite(uri, timeout)  # before MLflow's own waits and retries
    with store(root):
        _start_run(mlflow, stage, experiment, root, uri, timeout, local)
        lock = partial(store_lock, uri, timeout)
        finished = False
        try:
            _log_run_info(mlflow, stage, params, root, lock)
            yield Tracker(mlflow, lock)
            finished = True
        finally:
            _end_run(mlflow, lock, finished)
