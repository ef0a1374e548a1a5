"""Reading an untrusted safetensors file's header with every declared size checked first.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then raw tensor
bytes. A hostile or broken file can declare any N and any offsets, so all of them are bounded
by the real file size before anything is read or allocated. Pickle containers (.pt, .ckpt, .bin)
are opened only through `torch.load(weights_only=True)`, which refuses anything but tensors.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputFileError

#: No real LoRA header is near this; kohya metadata with tag frequencies is usually < 1 MB.
MAX_HEADER_BYTES = 100 * 2**20
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offsets into the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_safetensors_header(
    path: str | Path, max_header_bytes: int = MAX_HEADER_BYTES
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensor infos by name, `__metadata__` strings), after validating every size and offset."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise InputFileError(path, f"too short to be a safetensors file ({size} bytes)")
            (header_length,) = struct.unpack("<Q", prefix)
            if header_length > max_header_bytes:
                raise InputFileError(path, f"header declares {header_length:,} bytes, more than the {max_header_bytes:,} allowed")
            if header_length > size - 8:
                raise InputFileError(
                    path,
                    f"header declares {header_length:,} bytes but the file has only {size - 8:,} after the length (truncated?)",
                )
            raw = handle.read(header_length)
    except OSError as exc:
        raise InputFileError(path, f"cannot read file ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise InputFileError(path, "header JSON is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InputFileError(path, "header is not a JSON object")
    metadata_raw = header.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict):
        raise InputFileError(path, "__metadata__ is not a JSON object")
    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata_raw.items()}
    data_size = size - 8 - header_length
    infos = {name: _tensor_info(path, name, entry, data_size) for name, entry in header.items()}
    spans = sorted((info.start, info.end, name) for name, info in infos.items() if info.nbytes)
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise InputFileError(path, f"tensors {first!r} and {second!r} overlap in the data section")
    return infos, metadata


def _tensor_info(path: Path, name: str, entry, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise InputFileError(path, f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise InputFileError(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputFileError(path, f"tensor {name!r}: invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise InputFileError(path, f"tensor {name!r}: invalid data_offsets {offsets!r}")
    start, end = offsets
    if not 0 <= start <= end <= data_size:
        raise InputFileError(path, f"tensor {name!r}: data [{start}, {end}) lies outside the {data_size:,}-byte data section")
    if end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise InputFileError(path, f"tensor {name!r}: {end - start} bytes do not hold a {dtype} tensor of shape {shape}")
    return TensorInfo(dtype, tuple(shape), start, end)


def iter_tensors(path: str | Path, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time from a safetensors file whose header has been validated first."""
    from safetensors import safe_open

    infos, _ = read_safetensors_header(path)
    wanted = list(infos) if names is None else names
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in wanted:
                yield name, handle.get_tensor(name)
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file means: unreadable
        raise InputFileError(path, f"cannot read tensors ({exc})") from None


def load_tensors(path: str | Path, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors from a validated safetensors file (all, or `names`)."""
    return dict(iter_tensors(path, names))


def load_pickle_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A .ckpt/.pt/.bin state dict through `torch.load(weights_only=True)`: tensors only, no code."""
    path = Path(path)
    warnings.warn(
        f"{path}: pickle container, read with torch.load(weights_only=True), which refuses code; prefer .safetensors",
        UserWarning,
        stacklevel=3,
    )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many types for refused or broken content
        raise InputFileError(
            path, f"refused or unreadable pickle container (weights_only=True): {str(exc).splitlines()[0]}"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise InputFileError(path, "pickle container does not hold a plain {name: tensor} state dict")
    return data
