"""A shared tracking server: `mlflow server` on loopback (sqlite backend, artifacts served by the server), the
whole pipeline and a queued pair of experiments logging to it through MLFLOW_TRACKING_URI=http://127.0.0.1:PORT;
the runs nested under their parent runs, the artifacts on the server, the registered model served from the
registry. Then the server dies while a stage trains: the stage fails with one error naming the URI and leaves
no half-written output, and once the server is back the rerun completes under the same parent run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from _mlflow_ui import _stop, free_port
from test_e2e import FAST, commit, copy_repo, set_params
from test_serving import _post, frame
from tlpipe.serving import server as srv

pytestmark = pytest.mark.slow

LIGHT = {**FAST, "data.max_per_class": 40, "unknown.train_images": 40, "unknown.valid_images": 12,
         "unknown.test_images": 20, "train_head.epochs": 5, "retrain.head.epochs": 5, "retrain.finetune.epochs": 2}
# a dead server: MLflow's defaults (7 retries, exponential backoff) take minutes to give up; a user shortens them so
RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
STAGE_RUNS = {"train_head", "finetune", "retrain", "evaluate_finetuned", "evaluate_retrained"}
MODEL = "tlpipe-classifier"


def _env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               MLFLOW_TRACKING_URI=uri, **RETRIES)
    return env


def _dvc(repo: Path, env: dict[str, str], *args: str, timeout: float = 1500) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


@contextmanager
def mlflow_server(root: Path, port: int) -> Iterator[subprocess.Popen]:
    """`mlflow server` on 127.0.0.1:port over root/server.db, artifacts in root/artifacts (served)."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli) if mlflow_cli.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--serve-artifacts",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    log = root / f"server-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            srv.wait_ready(f"http://127.0.0.1:{port}", proc, 240, "/health")
        except Exception as exc:  # noqa: BLE001
            raise RuntimeError(f"{exc}: {log.read_text()[-2000:]}") from exc
        yield proc
    finally:
        _stop(proc)


def _parents(client, exp_id: str) -> dict[str, object]:
    """Parent (pipeline) runs by name."""
    return {r.info.run_name: r for r in client.search_runs([exp_id]) if "stage" not in r.data.tags}


