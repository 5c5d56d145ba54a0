"""The pixel baseline beside every model: logistic regression on raw downscaled pixels.

Trained on the split's train images, scored on the same closed-set test images as the model. A
model that barely beats it learned little beyond colour and layout; one far above it earned its
backbone. Standardised features, seeded lbfgs: the same numbers on every rerun."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..errors import PipelineError
from . import bootstrap

MODEL = "logistic_regression_pixels"
MAX_ITER = 500  # lbfgs iterations; C below keeps 16x16x3 standardised pixels converging well within it
C = 0.05  # inverse L2 strength: hundreds of pixels, about as many images per class
CHUNK = 512  # images converted to float at once (bounded memory on large splits)


def pixel_features(images: torch.Tensor, size: int) -> np.ndarray:
    """(images, channels * size * size) float32 in [0, 1]: uint8 NCHW images area-averaged to size x size."""
    if images.ndim != 4 or size < 1:
        raise PipelineError(f"baseline: need NCHW images and size >= 1, got shape {tuple(images.shape)}, size {size}")
    parts = []
    for start in range(0, len(images), CHUNK):
        batch = images[start:start + CHUNK].float() / 255.0
        if batch.shape[-2:] != (size, size):
            batch = torch.nn.functional.interpolate(batch, size=(size, size), mode="area")
        parts.append(batch.flatten(1).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, images.shape[1] * size * size), np.float32)


def fit(features: np.ndarray, targets: np.ndarray, seed: int) -> Pipeline:
    """Standardise, then multinomial logistic regression; one error if train holds fewer than two classes."""
    if len(np.unique(targets)) < 2:
        raise PipelineError(f"baseline: train rows hold {len(np.unique(targets))} class(es), need at least 2")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed))
    # one BLAS thread: the fit is small, threads fighting a busy 2-core box made it 10x slower (0.8 s -> 12 s),
    # and the numbers no longer depend on the thread count
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # the baseline is a yardstick, not a tuned model
        return model.fit(features, targets)


def pixel_baseline(train: tuple[torch.Tensor, np.ndarray], test: tuple[torch.Tensor, np.ndarray],
                   test_groups: np.ndarray, n_classes: int, size: int, seed: int, resamples: int) -> dict[str, Any]:
    """Fit on `train` (images, class indices), score on `test`: accuracy, macro-F1 and the accuracy interval
    over the same group resamples as the model's (None when resamples is 0)."""
    (train_images, train_targets), (test_images, test_targets) = train, test
    if len(test_targets) == 0:
        raise PipelineError("baseline: the test split has no closed-set rows to score")
    model = fit(pixel_features(train_images, size), np.asarray(train_targets), seed)
    pred = model.predict(pixel_features(test_images, size))
    correct = pred == np.asarray(test_targets)
    interval = bootstrap.accuracy_interval(test_groups, correct, resamples, seed) if resamples else None
    f1 = f1_score(test_targets, pred, labels=list(range(n_classes)), average="macro", zero_division=0)
    return {"model": MODEL, "size": size, "accuracy": round(float(correct.mean()), 6),
            "macro_f1": round(float(f1), 6),
            "accuracy_interval": [round(v, 6) for v in interval] if interval else None}
