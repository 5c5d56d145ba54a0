"""Apply a params preset (presets/<name>.yaml) onto params.yaml, keeping its comments and layout.

params.yaml is edited line by line: a key whose value changes gets the new value on its own line
(mappings and lists in flow style), its `# comment` kept; nothing else moves. (A round-trip YAML
library was tried first: it misplaced comments when a block mapping became a scalar.)
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path
from typing import Any

import yaml

from . import params as P
from ..atomic import write_text
from ..errors import PipelineError
from ..stage import entry

REPLACED = {"known_classes"}  # mappings a preset replaces whole instead of merging
BASE = "digits.yaml"  # the defaults: applied before every preset, so no setting carries over from another
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[^\s#:][^:#]*?):(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")


def merge(base: dict[str, Any], override: dict[str, Any], prefix: str = "") -> None:
    """Deep-merge `override` into `base`; unknown keys are errors."""
    for key, value in override.items():
        if key not in base:
            raise PipelineError(f"preset: unknown key {prefix}{key}")
        if isinstance(value, dict) and key not in REPLACED:
            if not isinstance(base[key], dict):
                raise PipelineError(f"preset: {prefix}{key} is a single value in params.yaml, not a section")
            merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value


def read(preset: Path) -> dict[str, Any]:
    if not preset.is_file():
        raise PipelineError(f"preset not found: {preset}")
    try:
        data = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"preset {preset}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise PipelineError(f"preset {preset}: must hold a mapping of params sections")
    return data


def flow(value: Any) -> str:
    """A value as one line of YAML (flow style for mappings and lists)."""
    if value == "":
        return '""'
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False).rstrip("\n")
    return text[: -len("\n...")] if text.endswith("\n...") else text


def render(text: str, values: dict[str, Any], old: dict[str, Any]) -> str:
    """`text` (params.yaml, whose leaves are `old`) with the leaves of `values` that differ (dotted keys, as
    params.flatten gives them) set in place: comments kept; a replaced block value (e.g. a known_classes
    mapping) dropped."""
    lines, out = text.splitlines(), []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing sections
    skip_deeper_than: int | None = None
    blanks: list[str] = []  # blank lines met while skipping: kept if the block ends after them
    for line in lines:
        m = KEY_LINE.match(line)
        indent = len(m.group("indent")) if m else None
        if skip_deeper_than is not None:
            if not line.strip():
                blanks.append(line)
                continue
            if (indent is not None and indent > skip_deeper_than) or \
                    (m is None and line.startswith(" " * (skip_deeper_than + 1))):
                blanks.clear()
                continue
            skip_deeper_than = None
            out.extend(blanks)
            blanks.clear()
        if m is None:
            out.append(line)
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [m.group("key")])
        if dotted in values and values[dotted] != old.get(dotted):
            line = f"{m.group('indent')}{m.group('key')}: {flow(values[dotted])}{m.group('comment') or ''}"
            if m.group("value").strip() == "":
                skip_deeper_than = indent  # the old value was a block under this key
        elif m.group("value").strip() == "":
            stack.append((indent, m.group("key")))
        out.append(line)
    return "\n".join(out + blanks) + "\n"


def apply(preset: Path, params_path: Path, base: Path | None = None) -> None:
    """Merge `base` (default: presets/digits.yaml beside `preset`), then `preset`, into `params_path`; validate
    the result, then write it atomically."""
    base = base if base is not None else preset.parent / BASE
    layers = [read(base)] if base.is_file() and base.resolve() != preset.resolve() else []
    layers.append(read(preset))
    text = params_path.read_text(encoding="utf-8")
    current = yaml.safe_load(text)
    merged = copy.deepcopy(current)
    for layer in layers:
        merge(merged, layer)
    P.validate(merged)
    new_text = render(text, P.flatten(merged), P.flatten(current))
    if yaml.safe_load(new_text) != merged:  # the line editor must give exactly the merged params
        raise PipelineError(f"preset: could not rewrite {params_path} in place (unexpected layout)")
    write_text(params_path, new_text)


def main() -> None:
    ap = argparse.ArgumentParser(description="Apply presets/<name>.yaml onto params.yaml")
    ap.add_argument("name", help="preset name (a file in presets/) or a path to a YAML file")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--presets", type=Path, default=Path("presets"))
    args = ap.parse_args()
    path = Path(args.name) if args.name.endswith((".yaml", ".yml")) else args.presets / f"{args.name}.yaml"
    apply(path, args.params)
    print(f"applied {path} to {args.params}; now run: dvc repro (or dvc exp run)")


def cli() -> None:
    """Console entry point: one-line errors, exit status 2."""
    entry(main)


if __name__ == "__main__":
    cli()
