"""The group bootstrap (intervals that resample whole groups) and the raw-pixel baseline, on synthetic data."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from tlpipe.errors import PipelineError
from tlpipe.evaluation import baseline, bootstrap, stage
from tlpipe.tracking import Tracker


def correlated_tracks(n_groups: int = 40, per_group: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Groups whose images are all right or all wrong (a track the model gets or misses as a whole)."""
    rng = np.random.default_rng(seed)
    group_right = rng.random(n_groups) < 0.8
    groups = np.repeat([f"track{g:03d}" for g in range(n_groups)], per_group)
    return groups, np.repeat(group_right, per_group)


def test_interval_contains_the_point_estimate_and_is_deterministic() -> None:
    groups, correct = correlated_tracks()
    first = bootstrap.group_bootstrap(groups, bootstrap.accuracy(correct), 1000, seed=42)
    assert first is not None and first[0] <= correct.mean() <= first[1]
    assert bootstrap.group_bootstrap(groups, bootstrap.accuracy(correct), 1000, seed=42) == first
    assert bootstrap.group_bootstrap(groups, bootstrap.accuracy(correct), 1000, seed=7) != first


def test_resampling_groups_is_wider_than_resampling_images_when_groups_are_correlated() -> None:
    groups, correct = correlated_tracks()
    by_group = bootstrap.group_bootstrap(groups, bootstrap.accuracy(correct), 1000, seed=1)
    by_image = bootstrap.group_bootstrap(np.arange(len(groups)), bootstrap.accuracy(correct), 1000, seed=1)
    assert by_group is not None and by_image is not None
    assert by_group[1] - by_group[0] > 2.5 * (by_image[1] - by_image[0])  # ~sqrt(25) = 5x in theory


def test_weighted_statistics_match_scikit_learn_on_the_resampled_images() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(60), 5)
    target = rng.integers(0, 4, len(groups))
    pred = np.where(rng.random(len(groups)) < 0.7, target, rng.integers(0, 4, len(groups)))
    res = bootstrap.resample_groups(groups, 5, seed=0)
    f1 = bootstrap.macro_f1(target, pred, 4)(res)
    recall = bootstrap.per_class_recall(target, pred, 4)(res)
    for r in range(5):
        idx = np.repeat(np.arange(len(groups)), res.image_weights()[r].astype(int))  # the resample as images
        assert f1[r] == pytest.approx(f1_score(target[idx], pred[idx], average="macro"))
        hits = [(pred[idx][target[idx] == c] == c).mean() for c in range(4)]
        assert recall[r] == pytest.approx(hits)


def test_macro_f1_of_a_resample_without_a_rare_class_counts_the_classes_it_holds() -> None:
    # class 2 lives in one group of 10: resamples that miss it score the two classes they hold, not 2/3 of that
    groups = np.repeat(np.arange(10), 4)
    target = np.where(groups == 9, 2, groups % 2)
    pred = target.copy()
    pred[0] = 1  # one error in class 0's group 0
    res = bootstrap.resample_groups(groups, 400, seed=0)
    f1 = bootstrap.macro_f1(target, pred, 3)(res)
    missing = res.counts[:, 9] == 0
    assert missing.any() and (~missing).any()
    for r in np.flatnonzero(missing)[:20]:
        idx = np.repeat(np.arange(len(groups)), res.image_weights()[r].astype(int))
        assert set(target[idx]) | set(pred[idx]) <= {0, 1}
        assert f1[r] == pytest.approx(f1_score(target[idx], pred[idx], average="macro"))
    assert f1[missing].min() > 0.8  # scoring the absent class 0 would give at most 2/3
    interval = bootstrap.percentile_interval(f1)
    assert interval is not None and interval[0] > 0.8


def test_auroc_interval_matches_roc_auc_score_and_skips_one_sided_resamples() -> None:
    rng = np.random.default_rng(5)
    is_known = np.repeat(rng.random(50) < 0.7, 6)
    score = np.round(rng.normal(is_known * 1.0, 1.0), 1)  # rounded: ties count half
    groups = np.repeat(np.arange(50), 6)
    weights = bootstrap.resample_groups(groups, 4, seed=2).image_weights()
    expected = [roc_auc_score(is_known, score, sample_weight=w) for w in weights]
    assert bootstrap.weighted_auroc(weights, is_known, score) == pytest.approx(expected)
    low, high = bootstrap.group_bootstrap(groups, bootstrap.auroc(is_known, score), 1000, seed=2)
    assert low <= roc_auc_score(is_known, score) <= high
    # two groups, one known and one unknown: about half the resamples hold one side only (NaN, skipped)
    tiny = bootstrap.auroc(np.array([True, False]), np.array([0.9, 0.1]))(bootstrap.resample_groups(np.array([0, 1]), 200, 0))
    assert 0 < np.isnan(tiny).sum() < 200 and set(tiny[~np.isnan(tiny)]) == {1.0}
    assert bootstrap.group_bootstrap(np.array([0]), bootstrap.auroc(np.array([True]), np.array([0.5])), 10, 0) is None


