"""Error cases that must stop a stage early with one line: out-of-range params, a locked or unreachable
MLflow store (before any training output exists); and cheap guards: no eval/exec/shell strings in the
code, servers bind to loopback by default."""

from __future__ import annotations

import copy
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _support import REPO
from tlpipe import tracking
from tlpipe.config import params as P
from tlpipe.config.backbones import BLOCK_GROUPS
from tlpipe.errors import PipelineError

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def _params(**changes) -> dict:
    p = copy.deepcopy(PARAMS)
    for dotted, value in changes.items():
        node = p
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return p


# ------------------------------------------------------------------ params: unfreeze_blocks in range


@pytest.mark.parametrize("key", ["finetune", "retrain.finetune"])
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18", "mobilenet_v2"])
def test_unfreeze_blocks_above_backbone_groups(key, backbone):
    n = BLOCK_GROUPS[backbone]
    with pytest.raises(PipelineError) as info:
        P.validate(_params(**{"model.backbone": backbone, f"{key}.unfreeze_blocks": n + 1}))
    msg = str(info.value)
    assert f"{key}.unfreeze_blocks={n + 1}" in msg and backbone in msg and f"the {n} block groups" in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("backbone", sorted(BLOCK_GROUPS))
def test_unfreeze_all_groups_is_allowed(backbone):
    n = BLOCK_GROUPS[backbone]
    P.validate(_params(**{"model.backbone": backbone, "finetune.unfreeze_blocks": n,
                          "retrain.finetune.unfreeze_blocks": n}))


def test_unknown_backbone_is_a_params_error_with_suggestion():
    with pytest.raises(PipelineError) as info:
        P.validate(_params(**{"model.backbone": "resnet19"}))
    msg = str(info.value)
    assert "model.backbone 'resnet19'" in msg and "efficientnet_lite0" in msg and "'resnet18'" in msg, msg


def test_params_validation_does_not_import_torch():
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'src')!r})\n"
            "from tlpipe.config import params\n"
            f"params.load({str(REPO / 'params.yaml')!r})\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _counts(names: list[str]) -> dict[str, int]:
    from tlpipe import models

    return {b: len(models.build(b, 3, pretrained=False).groups) for b in names}


def test_block_group_counts_match_models_registry():
    from tlpipe import models

    assert set(BLOCK_GROUPS) == set(models.REGISTRY)
    fast = ["efficientnet_lite0", "resnet18", "mobilenet_v3_large"]
    assert _counts(fast) == {b: BLOCK_GROUPS[b] for b in fast}


@pytest.mark.slow
def test_block_group_counts_match_every_backbone():
    assert _counts(sorted(BLOCK_GROUPS)) == {b: BLOCK_GROUPS[b] for b in sorted(BLOCK_GROUPS)}


# ------------------------------------------------------------------ MLflow store locked or unreachable


