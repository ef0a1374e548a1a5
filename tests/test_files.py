"""Atomic writes: outputs get the mode a plain open() gives (readable when published), secrets 0600."""

from __future__ import annotations

import os
import stat

from shared_core import files


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_honour_the_umask_and_an_explicit_secret_mode(tmp_path):
    plain = files.atomic_write_bytes(tmp_path / "out.png", b"data")
    with open(tmp_path / "reference", "wb"):
        pass
    assert mode(plain) == mode(tmp_path / "reference") == 0o666 & ~files._UMASK
    secret = files.atomic_write_text(tmp_path / "a.trace-key.json", "{}", mode=0o600)
    assert mode(secret) == 0o600 and secret.read_text() == "{}"
    files.atomic_write_text(secret, "{ }")  # a rewrite without mode gives the usual mode again
    assert mode(secret) == 0o666 & ~files._UMASK
    assert not list(tmp_path.glob(".*.part"))


def test_trace_keys_are_written_owner_only(tmp_path):
    from shared_core.trace.key import TraceKey
    from shared_core.trace.templates import builtin_template

    key = TraceKey.for_template(builtin_template("billboard", size=64, seed=0), trigger="zqv7", rate=0.1, seed=0, dataset_size=10)
    path = key.save(tmp_path / "k.trace-key.json")
    assert mode(path) == 0o600 and TraceKey.load(path).trigger == "zqv7"