def test_groups_per_class_and_bad_input() -> None:
    labels = np.array(["stop", "stop", "stop", "yield", "yield"])
    groups = np.array(["t1", "t1", "t2", "t3", "t3"])
    assert bootstrap.groups_per_class(labels, groups) == {"stop": 2, "yield": 1}
    with pytest.raises(PipelineError, match="labels but"):
        bootstrap.groups_per_class(labels, groups[:3])
    with pytest.raises(PipelineError, match="resamples"):
        bootstrap.resample_groups(groups, 0, seed=0)
    with pytest.raises(PipelineError, match="non-empty"):
        bootstrap.resample_groups(np.array([]), 10, seed=0)
    with pytest.raises(PipelineError, match="level"):
        bootstrap.percentile_interval(np.array([0.5]), level=95)


def test_a_thousand_resamples_of_1300_images_take_well_under_a_second() -> None:
    rng = np.random.default_rng(0)
    groups, target = np.repeat(np.arange(1300 // 26 + 1), 26)[:1300], rng.integers(0, 43, 1300)
    pred = np.where(rng.random(1300) < 0.9, target, rng.integers(0, 43, 1300))
    score, is_known = rng.random(1300), rng.random(1300) < 0.8
    start = time.perf_counter()
    bootstrap.closed_set_intervals(target, pred, groups, 43, 1000, seed=42)
    bootstrap.group_bootstrap(groups, bootstrap.auroc(is_known, score), 1000, seed=42)
    assert time.perf_counter() - start < 2.0  # ~0.1 s measured; generous for a busy 2-core box


def colour_images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Noisy reddish (class 0) and bluish (class 1) 32x32 images."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, n)
    base = np.where(target[:, None] == 0, [[200, 40, 40]], [[40, 40, 200]])
    pixels = base[:, :, None, None] + rng.normal(0, 40, (n, 3, 32, 32))
    return torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8)), target


def test_pixel_baseline_separates_two_colour_classes() -> None:
    train, test = colour_images(200, seed=0), colour_images(60, seed=1)
    groups = np.repeat(np.arange(20), 3)
    out = baseline.pixel_baseline(train, test, groups, n_classes=2, size=8, seed=42, resamples=200)
    assert out["model"] == "logistic_regression_pixels" and out["size"] == 8
    assert out["accuracy"] > 0.95 and out["macro_f1"] > 0.95
    low, high = out["accuracy_interval"]
    assert low <= out["accuracy"] <= high
    assert baseline.pixel_baseline(train, test, groups, 2, 8, 42, 200) == out  # seeded: same numbers
    assert baseline.pixel_features(train[0][:5], 8).shape == (5, 3 * 8 * 8)
    with pytest.raises(PipelineError, match="at least 2"):
        baseline.pixel_baseline((train[0], np.zeros(200, int)), test, groups, 2, 8, 42, 0)


def scored_split(seed: int = 0) -> stage.Scored:
    """A retrain-free model (classes a, b) on 60 known images in 12 tracks and 20 unknown images in 4."""
    rng = np.random.default_rng(seed)
    target = np.r_[np.repeat([0, 1], 30), -np.ones(20, int)]
    logits = rng.normal(0, 1, (80, 2))
    logits[np.arange(60), target[:60]] += 2.5
    kind = np.array(["known"] * 60 + ["unseen"] * 20)
    group = np.repeat([f"g{i}" for i in range(16)], 5)
    path = np.array([f"{g}/{i}.png" for i, g in enumerate(group)])
    return stage.Scored(torch.tensor(logits, dtype=torch.float32), torch.tensor(target), kind, group, path)


