"""The docs stay true: the README's first screen (the two set-up commands, the brief's four commands, the
`dvc metrics show` table quoted from metrics/summary.json), docs/params.md (every params.yaml key exactly
once, with its default and its comment), every relative link and image, and CI runs the README's test command."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import yaml

from _support import REPO
from tlpipe.config.params import flatten

README = REPO / "README.md"
PARAMS_MD = REPO / "docs" / "params.md"
SETUP_RUN = ("python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e . && "
             ". .venv/bin/activate && dvc repro && dvc metrics show")
SETUP_TEST = ("python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e . && "
              ".venv/bin/python -m pytest -v")
FIRST_SCREEN = 45  # lines
BRIEF = ("dvc repro", "dvc exp run -S train.lr=0.0005", "dvc metrics diff", "mlflow ui")
NUMBER = r"-?\d+(?:\.\d+)?"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _code_blocks(text: str, lang: str = r"\w*") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)\n```$", text, re.S | re.M)


def _summary() -> dict[str, float]:
    return json.loads((REPO / "metrics" / "summary.json").read_text(encoding="utf-8"))


def _dvc_rounded(value: float) -> str:
    """How `dvc metrics show/diff` prints a number: rounded to 5 decimals, trailing zeros dropped (1.0, 0.75)."""
    return str(round(value, 5))


# --- the README's first screen ---------------------------------------------------------------------------

def test_readme_has_exactly_the_two_setup_commands() -> None:
    readme = _readme()
    setups = [b.strip() for b in _code_blocks(readme, "bash") if "python3 -m venv" in b]
    assert setups == [SETUP_RUN, SETUP_TEST], setups
    assert readme.count("python3 -m venv") == 2, "a third set-up command for a fresh machine"


def test_first_screen_holds_the_setup_and_the_four_commands() -> None:
    head = "\n".join(_readme().splitlines()[:FIRST_SCREEN])
    for command in (SETUP_RUN, SETUP_TEST, *BRIEF):
        assert command in head, f"not in the README's first {FIRST_SCREEN} lines: {command!r}"
    ui = [line for line in head.splitlines() if "mlflow ui" in line]
    assert ui and all("--host 127.0.0.1" in line for line in ui), ui
    assert "http://127.0.0.1:5000/#/experiments/" in head


def test_ci_runs_the_readme_test_command() -> None:
    blocks = _code_blocks(_readme(), "bash")
    test_cmd = next(b for b in blocks if "pytest" in b and "venv" in b)
    assert test_cmd.strip() in (REPO / ".ci/run").read_text()


# --- quoted numbers -------------------------------------------------------------------------------------

def _metrics_show_table(text: str) -> tuple[list[str], list[str]]:
    """The `dvc metrics show` table quoted in the README: its header keys and its metrics/summary.json row."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if re.match(r"Path\s+\w+\s", line) and "Metric" not in line.split() and lines[i + 1].startswith(
                "metrics/summary.json "):
            return line.split()[1:], lines[i + 1].split()[1:]
    raise AssertionError("no quoted `dvc metrics show` table (Path ... / metrics/summary.json ...) in README")


def test_quoted_metrics_show_table_matches_committed_summary() -> None:
    readme = _readme()
    keys, values = _metrics_show_table("\n".join(readme.splitlines()[:FIRST_SCREEN]))
    summary = _summary()
    assert keys == sorted(summary), (keys, sorted(summary))  # DVC prints the columns sorted by name
    assert len(values) == len(keys), values
    wrong = {k: (v, _dvc_rounded(summary[k])) for k, v in zip(keys, values) if v != _dvc_rounded(summary[k])}
    assert not wrong, f"README's `dvc metrics show` table (quoted, expected from metrics/summary.json): {wrong}"


def test_quoted_metrics_diff_baseline_is_the_committed_summary() -> None:
    """The HEAD column of the quoted `dvc metrics diff` is the committed run; Change = workspace - HEAD."""
    rows = re.findall(rf"^metrics/summary\.json\s+(\w+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", _readme(), re.M)
    assert rows, "no quoted `dvc metrics diff` rows in README"
    summary = _summary()
    for key, head, workspace, change in rows:
        assert head == _dvc_rounded(summary[key]), (key, head, summary[key])
        assert abs(float(workspace) - float(head) - float(change)) <= 1.5e-5, (key, head, workspace, change)