def _children(client, exp_id: str, parent_id: str) -> dict[str, object]:
    """Stage runs nested under a parent, by stage."""
    return {r.data.tags["stage"]: r for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'")}


def _check_pipeline_run(client, exp_id: str, name: str, expected: set[str] = STAGE_RUNS) -> str:
    parent = _parents(client, exp_id)[name]
    assert parent.info.status == "FINISHED", parent.info
    assert {"finetuned.test_accuracy", "retrained.test_accuracy"} <= set(parent.data.metrics), parent.data.metrics
    stages = _children(client, exp_id, parent.info.run_id)
    assert expected <= set(stages), sorted(stages)
    assert all(r.info.status == "FINISHED" for r in stages.values())
    return parent.info.run_id


def _serve_and_ask(uri: str, version: str, images: list[Path], tmp: Path) -> list[dict]:
    port = free_port()
    with open(tmp / "serve.log", "w") as log:
        proc = subprocess.Popen(srv.serve_command(f"models:/{MODEL}/{version}", port), cwd=tmp,
                                env={**srv.serve_env(uri), "PYTHONUNBUFFERED": "1"}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        srv.wait_ready(f"http://127.0.0.1:{port}", proc, 240)
        status, text = _post(f"http://127.0.0.1:{port}/invocations",
                             {"dataframe_split": frame(images).to_dict(orient="split")})
        assert status == 200, text
        return json.loads(text)["predictions"]
    finally:
        srv.stop(proc)


def _kill_while_training(repo: Path, env: dict[str, str], server: subprocess.Popen) -> tuple[int, str]:
    """`dvc repro` of retrain; SIGKILL the server once the first epoch is logged; DVC's exit code and output."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "retrain"], cwd=repo,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if re.search(r"\] epoch 1:", line) and server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    return proc.wait(timeout=600), "".join(lines)


def test_pipeline_queue_and_a_dying_server(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = _env(uri)
    repo = copy_repo(tmp_path / "repo")
    set_params(repo, LIGHT)
    commit(repo, "light")
    with mlflow_server(root, port):
        _dvc(repo, env, "repro")
        client = MlflowClient(tracking_uri=uri)
        exp_id = client.get_experiment_by_name("tlpipe").experiment_id
        parent_id = _check_pipeline_run(client, exp_id, "workspace")
        assert not (repo / "mlflow.db").exists() and not (repo / "mlruns").exists()  # all of it went to the server
        retrain = _children(client, exp_id, parent_id)["retrain"]
        assert client.list_artifacts(retrain.info.run_id), "retrain logged no artifacts"
        assert any((root / "artifacts").rglob("*.png")), "the figures are not in the server's artifact store"
        [version] = client.search_model_versions(f"name = '{MODEL}'")
        assert version.run_id == retrain.info.run_id
        images = [repo / "data/raw" / line.split(",")[0]
                  for line in (repo / "data/split/test.csv").read_text().splitlines()[1:4]]
        answer = _serve_and_ask(uri, version.version, images, tmp_path)
        assert len(answer) == 3 and all(0.99 < sum(v for k, v in row.items() if k not in ("label", "probability"))
                                        < 1.01 for row in answer), answer
        commit(repo, "results")

        for epochs in (3, 6):  # a queued pair, run 2 at a time, each under its own parent run
            _dvc(repo, env, "exp", "run", "--queue", "-S", f"retrain.head.epochs={epochs}")
        _dvc(repo, env, "queue", "start", "-j", "2")
        deadline = time.monotonic() + 1200
        while (status := _dvc(repo, env, "queue", "status")) and ("Running" in status or "Queued" in status):
            assert time.monotonic() < deadline, status
            time.sleep(5)
        assert status.count("Success") == 2, status
        names = [e["name"] for rev in json.loads(_dvc(repo, env, "exp", "show", "--json"))
                 for e in rev.get("experiments") or []]
        assert len(names) == 2, names
        for name in names:  # what retrain.head.epochs reruns, under the experiment's own parent run
            _check_pipeline_run(client, exp_id, name, {"retrain", "evaluate_retrained"})
        assert len(client.search_model_versions(f"name = '{MODEL}'")) == 3

    # the server dies while retrain trains
    before = (repo / "models/retrained.pt").read_bytes()
    started_ms = int(time.time() * 1000)
    with mlflow_server(root, port) as server:
        code, out = _kill_while_training(repo, env, server)
    assert code != 0, out
    errors = [line for line in out.splitlines() if line.startswith("error: mlflow:")]
    assert len(errors) == 1 and uri in errors[0], out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    ckpt = repo / "models/retrained.pt"  # DVC removed the stage's outputs before running it: absent, or whole
    assert not ckpt.exists() or ckpt.read_bytes() == before
    assert not [p for p in repo.rglob("*.tmp") if ".dvc" not in p.parts]
    with mlflow_server(root, port):  # back: the rerun completes, under the killed run's parent run
        _dvc(repo, env, "repro", "--force", "--single-item", "retrain")
        client = MlflowClient(tracking_uri=uri)
        runs = [r for r in client.search_runs([exp_id], "tags.stage = 'retrain'") if r.info.start_time >= started_ms]
        assert len(runs) == 2, [(r.info.run_name, r.info.status) for r in runs]
        assert {r.data.tags["mlflow.parentRunId"] for r in runs} != {None}
        assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1, runs
        assert "FINISHED" in {r.info.status for r in runs} and len({r.info.status for r in runs}) == 2
    assert (repo / "models/retrained.pt").read_bytes() == before  # same params: the same checkpoint
