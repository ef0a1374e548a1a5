"""benchmarks/gpu_suite.py, rehearsed on the CPU with tiny shapes: it must work before a GPU is at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared_core.protect import OBJECTIVES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # every method once, about a minute of CPU
def test_gpu_suite_measures_every_method_and_the_overhead(tmp_path):
    out = tmp_path / "suite.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--shape", "tiny", "--device", "cpu", "--dtype", "fp32",
               "--resolution", "32", "--steps", "2", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["partial"] is False and data["not_run"] == [] and data["command"].startswith("python benchmarks/gpu_suite.py --shape tiny")
    measured = [(row["method"], row["low_memory"]) for row in data["methods"]]
    assert measured == [*((name, False) for name in OBJECTIVES), ("eudp", True)]
    assert all(row["seconds_per_image_at_default_steps"] > 0 for row in data["methods"])
    assert data["overhead"]["overhead_ratio_default_steps"] > 0 and len(data["overhead"]["raw_seconds_engine_steps"]) == 3 * 9
    # a deadline already passed: nothing new starts, and the file says what was left out
    late = subprocess.run([*command[:-2], "--deadline", "0", "--out", str(tmp_path / "late.json")], capture_output=True, text=True, timeout=900)
    assert late.returncode == 0, late.stderr[-3000:]
    cut = json.loads((tmp_path / "late.json").read_text())
    assert cut["partial"] is True and cut["methods"] == [] and len(cut["not_run"]) == len(OBJECTIVES) + 1
