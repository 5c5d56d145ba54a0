"""Out-of-fold predictions (evaluation/out_of_fold.py): the crossval stage's list of errors and its summary."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tlpipe.evaluation.bootstrap import clopper_pearson
from tlpipe.evaluation.out_of_fold import (HEADER, Predictions, confusions, describe, describe_pooled, pooled,
                                         write_errors)

CLASSES = ["stop", "no_entry", "give_way"]
# 8 images of 5 tracks; targets by row
ROWS = [{"path": f"{c}/{t}_{i}.png", "label": c, "group": f"{c}/{t}"}
        for c, t, i in (("stop", 0, 0), ("stop", 0, 1), ("no_entry", 1, 0), ("no_entry", 1, 1), ("no_entry", 2, 0),
                        ("no_entry", 3, 0), ("give_way", 4, 0), ("give_way", 4, 1))]
TARGETS = np.array([0, 0, 1, 1, 1, 1, 2, 2])


def probs(pred: list[int], conf: list[float]) -> np.ndarray:
    """Softmax-like rows whose argmax is `pred` with probability `conf` (the rest spread evenly)."""
    p = np.tile(((1 - np.array(conf)) / 2)[:, None], (1, 3))
    p[np.arange(len(pred)), pred] = conf
    return p


def predictions() -> Predictions:
    """Fold 0 held rows 0-3, fold 1 rows 4-7: no_entry called stop in 3 images of 2 tracks, give_way called
    no_entry once."""
    p = Predictions.empty("finetuned", CLASSES, TARGETS)
    p.put(np.array([0, 1, 2, 3]), 0, probs([0, 0, 0, 0], [0.9, 0.8, 0.95, 0.6]))
    p.put(np.array([4, 5, 6, 7]), 1, probs([1, 0, 2, 1], [0.7, 0.99, 0.9, 0.5]))
    return p


def test_wrong_lists_held_out_errors_most_confident_first():
    p = predictions()
    assert p.fold.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert p.wrong().tolist() == [5, 2, 3, 7]  # confidences 0.99, 0.95, 0.6, 0.5
    assert Predictions.empty("finetuned", CLASSES, TARGETS).wrong().tolist() == []  # nothing held out yet


def test_a_row_held_out_by_two_folds_is_an_error():
    p = predictions()
    with pytest.raises(ValueError, match="fold 2"):
        p.put(np.array([3]), 2, probs([1], [0.9]))


def test_confusions_count_images_and_the_groups_they_come_from():
    assert confusions(predictions(), ROWS) == [("no_entry", "stop", 3, 2), ("give_way", "no_entry", 1, 1)]


def test_write_errors_one_row_per_error_with_its_path_and_group(tmp_path):
    out = tmp_path / "reports" / "crossval_errors.csv"
    write_errors(out, [(predictions(), ROWS)])
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == list(HEADER)
    assert [(r["path"], r["group"], r["actual"], r["predicted"], r["fold"], r["confidence"]) for r in rows] == [
        ("no_entry/3_0.png", "no_entry/3", "no_entry", "stop", "1", "0.9900"),
        ("no_entry/1_0.png", "no_entry/1", "no_entry", "stop", "0", "0.9500"),
        ("no_entry/1_1.png", "no_entry/1", "no_entry", "stop", "0", "0.6000"),
        ("give_way/4_1.png", "give_way/4", "give_way", "no_entry", "1", "0.5000")]
    assert {r["model"] for r in rows} == {"finetuned"}
    write_errors(out, [])  # folds off: the header alone, so the declared output exists
    assert out.read_text() == ",".join(HEADER) + "\n"
    assert [p.name for p in out.parent.iterdir()] == ["crossval_errors.csv"]  # no temporary file left


def test_describe_names_the_commonest_confusions_per_model():
    p = predictions()
    k1 = Predictions.empty("retrained", [*CLASSES, "unknown"], TARGETS)
    k1.put(np.arange(8), 0, np.eye(4)[TARGETS])  # all right
    text = describe([(p, ROWS), (k1, ROWS)])
    assert text == ("crossval: out-of-fold errors, finetuned 4 of 8 in 3 groups: no_entry->stop 3 (2 groups), "
                    "give_way->no_entry 1 (1 group); retrained 0 of 8 in 0 groups")


def test_pooled_scores_every_held_out_image_with_an_interval_over_its_groups():
    p = predictions()
    s = pooled(p, ROWS, 200, seed=0)
    assert (s["accuracy"], s["accuracy_images"], s["accuracy_groups"]) == (0.5, 8, 5)
    assert 0 <= s["accuracy_lo"] < 0.5 < s["accuracy_hi"] <= 1
    assert pooled(p, ROWS, 200, seed=0) == s  # seeded
    off = pooled(p, ROWS, 0, seed=0)  # evaluate.bootstrap 0: the share alone
    assert (off["accuracy"], off["accuracy_lo"], off["accuracy_hi"]) == (0.5, None, None)
    part = Predictions.empty("finetuned", CLASSES, TARGETS)  # a row no fold held out is not scored
    part.put(np.array([0, 1, 6, 7]), 0, probs([0, 0, 2, 1], [0.9, 0.9, 0.9, 0.9]))
    assert pooled(part, ROWS, 0, 0)["accuracy"] == 0.75 and pooled(part, ROWS, 0, 0)["accuracy_groups"] == 2


def test_pooled_interval_is_wider_than_the_binomial_when_errors_cluster_in_a_group():
    """100 images of 10 tracks, all 10 errors in one track: images are not independent draws, so the interval
    over tracks must be wider than the exact binomial interval of 90 right of 100."""
    rows = [{"path": f"t{g}_{i}.png", "label": "stop", "group": f"t{g}"} for g in range(10) for i in range(10)]
    targets = np.zeros(100, dtype=np.int64)
    p = Predictions.empty("finetuned", CLASSES, targets)
    p.put(np.arange(100), 0, probs([1] * 10 + [0] * 90, [0.9] * 100))
    s = pooled(p, rows, 1000, seed=1)
    lo, hi = clopper_pearson(90, 100)
    assert s["accuracy"] == 0.9 and s["accuracy_lo"] < lo - 0.05 and s["accuracy_hi"] >= hi


def test_pooled_scores_the_k1_model_on_known_and_unknown_images_apart():
    rows = ROWS + [{"path": f"unknown/{t}_{i}.png", "label": "unknown", "group": f"u/{t}"}
                   for t, i in ((5, 0), (5, 1), (6, 0), (7, 0))]
    targets = np.concatenate([TARGETS, [3, 3, 3, 3]])
    k1 = Predictions.empty("retrained", [*CLASSES, "unknown"], targets)
    pred = [0, 0, 1, 3, 1, 1, 2, 2, 3, 3, 3, 0]  # one known image called unknown; one unknown called stop
    k1.put(np.arange(12), 0, np.eye(4)[pred] * 0.97 + 0.01)
    s = pooled(k1, rows, 100, seed=0)
    assert "accuracy" not in s
    assert (s["known_right"], s["known_right_images"], s["known_right_groups"]) == (0.875, 8, 5)
    assert (s["unknown_recall"], s["unknown_recall_images"], s["unknown_recall_groups"]) == (0.75, 4, 3)
    line = describe_pooled({"finetuned": pooled(predictions(), ROWS, 0, 0), "retrained": s})
    assert line.startswith("crossval: every held-out image, 95% group-bootstrap intervals: finetuned accuracy "
                           "0.5000 (8 images, 5 groups); retrained known right 0.8750 [")
    assert "unknown recall 0.7500 [" in line and line.endswith("(4 images, 3 groups)")
