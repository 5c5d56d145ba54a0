"""The house rules of the layout: dvc.yaml deps are each stage's import closure, the inference path imports
no training/tracking/evaluation code, stage scripts are thin, functions short (docs/architecture.md)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _imports import REPO, SRC, closure, compact, expand

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _stage_script(stage: dict) -> Path:
    cmd = (stage.get("do") or stage)["cmd"]
    return REPO / cmd.split()[1]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_its_import_closure(name):
    stage = STAGES[name]
    deps = (stage.get("do") or stage)["deps"]
    script = _stage_script(stage)
    declared = expand(deps)
    needed = closure(script)
    assert declared == needed, (f"dvc.yaml stage {name}: declare exactly {compact(needed)}; "
                                f"missing {sorted(map(str, needed - declared))}, extra {sorted(map(str, declared - needed))}")
    assert str(script.relative_to(REPO)) in deps and "stages/_path.py" in deps


def test_closure_sees_lazy_and_relative_imports(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("def f():\n    from tlpipe.serving import registry\n")
    names = {str(p.relative_to(SRC)) for p in closure(script)}
    assert "tlpipe/serving/registry.py" in names and "tlpipe/tracking.py" in names  # registry -> tracking


FORBIDDEN = ("tlpipe.training", "tlpipe.tracking", "tlpipe.evaluation", "sklearn", "matplotlib")


@pytest.mark.parametrize("module", ["tlpipe.predict", "tlpipe.serving.entry"])
def test_inference_path_imports_no_training_tracking_or_evaluation(module):
    code = (f"import sys, json; sys.path.insert(0, {str(SRC)!r}); import {module}; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if m.startswith(FORBIDDEN)]
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("script", sorted((REPO / "stages").glob("[!_]*.py")), ids=lambda p: p.name)
def test_stage_scripts_are_thin(script):
    assert len(script.read_text().splitlines()) <= 40, f"{script.name}: stage scripts stay within 40 lines"


def test_functions_are_short():
    long = []
    for path in [*SRC.rglob("*.py"), *(REPO / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 40:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not long, long
