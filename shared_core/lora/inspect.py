"""`inspect_lora`: one safe read of a LoRA file into a report a person or a program can use."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import InputFileError
from ..files import sha256_file
from .formats import FormatReport, ModuleEntry, detect_format
from .metadata import TrainingMetadata, parse_metadata
from .safetensors_header import PICKLE_SUFFIXES, TensorInfo, iter_tensors, load_pickle_weights, read_safetensors_header

#: tensors are scanned for NaN/Inf up to this many bytes in all, so a multi-gigabyte file stays quick
SCAN_LIMIT_BYTES = 256 * 2**20
STATIC_EVIDENCE_NOTE = (
    "static evidence, corroborating only: metadata can be stripped or forged; a generation-based check proves memorisation"
)
#: the text report cuts each metadata value to this many characters, and lists to this many entries
TEXT_LIMIT = 300
LIST_LIMIT = 20
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_TORCH_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


@dataclass
class TriggerHit:
    trigger: str
    field: str  # where it was found, e.g. "ss_tag_frequency[10_zqv style]" or "ss_training_comment"
    text: str  # the tag, the folder name, or an excerpt of the value
    whole_token: bool  # True: the trigger stands alone; False: only inside a longer word
    count: int | None = None  # caption count for a tag hit


@dataclass
class LoraReport:
    path: str
    sha256: str
    size_bytes: int
    container: str  # "safetensors" or "pickle (weights_only)"
    format: str  # lora / locon / peft / peft-legacy / loha / lokr / oft / ia3 / full / mixed
    format_description: str
    family: str  # SD1.x / SD2.x / SDXL / Flux / SD3 / transformer (DiT) model / unknown
    family_evidence: list[str]
    ranks: list[int]
    alphas: list[float]
    alpha_source: str
    module_count: int
    targets: dict[str, int]
    layer_kinds: dict[str, int]
    modules: list[dict]  # per adapted layer: name, type, rank, target, layer kind, tensor shapes
    incomplete_modules: list[str]  # e.g. lora_down without lora_up
    training: TrainingMetadata
    triggers_searched: list[str] = field(default_factory=list)
    trigger_hits: list[TriggerHit] = field(default_factory=list)
    nonfinite_tensors: list[str] = field(default_factory=list)
    scanned_tensors: int = 0
    total_tensors: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["evidence_note"] = STATIC_EVIDENCE_NOTE if self.triggers_searched else None
        return data

    def to_text(self) -> str:
        lines = [
            f"LoRA file   {self.path}",
            f"SHA-256     {self.sha256}",
            f"size        {self.size_bytes / 2**20:.2f} MiB ({self.container})",
            f"format      {self.format_description}",
            f"base model  {self.family}  ({'; '.join(self.family_evidence)})",
            f"rank(s)     {_join(self.ranks)}    alpha(s) {_join(f'{a:g}' for a in self.alphas)}  [{self.alpha_source}]",
            f"modules     {self.module_count}: {_counts(self.targets)}  ({_counts(self.layer_kinds)})",
        ]
        lines += self._training_lines()
        lines += self._trigger_lines()
        if self.incomplete_modules:
            missing = self.incomplete_modules
            lines.append(f"WARNING: {len(missing)} layer(s) miss part of their weights: {_join(missing[:5])}")
        if self.nonfinite_tensors:
            lines.append(
                f"WARNING: NaN/Inf values in {len(self.nonfinite_tensors)} tensor(s): {', '.join(self.nonfinite_tensors[:5])}"
            )
        limit = f"at most {SCAN_LIMIT_BYTES // 2**20} MiB read"
        lines.append(f"scanned {self.scanned_tensors} of {self.total_tensors} tensors for NaN/Inf ({limit})")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _training_lines(self) -> list[str]:
        t, lines = self.training, []
        if t.base_model:
            lines.append("trained on  " + ", ".join(f"{k.removeprefix('ss_')}={_short(v)}" for k, v in t.base_model.items()))
        if t.dates:
            lines.append("dates       " + ", ".join(f"{k.removeprefix('ss_training_')}={_short(v)}" for k, v in t.dates.items()))
        if t.output_name:
            lines.append(f"output name {_short(t.output_name)}")
        if t.comment:
            lines.append(f"comment     {_short(t.comment)}")
        if t.dataset_dirs:
            lines.append("dataset folders:")
            lines += [f"  {_short(folder)}: {_short(json.dumps(info))}" for folder, info in list(t.dataset_dirs.items())[:LIST_LIMIT]]
            lines += [f"  ... ({len(t.dataset_dirs)} folders; all of them with --json)"] if len(t.dataset_dirs) > LIST_LIMIT else []
        if t.tag_frequency:
            lines.append("most frequent caption tags:")
            for folder, tags in list(t.tag_frequency.items())[:LIST_LIMIT]:
                more = f" ... ({len(tags)} tags)" if len(tags) > 15 else ""
                lines.append(f"  [{_short(folder)}] " + ", ".join(f"{_short(tag)} ({n})" for tag, n in tags[:15]) + more)
            lines += [f"  ... ({len(t.tag_frequency)} folders; all of them with --json)"] if len(t.tag_frequency) > LIST_LIMIT else []
        if t.hyperparameters:
            lines.append("training    " + ", ".join(f"{k.removeprefix('ss_')}={_short(v)}" for k, v in t.hyperparameters.items()))
        lines += [f"{key:<11} {_short(value)}" for key, value in {**t.hashes, **t.modelspec}.items()]
        lines += [f"malformed   {key}: {raw[:80]!r}" for key, raw in t.malformed.items()]
        if not t.has_training_metadata:
            lines.append("no kohya training metadata (stripped with --no_metadata, or not a kohya file)")
        return lines

    def _trigger_lines(self) -> list[str]:
        if not self.triggers_searched:
            return []
        lines = [f"trigger search ({STATIC_EVIDENCE_NOTE}):"]
        for trigger in self.triggers_searched:
            hits = [hit for hit in self.trigger_hits if hit.trigger == trigger]
            if not hits:
                lines.append(
                    f"  {trigger!r}: not found in the metadata"
                    + ("" if self.training.has_training_metadata else " (which has no training metadata: absence proves nothing)")
                )
            for hit in hits:
                kind = "whole token" if hit.whole_token else "substring"
                lines.append(f"  FOUND {trigger!r} ({kind}) in {_short(hit.field)}: {_short(hit.text)}" + (f" x{hit.count}" if hit.count else ""))
        return lines


def _short(value, limit: int = TEXT_LIMIT) -> str:
    """A metadata value cut for the terminal: metadata can hold megabytes (the full text is in --json)."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters; the full text with --json)"


