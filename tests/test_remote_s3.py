"""Shared storage: push a finished run to an S3 remote (moto's server on 127.0.0.1), pull it into a fresh
git clone, and check that nothing reruns there and an experiment reruns only what its param touches."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_e2e import FAST, commit, copy_repo, set_params

pytestmark = pytest.mark.slow

moto_server = pytest.importorskip("moto.server", reason="moto[server] not installed (requirements.txt)")
boto3 = pytest.importorskip("boto3")

BUCKET = "tlpipe-store"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
LIGHT = {**FAST, "data.max_per_class": 40, "unknown.train_images": 40, "unknown.valid_images": 12,
         "unknown.test_images": 20, "train_head.epochs": 5, "retrain.head.epochs": 5,
         "train_head.feature_views": 1, "retrain.head.feature_views": 1, "registry.register": False,
         "evaluate.bootstrap": 0, "evaluate.baseline_size": 0, "evaluate.gallery_images": 4,
         "robustness.corruptions": ["noise"], "robustness.max_images": 40}  # the storage, not the model, is tested
UPSTREAM = {"download", "split", "decode@split", "decode@split_unknown", "train_head", "finetune",
            "add_unknown_class", "export@finetuned"}  # crossval reads retrain.* too (split.fold_retrain)


def always_changed(repo: Path) -> set[str]:
    """Stages dvc.yaml marks always_changed (they run on every repro, by design)."""
    return {name for name, st in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].items()
            if st.get("always_changed")}


def _env(cwd: Path) -> dict[str, str]:
    """The test's environment only: no MLflow/DVC/AWS settings of the caller, dummy S3 credentials, empty
    AWS config files (~/.aws is never read)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "AWS_"))}
    empty = cwd.parent / "aws_empty"
    empty.touch()
    env.update(CREDENTIALS, AWS_CONFIG_FILE=str(empty), AWS_SHARED_CREDENTIALS_FILE=str(empty))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(args: list[str], cwd: Path, timeout: int) -> str:
    proc = subprocess.run(args, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def dvc(*args: str, cwd: Path, timeout: int = 120) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd, timeout)


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


def test_push_pull_fresh_clone(tmp_path: Path) -> None:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)

        repo = copy_repo(tmp_path / "repo")
        set_params(repo, LIGHT)
        commit(repo, "baseline")
        dvc("repro", cwd=repo, timeout=900)
        dvc("remote", "add", "-d", "store", f"s3://{BUCKET}/tlpipe", cwd=repo)
        dvc("remote", "modify", "store", "endpointurl", endpoint, cwd=repo)
        commit(repo, "results + remote")  # code, params, dvc.yaml, dvc.lock, metrics, uncached plots, .dvc/config
        pushed = dvc("push", cwd=repo, timeout=300)
        assert re.search(r"\d+ files? pushed", pushed), pushed
        keys = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1") \
            .list_objects_v2(Bucket=BUCKET, Prefix="tlpipe/").get("KeyCount", 0)
        assert keys > 0

        clone = tmp_path / "clone"
        run(["git", "clone", "-q", str(repo), str(clone)], repo, 60)
        run(["git", "config", "user.email", "test@example.com"], clone, 10)
        run(["git", "config", "user.name", "test"], clone, 10)
        assert not (clone / "models/finetuned.pt").exists() and not (clone / "data/raw").exists()
        dvc("pull", cwd=clone, timeout=300)
        for rel in ("data/raw", "data/cache/split", "models/head.pt", "models/retrained.pt"):
            assert (clone / rel).exists(), rel
        for rel in ("models/finetuned.pt", "models/retrained.pt", "data/cache/split_unknown"):
            src, dst = repo / rel, clone / rel
            if src.is_file():
                assert src.read_bytes() == dst.read_bytes(), rel

        always = always_changed(clone)
        status = json.loads(dvc("status", "--json", cwd=clone))  # {} = "Data and pipelines are up to date"
        assert all(name in always and changes == ["always changed"] for name, changes in status.items()), status
        again = dvc("repro", cwd=clone, timeout=300)
        assert ran(again) <= always, again
        assert "didn't change" in again, again

        exp = dvc("exp", "run", "-S", "retrain.finetune.epochs=2", cwd=clone, timeout=600)
        stages = ran(exp)
        assert "retrain" in stages, exp
        assert not stages & UPSTREAM, stages
    finally:
        server.stop()
        shutil.rmtree(tmp_path, ignore_errors=True)
