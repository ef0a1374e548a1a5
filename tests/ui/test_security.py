"""The standalone app's boundaries: typed paths stay inside allowed folders, writes inside the outputs,
no remote access without a log-in, keys private and outputs readable."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from PIL import Image

from shared_core.errors import SettingsError, UnlearnableError
from shared_core.ui import handlers
from shared_core.ui.hooks import StandaloneHooks


@pytest.fixture
def place(tmp_path, photo_file):
    """An allowed folder holding a small dataset, a secret outside it, and a symlink from inside to outside."""
    allowed = tmp_path / "allowed"
    dataset = allowed / "dataset"
    dataset.mkdir(parents=True)
    for index in range(2):
        Image.open(photo_file).rotate(90 * index).save(dataset / f"img{index}.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.open(photo_file).save(outside / "private.png")
    (outside / "secret.txt").write_text("password=hunter2\n")
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    hooks = StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu", allowed_dirs=(tmp_path / "out", allowed))
    return hooks, allowed, outside


def escapes(allowed: Path, outside: Path, name: str) -> list[str]:
    """The same outside file named three ways: absolute, with `..` from an allowed folder, through a symlink."""
    return [str(outside / name), str(allowed / ".." / "outside" / name), str(allowed / "link" / name)]


def test_captions_are_read_only_from_allowed_folders(place):
    hooks, allowed, outside = place
    for path in escapes(allowed, outside, "secret.txt"):
        with pytest.raises(SettingsError, match="outside the folders this app may read.*--allow-dir"):
            handlers._captions(hooks, path)
    (allowed / "captions.txt").write_text("one\ntwo\n")
    assert handlers._captions(hooks, str(allowed / "captions.txt")) == ["one", "two"]


def test_protect_folder_and_uploads_must_be_allowed(place):
    hooks, allowed, outside = place
    for path in escapes(allowed, outside, ""):
        with pytest.raises(SettingsError, match="folder .* outside the folders"):
            handlers.run_protect(hooks, folder=path, model="builtin:tiny", method="advdm", budget=4, steps=1)
    for path in escapes(allowed, outside, "private.png"):
        with pytest.raises(SettingsError, match="uploaded file .* outside the folders"):
            handlers.run_protect(hooks, files=[{"path": path}], model="builtin:tiny", method="advdm", budget=4, steps=1)
    assert not any((hooks.resolve_outputs_dir()).rglob("*.png"))


def test_typed_model_lora_and_key_paths_must_be_allowed(place):
    hooks, allowed, outside = place
    for path in escapes(allowed, outside, "model.safetensors"):
        with pytest.raises(SettingsError, match="model .* outside the folders"):
            handlers.run_protect(hooks, folder=str(allowed / "dataset"), model=path, method="advdm", budget=4, steps=1)
    for path in escapes(allowed, outside, "lora.safetensors"):
        with pytest.raises(SettingsError, match="LoRA file .* outside the folders"):
            handlers.run_inspect_lora(hooks, path=path)
    for path in escapes(allowed, outside, "secret.txt"):
        with pytest.raises(SettingsError, match="key file .* outside the folders"):
            handlers.run_verify(hooks, key_path=path, model="builtin:tiny")


def test_mark_reads_allowed_datasets_and_writes_only_under_the_outputs(place):
    hooks, allowed, outside = place
    for path in escapes(allowed, outside, ""):
        with pytest.raises(SettingsError, match="dataset folder .* outside the folders"):
            handlers.run_mark(hooks, dataset_dir=path, rate=0.5)
    for path in [str(outside / "marked"), str(hooks.resolve_outputs_dir() / ".." / "marked"), str(allowed / "link" / "marked")]:
        with pytest.raises(SettingsError, match="outside the outputs folder"):
            handlers.run_mark(hooks, dataset_dir=str(allowed / "dataset"), out_dir=path, rate=0.5)
    assert not (outside / "marked").exists() and not (hooks.resolve_outputs_dir().parent / "marked").exists()

    result = handlers.run_mark(hooks, dataset_dir=str(allowed / "dataset"), out_dir=str(hooks.resolve_outputs_dir() / "mine"), rate=0.5)
    [key] = hooks.resolve_keys_dir().glob("mine-*.trace-key.json")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not any(hooks.resolve_outputs_dir().rglob("*.trace-key.json")), "a key under the served outputs folder"
    assert stat.S_IMODE(Path(result.downloads[0]).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(result.downloads[0]).parent.stat().st_mode) == 0o700


def test_outputs_are_readable_by_others_under_the_usual_umask(place):
    import os

    hooks, allowed, _ = place
    old = os.umask(0o022)
    try:
        result = handlers.run_protect(hooks, folder=str(allowed / "dataset"), model="builtin:tiny", method="advdm", budget=4, steps=1)
    finally:
        os.umask(old)
    outputs = [Path(p) for p, _ in result.gallery]
    assert len(outputs) == 2
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~old for p in outputs), [oct(p.stat().st_mode) for p in outputs]


@pytest.mark.parametrize("kwargs", [{"share": True}, {"host": "0.0.0.0"}, {"host": "192.168.1.5"}])
def test_remote_access_without_auth_refuses_to_start(tmp_path, kwargs):
    pytest.importorskip("gradio")
    from shared_core.ui.app import launch_app

    with pytest.raises(UnlearnableError, match="--auth USER:PASS"):
        launch_app(outputs_dir=tmp_path / "out", block=False, **kwargs)
    with pytest.raises(UnlearnableError, match="USER:PASS"):
        launch_app(outputs_dir=tmp_path / "out", block=False, auth="nopassword", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_share_without_auth(tmp_path, capsys):
    pytest.importorskip("gradio")
    from shared_core.cli import main

    assert main(["ui", "--share", "--out", str(tmp_path / "out"), "--no-browser"]) != 0
    assert "--auth USER:PASS" in capsys.readouterr().err


def test_path_taking_buttons_are_api_endpoints_only_with_api(tmp_path):
    pytest.importorskip("gradio")
    from shared_core.ui.app import build_ui

    def named(api: bool) -> set[str]:
        blocks = build_ui(StandaloneHooks(outputs_dir=tmp_path / "out", device="cpu", api_endpoints=api))
        info = blocks.get_api_info()
        return {name for name, endpoint in info["named_endpoints"].items() if endpoint.get("api_visibility", "public") == "public"}

    buttons = {"/protect", "/mark", "/verify", "/inspect_lora"}
    assert not buttons & named(False)
    assert buttons <= named(True)