@pytest.fixture
def clean_mlflow_env(monkeypatch):
    """MLflow's set_tracking_uri() exports MLFLOW_TRACKING_URI; keep every MLFLOW_ variable test-local."""
    import os

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    yield monkeypatch
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        os.environ.pop(key)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """An initialised (migrated) MLflow sqlite store; creating one takes seconds, copying it doesn't."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow_template") / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def _hold_exclusive_lock(db: Path) -> subprocess.Popen:
    """Another process that keeps an exclusive lock on the sqlite file until killed."""
    code = ("import sqlite3, sys, time\n"
            f"con = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "con.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_locked_sqlite_store_fails_before_the_block(tmp_path, clean_mlflow_env, template_db):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    shutil.copyfile(template_db, db)  # a real, migrated store
    uri = f"sqlite:///{db}"
    clean_mlflow_env.setenv("MLFLOW_TRACKING_URI", uri)
    clean_mlflow_env.chdir(tmp_path)
    holder = _hold_exclusive_lock(db)
    try:
        with pytest.raises(PipelineError) as info:
            with tracking.stage_run("train_head", _params(**{"tracking.connect_timeout": 1}), "unit", root=tmp_path):
                pytest.fail("the block must not run on a locked store")
    finally:
        holder.kill()
        holder.wait()
    msg = str(info.value)
    assert uri in msg and "locked" in msg and "1 s" in msg and "\n" not in msg, msg
    assert mlflow.active_run() is None
    # once the lock is gone the same store works, and the failed attempt left no run behind
    with tracking.stage_run("train_head", PARAMS, "unit", root=tmp_path):
        pass
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    stage_runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # the other one is the pipeline's parent
    assert [r.info.status for r in stage_runs] == ["FINISHED"] and len(runs) == 2


def test_store_that_is_not_a_database(tmp_path, clean_mlflow_env):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not sqlite" * 100)
    uri = f"sqlite:///{db}"
    clean_mlflow_env.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(PipelineError) as info:
        with tracking.stage_run("split", PARAMS, "unit", root=tmp_path):
            pytest.fail("the block must not run")
    assert uri in str(info.value) and "not a database" in str(info.value)


def test_sqlite_file_of_uris(tmp_path):
    assert tracking.sqlite_file(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert tracking.sqlite_file("sqlite:///rel/m.db?timeout=5") == Path("rel/m.db")
    assert tracking.sqlite_file("sqlite:///:memory:") is None
    assert tracking.sqlite_file("http://127.0.0.1:5000") is None


def test_bounded_http_only_while_checking_and_respects_user_settings(clean_mlflow_env):
    import os

    clean_mlflow_env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    with tracking.bounded_http(3):
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # the user's own limit wins
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def _stage_env(uri: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(MLFLOW_TRACKING_URI=uri, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train_head"])  # finetune and retrain share training.stage.train
def test_training_stage_with_unreachable_store_exits_2_before_any_output(tmp_path, closed_port, stage):
    """The real stage script, MLflow's default HTTP retries left on: one `error:` line naming the URI, exit
    status 2, and no model, metrics or plot written (training never started)."""
    work = tmp_path / "work"
    split = "data/split_unknown" if stage == "retrain" else "data/split"
    (work / split).mkdir(parents=True)
    (work / split / "classes.json").write_text(json.dumps({"classes": ["zero", "one", "unknown"]}))
    p = _params(**{"tracking.connect_timeout": 2})
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False), encoding="utf-8")
    uri = f"http://127.0.0.1:{closed_port}"
    proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=work, env=_stage_env(uri),
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and uri in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not any((work / d).exists() for d in ("models", "metrics", "plots")), sorted(work.rglob("*"))


@pytest.mark.slow
def test_evaluate_stage_with_locked_store_exits_2_before_any_output(tmp_path, template_db):
    work = tmp_path / "work"
    work.mkdir()
    db = tmp_path / "mlflow.db"
    shutil.copyfile(template_db, db)
    uri = f"sqlite:///{db}"
    (work / "data" / "split_unknown").mkdir(parents=True)
    (work / "data" / "split_unknown" / "classes.json").write_text(json.dumps({"classes": ["zero", "one"]}))
    p = _params(**{"tracking.connect_timeout": 1})
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False), encoding="utf-8")
    holder = _hold_exclusive_lock(db)
    try:
        proc = subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"), "--name", "finetuned",
                               "--model", "models/finetuned.pt"], cwd=work, env=_stage_env(uri),
                              capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert uri in errors[0] and "locked" in errors[0], errors
    assert not any((work / d).exists() for d in ("reports", "metrics", "plots")), sorted(work.rglob("*"))


# ------------------------------------------------------------------ cheap guards on the source


CODE = sorted([*(REPO / "src").rglob("*.py"), *(REPO / "stages").glob("*.py")])
FORBIDDEN = {
    "eval(": re.compile(r"(?<![\w.])eval\s*\("),  # net.eval() is a method, not the builtin
    "exec(": re.compile(r"(?<![\w.])exec\s*\("),
    "shell=True": re.compile(r"shell\s*=\s*True"),
    "os.system": re.compile(r"\bos\.system\b"),
    "os.popen": re.compile(r"\bos\.popen\b"),
    "pickle.load": re.compile(r"\bpickle\.loads?\s*\("),
    # the call's arguments (up to 300 characters, several lines) must include weights_only=True
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^;]{0,300}?weights_only=True)"),
    "yaml.load without a safe loader": re.compile(r"\byaml\.load\((?![^)]*Loader=yaml\.SafeLoader)"),
}


def test_no_code_strings_or_shell_in_source():
    assert len(CODE) > 10
    hits = []
    for path in CODE:
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines, 1):
            code = "\n".join(x.split("#", 1)[0] for x in lines[n - 1:n + 4])  # this line and the next few
            for what, pattern in FORBIDDEN.items():
                m = pattern.search(code)
                if m and m.start() < len(line) and not (what.startswith("yaml.load") and _ruamel(path)):
                    hits.append(f"{path.relative_to(REPO)}:{n}: {what}: {line.strip()}")
    assert hits == [], "\n".join(hits)


def _ruamel(path: Path) -> bool:
    """ruamel.yaml's YAML().load (round-trip or safe) builds no arbitrary objects."""
    text = path.read_text(encoding="utf-8")
    return "from ruamel.yaml import YAML" in text and "import yaml" not in text.replace("ruamel.yaml", "")


def test_guard_patterns_catch_what_they_should():
    bad = ["x = eval(s)", "exec(code)", "subprocess.run(cmd, shell=True)", "os.system('ls')",
           "pickle.loads(b)", "torch.load(p)", "torch.load(p, weights_only=False)", "yaml.load(text)"]
    ok = ["net.eval()", "m.eval()", "torch.load(p, map_location='cpu', weights_only=True)",
          "subprocess.run([exe, '-m', 'x'])", "yaml.safe_load(text)"]
    for line in bad:
        assert any(p.search(line) for p in FORBIDDEN.values()), line
    for line in ok:
        assert not any(p.search(line) for p in FORBIDDEN.values()), line


def test_servers_bind_loopback_by_default():
    """Everything that listens binds 127.0.0.1 unless told otherwise: no 0.0.0.0 or '' hosts in the code,
    and every `host` parameter defaults to loopback."""
    wildcard = re.compile(r"""["']0\.0\.0\.0["']|\(\s*["']["']\s*,\s*\d""")
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in CODE
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if wildcard.search(line.split("#", 1)[0])]
    assert hits == [], "\n".join(hits)
    import importlib

    checked = 0
    for path in (REPO / "src" / "tlpipe").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if not re.search(r"\bhost\s*[:=]", text):
            continue
        module = importlib.import_module(".".join(path.relative_to(REPO / "src").with_suffix("").parts))
        for _, fn in inspect.getmembers(module, inspect.isfunction):
            param = inspect.signature(fn).parameters.get("host")
            if param is not None and fn.__module__ == module.__name__:
                assert param.default in ("127.0.0.1", "localhost"), (module.__name__, fn.__name__, param.default)
                checked += 1
    if (REPO / "src" / "tlpipe" / "serving" / "server.py").exists():
        assert checked >= 1  # serving.serve_command(host=...)


def test_readme_commands_bind_loopback():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "0.0.0.0" not in text
