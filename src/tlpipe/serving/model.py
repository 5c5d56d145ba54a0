"""The retrained model as an MLflow pyfunc model: base64-encoded images in, class probabilities out.

The model's only artifact is the checkpoint (registry.backend: torch), or its ONNX export run by onnxruntime
(backend onnx, `inference_onnx`); preprocessing comes from its metadata through `inference.classify`, so the
served model and `tlpipe-predict` give the same probabilities. Loading it imports the inference path only (no
training, tracking or evaluation code). A bad request (a row that is not base64, does not decode, or has too
many pixels) fails with an MlflowException INVALID_PARAMETER_VALUE naming the row and the reason: the scoring
server answers 400 with {"error_code", "message"} and no stack trace.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve -m models:/tlpipe-classifier/1 \\
        --env-manager local -h 127.0.0.1 -p 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"dataframe_split": {"columns": ["image"], "data": [["<base64 of a PNG/JPEG/PPM...>"]]}}'
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from .. import checkpoint
from ..errors import PipelineError
from ..inference import classify

IMAGE_COLUMN = "image"  # input: one base64-encoded image file (any format Pillow reads) per row
LABEL_COLUMN = "label"  # output: the most probable class
PROB_COLUMN = "probability"  # output: its probability
CHECKPOINT_ARTIFACT = "checkpoint"
ONNX_ARTIFACT = "onnx"  # registry.backend: onnx logs the exported model under this name instead


def bad_request(message: str) -> MlflowException:
    """The error a client gets for a bad input: HTTP 400, {"error_code": "INVALID_PARAMETER_VALUE", "message"}."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def b64(i: int, text: Any) -> bytes:
    """Row i's image bytes; a bad_request when it is not base64 text (whitespace and line breaks allowed)."""
    if not isinstance(text, str):
        raise bad_request(f"serving: row {i}: column {IMAGE_COLUMN!r} is not base64 text (got {type(text).__name__})")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"serving: row {i}: column {IMAGE_COLUMN!r} is not base64 ({exc})") from None


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
        if ONNX_ARTIFACT in context.artifacts:
            from ..inference_onnx import OnnxClassifier

            self.onnx = OnnxClassifier(context.artifacts[ONNX_ARTIFACT])
            self.net, self.meta = None, self.onnx.meta
        else:
            self.onnx = None
            self.net, self.meta = checkpoint.restore(context.artifacts[CHECKPOINT_ARTIFACT])
            self.net.eval()
        self.classes = list(self.meta["classes"])
        self.columns = output_columns(self.classes)
        self._model_lock = threading.Lock()  # one forward pass at a time
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            raise bad_request(f"serving: input must be a DataFrame with a column {IMAGE_COLUMN!r}")
        blobs = [(f"row {i}", b64(i, text)) for i, text in enumerate(model_input[IMAGE_COLUMN].tolist())]
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
        if isinstance(req.error, PipelineError) and str(req.error).startswith("image row "):  # data.images.decode's
            reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(req.error).removeprefix("image "))
            raise bad_request(f"serving: {reason}") from None
        if req.error is not None:
            raise req.error
        return req.probs

    def _classify(self, blobs: list[tuple[str, bytes]]) -> Any:
        if self.onnx is not None:
            return self.onnx.classify(blobs).astype("float64")
        return classify(self.net, self.meta, blobs).double().numpy()

    def _run(self, batch: list[_Request]) -> None:
        try:
            probs = self._classify([b for r in batch for b in r.blobs])
            start = 0
            for r in batch:
                r.probs, start = probs[start : start + len(r.blobs)], start + len(r.blobs)
        except Exception:  # noqa: BLE001 - a bad image: run each request alone so only its own fails
            for r in batch:
                try:
                    r.probs = self._classify(r.blobs)
                except Exception as exc:  # noqa: BLE001 - handed to the request's own thread
                    r.error = exc
        finally:
            for r in batch:
                if r.probs is None and r.error is None:
                    r.error = PipelineError("serving: inference was interrupted")
                r.done = True
