"""The model card states exactly the figures of the metrics files it is made from (the markdown parsed back)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import yaml

from _support import REPO
from tlpipe.config.params import load
from tlpipe.serving import card

PER_CLASS = {"zero": 1.0, "one": 0.944444, "two": 0.833333, "unknown": 0.9875}
HEAD = {"accuracy": 0.968085, "accuracy_lo": 0.941176, "accuracy_hi": 0.989362, "macro_f1": 0.964254,
        "loss": 0.08, "ece_scaled": 0.042153, "auroc": 0.988955, "unknown_recall_seen": 0.9875,
        "unknown_recall_unseen": 0.733333, "baseline_accuracy": 0.7}
DETAIL = {"accuracy": 0.968085, "macro_f1": 0.964254,
          "calibration": {"temperature": 1.224196, "ece": 0.025047, "ece_scaled": 0.042153},
          "open_set": {"primary_score": "unknown_class", "scores": {"unknown_class": {"auroc": 0.988955}},
                       "seen": {"unknown_recall": 0.9875}, "unseen": {"unknown_recall": 0.733333}},
          "per_class": {c: {"recall": r, "precision": 0.9} for c, r in PER_CLASS.items()},
          "intervals": {"accuracy": [0.941176, 0.989362], "macro_f1": [0.93, 0.99], "auroc": [0.97, 0.999],
                        "recall": {c: [round(r - 0.1, 6), 1.0] for c, r in PER_CLASS.items()}}}
ROBUST = {"clean": 0.96, "mean": 0.81, "worst": {"corruption": "noise", "severity": 3, "accuracy": 0.41,
                                                 "commonest_error": "two->zero 7"},
          "corruptions": {}}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def _run_dir(tmp: Path, head: dict, detail: dict | None) -> Path:
    _write(tmp / "metrics/evaluate_retrained.json", head)
    if detail is not None:
        _write(tmp / "reports/retrained/metrics.json", detail)
    _write(tmp / "metrics/robustness_retrained.json", ROBUST)
    _write(tmp / "metrics/data.json", {"images": 1797, "classes": 10, "bad_images": 0})
    _write(tmp / "metrics/audit.json", {"label_issues": 7, "near_duplicates": {"train-test": 2}, "outliers": 3})
    for s, n in (("split", 100), ("split_unknown", 140)):
        _write(tmp / f"data/{s}/split_report.json", {"images": {"train": n, "valid": 10, "test": 12},
                                                   "groups": {"train": n - 5, "valid": 9, "test": 11}})
    _write(tmp / "data/raw/index.csv", "path,label,group\n")
    (tmp / "presets").mkdir(exist_ok=True)
    shutil.copy(REPO / "presets/digits.yaml", tmp / "presets/digits.yaml")
    return tmp


def _rows(text: str) -> dict[str, list[str]]:
    """First cell -> the other cells, of every markdown table row."""
    return {m[0]: m[1:] for m in (re.findall(r"\| ([^|]*?) (?=\|)", line) for line in text.splitlines()
                                  if line.startswith("| ")) if m}


def _interval(cell: str) -> list[float] | None:
    return None if cell == "n/a" else [float(x) for x in cell.strip("[]").split(",")]


def _check(text: str) -> None:
    rows = _rows(text)
    assert float(rows["accuracy"][0]) == HEAD["accuracy"] and _interval(rows["accuracy"][1]) == [HEAD["accuracy_lo"], HEAD["accuracy_hi"]]
    assert float(rows["macro_f1"][0]) == HEAD["macro_f1"] and _interval(rows["macro_f1"][1]) == DETAIL["intervals"]["macro_f1"]
    assert float(rows["auroc"][0]) == HEAD["auroc"] and _interval(rows["auroc"][1]) == DETAIL["intervals"]["auroc"]
    for key, want in (("ece", 0.025047), ("ece_scaled", 0.042153), ("temperature", 1.224196),
                      ("unknown_recall_seen", 0.9875), ("unknown_recall_unseen", 0.733333)):
        assert float(rows[key][0]) == want, key
    for c, r in PER_CLASS.items():
        assert float(rows[c][0]) == r and _interval(rows[c][1]) == DETAIL["intervals"]["recall"][c]
    assert float(rows["clean accuracy"][0]) == ROBUST["clean"] and float(rows["corrupted mean accuracy"][0]) == ROBUST["mean"]
    assert rows["worst corruption"][0] == "noise severity 3: 0.41"
    assert rows["split_unknown"] == ["train", "140", "135"] or "| split_unknown | train | 140 | 135 |" in text
    assert "worst class by recall: two (0.833333)" in text and "worst corruption: noise severity 3 (accuracy 0.41 against 0.96 clean; commonest error two->zero 7)" in text
    assert "1797" in text and "7 label issues" in text


def test_card_figures_equal_the_metrics_files(tmp_path):
    params = load(REPO / "params.yaml")
    params["train"]["lr"] = 0.0005
    text = card.render(card.facts(_run_dir(tmp_path, HEAD, DETAIL), params))
    _check(text)
    assert _rows(text)["train.lr"] == ["0.0005", "0.001"]  # the one param changed from presets/digits.yaml


def test_card_reads_a_metrics_file_holding_the_whole_result(tmp_path):
    """The layout before the headline split: everything (intervals included) in metrics/evaluate_<name>.json."""
    whole = {**DETAIL, "intervals": {**DETAIL["intervals"], "accuracy": [HEAD["accuracy_lo"], HEAD["accuracy_hi"]]}}
    text = card.render(card.facts(_run_dir(tmp_path, whole, None), load(REPO / "params.yaml")))
    _check(text)


def test_version_is_the_one_the_retrain_run_tagged():
    run = SimpleNamespace(data=SimpleNamespace(tags={"registered_model": "tlpipe-classifier/4"}))
    client = SimpleNamespace(get_experiment_by_name=lambda n: SimpleNamespace(experiment_id="1"),
                             search_runs=lambda *a, **k: [run],
                             search_model_versions=lambda f: [SimpleNamespace(version="7")])
    assert card._version(client, "tlpipe-classifier", "tlpipe") == "4"
    run.data.tags = {}
    assert card._version(client, "tlpipe-classifier", "tlpipe") == "7"
