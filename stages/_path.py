"""Imported first by every stage, before torch loads: put the repository's src/ first on sys.path, so stages
always run the working tree's library; make idle OpenMP threads sleep instead of spin; and pin PyTorch's CPU
kernels to params.yaml's `cpu_isa` (tlpipe.cpu_isa: same params, byte-identical outputs on another CPU).

With the default spin-wait, two stages running at once (`dvc queue start -j 2`) steal each other's cores:
bench/concurrency.py measured each of two concurrent training processes 3.9-6.1x slower than alone on 2
cores, against 1.5-1.8x with OMP_WAIT_POLICY=PASSIVE, which costs nothing measurable alone. The wait policy
does not change any computation, so results stay bit-identical. An explicit OMP_WAIT_POLICY wins."""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tlpipe import cpu_isa  # noqa: E402  (after src/ is on the path; torch not yet loaded)

if note := cpu_isa.pin(cpu_isa.from_params()):
    print(note, file=sys.stderr)
