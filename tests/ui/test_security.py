"""The standalone app's boundaries: typed paths stay inside allowed folders, writes inside the outputs,
no remote access without a log-in, keys private and outputs readable."""

from __future__ import annotations

import inspect
import itertools
import os
import shutil
import stat
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from shared_core.errors import SettingsError, UnlearnableError
from shared_core.ui import handlers
from shared_core.ui.hooks import StandaloneHooks

from .conftest import require_gradio


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


def test_mimicry_test_reads_only_allowed_folders_and_models(place):
    """Refused before the test protects or trains anything: no run folder, so no report."""
    hooks, allowed, outside = place
    dataset = str(allowed / "dataset")
    small = {"lora_steps": 1, "n": 1, "resolution": 32, "protect_steps": 1}  # the old code ran the whole test outside
    for path in escapes(allowed, outside, ""):
        with pytest.raises(SettingsError, match="clean images folder .* outside the folders this app may read .*--allow-dir"):
            handlers.run_check_protection(hooks, model="builtin:tiny", clean_folder=path, method="advdm", **small)
        with pytest.raises(SettingsError, match="protected folder .* outside the folders this app may read .*--allow-dir"):
            handlers.run_check_protection(hooks, model="builtin:tiny", clean_folder=dataset, protected_folder=path, **small)
    for path in escapes(allowed, outside, "model.safetensors"):
        with pytest.raises(SettingsError, match="model .* outside the folders this app may read .*--allow-dir"):
            handlers.run_check_protection(hooks, model=path, clean_folder=dataset, protected_folder=dataset, **small)
    assert not (hooks.resolve_outputs_dir() / "mimicry").exists()


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

    buttons = {"/protect", "/mark", "/verify", "/check_protection", "/inspect_lora"}
    assert not buttons & named(False)
    assert buttons <= named(True)


_touched: list[str] | None = None  # real paths seen while `touches()` records
_unwatched = threading.local()  # on while a path is judged or resolved, which is no touch of its own
_audit_hook_added = False


def _note(*args) -> None:
    if _touched is None or getattr(_unwatched, "on", False):
        return
    _unwatched.on = True  # realpath stats the path again
    try:
        _touched.extend(os.fsdecode(os.path.realpath(arg)) for arg in args if isinstance(arg, (str, bytes, os.PathLike)))
    finally:
        _unwatched.on = False


def _note_file_event(event: str, args: tuple) -> None:
    if event == "open" or event.split(".")[0] in ("os", "shutil", "glob", "pathlib"):
        _note(*args)


def _watched(stat):
    def call(path, *args, **kwargs):
        _note(path)
        return stat(path, *args, **kwargs)

    return call


def _unwatched_call(method):
    def call(*args, **kwargs):
        _unwatched.on = True
        try:
            return method(*args, **kwargs)
        finally:
            _unwatched.on = False

    return call


@pytest.fixture
def touches(monkeypatch):
    """`with touches() as paths:` collects the real paths that code opens, lists, writes, moves or stats inside it.

    Opening, listing and writing raise audit events (from C code too); stat raises none, so os.stat and os.lstat are
    wrapped. An audit hook cannot be removed: one is added per process and does nothing outside a recording.
    """
    global _audit_hook_added
    if not _audit_hook_added:
        sys.addaudithook(_note_file_event)
        _audit_hook_added = True
    monkeypatch.setattr(os, "stat", _watched(os.stat))
    monkeypatch.setattr(os, "lstat", _watched(os.lstat))

    @contextmanager
    def recording():
        global _touched
        _touched = paths = []
        try:
            yield paths
        finally:
            _touched = None

    return recording


REFUSALS = ("outside the folders this app may read", "outside the outputs folder")


def text_input_events(blocks) -> list:
    """The built Blocks' event functions that take at least one text box, with their input components."""
    import gradio as gr

    fns = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns  # a dict in newer gradio
    return [(f.fn, list(f.inputs)) for f in fns if any(isinstance(c, gr.Textbox) for c in f.inputs)]


def outcome_of(fn, values: list) -> str:
    """What the user sees: the returned values, or the error's message."""
    extra = {"progress": lambda *a, **k: None} if "progress" in inspect.signature(fn).parameters else {}
    try:
        return repr(fn(*values, **extra))
    except Exception as exc:  # gr.Error or whatever a handler lets through: either is fine if nothing outside was touched
        return str(getattr(exc, "message", exc))


def test_detector_sees_reads_listings_and_stats(place, touches):
    """The handler walk below passes only if nothing was seen: the detector must see each way of touching."""
    _, _, outside = place
    with touches() as paths:
        (outside / "secret.txt").read_text()
        (outside / "private.png").exists()
        list(outside.iterdir())
    assert {str(outside.resolve() / "secret.txt"), str(outside.resolve() / "private.png"), str(outside.resolve())} <= set(paths)


def test_every_text_box_of_every_handler_stays_inside_the_allowed_folders(place, touches):
    """Walks the built UI, not a list: a handler added later that uses a typed path unguarded fails here.

    Each text box of each event function gets each escape (of a folder and of a file), the other inputs their
    defaults; a second pass also fills the other empty text boxes with an allowed folder, so that a handler that wants
    several paths gets past its first check. Each call must refuse the path by name, or neither touch the outside
    folder (open, list, write, even stat it) nor show the secret file's content.
    """
    gr = require_gradio()
    from shared_core.ui.app import build_ui

    hooks, allowed, outside = place
    fill = hooks.resolve_outputs_dir() / "dataset"  # both readable and writable
    shutil.copytree(allowed / "dataset", fill)
    hooks.readable, hooks.writable = _unwatched_call(hooks.readable), _unwatched_call(hooks.writable)  # judging resolves the path
    outside_before = {path: path.read_bytes() if path.is_file() else None for path in outside.rglob("*")}
    escape_paths = escapes(allowed, outside, "") + escapes(allowed, outside, "secret.txt")
    walked = set()
    for fn, inputs in text_input_events(build_ui(hooks)):
        walked.add(fn.__name__)
        boxes = [index for index, component in enumerate(inputs) if isinstance(component, gr.Textbox)]
        for index, filled, path in itertools.product(boxes, (False, True), escape_paths):
            values = [component.value for component in inputs]
            if filled:
                values = [str(fill) if i in boxes and not value else value for i, value in enumerate(values)]
            values[index] = path
            with touches() as paths:
                outcome = outcome_of(fn, values)
            where = f"{fn.__name__}({inputs[index].elem_id}={path}, others {'filled' if filled else 'default'}): {outcome[:300]}"
            refused = path in outcome and any(refusal in outcome for refusal in REFUSALS)
            touched_outside = [p for p in paths if Path(p).is_relative_to(outside.resolve())]
            assert refused or not touched_outside, f"{where}\ntouched {touched_outside[:5]}"
            assert "hunter2" not in outcome, where
    assert {"protect", "mark", "run_verify", "run_check", "inspect"} <= walked
    assert {path: path.read_bytes() if path.is_file() else None for path in outside.rglob("*")} == outside_before
    assert not any(b"hunter2" in f.read_bytes() for f in hooks.resolve_outputs_dir().rglob("*") if f.is_file())