def _join(items) -> str:
    return ", ".join(map(str, items)) or "-"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counts.items()))


def _is_token(trigger: str, text: str) -> bool:
    """The trigger with no letter or digit either side ('_' separates, as in kohya's '10_zqv')."""
    return re.search(rf"(?<![^\W_]){re.escape(trigger)}(?![^\W_])", text, flags=re.IGNORECASE) is not None


def _excerpt(text: str, needle: str) -> str:
    if len(text) <= 120:
        return text
    start = max(0, text.lower().index(needle) - 50)
    return ("..." if start else "") + text[start : start + 120] + "..."


def search_triggers(triggers: list[str], training: TrainingMetadata, metadata: dict[str, str]) -> list[TriggerHit]:
    """Every place a trigger appears: tags, dataset folders, names, comments, any other string."""
    places: list[tuple[str, str, int | None]] = []
    for folder, tags in training.tag_frequency.items():
        places.append(("ss_tag_frequency folder name", folder, None))
        places += [(f"ss_tag_frequency[{folder}]", tag, n) for tag, n in tags]
    places += [("dataset folder", folder, None) for folder in training.dataset_dirs]
    structured = {"ss_tag_frequency", "ss_dataset_dirs"} - training.malformed.keys()
    places += [(key, value, None) for key, value in metadata.items() if key not in structured]
    hits = []
    for trigger in filter(None, (t.strip() for t in triggers)):
        needle = trigger.lower()
        for where, text, count in places:
            if needle in text.lower():
                hits.append(TriggerHit(trigger, where, _excerpt(text, needle), _is_token(trigger, text), count))
    return hits


def _scan_nonfinite(path: Path, infos: dict[str, TensorInfo], loaded: dict[str, torch.Tensor] | None) -> tuple[list[str], int]:
    """Names of tensors with NaN/Inf among the first SCAN_LIMIT_BYTES of float tensors, and how many were scanned."""
    budget, chosen = SCAN_LIMIT_BYTES, []
    for name, info in infos.items():
        if info.dtype in _FLOAT_DTYPES and info.nbytes <= budget:
            chosen.append(name)
            budget -= info.nbytes
    tensors = ((name, loaded[name]) for name in chosen) if loaded is not None else iter_tensors(path, chosen)
    return [name for name, tensor in tensors if not torch.isfinite(tensor).all()], len(chosen)