def test_measure_writes_intervals_and_groups_per_class_and_mlflow_gets_low_high() -> None:
    test, valid = scored_split(0), scored_split(1)
    result = stage.measure(test, valid, ["a", "b"], 1.0, seed=42, resamples=300)
    iv = result["intervals"]
    assert (iv["level"], iv["resamples"], iv["unit"]) == (0.95, 300, "group")
    assert iv["accuracy"][0] <= result["accuracy"] <= iv["accuracy"][1]
    assert set(iv["recall"]) == {"a", "b"} and iv["auroc"][0] <= iv["auroc"][1]
    assert result["groups_per_class"] == {"a": 6, "b": 6}
    assert json.dumps(stage.measure(test, valid, ["a", "b"], 1.0, seed=42, resamples=300)) == json.dumps(result)
    assert "intervals" not in stage.measure(test, valid, ["a", "b"], 1.0, seed=42, resamples=0)
    logged: dict[str, float] = {}
    Tracker(type("FakeMlflow", (), {"log_metrics": staticmethod(logged.update)})).metrics(
        stage.for_mlflow({k: v for k, v in result.items() if k != "per_class"}), prefix="test_")
    assert logged["test_intervals.accuracy.low"] == iv["accuracy"][0]
    assert logged["test_intervals.recall.b.high"] == iv["recall"]["b"][1]
    line = stage.summary_line("m", result | {"baseline": {"accuracy": 0.5, "accuracy_interval": [0.4, 0.6]}}, 1.0)
    lo, hi = iv["accuracy"]
    assert f"test accuracy {result['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]" in line
    assert "pixel baseline 0.5000 [0.4000, 0.6000]" in line
    near_one = stage.summary_line("m", result | {"accuracy": 0.999187, "intervals": {"accuracy": [0.995479, 1.0]}}, 1.0)
    assert "test accuracy 0.9992 [0.9955, 1.0000]" in near_one  # not "[1.00, 1.00]"


def test_auroc_interval_is_null_without_unknowns() -> None:
    test = scored_split(0)
    known_only = stage.Scored(test.logits[:60], test.target[:60], test.kind[:60], test.group[:60], test.path[:60])
    result = stage.measure(known_only, scored_split(1), ["a", "b"], 1.0, seed=42, resamples=100)
    assert result["intervals"]["auroc"] is None and result["intervals"]["accuracy"] is not None


def test_clopper_pearson_exact_bounds() -> None:
    assert bootstrap.clopper_pearson(630, 630) == pytest.approx((0.025 ** (1 / 630), 1.0))  # ~0.9942
    assert bootstrap.clopper_pearson(0, 20) == pytest.approx((0.0, 1 - 0.025 ** (1 / 20)))
    low, high = bootstrap.clopper_pearson(90, 100)
    assert low == pytest.approx(0.8238, abs=1e-4) and high == pytest.approx(0.9510, abs=1e-4)
    with pytest.raises(PipelineError, match="3 successes of 2 trials"):
        bootstrap.clopper_pearson(3, 2)


def test_a_perfect_score_gets_an_interval_of_nonzero_width() -> None:
    # 21 tracks of 30 frames, all right: resampling tracks alone gives [1, 1]; the interval keeps the binomial floor
    groups = np.repeat(np.arange(21), 30)
    target = np.repeat(np.arange(21) % 3, 30)
    iv = bootstrap.closed_set_intervals(target, target.copy(), groups, 3, 500, seed=0)
    assert bootstrap.group_bootstrap(groups, bootstrap.accuracy(target == target), 500, 0) == (1.0, 1.0)
    assert iv["accuracy"] == pytest.approx((0.025 ** (1 / 630), 1.0))
    assert iv["recall"][0] == pytest.approx((0.025 ** (1 / 210), 1.0))
    assert bootstrap.accuracy_interval(groups, target == target, 500, 0) == pytest.approx(iv["accuracy"])


def test_errors_clustered_in_one_track_keep_the_wider_bootstrap_interval() -> None:
    groups = np.repeat(np.arange(20), 30)
    target = np.zeros(600, dtype=int)
    pred = target.copy()
    pred[:15] = 1  # half of track 0 wrong: 15 errors in 600 images, all in one track
    iv = bootstrap.closed_set_intervals(target, pred, groups, 2, 1000, seed=0)
    boot = bootstrap.group_bootstrap(groups, bootstrap.accuracy(target == pred), 1000, 0)
    binom = bootstrap.clopper_pearson(585, 600)
    assert boot[0] < binom[0]  # the tracks widen it below what 600 independent images would say
    assert iv["accuracy"] == (boot[0], max(boot[1], binom[1]))


def test_bracket_prints_an_interval_at_the_figures_four_decimals():
    assert bootstrap.bracket([0.99552, 1.0]) == " [0.9955, 1.0000]"  # not " [1.00, 1.00]"
    assert bootstrap.bracket((0.5, 0.75)) == " [0.5000, 0.7500]"
    assert bootstrap.bracket(None) == "" and bootstrap.bracket([]) == ""
