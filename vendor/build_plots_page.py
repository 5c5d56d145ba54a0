"""Build vendor/dvc_plots_page.html: DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined.

`dvc plots show` writes a page that loads those three libraries from cdn.jsdelivr.net, so offline (this
project's target machine) it shows no chart. `.dvc/config` points `plots.html_template` at the page this
script builds, which carries them inline (BSD-3-Clause, see LICENSE-vega.txt); nothing is fetched.

The libraries come from the UMD builds bundled in a PyPI wheel of panel (panel/dist/bundled/vegaplot/):

    pip download --no-deps panel==1.9.4 -d /tmp/w
    python vendor/build_plots_page.py /tmp/w/panel-1.9.4-py3-none-any.whl

The sha256 of each file is checked against the ones below, so the committed page is reproducible.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

FOLDER = "panel/dist/bundled/vegaplot/"
LIBS = {  # file in the wheel -> sha256 (panel 1.9.4); loaded in this order (vega-embed needs the others)
    "vega@6.1.2": "08f796b6a571b0b46d819f07fb7581ca16565af86985e1766bb180638576b3f8",
    "vega-lite@6.3.0": "8adcfe6639b05208977cbfc325cba5e92f8b33fc15789e731328949b500bb97b",
    "vega-embed@7.0.2": "c7111a41190080938b14c1de00074d9bda16ef2199e2919dd038cddf97d87354",
}
OUT = Path(__file__).resolve().parent / "dvc_plots_page.html"

# DVC fills {refresh_tag} and {plot_divs}; without a {scripts} placeholder it adds no CDN <script> tags.
PAGE = """<!DOCTYPE html>
<!-- DVC plots page for offline use; built by vendor/build_plots_page.py. Inlined: {libs}
     (Copyright (c) University of Washington Interactive Data Lab; BSD-3-Clause, see
     vendor/LICENSE-vega.txt). -->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def build(wheel: Path) -> str:
    scripts = []
    with zipfile.ZipFile(wheel) as z:
        for name, digest in LIBS.items():
            data = z.read(FOLDER + name)
            got = hashlib.sha256(data).hexdigest()
            if got != digest:
                raise SystemExit(f"{wheel}: {FOLDER + name} has sha256 {got}, expected {digest}")
            text = data.decode("utf-8")
            if "</script" in text.lower() or any(f"{{{p}}}" in text for p in ("plot_divs", "refresh_tag", "scripts")):
                raise SystemExit(f"{name}: cannot be inlined (contains a closing script tag or a DVC placeholder)")
            scripts.append(f"    <script>/* {name} */\n{text}\n    </script>")
    return PAGE.format(libs=", ".join(LIBS), scripts="\n".join(scripts))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    OUT.write_text(build(Path(sys.argv[1])), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
