"""data/manifest.py: CSV manifests, the stratified group-aware seeded split, leakage report, unknown pool."""

from __future__ import annotations

from collections import Counter

import pytest

from tlpipe.data import manifest as M
from tlpipe.errors import PipelineError

FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


def make_rows(classes: dict[str, int], per_group: int = 3) -> list[dict[str, str]]:
    """{label: number of groups}; each group holds `per_group` images."""
    return [
        {"path": f"img/{label}/g{g:02d}_{i}.png", "label": label, "group": f"{label}_{g:02d}"}
        for label, n_groups in classes.items()
        for g in range(n_groups)
        for i in range(per_group)
    ]


def groups_of(rows):
    return {r["group"] for r in rows}


# ------------------------------------------------------------------ read / write
def test_write_read_roundtrip_with_extra_column(tmp_path):
    rows = [{"path": "a.zip::x/1.ppm", "label": "1", "group": "1_00000", "origin": "6"},
            {"path": "b, with comma.png", "label": "unknown", "group": "g\"q", "origin": "7"}]
    out = tmp_path / "split" / "train.csv"
    M.write(out, rows, extra=("origin",))
    assert out.read_text(encoding="utf-8").splitlines()[0] == "path,label,group,origin"
    assert M.read(out) == rows
    assert [p.name for p in out.parent.iterdir()] == ["train.csv"]


def test_write_drops_unlisted_columns(tmp_path):
    out = tmp_path / "index.csv"
    M.write(out, [{"path": "p", "label": "l", "group": "g", "origin": "o"}])
    assert M.read(out) == [{"path": "p", "label": "l", "group": "g"}]


