"""The model card of the registered model (reports/model_card.md), made from the run's own outputs only.

`facts` is the one place that reads the outputs (every key read defensively: a missing file or key reads
as None, shown as n/a); `render` writes the markdown from those facts alone; `describe_registered` sets the
card as the description of the registered model's version (the one the retrain run tagged)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from ..config.params import flatten
from ..progress import say


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _interval(headline: dict[str, Any], detail: dict[str, Any], key: str) -> list[float] | None:
    """[low, high] of a headline metric: `<key>_lo`/`<key>_hi` in the metrics file, else `intervals.<key>`
    of the metrics file or of reports/<name>/metrics.json."""
    lo, hi = headline.get(f"{key}_lo"), headline.get(f"{key}_hi")
    if lo is not None and hi is not None:
        return [lo, hi]
    return _get(headline, "intervals", key) or _get(detail, "intervals", key)


def changed_params(params: dict[str, Any], defaults: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value, default) of every param presets/digits.yaml names whose value differs from it."""
    have, base = flatten(params), flatten(defaults)
    return [(k, have.get(k), v) for k, v in sorted(base.items()) if have.get(k) != v]


def _metrics(root: Path, name: str) -> dict[str, Any]:
    head, detail = _json(root / f"metrics/evaluate_{name}.json"), _json(root / f"reports/{name}/metrics.json")
    pick = lambda *k: _get(head, *k) if _get(head, *k) is not None else _get(detail, *k)  # noqa: E731
    keys = ("accuracy", "macro_f1", "auroc")
    recall = {c: {"recall": _get(m, "recall"), "interval": _get(detail, "intervals", "recall", c) or
                  _get(head, "intervals", "recall", c)} for c, m in (pick("per_class") or {}).items()}
    primary = pick("open_set", "primary_score")
    out = {k: {"value": pick(k), "interval": _interval(head, detail, k)} for k in keys}
    if out["auroc"]["value"] is None:  # a metrics file holding the whole result: the primary score's AUROC
        out["auroc"]["value"] = pick("open_set", "scores", str(primary), "auroc")
    return {**out,
            "ece": pick("calibration", "ece"), "ece_scaled": pick("ece_scaled") or pick("calibration", "ece_scaled"),
            "temperature": pick("calibration", "temperature"), "unknown_recall_seen": pick("unknown_recall_seen")
            or pick("open_set", "seen", "unknown_recall"), "unknown_recall_unseen": pick("unknown_recall_unseen")
            or pick("open_set", "unseen", "unknown_recall"), "primary_score": primary,
            "recall": recall}


def facts(root: Path, params: dict[str, Any], name: str = "retrained") -> dict[str, Any]:
    """Everything the card states, read from the run's outputs under `root`."""
    index = root / "data/raw/index.csv"
    rob = _json(root / f"metrics/robustness_{name}.json")
    return {"name": name, "dataset": params["data"]["dataset"], "url": params["data"]["url"],
            "sha256": params["data"]["sha256"] or None, "data": _json(root / "metrics/data.json"),
            "index_sha256": hashlib.sha256(index.read_bytes()).hexdigest() if index.is_file() else None,
            "split": {s: _json(root / f"data/{s}/split_report.json") for s in ("split", "split_unknown")},
            "changed": changed_params(params, yaml.safe_load((root / "presets/digits.yaml").read_text()) or {}),
            "metrics": _metrics(root, name), "robustness": {"clean": rob.get("clean"), "mean": rob.get("mean"),
                                                           "worst": rob.get("worst") or {}},
            "audit": _json(root / "metrics/audit.json"), "registry": params["registry"]}


def _f(v: Any) -> str:
    return "n/a" if v is None else str(v)


def _iv(v: list[float] | None) -> str:
    return f"[{v[0]}, {v[1]}]" if v else "n/a"


def _data_section(f: dict[str, Any]) -> list[str]:
    src = f["url"] or ("scikit-learn's bundled digits" if f["dataset"] == "digits" else "the official archive")
    lines = ["## Data", "", f"- dataset: {f['dataset']} ({src})",
             f"- archive sha256: {_f(f['sha256'])}" + (" (verified on download)" if f["sha256"] else " (not pinned)"),
             f"- data/raw/index.csv sha256: {_f(f['index_sha256'])}",
             f"- images: {_f(f['data'].get('images'))}, classes: {_f(f['data'].get('classes'))}, "
             f"undecodable images dropped: {_f(f['data'].get('bad_images'))}", "",
             "| split folder | split | images | groups |", "|---|---|---|---|"]
    for folder, rep in f["split"].items():
        for s in ("train", "valid", "test"):
            lines.append(f"| {folder} | {s} | {_f(_get(rep, 'images', s))} | {_f(_get(rep, 'groups', s))} |")
    a = f["audit"]
    if a:
        lines += ["", f"Audit of data/split (metrics/audit.json): {_f(a.get('label_issues'))} label issues, "
                  f"near-duplicates {_f(a.get('near_duplicates'))}, {_f(a.get('outliers'))} outliers."]
    return lines


