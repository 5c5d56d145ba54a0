"""Apply a params preset (presets/<name>.yaml) onto params.yaml, keeping its comments."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from . import params as P
from .atomic import write_text
from .errors import PipelineError
from .stage import entry

REPLACED = {"known_classes"}  # mappings a preset replaces whole instead of merging


def merge(base: Any, override: dict[str, Any], prefix: str = "") -> None:
    """Deep-merge `override` into the round-trip mapping `base`; unknown keys are errors."""
    for key, value in override.items():
        if key not in base:
            raise PipelineError(f"preset: unknown key {prefix}{key}")
        if isinstance(value, dict) and key not in REPLACED:
            merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value


def apply(preset: Path, params_path: Path) -> None:
    """Merge `preset` into `params_path`, validate the result, then write it atomically."""
    if not preset.is_file():
        raise PipelineError(f"preset not found: {preset}")
    yaml = YAML()
    yaml.width = 4096
    yaml.preserve_quotes = True
    doc = yaml.load(params_path.read_text(encoding="utf-8"))
    merge(doc, YAML(typ="safe").load(preset.read_text(encoding="utf-8")) or {})
    P.validate(json.loads(json.dumps(doc)))
    buf = io.StringIO()
    yaml.dump(doc, buf)
    write_text(params_path, buf.getvalue())


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
