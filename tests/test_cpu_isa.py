"""cpu_isa: a stage process runs PyTorch's CPU kernels (ATen and oneDNN) of the instruction set params.yaml
names, set by stages/_path.py before torch loads; a CPU without it keeps its own kernels and is told so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlpipe import cpu_isa

STAGES = Path(__file__).resolve().parents[1] / "stages"
# a stage's first lines, then what PyTorch's CPU dispatch and oneDNN (running a convolution) report
PROBE = f"""
import sys
sys.path.insert(0, {str(STAGES)!r})
import _path
import torch
print("aten", torch.backends.cpu.get_cpu_capability())
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    torch.nn.functional.conv2d(torch.randn(8, 32, 28, 28), torch.randn(16, 32, 3, 3))
"""
HAS_AVX2 = all(cpu_isa.cpu_features().get(f, False) for f in cpu_isa.CPU_ISAS["avx2"][1])


def _probe(tmp_path: Path, params: str, **env: str) -> tuple[str, str, str]:
    """(ATen capability, oneDNN's isa line, stderr) of a stage-like process in a folder with this params.yaml."""
    (tmp_path / "params.yaml").write_text(params)
    clean = {k: v for k, v in os.environ.items()
             if k not in cpu_isa.CPU_ISAS["avx2"][0]}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    aten = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("aten "))
    isa = next((line.split("isa:")[1].split(",")[0] for line in done.stdout.splitlines() if "isa:" in line), "")
    return aten, isa, done.stderr


def test_pin_sets_every_switch_when_the_cpu_has_the_set():
    env: dict[str, str] = {}
    assert cpu_isa.pin("avx2", env, {"AVX2": True, "FMA3": True}) == ""
    assert env == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert cpu_isa.pin("default", env, {}) == ""
    assert env == {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


def test_pin_leaves_a_cpu_without_the_set_alone_and_says_so():
    env = {"ATEN_CPU_CAPABILITY": "avx2"}
    note = cpu_isa.pin("avx512", env, {"AVX2": True, "FMA3": True, "AVX512F": True})  # no BW/VL/DQ
    assert env == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert note.startswith("note: cpu_isa avx512: this CPU lacks AVX512F/AVX512BW/AVX512VL/AVX512DQ/FMA3")
    assert cpu_isa.pin("avx2", env, {}).startswith("note: cpu_isa avx2")  # e.g. an ARM CPU: no x86 names


@pytest.mark.parametrize("isa", ["", "avx3", None, 2])
def test_pin_ignores_empty_and_bad_values(isa):
    env: dict[str, str] = {}
    assert cpu_isa.pin(isa, env, {"AVX2": True, "FMA3": True}) == "" and env == {}


def test_from_params_reads_the_key_and_tolerates_a_broken_file(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\ncpu_isa: avx2\n")
    assert cpu_isa.from_params(tmp_path / "params.yaml") == "avx2"
    (tmp_path / "params.yaml").write_text("seed: [1\n")
    assert cpu_isa.from_params(tmp_path / "params.yaml") is None
    assert cpu_isa.from_params(tmp_path / "missing.yaml") is None


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2")
def test_a_stage_process_runs_avx2_kernels_and_params_win_over_the_environment(tmp_path):
    aten, isa, err = _probe(tmp_path, "cpu_isa: avx2\n", ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41")
    assert (aten, isa) == ("AVX2", "Intel AVX2") and "note:" not in err


def test_default_means_no_vector_kernels(tmp_path):
    aten, isa, _ = _probe(tmp_path, "cpu_isa: default\n")
    assert aten == "DEFAULT" and isa.startswith("Intel SSE4.1")


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2")
def test_empty_leaves_the_cpu_its_best_kernels(tmp_path):
    aten, isa, _ = _probe(tmp_path, 'cpu_isa: ""\n')
    assert aten in ("AVX2", "AVX512") and not isa.startswith("Intel SSE4.1")
