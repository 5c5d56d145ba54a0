"""Serving: the registered pyfunc model answers like tlpipe-predict, in process and behind `mlflow models serve`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from _support import REPO
from tlpipe import checkpoint, models, predict
from tlpipe.serving import model as serving, registry, server as srv
from tlpipe.errors import PipelineError

CLASSES = ["zero", "one", "unknown"]
NAME = "test-classifier"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A fresh sqlite tracking + registry store, a tiny checkpoint registered in it, and real images."""
    root = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    net = models.build("resnet18", len(CLASSES), pretrained=False)
    ckpt = root / "m.pt"
    checkpoint.save(ckpt, net, {"backbone": "resnet18", "classes": CLASSES, "input_size": 32,
                                "mean": list(models.IMAGENET_MEAN), "std": list(models.IMAGENET_STD),
                                "temperature": 1.7})
    rng = np.random.default_rng(0)
    files = []
    for i, (mode, ext) in enumerate([("RGB", "png"), ("L", "png"), ("RGBA", "png"), ("RGB", "jpeg"), ("RGB", "ppm")]):
        arr = rng.integers(0, 255, (40 + 3 * i, 30, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        img = Image.fromarray(arr if mode == "RGBA" else arr[..., :3])
        path = root / f"img{i}.{ext}"
        (img.convert(mode) if mode == "L" else img).save(path)
        files.append(path)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("serving-test")
        with mlflow.start_run() as run:
            run_id = run.info.run_id
        name, version = registry.register(ckpt, files[0].read_bytes(), NAME, run_id, root, 10)
        yield {"uri": uri, "ckpt": ckpt, "files": files, "name": name, "version": version, "run_id": run_id,
               "root": root}
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def frame(files: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({"image": [serving.encode(f.read_bytes()) for f in files]})


def check_answer(out: pd.DataFrame, files: list[Path], ckpt: Path, atol: float = 1e-6) -> None:
    classes, probs = predict.probabilities(ckpt, files)
    assert list(out.columns) == [*classes, "label", "probability"]
    np.testing.assert_allclose(out[classes].to_numpy(dtype=float), probs.numpy(), rtol=0, atol=atol)
    assert list(out["label"]) == [classes[i] for i in probs.argmax(1).tolist()]
    np.testing.assert_allclose(out["probability"].to_numpy(dtype=float), probs.max(1).values.numpy(), atol=atol)


def test_registered_pyfunc_matches_predict(store) -> None:
    client = mlflow.MlflowClient(store["uri"])
    mv = client.get_model_version(NAME, store["version"])
    assert mv.run_id == store["run_id"] and store["version"] == "1"
    assert client.get_run(store["run_id"]).data.tags["registered_model"] == f"{NAME}/1"
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{store['version']}")
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["image"]
    assert sig.outputs.input_names() == [*CLASSES, "label", "probability"]
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{store['version']}", dst_path=str(
        store["root"] / "dl")))
    assert (local / "serving_input_example.json").is_file()
    assert any(p.name == "m.pt" for p in local.rglob("*.pt"))  # the checkpoint is the model's artifact
    assert (local / "code" / "tlpipe" / "serving" / "model.py").is_file()  # the code travels with the model
    check_answer(model.predict(frame(store["files"])), store["files"], store["ckpt"])
    one = model.predict(frame(store["files"][1:2]))  # one image alone: same answer as in the batch
    check_answer(one, store["files"][1:2], store["ckpt"])


def test_pyfunc_refuses_bad_input(store) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{store['version']}")
    with pytest.raises(Exception, match="row 1"):
        model.predict(pd.DataFrame({"image": [serving.encode(store["files"][0].read_bytes()),
                                              serving.encode(b"not an image")]}))
    with pytest.raises(PipelineError, match="label"):
        serving.output_columns(["a", "label"])


def bomb_png() -> bytes:
    """A tiny PNG of more pixels than data.images allows (a decompression bomb)."""
    import io

    buf = io.BytesIO()
    Image.new("1", (8100, 8100)).save(buf, format="PNG")
    return buf.getvalue()


def bad_rows(good: bytes) -> dict[str, tuple[list[str], str]]:
    """Requests with one bad row among good ones: (image column, what the error must say)."""
    ok = serving.encode(good)
    return {"not base64": ([ok, "%%% not base64 %%%"], "serving: row 1: column 'image' is not base64"),
            "cannot decode": ([ok, ok, "bm90IGFuIGltYWdl"], "serving: row 2: cannot decode"),
            "too many pixels": ([serving.encode(bomb_png()), ok], "serving: row 0: too many pixels")}


