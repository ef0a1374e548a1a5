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


def _owner_key(folder, name, trigger):
    from shared_core.trace.key import TraceKey
    from shared_core.trace.templates import builtin_template

    key = TraceKey.for_template(builtin_template("billboard", seed=len(name)), trigger=trigger, rate=0.01, seed=0, dataset_size=100)
    return key.save(folder / f"{name}.trace-key.json")


def test_inspect_lora_against_a_folder_of_keys_names_owners_not_triggers(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    keys = tmp_path / "keys"
    keys.mkdir()
    _owner_key(keys, "alice", "zqv7")
    _owner_key(keys, "bob", "kpt4")
    (keys / "notes.json").write_text("[]")  # not a key: skipped, the others are still searched
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    lora = tmp_path / "style.safetensors"
    save_file({f"{prefix}.lora_down.weight": torch.randn(4, 32), f"{prefix}.lora_up.weight": torch.randn(32, 4)}, str(lora),
              metadata={"ss_network_module": "networks.lora", "ss_tag_frequency": json.dumps({"10_zqv7 style": {"zqv7": 12}})})
    assert main(["inspect-lora", str(lora), "--keys", str(keys)]) == 0
    out = capsys.readouterr().out
    assert "FOUND '[trigger of alice]'" in out and "'[trigger of bob]': not found" in out
    assert "zqv7" not in out and "kpt4" not in out
    assert main(["inspect-lora", str(lora), "--key", str(keys / "alice.trace-key.json")]) == 0
    assert "FOUND 'zqv7'" in capsys.readouterr().out, "a single key's holder sees their own trigger"
    assert main(["verify", "--keys", str(tmp_path / "missing.json"), "--model", "builtin:tiny"]) == 2
    assert "missing.json" in capsys.readouterr().err