def _alphas(modules: dict[str, ModuleEntry], metadata: dict[str, str], path: Path, loaded) -> tuple[list[float], str]:
    """Distinct alphas, from `.alpha` tensors if any, else from what the header says."""
    names = [entry.keys["alpha"] for entry in modules.values() if "alpha" in entry.keys]
    if names:
        tensors = ((name, loaded[name]) for name in names) if loaded is not None else iter_tensors(path, names)
        values = {round(float(t.float().reshape(-1)[0]), 4) for _, t in tensors if t.numel()}
        return sorted(values), "alpha tensors"
    try:
        adapter = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except (json.JSONDecodeError, RecursionError):
        adapter = {}
    if isinstance(adapter, dict):
        values = {v for k, v in adapter.items() if k.endswith(".lora_alpha") and isinstance(v, (int, float))}
        for key, pattern in adapter.items():
            if key.endswith(".alpha_pattern") and isinstance(pattern, dict):
                values.update(v for v in pattern.values() if isinstance(v, (int, float)))
        if values:
            return sorted(float(v) for v in values), "lora_adapter_metadata"
    try:
        return [float(metadata["ss_network_alpha"])], "ss_network_alpha metadata"
    except (KeyError, ValueError):
        return [], "none stored (alpha = rank, scale 1)"


def _infos_from_state_dict(state: dict[str, torch.Tensor]) -> dict[str, TensorInfo]:
    """Header-like infos for a state dict read from a pickle container (offsets are notional)."""
    return {
        k: TensorInfo(_TORCH_DTYPES.get(t.dtype, "I64"), tuple(t.shape), 0, t.numel() * t.element_size())
        for k, t in state.items()
    }


def _container_by_content(path: Path) -> str | None:
    """"pickle" for what torch.save writes (a zip archive, or a bare pickle stream), from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "pickle"
    return None


def inspect_lora(path: str | Path, triggers: list[str] | None = None) -> LoraReport:
    """Read a LoRA file safely and describe it; `triggers` are searched for in its metadata."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f"; it holds {', '.join(inside[:3])}" + (" ..." if len(inside) > 3 else "") if inside else ""
        raise InputFileError(path, f"is a folder, not a LoRA file: pass the weights file inside it{hint}")
    if not path.is_file():
        raise InputFileError(path, "no such file")
    report_warnings: list[str] = []
    loaded: dict[str, torch.Tensor] | None = None
    suffix = path.suffix.lower()
    container_kind = _container_by_content(path)
    if container_kind == "pickle" and suffix not in PICKLE_SUFFIXES:
        raise InputFileError(
            path,
            f"is a pickle (PyTorch .ckpt/.pt) file, not {suffix or 'a file type this reads'}, whatever its name says; "
            "rename it to .ckpt to read it with torch.load(weights_only=True), which refuses code",
        )
    if suffix in PICKLE_SUFFIXES:
        loaded = load_pickle_weights(path)
        infos, metadata, container = _infos_from_state_dict(loaded), {}, "pickle (weights_only)"
        report_warnings.append(
            "pickle container: read with torch.load(weights_only=True), which refuses code; it carries no metadata"
        )
    elif suffix == ".safetensors":
        infos, metadata = read_safetensors_header(path)
        container = "safetensors"
    else:
        raise InputFileError(
            path,
            f"unsupported file type {suffix or '(none)'}: expected .safetensors (or .ckpt/.pt/.pth/.bin, read with weights_only)",
        )
    formats: FormatReport = detect_format(infos, metadata)
    if formats.format == "unknown":
        example = next(iter(infos), "no tensors at all")
        raise InputFileError(
            path,
            f"unknown key layout: none of its {len(infos)} tensor names looks like a LoRA / LyCORIS / PEFT adapter"
            f" (e.g. {example!r})",
        )
    if formats.unmatched_keys:
        report_warnings.append(
            f"{len(formats.unmatched_keys)} tensor(s) with unrecognised names, e.g. {formats.unmatched_keys[0]}"
        )
    training = parse_metadata(metadata)
    nonfinite, scanned = _scan_nonfinite(path, infos, loaded)
    alphas, alpha_source = _alphas(formats.modules, metadata, path, loaded)
    report = LoraReport(
        path=str(path),
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        container=container,
        format=formats.format,
        format_description=formats.description,
        family=formats.family,
        family_evidence=formats.family_evidence,
        ranks=formats.ranks,
        alphas=alphas,
        alpha_source=alpha_source,
        module_count=len(formats.modules),
        targets=formats.targets,
        layer_kinds=formats.layer_kinds,
        modules=[entry.summary() for entry in formats.modules.values()],
        incomplete_modules=formats.incomplete_modules,
        training=training,
        nonfinite_tensors=nonfinite,
        scanned_tensors=scanned,
        total_tensors=len(infos),
        warnings=report_warnings,
    )
    if triggers:
        report.triggers_searched = [t.strip() for t in triggers if t.strip()]
        report.trigger_hits = search_triggers(report.triggers_searched, training, metadata)
    return report