def test_read_missing_and_bad_header(tmp_path):
    with pytest.raises(PipelineError, match="manifest not found"):
        M.read(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,1\n", encoding="utf-8")
    with pytest.raises(PipelineError) as info:
        M.read(bad)
    assert str(bad) in str(info.value) and "path,label,group" in str(info.value)


# ------------------------------------------------------------------ split
def test_split_is_stratified_per_class():
    rows = make_rows({"a": 20, "b": 10, "c": 30})
    out = M.split(rows, FRACTIONS, seed=0)
    for label, n_groups in {"a": 20, "b": 10, "c": 30}.items():
        counts = {s: len({r["group"] for r in out[s] if r["label"] == label}) for s in M.SPLITS}
        assert counts == {"train": round(0.8 * n_groups), "valid": round(0.1 * n_groups),
                          "test": round(0.1 * n_groups)}, label
    # every image lands in exactly one split
    all_paths = [r["path"] for s in M.SPLITS for r in out[s]]
    assert sorted(all_paths) == sorted(r["path"] for r in rows)


def test_split_never_puts_a_group_in_two_splits():
    rows = make_rows({"a": 7, "b": 5, "c": 11}, per_group=4)
    for seed in range(5):
        out = M.split(rows, FRACTIONS, seed=seed)
        g = {s: groups_of(out[s]) for s in M.SPLITS}
        assert not g["train"] & g["valid"] and not g["train"] & g["test"] and not g["valid"] & g["test"]
        for s in M.SPLITS:  # groups are complete where they land
            assert all(n == 4 for n in Counter(r["group"] for r in out[s]).values())
        assert M.leakage_report(out)["leak_free"]


def test_split_every_nonzero_split_gets_a_group_per_class():
    rows = make_rows({"a": 3, "b": 4})
    out = M.split(rows, FRACTIONS, seed=1)
    for label in "ab":
        for s in M.SPLITS:
            assert any(r["label"] == label for r in out[s]), (label, s)


def test_split_same_seed_same_result_different_seed_differs():
    rows = make_rows({"a": 20, "b": 20})
    first = M.split(rows, FRACTIONS, seed=42)
    again = M.split(list(reversed(rows)), FRACTIONS, seed=42)  # input order does not matter
    assert first == again
    other = M.split(rows, FRACTIONS, seed=43)
    assert groups_of(other["test"]) != groups_of(first["test"])


def test_split_outputs_sorted_by_path():
    out = M.split(make_rows({"a": 10, "b": 10}), FRACTIONS, seed=3)
    for s in M.SPLITS:
        paths = [r["path"] for r in out[s]]
        assert paths == sorted(paths)


def test_split_zero_fraction_split_is_empty():
    rows = make_rows({"a": 5, "b": 5})
    out = M.split(rows, {"train": 0.8, "valid": 0.2, "test": 0.0}, seed=0)
    assert out["test"] == []
    assert len(groups_of(out["train"])) == 8 and len(groups_of(out["valid"])) == 2


def test_split_too_few_groups_raises_naming_class():
    rows = make_rows({"a": 10, "b": 2})
    with pytest.raises(PipelineError) as info:
        M.split(rows, FRACTIONS, seed=0)
    assert "'b'" in str(info.value) and "2 group" in str(info.value) and "by_group" in str(info.value)


def test_split_by_group_false_splits_single_images():
    rows = make_rows({"a": 1, "b": 1}, per_group=10)  # one group per class: impossible by group
    with pytest.raises(PipelineError):
        M.split(rows, FRACTIONS, seed=0)
    out = M.split(rows, FRACTIONS, seed=0, by_group=False)
    for label in "ab":
        assert [sum(r["label"] == label for r in out[s]) for s in M.SPLITS] == [8, 1, 1]
    paths = [r["path"] for s in M.SPLITS for r in out[s]]
    assert sorted(paths) == sorted(r["path"] for r in rows)
    assert rows[0]["group"] == "a_00"  # input rows are not modified


# ------------------------------------------------------------------ leakage report
def test_leakage_report_flags_shared_group():
    splits = {
        "train": [{"path": "1", "label": "a", "group": "g1"}, {"path": "2", "label": "a", "group": "g2"}],
        "valid": [{"path": "3", "label": "a", "group": "g2"}],
        "test": [{"path": "4", "label": "b", "group": "g3"}],
    }
    rep = M.leakage_report(splits)
    assert rep["leak_free"] is False
    assert rep["shared_groups"] == {"train&valid": ["g2"], "train&test": [], "valid&test": []}
    assert rep["images"] == {"train": 2, "valid": 1, "test": 1}
    assert rep["groups"] == {"train": 2, "valid": 1, "test": 1}
    assert rep["per_class"] == {"a": {"train": 2, "valid": 1, "test": 0}, "b": {"train": 0, "valid": 0, "test": 1}}


def test_leakage_report_clean_split():
    out = M.split(make_rows({"a": 10, "b": 10}), FRACTIONS, seed=0)
    rep = M.leakage_report(out)
    assert rep["leak_free"] is True
    assert all(v == [] for v in rep["shared_groups"].values())
    assert sum(rep["images"].values()) == 60


# ------------------------------------------------------------------ unknown pool
QUOTAS = {"train": 12, "valid": 4, "test": 5}


def test_select_unknown_quotas_whole_groups_and_labels():
    pool = make_rows({"6": 6, "7": 6, "8": 6}, per_group=3)
    out = M.select_unknown(pool, QUOTAS, seed=0)
    for s, quota in QUOTAS.items():
        n = len(out[s])
        assert quota <= n < quota + 3, (s, n)  # whole groups of 3: at most one group over
        assert all(r["label"] == M.UNKNOWN for r in out[s])
        assert all(r["origin"] == r["group"].split("_")[0] for r in out[s])
        assert all(c == 3 for c in Counter(r["group"] for r in out[s]).values())
    g = {s: groups_of(out[s]) for s in M.SPLITS}
    assert not g["train"] & g["valid"] and not g["train"] & g["test"] and not g["valid"] & g["test"]
    # round robin: the test split draws from more than one class
    assert len({r["origin"] for r in out["test"]}) >= 2
    # pool rows are not modified
    assert all(r["label"] in {"6", "7", "8"} and "origin" not in r for r in pool)


def test_select_unknown_seeded():
    pool = make_rows({"6": 8, "7": 8})
    a = M.select_unknown(pool, QUOTAS, seed=5)
    assert a == M.select_unknown(pool, QUOTAS, seed=5)
    assert any(groups_of(a[s]) != groups_of(M.select_unknown(pool, QUOTAS, seed=6)[s]) for s in M.SPLITS)


def test_select_unknown_zero_quota_and_small_pool():
    pool = make_rows({"6": 2, "7": 1})
    out = M.select_unknown(pool, {"train": 100, "valid": 0, "test": 3}, seed=0)
    assert out["valid"] == []
    taken = [r["path"] for s in M.SPLITS for r in out[s]]
    assert sorted(taken) == sorted(r["path"] for r in pool)  # everything used once, nothing twice
    assert len(out["test"]) == 3


def test_select_unknown_fills_test_first():
    pool = make_rows({"6": 2}, per_group=5)
    out = M.select_unknown(pool, {"train": 5, "valid": 5, "test": 5}, seed=0)
    assert len(out["test"]) == 5 and len(out["valid"]) == 5 and out["train"] == []
