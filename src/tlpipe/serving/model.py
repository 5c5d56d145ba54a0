"""The retrained model as an MLflow pyfunc model: base64-encoded images in, class probabilities out.

The model's only artifact is the checkpoint; preprocessing comes from its metadata through
`inference.classify`, so the served model and `tlpipe-predict` give the same probabilities. Loading
it imports the inference path only (no training, tracking or evaluation code).

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve -m models:/tlpipe-classifier/1 \\
        --env-manager local -h 127.0.0.1 -p 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"dataframe_split": {"columns": ["image"], "data": [["<base64 of a PNG/JPEG/PPM...>"]]}}'
"""

from __future__ import annotations

import base64
import binascii
import threading
from typing import Any

import mlflow.pyfunc
import pandas as pd

from .. import checkpoint
from ..errors import PipelineError
from ..inference import classify

IMAGE_COLUMN = "image"  # input: one base64-encoded image file (any format Pillow reads) per row
LABEL_COLUMN = "label"  # output: the most probable class
PROB_COLUMN = "probability"  # output: its probability
CHECKPOINT_ARTIFACT = "checkpoint"


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