def test_pyfunc_bad_rows_are_clear_invalid_parameter_errors(store) -> None:
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{store['version']}")
    for what, (column, message) in bad_rows(store["files"][0].read_bytes()).items():
        with pytest.raises(MlflowException) as info:
            model.predict(pd.DataFrame({"image": column}))
        assert info.value.error_code == "INVALID_PARAMETER_VALUE" and info.value.get_http_status_code() == 400, what
        assert message in info.value.message and "BytesIO" not in info.value.message, (what, info.value.message)
        assert "Traceback" not in info.value.serialize_as_json()
    check_answer(model.predict(frame(store["files"][:2])), store["files"][:2], store["ckpt"])  # still answers


def test_onnx_backend_logs_and_runs_the_onnx_export(store) -> None:
    with mlflow.start_run(run_id=store["run_id"]):
        info = registry.log_model(store["ckpt"], store["files"][0].read_bytes(), None, backend="onnx")
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(store["root"] / "dl_onnx")))
    assert any(local.rglob("*.onnx")) and not any(local.rglob("*.pt"))  # the ONNX file is the artifact
    assert any(r.startswith("onnxruntime==") for r in (local / "requirements.txt").read_text().split())
    model = mlflow.pyfunc.load_model(info.model_uri)
    check_answer(model.predict(frame(store["files"])), store["files"], store["ckpt"], atol=1e-4)
    with pytest.raises(Exception, match="row 1: cannot decode"):
        model.predict(pd.DataFrame({"image": [serving.encode(store["files"][0].read_bytes()), "bm90IGFuIGltYWdl"]}))


def test_concurrent_requests_share_passes_and_fail_alone(store) -> None:
    """Many threads at once (as the scoring server calls it): each gets its own images' answer,
    and a request with a broken image fails without failing the others batched with it."""
    from concurrent.futures import ThreadPoolExecutor

    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{store['version']}")
    files = store["files"]
    _, expected = predict.probabilities(store["ckpt"], files)
    bad = pd.DataFrame({"image": [serving.encode(b"broken")]})

    def call(i: int):
        if i % 7 == 3:
            with pytest.raises(Exception, match="row 0"):
                model.predict(bad)
            return None
        k = i % len(files)
        return k, model.predict(frame(files[k : k + 1]))

    with ThreadPoolExecutor(8) as pool:
        results = [r for r in pool.map(call, range(40)) if r is not None]
    assert len(results) == 34
    for k, out in results:
        np.testing.assert_allclose(out[CLASSES].to_numpy(dtype=float)[0], expected[k].numpy(), rtol=0, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_predict_command(store, tmp_path: Path) -> None:
    port = _free_port()
    env = {**srv.serve_env(store["uri"]), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(srv.serve_command(f"models:/{NAME}/{store['version']}", port),
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        srv.wait_ready(base, server, 180)
        files = store["files"]
        status, text = _post(f"{base}/invocations", {"dataframe_split": frame(files).to_dict(orient="split")})
        assert status == 200, text
        answer = pd.DataFrame(json.loads(text)["predictions"])

        cmd = [sys.executable, "-m", "tlpipe.predict", "--model", str(store["ckpt"]), "--json",
               "--top-k", str(len(CLASSES)), *map(str, files)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                             env={**env, "PYTHONPATH": str(REPO / "src")})
        assert out.returncode == 0, out.stderr
        cli = json.loads(out.stdout)
        for row, res in zip(answer.to_dict(orient="records"), cli):
            expected = {t["class"]: t["probability"] for t in res["top"]}  # rounded to 6 decimals
            for c in CLASSES:
                assert abs(row[c] - expected[c]) <= 2e-6, (res["path"], c, row[c], expected[c])
            assert row["label"] == res["top"][0]["class"]
        check_answer(answer, files, store["ckpt"])

        for what, (column, message) in bad_rows(files[0].read_bytes()).items():
            status, text = _post(f"{base}/invocations", {"dataframe_split": {"columns": ["image"],
                                                                             "data": [[c] for c in column]}})
            assert status == 400, (what, status, text)
            body = json.loads(text)
            assert body["error_code"] == "INVALID_PARAMETER_VALUE" and message in body["message"], (what, body)
            assert "Traceback" not in text and "stack_trace" not in body, (what, text)
            status, _ = _post(f"{base}/invocations", {"dataframe_split": frame(files[:1]).to_dict(orient="split")})
            assert status == 200, what  # still serving after a bad request
    finally:
        srv.stop(server)
        log.close()
