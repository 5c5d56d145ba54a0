"""The README documents every params key and runs the same test command as CI."""

from __future__ import annotations

import re

import yaml

from _support import REPO
from tlpipe.config.params import flatten


def test_readme_documents_every_param() -> None:
    readme = (REPO / "README.md").read_text()
    keys = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    missing = [k for k in keys if f"`{k}`" not in readme]
    assert not missing, f"README params table lacks {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b and "venv" in b)
    assert test_cmd.strip() in (REPO / ".ci/run").read_text()


def test_every_param_has_a_comment() -> None:
    for line in (REPO / "params.yaml").read_text().splitlines():
        if re.match(r"\s*\w+:\s*\S", line) and not re.match(r"\s*\d+:", line):
            assert "#" in line, f"params.yaml line without a comment: {line!r}"
