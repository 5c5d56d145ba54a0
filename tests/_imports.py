"""Static import closure of a script over the tlpipe package (every `import`, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts)
    return ".".join(parts[:-1])


def imported(path: Path) -> set[str]:
    """tlpipe modules a file imports (absolute names), with their parent packages."""
    path = path.resolve()
    tree = ast.parse(path.read_text())
    pkg = _package_of(path) if path.is_relative_to(SRC) else ""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "tlpipe"}
            if any(a.name == "_path" for a in node.names) and (path.parent / "_path.py").is_file():
                names |= imported(path.parent / "_path.py")  # a stage's bootstrap (stages/_path.py)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "tlpipe":
                continue
            names.add(mod)
            for a in node.names:  # `from tlpipe import models` names a module
                if _module_file(f"{mod}.{a.name}"):
                    names.add(f"{mod}.{a.name}")
    out = set()
    for n in names:
        parts = n.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return out


def closure(script: Path) -> set[Path]:
    """Files of src/tlpipe that `script` reaches through imports, transitively."""
    seen: set[str] = set()
    todo = sorted(imported(script))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        f = _module_file(name)
        if f is not None:
            todo.extend(imported(f) - seen)
    return {f for f in (_module_file(n) for n in seen) if f is not None}


def compact(files: set[Path]) -> list[str]:
    """Repository-relative deps for dvc.yaml: a package folder when all its modules are needed, else files."""
    out: set[Path] = set()
    for f in files:
        pkg = f.parent
        whole = pkg != SRC / "tlpipe" and all(m in files for m in pkg.glob("*.py"))
        out.add(pkg if whole else f)
    return sorted(str(p.relative_to(REPO)) for p in out)


def expand(deps: list[str]) -> set[Path]:
    """The tlpipe modules that dvc.yaml deps name (folders expanded to their .py files)."""
    out: set[Path] = set()
    for d in deps:
        p = REPO / d
        if p.is_dir() and p.is_relative_to(SRC):
            out |= set(p.rglob("*.py"))
        elif p.suffix == ".py" and p.is_relative_to(SRC):
            out.add(p)
    return out


def fix_dvc_yaml(path: Path = REPO / "dvc.yaml") -> None:
    """Rewrite each stage's src/tlpipe deps in dvc.yaml to its import closure (keeps every other line)."""
    import re

    text = path.read_text()
    out, stage = [], None
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^( +)- (stages/\w+\.py)\n$", line)
        if m and not m.group(2).endswith("_path.py"):
            indent, script = m.group(1), REPO / m.group(2)
            out.append(line)
            i += 1
            while i < len(lines) and re.match(rf"^{indent}- (src/tlpipe\S*|stages/_path\.py)\n$", lines[i]):
                i += 1
            out.append(f"{indent}- stages/_path.py\n")
            out.extend(f"{indent}- {d}\n" for d in compact(closure(script)))
            continue
        out.append(line)
        i += 1
    path.write_text("".join(out))


if __name__ == "__main__":
    fix_dvc_yaml()
