"""atomic.py: an output is either complete or absent; no temporary files are left behind."""

from __future__ import annotations

import json

import pytest

from tlpipe.atomic import atomic_dir, atomic_path, write_json, write_text


class Boom(Exception):
    pass


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_path_success_writes_and_cleans(tmp_path):
    out = tmp_path / "sub" / "deeper" / "out.txt"  # parents are created
    with atomic_path(out) as tmp:
        assert tmp != out and tmp.parent == out.parent
        assert not out.exists()  # nothing visible while the block runs
        tmp.write_text("complete", encoding="utf-8")
    assert out.read_text(encoding="utf-8") == "complete"
    assert _leftovers(out.parent) == []


def test_atomic_path_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out.txt"
    with pytest.raises(Boom):
        with atomic_path(out) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise Boom()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_failure_keeps_previous_version(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old", encoding="utf-8")
    with pytest.raises(Boom):
        with atomic_path(out) as tmp:
            tmp.write_text("new but broken", encoding="utf-8")
            raise Boom()
    assert out.read_text(encoding="utf-8") == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_path_success_replaces(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("old", encoding="utf-8")
    with atomic_path(out) as tmp:
        tmp.write_text("new", encoding="utf-8")
    assert out.read_text(encoding="utf-8") == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_keyboard_interrupt_leaves_nothing(tmp_path):
    out = tmp_path / "model.pt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"\0" * 100)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_success_replaces_whole_folder(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run", encoding="utf-8")
    with atomic_dir(out) as tmp:
        assert tmp.is_dir() and tmp != out
        (tmp / "index.csv").write_text("path,label,group\n", encoding="utf-8")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.png").write_bytes(b"x")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["index.csv", "sub", "sub/a.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_atomic_dir_failure_leaves_no_output(tmp_path):
    out = tmp_path / "parent" / "raw"
    with pytest.raises(Boom):
        with atomic_dir(out) as tmp:
            (tmp / "part.bin").write_bytes(b"x" * 10)
            raise Boom()
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_atomic_dir_failure_keeps_previous_folder(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "good.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(Boom):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new", encoding="utf-8")
            raise Boom()
    assert [p.name for p in out.iterdir()] == ["good.txt"]
    assert (out / "good.txt").read_text(encoding="utf-8") == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_write_json_is_sorted_stable_and_newline_terminated(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(a, {"b": 1, "a": {"z": 2, "y": [1, 2]}})
    write_json(b, {"a": {"y": [1, 2], "z": 2}, "b": 1})
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": {"y": [1, 2], "z": 2}, "b": 1}
    assert _leftovers(tmp_path) == []


def test_write_json_failure_keeps_old_file(tmp_path):
    out = tmp_path / "m.json"
    write_json(out, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(out, {"bad": object()})  # not serialisable: fails before anything is written
    assert json.loads(out.read_text(encoding="utf-8")) == {"ok": 1}
    assert _leftovers(tmp_path) == []


def test_write_text_utf8(tmp_path):
    out = tmp_path / "r.txt"
    write_text(out, "Vorfahrt straße ✓\n")
    assert out.read_bytes() == "Vorfahrt straße ✓\n".encode("utf-8")


def _killed_writer(tmp_path, target, kind: str):
    """A child process that starts an atomic write of `target`, then is SIGKILLed mid-write."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    code = (f"import sys, time; sys.path.insert(0, {str(src)!r})\n"
            "from tlpipe.atomic import atomic_dir, atomic_path\n"
            f"with atomic_{kind}({str(target)!r}) as tmp:\n"
            "    (tmp / 'part.bin' if tmp.is_dir() else tmp).write_bytes(b'half')\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kind", ["path", "dir"])
def test_sigkill_mid_write_leaves_old_output_then_next_write_cleans(tmp_path, kind):
    target = tmp_path / ("model.pt" if kind == "path" else "raw")
    if kind == "path":
        target.write_text("old", encoding="utf-8")
    else:
        target.mkdir()
        (target / "old.txt").write_text("old", encoding="utf-8")
    _killed_writer(tmp_path, target, kind)
    # SIGKILL skipped every finally: the old output is intact, one stale temporary is left beside it
    if kind == "path":
        assert target.read_text(encoding="utf-8") == "old"
    else:
        assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert len(_leftovers(tmp_path)) == 1
    # the next write of the same output removes the dead writer's temporary
    if kind == "path":
        write_text(target, "new")
        assert target.read_text(encoding="utf-8") == "new"
    else:
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new", encoding="utf-8")
        assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert _leftovers(tmp_path) == []


def test_clean_stale_keeps_live_writers_and_other_outputs(tmp_path):
    import os

    from tlpipe.atomic import clean_stale

    live = tmp_path / f".m.json.~{os.getppid()}~abc.tmp"  # the parent process (pytest's launcher) is alive
    other = tmp_path / ".n.json.~999999999~abc.tmp"  # another output's temporary
    dead = tmp_path / ".m.json.~999999999~abc.tmp"  # no such pid
    dead_dir = tmp_path / ".m.json.~999999999~def-old.tmp"
    for p in (live, other, dead):
        p.write_text("x", encoding="utf-8")
    dead_dir.mkdir()
    (dead_dir / "f").write_text("x", encoding="utf-8")
    assert sorted(p.name for p in clean_stale(tmp_path / "m.json")) == sorted([dead.name, dead_dir.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_stage_start_removes_temporaries_of_dead_writers_only(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from tlpipe.atomic import clean_stale_tree

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"data/.raw.~{dead}~x1.tmp").mkdir(parents=True)
    (tmp_path / f"data/.raw.~{dead}~x1.tmp/index.csv").write_text("half")
    (tmp_path / f"models/.resume/.head-head.pt.~{dead}~y2.tmp").parent.mkdir(parents=True)
    (tmp_path / f"models/.resume/.head-head.pt.~{dead}~y2.tmp").write_bytes(b"torn")
    live = tmp_path / f"metrics/.m.json.~{os.getppid()}~z3.tmp"
    live.parent.mkdir()
    live.write_text("{}")
    keep = tmp_path / "data/raw/index.csv"
    keep.parent.mkdir()
    keep.write_text("path,label,group\n")
    removed = sorted(p.as_posix() for p in clean_stale_tree())
    assert removed == [f"data/.raw.~{dead}~x1.tmp", f"models/.resume/.head-head.pt.~{dead}~y2.tmp"]
    assert live.exists() and keep.exists()
