"""evaluation.py: metrics against hand-computed numbers; confusion CSV/PNG and training curves files."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from PIL import Image

from tlpipe.evaluation import metrics as E, plots as F

NAMES = ["stop", "yield", "unknown"]
# targets 0 0 1 1 2; predictions 0 1 1 1 0
TARGETS = torch.tensor([0, 0, 1, 1, 2])
LOGITS = torch.tensor([
    [2.0, 0.0, 0.0],
    [0.0, 1.0, 0.0],
    [0.0, 3.0, 1.0],
    [0.5, 1.5, 0.0],
    [1.0, 0.0, 0.5],
])


def _hand_loss() -> float:
    total = 0.0
    for row, t in zip(LOGITS.tolist(), TARGETS.tolist()):
        total += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    return total / len(TARGETS)


def test_compute_matches_hand_computed_numbers():
    m = E.compute(TARGETS, LOGITS, NAMES)
    assert m["n_images"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["loss"] == pytest.approx(_hand_loss(), abs=1e-6)
    # stop: predicted at 0 and 4, right once; actual at 0 and 1, found once
    assert m["per_class"]["stop"] == {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 2}
    # yield: predicted at 1, 2, 3, right twice; both actual found
    assert m["per_class"]["yield"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["per_class"]["yield"]["recall"] == 1.0
    assert m["per_class"]["yield"]["f1-score"] == pytest.approx(0.8, abs=1e-6)
    assert m["per_class"]["yield"]["support"] == 2
    # unknown: never predicted -> 0 without a division warning
    assert m["per_class"]["unknown"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 1}
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3, abs=1e-6)


def test_compute_rounds_to_six_places_and_is_json_friendly():
    import json

    m = E.compute(TARGETS, LOGITS, NAMES)
    assert m["per_class"]["yield"]["precision"] == 0.666667
    json.dumps(m)  # plain Python types only


def test_compute_class_absent_from_set():
    names = ["a", "b", "c", "d"]
    m = E.compute(torch.tensor([0, 1, 1]), torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 5.0, 0, 0]]), names)
    assert m["accuracy"] == 1.0 and m["per_class"]["d"]["support"] == 0
    assert set(m["per_class"]) == set(names)


def test_perfect_predictions():
    t = torch.tensor([0, 1, 2, 2])
    logits = torch.nn.functional.one_hot(t, 3).float() * 10
    m = E.compute(t, logits, NAMES)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["loss"] < 1e-3


def test_report_text_and_dict():
    text = E.report_text(TARGETS, LOGITS, NAMES)
    for n in NAMES:
        assert n in text
    assert "0.6667" in text  # 4 digits
    d = E.report_dict(TARGETS, LOGITS, NAMES)
    assert d["yield"]["recall"] == 1.0 and d["stop"]["support"] == 2
    assert d["macro avg"]["f1-score"] == pytest.approx(0.433333, abs=1e-6)


def test_write_confusion_csv_one_row_per_image(tmp_path):
    out = tmp_path / "plots" / "confusion_x.csv"
    F.write_confusion_csv(out, TARGETS, LOGITS, NAMES)
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["actual", "predicted"], ["stop", "stop"], ["stop", "yield"], ["yield", "yield"],
                    ["yield", "yield"], ["unknown", "stop"]]
    assert [p.name for p in out.parent.iterdir()] == ["confusion_x.csv"]


def _png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 200
        return img.convert("RGB")


def test_confusion_png(tmp_path):
    out = tmp_path / "plots" / "confusion.png"
    F.confusion_png(out, TARGETS, LOGITS, NAMES, "test split")
    img = _png(out)
    assert len(set(img.getdata())) > 10  # a drawn figure, not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["confusion.png"]


def test_confusion_png_many_classes_grows(tmp_path):
    names = [f"class {i}" for i in range(20)]
    t = torch.arange(20)
    small, big = tmp_path / "s.png", tmp_path / "b.png"
    F.confusion_png(small, TARGETS, LOGITS, NAMES, "3")
    F.confusion_png(big, t, torch.nn.functional.one_hot(t, 20).float(), names, "20")
    with Image.open(small) as a, Image.open(big) as b:
        assert b.size[0] > a.size[0] and b.size[1] > a.size[1]


HISTORY = [
    {"epoch": 1, "train_loss": 1.2, "train_acc": 0.4, "val_loss": 1.1, "val_acc": 0.5, "lr": 0.001},
    {"epoch": 2, "train_loss": 0.7, "train_acc": 0.7, "val_loss": 0.8, "val_acc": 0.75, "lr": 0.001},
    {"epoch": 3, "train_loss": 0.4, "train_acc": 0.9, "val_loss": 0.9, "val_acc": 0.7, "lr": 0.0005},
]


def test_curves_png(tmp_path):
    out = tmp_path / "plots" / "train_head.png"
    F.curves_png(out, HISTORY, "train_head", best_epoch=2)
    img = _png(out)
    assert img.size[0] > img.size[1]  # two panels side by side
    assert [p.name for p in out.parent.iterdir()] == ["train_head.png"]


def test_write_history_csv(tmp_path):
    out = tmp_path / "h.csv"
    F.write_history_csv(out, HISTORY)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[2]["lr"]) == 0.0005 and float(rows[1]["val_acc"]) == 0.75


def test_headline_keeps_the_few_numbers_people_compare():
    from tlpipe.evaluation.stage import headline

    result = {"accuracy": 0.9, "macro_f1": 0.8, "loss": 0.3, "per_class": {"a": {}}, "n_images": 10,
              "calibration": {"temperature": 1.2, "ece": 0.05, "ece_scaled": 0.04},
              "intervals": {"accuracy": [0.85, 0.95], "recall": {"a": [0.1, 0.2]}},
              "open_set": {"primary_score": "msp", "scores": {"msp": {"auroc": 0.7, "threshold": 0.5},
                                                              "energy": {"auroc": 0.6}},
                           "seen": {"unknown_recall": 0.5}, "unseen": {"unknown_recall": 0.25}},
              "baseline": {"accuracy": 0.6, "accuracy_interval": [0.5, 0.7]}}
    assert headline(result) == {"accuracy": 0.9, "accuracy_lo": 0.85, "accuracy_hi": 0.95, "macro_f1": 0.8,
                                "loss": 0.3, "ece_scaled": 0.04, "auroc": 0.7, "unknown_recall_seen": 0.5,
                                "unknown_recall_unseen": 0.25, "baseline_accuracy": 0.6}
    bare = {k: v for k, v in result.items() if k not in ("intervals", "baseline")}
    bare["open_set"] = {"primary_score": "msp", "scores": {"msp": {"auroc": None}}}
    h = headline(bare)
    assert h["accuracy_lo"] is None and h["baseline_accuracy"] is None and h["unknown_recall_unseen"] is None
