"""Open-set scores and metrics, temperature scaling and ECE, and the unknown pool with held-out classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tlpipe.evaluation import calibration, openset, plots
from tlpipe.data import manifest
from tlpipe.errors import PipelineError


def test_scores_without_and_with_unknown_class() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    s = openset.scores(logits, 1.0, None)
    assert set(s) == {"msp", "energy"}
    assert s["msp"][0] == pytest.approx(torch.softmax(logits[0], 0).max().item())
    assert s["energy"][1] == pytest.approx(torch.logsumexp(logits[1], 0).item())
    u = openset.scores(logits, 1.0, 2)["unknown_class"]
    assert u[0] > 0.9 and u[1] < 0.1  # row 1 is confidently `unknown`


def test_auroc_fpr_threshold_and_rejection_accuracy() -> None:
    known = np.array([True, True, True, True, False, False])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.65, 0.1])
    assert openset.fpr_at_tpr(known, score, 0.95) == pytest.approx(0.5)  # accepting all known lets 0.65 in
    assert openset.threshold_for_tpr(np.array([0.2, 0.5, 0.9, 0.95]), 0.75) == pytest.approx(0.5)
    pred = np.array([0, 1, 1, 0, 0, 1])
    target = np.array([0, 1, 0, 0, -1, -1])
    # threshold 0.62: knowns 0.9/0.8/0.7 accepted (one misclassified), 0.6 rejected; unknown 0.65 accepted, 0.1 rejected
    acc = openset.rejection_accuracy(pred, target, known, score, 0.62, None)
    assert acc == pytest.approx(3 / 6)


def test_open_set_table_perfect_separation() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.1, 0.0], [0.0, 0.1]])
    test = {"logits": logits, "is_known": np.array([True, True, False, False]), "target": np.array([0, 1, -1, -1])}
    table = openset.table(test, test, None, 1.0)
    assert table["msp"]["auroc"] == 1.0 and table["msp"]["fpr_at_95tpr"] == 0.0
    assert table["msp"]["open_set_accuracy"] == 1.0


def test_breakdown_seen_and_unseen() -> None:
    pred = np.array([0, 1, 0, 0, 0])
    target = np.array([0, 1, -1, -1, -1])
    accepted = np.array([True, True, False, True, False])
    kind = np.array(["known", "known", "seen", "seen", "unseen"])
    b = openset.breakdown(pred, target, accepted, kind)
    assert b["known_accuracy"] == 1.0
    assert b["seen"]["unknown_recall"] == 0.5 and b["seen"]["known_precision"] == pytest.approx(2 / 3)
    assert b["unseen"]["unknown_recall"] == 1.0 and b["unseen"]["known_precision"] == 1.0


def test_temperature_scaling_recovers_overconfidence_and_lowers_ece() -> None:
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=gen) * 2
    targets = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=gen).squeeze(1)
    over = true_logits * 3.0  # a model three times too confident
    t = calibration.fit_temperature(over, targets)
    assert t == pytest.approx(3.0, rel=0.15)
    before = calibration.ece(torch.softmax(over, 1), targets)
    after = calibration.ece(torch.softmax(over / t, 1), targets)
    assert after < before / 2 and after < 0.03


def test_ece_zero_for_perfectly_calibrated_bins() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert calibration.ece(probs, torch.tensor([0, 1])) == 0.0
    assert calibration.ece(probs, torch.tensor([1, 0])) == 1.0


def test_reliability_png(tmp_path: Path) -> None:
    logits = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    out = tmp_path / "rel.png"
    plots.reliability_png(out, logits, logits.argmax(1), 1.5, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def rows(label: str, groups: int, per: int = 3) -> list[dict[str, str]]:
    return [{"path": f"{label}/{g}_{i}.png", "label": label, "group": f"{label}_{g}"} for g in range(groups) for i in range(per)]


def test_unknown_ids_rest_excludes_known_and_holdout() -> None:
    seen, held = manifest.unknown_ids({"1", "2", "3", "4", "5"}, {"1", "2"}, "rest", [5])
    assert seen == ["3", "4"] and held == ["5"]
    with pytest.raises(PipelineError, match="holdout_classes"):
        manifest.unknown_ids({"1", "2", "3"}, {"1", "2"}, "rest", [2])
    with pytest.raises(PipelineError, match="share"):
        manifest.unknown_ids({"1", "2", "3", "4"}, {"1"}, [3, 4], [4])
    with pytest.raises(PipelineError, match="no images"):
        manifest.unknown_ids({"1", "2", "3"}, {"1"}, [9], [])


def test_with_unknown_keeps_known_splits_and_holds_out_classes_for_test_only() -> None:
    known = manifest.split(rows("a", 10) + rows("b", 10), {"train": 0.8, "valid": 0.1, "test": 0.1}, 0)
    merged = manifest.with_unknown(known, rows("u", 12), rows("h", 4), {"train": 12, "valid": 3, "test": 3}, 6, 0)
    for s in manifest.SPLITS:
        assert [r for r in merged[s] if r["label"] != "unknown"] == known[s]
    origins = {s: {r["origin"] for r in merged[s] if r["label"] == "unknown"} for s in manifest.SPLITS}
    assert origins["train"] == {"u"} and origins["valid"] == {"u"} and origins["test"] == {"u", "h"}
    assert sum(r.get("origin") == "h" for r in merged["test"]) == 6
    assert manifest.leakage_report(merged)["leak_free"]
