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
    assert len(data["raw_seconds_per_step_engine"]) == len(data["raw_seconds_per_step_bare"]) == 3
    assert data["seconds_per_step_engine"] == statistics.median(data["raw_seconds_per_step_engine"])
    assert data["overhead_ratio"] == data["seconds_per_step_engine"] / data["seconds_per_step_bare"]
    assert f"overhead_ratio={data['overhead_ratio']:.3f}" in capsys.readouterr().out