def test_quoted_exp_show_baseline_row_is_the_committed_summary() -> None:
    block = next(b for b in _code_blocks(_readme(), "console") if "dvc exp show" in b)
    lines = block.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["Experiment", "Created"])
    keys = [k for k in header.split()[2:] if k != "…"]
    main = next(line for line in lines if line.split()[:1] == ["main"])
    values = [v for v in main.split()[1:] if re.fullmatch(NUMBER, v)]
    summary = _summary()
    assert len(values) == len(keys) and keys, (keys, values)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in zip(keys, values):
        if "." in key:  # a param column (section.key): the committed params.yaml value
            node = params
            for part in key.split("."):
                node = node[part]
            assert float(value) == float(node), (key, value, node)
        else:
            assert float(value) == round(summary[key], 5), (key, value, summary[key])


def test_summary_is_the_only_dvc_metrics_file_and_readme_explains_its_keys() -> None:
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = dvc_yaml["stages"]
    metrics = [next(iter(m)) if isinstance(m, dict) else m
               for st in stages.values() for m in st.get("do", st).get("metrics", [])]
    assert metrics == [] and dvc_yaml["metrics"] == ["metrics/summary.json"], (metrics, dvc_yaml.get("metrics"))
    # summary writes it as a plain uncached output (a stage `metrics:` entry would leave DVC's run-cache on)
    assert {"metrics/summary.json": {"cache": False}} in stages["summary"]["outs"], stages["summary"]["outs"]
    readme = _readme()
    missing = [k for k in _summary() if f"`{k}`" not in readme]
    assert not missing, f"README does not explain metrics/summary.json keys {missing}"


# --- docs/params.md ---------------------------------------------------------------------------------------

def _param_rows() -> list[tuple[str, str, str]]:
    """(key, default, meaning) of every row of docs/params.md's `| key | default | meaning |` tables."""
    rows, in_table = [], False
    for line in PARAMS_MD.read_text(encoding="utf-8").splitlines():
        if line.strip() == "| key | default | meaning |":
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        if in_table and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            assert len(cells) == 3, line
            key, default = re.fullmatch(r"`([\w.]+)`", cells[0]), re.fullmatch(r"`(.*)`", cells[1])
            assert key and default, line
            rows.append((key.group(1), default.group(1), cells[2]))
    return rows


def _params_comments() -> dict[str, str]:
    """Dotted key -> its comment in params.yaml (the text after `#` on the key's line)."""
    comments, stack = {}, []
    for line in (REPO / "params.yaml").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^(\s*)(\w+):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        comments[".".join(k for _, k in stack)] = m.group(3).partition("#")[2].strip()
    return comments


def test_params_md_lists_every_key_once_with_its_default() -> None:
    params = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    rows = _param_rows()
    counts = Counter(key for key, _, _ in rows)
    assert not (missing := [k for k in params if k not in counts]), f"docs/params.md lacks rows for {missing}"
    assert not (twice := [k for k, n in counts.items() if n > 1]), f"docs/params.md lists {twice} more than once"
    assert not (extra := [k for k in counts if k not in params]), f"docs/params.md lists keys not in params.yaml: {extra}"
    wrong = {k: d for k, d, _ in rows if yaml.safe_load(d) != params[k]}
    assert not wrong, f"docs/params.md defaults differ from params.yaml: {wrong}"


def test_params_md_meaning_is_the_params_yaml_comment() -> None:
    comments = _params_comments()
    stale = {k: c for k, _, c in _param_rows()
             if c.replace("\\|", "|").replace("\\<", "<") != comments[k]}
    assert not stale, f"docs/params.md meanings differ from params.yaml's comments (copy them): {sorted(stale)}"


def test_every_param_has_a_comment() -> None:
    for line in (REPO / "params.yaml").read_text().splitlines():
        if re.match(r"\s*\w+:\s*\S", line) and not re.match(r"\s*\d+:", line):
            assert "#" in line, f"params.yaml line without a comment: {line!r}"


# --- links ------------------------------------------------------------------------------------------------

def _docs() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """Markdown outside fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids of a Markdown file: lowercase, punctuation dropped, spaces to hyphens."""
    ids: Counter[str] = Counter()
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```$", "", path.read_text(encoding="utf-8"),
                                                       flags=re.S | re.M), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug if not ids[slug] else f"{slug}-{ids[slug]}")
        ids[slug] += 1
    return out


def test_every_relative_link_points_to_an_existing_file_and_heading() -> None:
    broken, checked = [], 0
    for doc in _docs():
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(doc.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            checked += 1
            if not path.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert checked >= 20, checked
    assert not broken, "\n".join(broken)


def test_readme_links_the_reference_docs_and_shows_every_figure() -> None:
    readme = _readme()
    for doc in ("params.md", "failures.md", "architecture.md", "scaling.md"):
        assert f"](docs/{doc}" in readme, f"README does not link docs/{doc}"
    for png in sorted((REPO / "docs").glob("*.png")):
        assert f"](docs/{png.name})" in readme, f"README does not show docs/{png.name}"
