"""Broken and hostile files: every declared size is checked before it is trusted, pickles only as weights."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from shared_core.errors import InputFileError
from shared_core.lora import apply_lora, inspect_lora, read_safetensors_header


def raw_file(path, header_length: int, payload: bytes = b""):
    path.write_bytes(struct.pack("<Q", header_length) + payload)
    return path


def header_file(path, header: dict, data: bytes = b""):
    encoded = json.dumps(header).encode()
    return raw_file(path, len(encoded), encoded + data)


def test_reads_a_valid_header(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file(
        {"a.lora_down.weight": torch.zeros(2, 3), "a.alpha": torch.tensor(1.0, dtype=torch.float16)},
        str(path),
        metadata={"k": "v"},
    )
    infos, metadata = read_safetensors_header(path)
    assert metadata == {"k": "v"}
    assert infos["a.lora_down.weight"].dtype == "F32" and infos["a.lora_down.weight"].shape == (2, 3)
    assert infos["a.lora_down.weight"].nbytes == 24 and infos["a.alpha"].shape == () and infos["a.alpha"].nbytes == 2


F32_2x2 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
MALFORMED = {
    "too_short": lambda p: p.write_bytes(b"\x01\x02"),
    "declares_5_GB": lambda p: raw_file(p, 5 * 2**30, b"{}"),
    "longer_than_file": lambda p: raw_file(p, 4096, b"{}"),
    "not_json": lambda p: raw_file(p, 9, b"not json!"),
    "not_utf8": lambda p: raw_file(p, 4, b"\xff\xfe\xfd\xfc"),
    "json_array": lambda p: raw_file(p, 2, b"[]"),
    "deeply_nested": lambda p: raw_file(p, 200_000, b"[" * 200_000),
    "offsets_outside": lambda p: header_file(p, {"a.lora_down.weight": F32_2x2}, b"\0" * 8),
    "overlapping": lambda p: header_file(
        p, {"a.lora_down.weight": F32_2x2, "a.lora_up.weight": {**F32_2x2, "data_offsets": [8, 24]}}, b"\0" * 24
    ),
    "size_mismatch": lambda p: header_file(p, {"a.lora_down.weight": {**F32_2x2, "data_offsets": [0, 12]}}, b"\0" * 16),
    "bad_dtype": lambda p: header_file(p, {"a.lora_down.weight": {**F32_2x2, "dtype": "F128"}}, b"\0" * 16),
    "negative_shape": lambda p: header_file(p, {"a.lora_down.weight": {**F32_2x2, "shape": [-2, -2]}}, b"\0" * 16),
    "metadata_not_object": lambda p: header_file(p, {"__metadata__": [1, 2]}),
}
EXPECTED = {
    "too_short": "too short", "declares_5_GB": "more than the", "longer_than_file": "truncated", "not_json": "not valid JSON",
    "not_utf8": "not valid JSON", "json_array": "not a JSON object", "deeply_nested": "nested too deeply",
    "offsets_outside": "outside", "overlapping": "overlap", "size_mismatch": "do not hold", "bad_dtype": "unknown dtype",
    "negative_shape": "invalid shape", "metadata_not_object": "__metadata__",
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_are_refused_naming_the_file(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    MALFORMED[case](path)
    with pytest.raises(InputFileError, match=EXPECTED[case]) as info:
        inspect_lora(path)
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_truncated_real_file(tmp_path, tiny_unet, tiny_text_encoder, kit):
    good = tmp_path / "good.safetensors"
    save_file(kit.kohya_state(tiny_unet, tiny_text_encoder), str(good), metadata=kit.METADATA)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(InputFileError, match="outside") as info:
        inspect_lora(truncated)
    assert "truncated.safetensors" in str(info.value)
    with pytest.raises(InputFileError, match="outside"):
        apply_lora(tiny_unet, [tiny_text_encoder], truncated)


def test_header_length_is_bounded_before_reading(tmp_path):
    path = raw_file(tmp_path / "x.safetensors", 2**40)
    with pytest.raises(InputFileError, match="more than the"):
        read_safetensors_header(path)
    with pytest.raises(InputFileError, match="more than the 1,000"):
        read_safetensors_header(
            header_file(tmp_path / "y.safetensors", {"__metadata__": {"k": "v" * 2000}}), max_header_bytes=1000
        )


def test_other_file_types_and_missing_files_are_refused(tmp_path):
    (tmp_path / "lora.txt").write_text("hello")
    with pytest.raises(InputFileError, match="unsupported file type .txt"):
        inspect_lora(tmp_path / "lora.txt")
    with pytest.raises(InputFileError, match="no such file"):
        inspect_lora(tmp_path / "missing.safetensors")


def test_pickles_are_read_only_as_weights(tmp_path, tiny_unet, tiny_text_encoder, kit):
    torch.save(kit.kohya_state(tiny_unet, tiny_text_encoder), tmp_path / "ok.pt")
    with pytest.warns(UserWarning, match="weights_only=True"):
        report = inspect_lora(tmp_path / "ok.pt")
    assert report.format == "lora" and report.container == "pickle (weights_only)" and report.ranks == [4]

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')",))

    torch.save({"x.lora_down.weight": torch.zeros(1), "x.payload": Payload()}, tmp_path / "evil.ckpt")
    with pytest.warns(UserWarning), pytest.raises(InputFileError, match="weights_only") as info:
        inspect_lora(tmp_path / "evil.ckpt")
    assert "evil.ckpt" in str(info.value) and not marker.exists()
    torch.save({"x.lora_down.weight": torch.zeros(1), "note": "a string"}, tmp_path / "mixed.pt")
    with pytest.warns(UserWarning), pytest.raises(InputFileError, match="plain"):
        inspect_lora(tmp_path / "mixed.pt")
