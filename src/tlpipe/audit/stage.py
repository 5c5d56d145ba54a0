"""The audit stage's body: on a split folder (data/split: the known classes only, before any `unknown` is
added), frozen-backbone features once per split, then label issues, cross-split near-duplicates, per-class
outliers and class balance. Headline counts in metrics/audit.json, details in reports/audit/, the top
label-issue suspects drawn in plots/audit_label_issues.png; all logged to one MLflow run. Reports only: its
findings stop nothing; its features (data/features, tlpipe.features) are what train_head, lr_find and
crossval read instead of running the backbone again."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import features, tracking
from ..atomic import atomic_dir, write_json
from ..data import manifest
from ..data.splitdir import SplitDir
from ..progress import say
from ..runtime import set_seed
from . import checks, report


@dataclass(frozen=True)
class Outputs:
    """Where the audit writes."""

    features: Path = Path("data/features")
    reports: Path = Path("reports/audit")
    metrics: Path = Path("metrics/audit.json")
    gallery: Path = Path("plots/audit_label_issues.png")


@dataclass
class Pooled:
    """Every row of train, valid and test in that order: its split, row index in the split, row and label index."""

    split: np.ndarray
    index: np.ndarray
    rows: list[dict[str, str]]
    labels: np.ndarray
    feats: np.ndarray


def pool(split: SplitDir, feats: dict[str, np.ndarray], classes: list[str]) -> Pooled:
    rows = {s: split.rows(s) for s in manifest.SPLITS}
    every = [r for s in manifest.SPLITS for r in rows[s]]
    return Pooled(np.array([s for s in manifest.SPLITS for _ in rows[s]]),
                  np.array([i for s in manifest.SPLITS for i in range(len(rows[s]))], dtype=np.int64), every,
                  np.array([classes.index(r["label"]) for r in every], dtype=np.int64),
                  np.concatenate([feats[s] for s in manifest.SPLITS]))


def label_issue_rows(p: Pooled, classes: list[str], k: int, seed: int) -> tuple[list[dict[str, Any]], float]:
    """reports/audit/label_issues.csv rows, most suspicious first, and the out-of-fold head's accuracy."""
    probs = checks.out_of_fold_probs(p.feats, p.labels, p.rows, len(classes), k, seed)
    issues, scores = checks.label_issues(p.labels, probs)
    suggested = probs.argmax(1)
    out = [{"path": p.rows[i]["path"], "split": p.split[i], "given_label": classes[p.labels[i]],
            "suggested_label": classes[suggested[i]], "score": round(float(scores[i]), 6), "row": int(p.index[i])}
           for i in issues]
    return out, float((suggested == p.labels).mean()) if len(p.labels) else 0.0


def duplicate_rows(split: SplitDir, feats: dict[str, np.ndarray], threshold: float) -> list[dict[str, Any]]:
    """reports/audit/near_duplicates.csv rows: pairs across splits at cosine >= threshold, most similar first."""
    rows = {s: split.rows(s) for s in manifest.SPLITS}
    return [{"split_a": a, "path_a": rows[a][i]["path"], "label_a": rows[a][i]["label"], "split_b": b,
             "path_b": rows[b][j]["path"], "label_b": rows[b][j]["label"], "cosine": round(c, 6)}
            for a, i, b, j, c in checks.near_duplicates({s: feats[s] for s in manifest.SPLITS}, threshold)]


def outlier_rows(p: Pooled, classes: list[str], z: float) -> list[dict[str, Any]]:
    """reports/audit/outliers.csv rows: images far from their class's mean direction, farthest first."""
    dist, score, flagged = checks.outliers(p.feats, p.labels, z)
    return [{"path": p.rows[i]["path"], "split": p.split[i], "label": classes[p.labels[i]],
             "distance": round(float(dist[i]), 6), "robust_z": round(float(score[i]), 3)} for i in flagged]


