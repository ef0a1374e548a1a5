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
    assert main(["bench", "tracing", "--detectors", "matcher,cnn", "--out", str(tmp_path / "no-bench")]) == 2
    assert "no victims of plan 'full'" in capsys.readouterr().err


def test_methods_and_info(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in ("eudp", "udp", "advdm", "fsgm", "sds", "encoder", "mist", "aspl", "survival"):
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


def test_methods_are_the_objectives_docstrings(capsys):
    import inspect

    from shared_core.protect.objectives import OBJECTIVES
    from shared_core.protect.timesteps import SCHEDULES
    from shared_core.protect.transforms import ROBUSTNESS_TRANSFORMS

    assert main(["methods"]) == 0
    expected = "".join(f"== {name} ==\n{inspect.cleandoc(cls.__doc__ or '')}\n\n" for name, cls in OBJECTIVES.items())
    expected += f"timestep schedules (--timesteps): {', '.join(SCHEDULES)}\n"
    expected += f"robustness transforms (--robust): {', '.join(ROBUSTNESS_TRANSFORMS)}\n"
    assert capsys.readouterr().out == expected


def test_help_and_methods_do_not_import_torch():
    """torch, diffusers and transformers take seconds to import; listing things must not wait for them."""
    script = (
        "import sys, contextlib, io\n"
        "from shared_core.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['methods'])\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_protect_reports_each_bad_file_in_one_line(tmp_path, photo_folder, photos):
    from tests.conftest import png_with_declared_size, truncated_jpeg

    png_with_declared_size(photo_folder / "bomb.png", 30000, 30000)
    truncated_jpeg(photo_folder / "sub" / "cut.jpg", photos[1][:96, :96])
    command = [sys.executable, "-m", "shared_core", "protect", str(photo_folder), "--out", str(tmp_path / "out"),
               "--method", "advdm", "--steps", "2", "--tile-size", "64", "--no-progress"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert errors[0] == f"error: {photo_folder / 'bomb.png'}: 900,000,000 pixels is more than the 250,000,000 allowed"
    assert errors[1].startswith(f"error: {photo_folder / 'sub' / 'cut.jpg'}: cannot decode image (OSError: image file is truncated")
    assert "Traceback" not in run.stderr
    summary = json.loads((tmp_path / "out" / "protect-summary.json").read_text())
    assert summary["totals"]["protected"] == 4 and summary["totals"]["failed"] == 2
