"""`unlearnable bench overhead --json`: the figures come with the command, device, torch, dtype and raw timings."""

from __future__ import annotations

import json
import statistics

import torch

from shared_core.cli import main


def test_overhead_json_records_what_backs_its_figures(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    argv = ["bench", "overhead", "--device", "cpu", "--batch-size", "1", "--resolution", "32", "--steps", "2", "--repeats", "3",
            "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["command"] == "unlearnable " + " ".join(argv)
    assert data["torch"] == torch.__version__ and data["device"] == "cpu" and data["dtype"] == "float32"
    assert data["device_name"] and data["resolution"] == 32 and data["steps_per_repeat"] == 2
    # 3 repeats of 2 steps: 3 whole runs, 3 step intervals stamped inside them, 6 bare steps
    assert (len(data["raw_seconds_per_step_engine"]), len(data["raw_seconds_engine_steps"]), len(data["raw_seconds_bare_steps"])) == (3, 3, 6)
    assert data["seconds_per_step_engine"] == statistics.median(data["raw_seconds_per_step_engine"])
    assert data["seconds_per_step_engine_marginal"] == statistics.median(data["raw_seconds_engine_steps"])
    assert data["overhead_ratio"] == data["seconds_per_step_engine"] / data["seconds_per_step_bare"]
    # the median step and the fixed cost give back the N-step run
    n, marginal, fixed = data["steps_per_repeat"], data["seconds_per_step_engine_marginal"], data["seconds_fixed_per_run"]
    assert abs(fixed + n * marginal - n * data["seconds_per_step_engine"]) < 1e-9
    assert abs(data["overhead_ratio_default_steps"] * 100 * data["seconds_per_step_bare"] - (fixed + 100 * marginal)) < 1e-9
    out = capsys.readouterr().out
    assert f"overhead_ratio={data['overhead_ratio']:.3f}" in out and f"overhead_ratio_per_step={data['overhead_ratio_per_step']:.3f}" in out
    assert out.strip().splitlines()[-1].startswith(f"overhead_ratio_default_steps={data['overhead_ratio_default_steps']:.3f}")