def pair_counts(dups: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per split pair (train-valid, train-test, valid-test): pairs, and images of the second split with a copy."""
    out = {}
    for i, a in enumerate(manifest.SPLITS):
        for b in manifest.SPLITS[i + 1:]:
            hits = [d for d in dups if (d["split_a"], d["split_b"]) == (a, b)]
            out[f"{a}-{b}"] = {"pairs": len(hits), "images": len({d["path_b"] for d in hits})}
    return out


def measure(split: SplitDir, feats: dict[str, np.ndarray], classes: list[str], cfg: dict[str, Any],
            seed: int) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(metrics/audit.json, the tables of reports/audit/) from the features of every split."""
    p = pool(split, feats, classes)
    issues, oof_acc = label_issue_rows(p, classes, cfg["folds"], seed)
    dups = duplicate_rows(split, feats, cfg["duplicate_threshold"])
    counts = pair_counts(dups)
    outl = outlier_rows(p, classes, cfg["outlier_z"])
    balance = checks.class_balance({s: [r["label"] for r in split.rows(s)] for s in manifest.SPLITS}, classes)
    totals = [b["total"] for b in balance]
    headline = {"images": len(p.labels), "label_issues": len(issues), "oof_accuracy": round(oof_acc, 6),
                "near_duplicates": {k: v["pairs"] for k, v in counts.items()},
                "near_duplicate_images": {k: v["images"] for k, v in counts.items()}, "outliers": len(outl),
                "imbalance_ratio": round(max(totals) / max(min(totals), 1), 6) if totals else 0.0}
    tables = {"label_issues": issues, "near_duplicates": dups, "outliers": outl, "class_balance": balance,
              "near_duplicate_counts": [{"split_pair": k, **v} for k, v in counts.items()]}
    return headline, tables


def suspects(split: SplitDir, issues: list[dict[str, Any]], size: int, limit: int) -> list[np.ndarray]:
    """uint8 HWC images of the first `limit` label issues, from the decoded cache."""
    cache = {s: split.images(s, size) for s in {r["split"] for r in issues[:limit]}}
    return [cache[r["split"]][r["row"]].permute(1, 2, 0).numpy() for r in issues[:limit]]


def run(split: SplitDir, out: Outputs, params: dict[str, Any]) -> dict[str, Any]:
    """The whole stage: features (written to out.features), measurements, reports, figure, one MLflow run."""
    set_seed(params["seed"], params["device"])
    cfg, classes = params["audit"], split.classes()
    with tracking.stage_run("audit", params, params["tracking"]["experiment"]) as tracker:
        t0 = time.perf_counter()
        feats = features.compute(split, params, out.features)
        t1 = time.perf_counter()
        headline, tables = measure(split, feats, classes, cfg, params["seed"])
        t2 = time.perf_counter()
        with atomic_dir(out.reports) as tmp:  # one DVC output: complete or absent
            files = [out.reports / f.name for f in report.write_tables(tmp, tables)]
        n = min(cfg["gallery_images"], len(tables["label_issues"]))
        report.gallery(out.gallery, suspects(split, tables["label_issues"], params["model"]["input_size"], n),
                       tables["label_issues"], f"audit: {n} of {len(tables['label_issues'])} label-issue suspects, most suspicious first\n"
                       "(cleanlab on out-of-fold linear-head probabilities; label quality score)")
        write_json(out.metrics, headline)
        tracker.metrics({**headline, "features_seconds": t1 - t0, "checks_seconds": t2 - t1}, prefix="audit_")
        for f in (out.metrics, out.gallery, *files):
            tracker.artifact(f, "audit")
    say(f"audit: {headline['label_issues']} label issues, near-duplicates {headline['near_duplicates']}, "
        f"{headline['outliers']} outliers of {headline['images']} images (features {t1 - t0:.1f} s, checks "
        f"{t2 - t1:.1f} s) -> {out.metrics}, {out.reports}/, {out.gallery}")
    return headline