def _metrics_section(f: dict[str, Any]) -> list[str]:
    m = f["metrics"]
    lines = ["## Metrics (test split, 95% group-bootstrap intervals)", "", "| metric | value | interval |",
             "|---|---|---|"]
    lines += [f"| {k} | {_f(m[k]['value'])} | {_iv(m[k]['interval'])} |" for k in ("accuracy", "macro_f1", "auroc")]
    lines += [f"| {k} | {_f(m[k])} | n/a |" for k in ("ece", "ece_scaled", "temperature", "unknown_recall_seen",
                                                      "unknown_recall_unseen")]
    lines += ["", f"Open-set score: {_f(m['primary_score'])}.", "", "| class | recall | interval |", "|---|---|---|"]
    lines += [f"| {c} | {_f(r['recall'])} | {_iv(r['interval'])} |" for c, r in m["recall"].items()]
    r = f["robustness"]
    w = r["worst"]
    lines += ["", "## Robustness (metrics/robustness_%s.json)" % f["name"], "", "| metric | value |", "|---|---|",
              f"| clean accuracy | {_f(r['clean'])} |", f"| corrupted mean accuracy | {_f(r['mean'])} |",
              f"| worst corruption | {_f(w.get('corruption'))} severity {_f(w.get('severity'))}: "
              f"{_f(w.get('accuracy'))} |"]
    return lines


def _limitations(f: dict[str, Any]) -> list[str]:
    """Known limitations in measured terms: the worst class by recall, the worst corruption, unseen unknowns."""
    rec = {c: r["recall"] for c, r in f["metrics"]["recall"].items() if r["recall"] is not None}
    lines = ["## Known limitations", ""]
    if rec:
        c = min(rec, key=rec.get)
        lines.append(f"- worst class by recall: {c} ({rec[c]})")
    w = f["robustness"]["worst"]
    if w:
        commonest = f"; commonest error {w['commonest_error']}" if w.get("commonest_error") else ""
        lines.append(f"- worst corruption: {w.get('corruption')} severity {w.get('severity')} "
                     f"(accuracy {w.get('accuracy')} against {f['robustness']['clean']} clean{commonest})")
    lines.append(f"- unseen-class unknowns rejected: {_f(f['metrics']['unknown_recall_unseen'])} of them")
    return lines


def render(f: dict[str, Any]) -> str:
    """The card's markdown, from `facts` alone."""
    reg = f["registry"]
    changed = [f"| {k} | {_f(v)} | {_f(d)} |" for k, v, d in f["changed"]] or ["| (none) | | |"]
    usage = ["## Load and serve", "", f"- registered as `models:/{reg['model_name']}/<version>` "
             f"(backend {reg.get('backend', 'torch')}): `mlflow models serve -m models:/{reg['model_name']}/<version> "
             "--env-manager local`, POST base64 images in the `image` column to /invocations",
             f"- in Python: `mlflow.pyfunc.load_model('models:/{reg['model_name']}/<version>').predict(df)`",
             f"- the checkpoint: `tlpipe-predict --model models/{f['name']}.pt IMAGE...`"]
    lines = [f"# Model card: {reg['model_name']} ({f['name']})", "",
             "Made by the model_card stage from this run's metrics and reports (nothing typed by hand).", "",
             *_data_section(f), "", "## Params that differ from the defaults (presets/digits.yaml)", "",
             "| param | value | default |", "|---|---|---|", *changed, "", *_metrics_section(f), "",
             *_limitations(f), "", *usage, ""]
    return "\n".join(lines)


def _version(client: Any, name: str, experiment: str) -> str | None:
    """The version the latest retrain run registered (its `registered_model` tag), else the newest version."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'retrain'", order_by=["attributes.start_time DESC"],
                              max_results=1) if exp else []
    tag = runs[0].data.tags.get("registered_model", "") if runs else ""
    if tag.startswith(f"{name}/"):
        return tag.split("/", 1)[1]
    versions = [int(v.version) for v in client.search_model_versions(f"name='{name}'")]
    return str(max(versions)) if versions else None


def describe_registered(text: str, params: dict[str, Any]) -> str | None:
    """Set the card as the description of the registered version (registry.register); returns the version."""
    if not params["registry"]["register"]:
        return None
    from mlflow import MlflowClient

    client, name = MlflowClient(), params["registry"]["model_name"]
    version = _version(client, name, params["tracking"]["experiment"])
    if version is not None:
        client.update_model_version(name, version, description=text)
    return version


def run(params: dict[str, Any], out: Path = Path("reports/model_card.md"), name: str = "retrained") -> str:
    """The model_card stage: write the card, log it to its own MLflow run, describe the registered version."""
    from .. import tracking
    from ..atomic import write_text

    text = render(facts(Path("."), params, name))
    write_text(out, text)
    with tracking.stage_run("model_card", params, params["tracking"]["experiment"]) as tracker:
        tracker.artifact(out)
        uri = tracking.tracking_uri(Path("."))
        with tracking.store_lock(uri, params["tracking"]["connect_timeout"]):
            version = describe_registered(text, params)
    say(f"model_card: {out}" + (f", description of models:/{params['registry']['model_name']}/{version}"
                                if version else ""))
    return text
