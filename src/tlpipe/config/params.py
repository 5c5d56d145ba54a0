"""Load and validate params.yaml: unknown, missing or mistyped keys are errors naming the key."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from ..cpu_isa import CPU_ISAS
from ..errors import PipelineError
from .phases import KEEP_RULES, PHASES, phase_settings

Check = Callable[[str, Any], None]


@dataclass(frozen=True)
class Field:
    """One params key: accepted types, an optional value check, and whether the key must be present."""

    types: tuple[type, ...]
    check: Check | None = None
    required: bool = True


def _finite(key: str, v: Any) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise PipelineError(f"params: {key} must be a finite number, got {v!r}")


def _positive(key: str, v: Any) -> None:
    _finite(key, v)
    if v <= 0:
        raise PipelineError(f"params: {key} must be > 0, got {v!r}")


def _non_negative(key: str, v: Any) -> None:
    _finite(key, v)
    if v < 0:
        raise PipelineError(f"params: {key} must be >= 0, got {v!r}")


def _fraction(key: str, v: Any) -> None:
    _finite(key, v)
    if not 0 <= v <= 1:
        raise PipelineError(f"params: {key} must be between 0 and 1, got {v!r}")


def _dropout(key: str, v: Any) -> None:
    _finite(key, v)
    if not 0 <= v < 1:
        raise PipelineError(f"params: {key} must be in [0, 1), got {v!r}")


def _folds(key: str, v: Any) -> None:
    if v == 1 or v < 0:
        raise PipelineError(f"params: {key} must be 0 (off) or at least 2 folds, got {v!r}")


def _hex_digest(length: int) -> Check:
    def check(key: str, v: Any) -> None:
        if v and (len(v) != length or any(c not in "0123456789abcdefABCDEF" for c in v)):
            raise PipelineError(f"params: {key} must be empty or {length} hex digits, got {v!r}")

    return check


def _known_spec(key: str, v: Any) -> None:
    if isinstance(v, str) and v != "all":
        raise PipelineError(f"params: {key} must be a mapping of label id -> name, or 'all'; got {v!r}")


def _one_of(*choices: str) -> Check:
    def check(key: str, v: Any) -> None:
        if v not in choices:
            raise PipelineError(f"params: {key} must be one of {', '.join(choices)}; got {v!r}")

    return check


def _registered_name(key: str, v: Any) -> None:
    if not v.strip() or "/" in v or ":" in v:
        raise PipelineError(f"params: {key} must be a non-empty name without '/' or ':', got {v!r}")


def _int_list(key: str, v: Any) -> None:
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
        raise PipelineError(f"params: {key} must be a list of positive epoch numbers, got {v!r}")


CORRUPTIONS = ("white_balance", "hue", "brightness", "contrast", "overexposure", "gaussian_blur", "motion_blur",
               "noise", "jpeg", "downscale", "rotation",
               "warm_overexposure")  # evaluation.robustness.CORRUPTIONS, in its order


def _corruption_list(key: str, v: Any) -> None:
    bad = [c for c in v if c not in CORRUPTIONS]
    if bad or not v or len(set(map(str, v))) != len(v):
        what = f"unknown {', '.join(map(repr, bad))}" if bad else ("empty" if not v else "a name twice")
        raise PipelineError(f"params: {key} must list corruptions among {', '.join(CORRUPTIONS)} (each once); "
                            f"got {what}")


NUM = (int, float)
SHARED: dict[str, Any] = {  # the `train` section's phase settings; a phase section may override each
    "batch_size": Field((int,), _positive),
    "optimizer": Field((str,), _one_of("adam", "adamw", "sgd")),
    "lr": Field(NUM, _positive),
    "weight_decay": Field(NUM, _non_negative),
    "momentum": Field(NUM, _fraction),
    "label_smoothing": Field(NUM, _fraction),
    "scheduler": Field((str,), _one_of("none", "step", "multistep", "cosine", "onecycle", "plateau")),
    "step_size": Field((int,), _positive),
    "gamma": Field(NUM, _positive),
    "nesterov": Field((bool,)),
    "milestones": Field((list,), _int_list),
    "warmup_epochs": Field((int,), _non_negative),
    "plateau_patience": Field((int,), _non_negative),
    "mixup_alpha": Field(NUM, _non_negative),
    "cutmix_alpha": Field(NUM, _non_negative),
    "early_stopping": Field((int,), _non_negative),
    "grad_clip": Field(NUM, _non_negative),
    "keep": Field((str,), _one_of(*KEEP_RULES)),
}
OVERRIDES = {k: replace(f, required=False) for k, f in SHARED.items()}
OWN = {"epochs": Field((int,), _positive), "lr_scale": Field(NUM, _positive, required=False)}
HEAD_PHASE = {**OWN, "feature_views": Field((int,), _positive), **OVERRIDES}
TUNE_PHASE = {**OWN, "unfreeze_blocks": Field((int,), _non_negative), "prefix_views": Field((int,), _non_negative),
              "bn_train": Field((bool,)), "backbone_lr_mult": Field(NUM, _positive), **OVERRIDES}

SCHEMA: dict[str, Any] = {
    "seed": Field((int,), _non_negative),
    "device": Field((str,), _one_of("auto", "cpu", "cuda")),
    "cpu_isa": Field((str,), _one_of(*CPU_ISAS, "")),
    "data": {
        "dataset": Field((str,), _one_of("digits", "gtsrb", "cifar10", "filelist", "imagefolder")),
        "url": Field((str,)),
        "sha256": Field((str,), _hex_digest(64)),
        "md5": Field((str,), _hex_digest(32)),
        "root": Field((str,)),
        "train_list": Field((str,)),
        "test_list": Field((str,)),
        "bad_images": Field((str,), _one_of("error", "skip")),
        "max_per_class": Field((int,), _non_negative),
        "test_url": Field((str,)),
        "test_sha256": Field((str,), _hex_digest(64)),
        "test_labels_url": Field((str,)),
        "test_labels_sha256": Field((str,), _hex_digest(64)),
        "roi_crop": Field((bool,)),
        "known_classes": Field((dict, str), _known_spec),
    },
    "split": {
        "train": Field(NUM, _fraction),
        "valid": Field(NUM, _fraction),
        "test": Field(NUM, _fraction),
        "valid_per_class": Field((int,), _non_negative),
        "test_per_class": Field((int,), _non_negative),
        "by_group": Field((bool,)),
        "folds": Field((int,), _folds),
        "fold_retrain": Field((bool,)),
    },
    "model": {
        "backbone": Field((str,)),
        "weights": Field((str,), _one_of("imagenet", "none")),
        "input_size": Field((int,), _positive),
        "channels_last": Field((bool,)),
        "input_norm": Field((str,), _one_of("none", "grayworld", "autolevel", "equalize")),
        "head_dropout": Field(NUM, _dropout),
        "inference_batch_size": Field((int,), _positive),
    },
    "augment": {
        "crop_scale_min": Field(NUM, _fraction),
        "rotation": Field(NUM, _non_negative),
        "hflip": Field(NUM, _fraction),
        "color_jitter": Field(NUM, _non_negative),
        "engine": Field((str,), _one_of("batched", "v2")),
        "vflip": Field(NUM, _fraction),
        "grayscale": Field(NUM, _fraction),
        "erasing": Field(NUM, _fraction),
        "white_balance": Field(NUM, _fraction),
        "exposure": Field(NUM, _non_negative),
        "noise": Field(NUM, _fraction),
        "v2": Field((list,)),
    },
    "train_head": HEAD_PHASE,
    "finetune": TUNE_PHASE,
    "unknown": {
        "classes": Field((list, str)),
        "train_images": Field((int,), _non_negative),
        "valid_images": Field((int,), _non_negative),
        "test_images": Field((int,), _non_negative),
        "holdout_classes": Field((list,)),
        "holdout_test_images": Field((int,), _non_negative),
    },
    "retrain": {"head": HEAD_PHASE, "finetune": TUNE_PHASE},
    "train": {
        **SHARED,
        "resume": Field((bool,)),
        "checkpoint_every": Field((int,), _positive),
        "precision": Field((str,), _one_of("fp32", "bf16", "fp16")),
        "distributed": Field((bool,)),
        "nproc_per_node": Field((int,), _positive),
    },
    "evaluate": {"batch_size": Field((int,), _positive), "gallery_images": Field((int,), _non_negative),
                 "bootstrap": Field((int,), _non_negative), "baseline_size": Field((int,), _non_negative)},
    "registry": {"register": Field((bool,)), "model_name": Field((str,), _registered_name),
                 "backend": Field((str,), _one_of("torch", "onnx"))},
    "export": {"int8": Field((bool,))},
    "tracking": {"experiment": Field((str,)), "connect_timeout": Field((int,), _positive)},
    "robustness": {"corruptions": Field((list,), _corruption_list), "max_images": Field((int,), _non_negative)},
    "audit": {"folds": Field((int,), _folds), "duplicate_threshold": Field(NUM, _fraction),
              "outlier_z": Field(NUM, _positive), "gallery_images": Field((int,), _non_negative)},
    "lr_find": {"steps": Field((int,), _positive), "start_lr": Field(NUM, _positive), "end_lr": Field(NUM, _positive)},
}


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _validate(node: dict[str, Any], schema: dict[str, Any], prefix: str) -> None:
    for key in node:
        if key not in schema:
            raise PipelineError(f"params: unknown key {prefix}{key!s}{_suggest(str(key), list(schema))}")
    for key, spec in schema.items():
        full = f"{prefix}{key}"
        if key not in node:
            if not getattr(spec, "required", True):
                continue
            raise PipelineError(f"params: missing key {full}")
        value = node[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise PipelineError(f"params: {full} must be a mapping, got {type(value).__name__}")
            _validate(value, spec, f"{full}.")
            continue
        ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
        if not ok:
            want = " or ".join(t.__name__ for t in spec.types)
            raise PipelineError(f"params: {full} must be {want}, got {type(value).__name__} {value!r}")
        if spec.check:
            spec.check(full, value)


def _check_unfreeze(p: dict[str, Any]) -> None:
    """unfreeze_blocks can't exceed the backbone's block groups (counted without importing torch)."""
    from .backbones import BLOCK_GROUPS

    backbone = p["model"]["backbone"]
    if backbone not in BLOCK_GROUPS:
        raise PipelineError(f"params: model.backbone {backbone!r} is not one of {', '.join(BLOCK_GROUPS)}"
                            f"{_suggest(str(backbone), list(BLOCK_GROUPS))}")
    groups = BLOCK_GROUPS[backbone]
    for key, phase in (("finetune", p["finetune"]), ("retrain.finetune", p["retrain"]["finetune"])):
        if phase["unfreeze_blocks"] > groups:
            raise PipelineError(f"params: {key}.unfreeze_blocks={phase['unfreeze_blocks']} exceeds the {groups} "
                                f"block groups of model.backbone {backbone}")


def _cross_checks(p: dict[str, Any]) -> None:
    s = p["split"]
    total = s["train"] + s["valid"] + s["test"]
    if abs(total - 1.0) > 1e-6:
        raise PipelineError(f"params: split.train + split.valid + split.test must sum to 1, got {total:g}")
    if isinstance(p["data"]["known_classes"], dict) and len(p["data"]["known_classes"]) < 2:
        raise PipelineError("params: data.known_classes needs at least two classes")
    _check_unfreeze(p)
    _gtsrb_checks(p["data"])
    classes = p["unknown"]["classes"]
    if isinstance(classes, str) and classes != "rest":
        raise PipelineError(f"params: unknown.classes must be a list of class ids or 'rest', got {classes!r}")
    for name in PHASES:
        _phase_checks(name, phase_settings(p, name))
    lf = p["lr_find"]
    if lf["steps"] < 2 or lf["start_lr"] >= lf["end_lr"]:
        raise PipelineError(f"params: lr_find needs steps >= 2 and start_lr < end_lr, got steps {lf['steps']}, "
                            f"start_lr {lf['start_lr']:g}, end_lr {lf['end_lr']:g}")


def _gtsrb_checks(d: dict[str, Any]) -> None:
    """The official test set (both archives or neither) and the ROI crop are gtsrb options."""
    if bool(d["test_url"]) != bool(d["test_labels_url"]):
        raise PipelineError("params: data.test_url and data.test_labels_url go together (set both or neither)")
    if d["dataset"] != "gtsrb":
        used = [k for k in ("test_url", "test_labels_url", "roi_crop") if d[k]]
        if used:
            raise PipelineError(f"params: data.{used[0]} applies to data.dataset gtsrb only, not {d['dataset']}")


def _phase_checks(name: str, ph: dict[str, Any]) -> None:
    """Schedule settings that only make sense together."""
    if ph["warmup_epochs"] >= ph["epochs"]:
        raise PipelineError(f"params: {name}.warmup_epochs ({ph['warmup_epochs']}) must be below {name}.epochs "
                            f"({ph['epochs']})")
    if ph["scheduler"] == "plateau" and ph["warmup_epochs"]:
        raise PipelineError(f"params: {name}.warmup_epochs does not combine with scheduler plateau (set it to 0)")
    if ph["scheduler"] == "multistep" and not ph["milestones"]:
        raise PipelineError(f"params: {name}.scheduler multistep needs {name}.milestones (epochs where lr *= gamma)")


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Check a params mapping against SCHEMA; return it unchanged."""
    if not isinstance(params, dict):
        raise PipelineError("params: the file must hold a mapping at top level")
    _validate(params, SCHEMA, "")
    _cross_checks(params)
    return params


def load(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"params: file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PipelineError(f"params: {path} is not valid YAML: {exc}".splitlines()[0]) from exc
    return validate(params)


def known_classes(p: dict[str, Any], labels: set[str]) -> dict[str, str]:
    """Map dataset label id (as string) to readable name, in params order. `all`: every label of the data
    that unknown.classes / unknown.holdout_classes do not claim, sorted (numbers numerically), named as is."""
    spec = p["data"]["known_classes"]
    if isinstance(spec, dict):
        return {str(k): str(v) for k, v in spec.items()}
    u = p["unknown"]
    taken = set() if u["classes"] == "rest" else {str(c) for c in u["classes"]}
    taken |= {str(c) for c in u["holdout_classes"]}
    if u["classes"] == "rest":
        raise PipelineError("params: data.known_classes 'all' needs unknown.classes as a list ([] = no unknown class)")
    known = sorted(labels - taken, key=lambda x: (0, int(x), x) if x.isdigit() else (1, 0, x))
    if len(known) < 2:
        raise PipelineError(f"params: data.known_classes 'all' leaves {len(known)} class(es) in the data; need two")
    return {k: k for k in known}


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (for MLflow)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "known_classes":
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
