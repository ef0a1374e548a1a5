"""The README's main command, run as a user runs it, on a folder of real photos."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np

from shared_core.cli import main
from shared_core.images import load_image


def hashes(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_protect_command_on_a_folder_with_a_corrupt_file(tmp_path, photo_folder):
    (photo_folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this jpeg stops here")
    before = hashes(photo_folder)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "shared_core", "protect", str(photo_folder), "--out", str(out),
               "--model", "builtin:tiny", "--steps", "10", "--no-progress"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "corrupt.jpg" in run.stderr and "demo model" in run.stderr
    assert hashes(photo_folder) == before
    summary = json.loads((out / "protect-summary.json").read_text())
    assert summary["totals"] == {**summary["totals"], "protected": 4, "failed": 1}
    for item in summary["images"]:
        if item["status"] != "protected":
            continue
        source, output = load_image(item["source"]).rgb, load_image(item["output"]).rgb
        assert output.shape == source.shape
        assert np.abs(output.astype(int) - source.astype(int)).max() <= 8 == summary["settings"]["budget"]
        assert item["psnr"] > 30


def test_resume_and_json_output(tmp_path, photo_folder, capsys):
    args = ["protect", str(photo_folder), "--out", str(tmp_path / "o"), "--method", "encoder", "--steps", "2", "--no-progress", "--tile-size", "64"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["skipped"] == 4 and report["totals"]["protected"] == 0


def test_usage_errors_exit_2(tmp_path, photo_folder, capsys):
    assert main(["protect", str(photo_folder), "--out", str(tmp_path / "o"), "--method", "nope"]) == 2
    assert "choose one of" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["protect", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["protect", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o"), "--steps", "1"]) == 1
    assert "missing.png: cannot read file" in capsys.readouterr().err
    assert main(["protect", str(photo_folder), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "x.ckpt")]) == 2


def test_methods_and_info(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in ("eudp", "udp", "advdm", "encoder", "mist", "aspl", "survival"):
        assert name in text
    assert main(["info"]) == 0
    assert "torch" in capsys.readouterr().out
