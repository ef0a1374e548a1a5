"""`inspect_lora`: one safe read of a LoRA file into a report a person or a program can use."""

from __future__ import annotations

import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import InputFileError
from ..files import sha256_file
from .formats import FormatReport, detect_format
from .metadata import TrainingMetadata, parse_metadata
from .safetensors_header import PICKLE_SUFFIXES, TensorInfo, load_pickle_weights, load_tensors, read_safetensors_header

#: tensors are scanned for NaN/Inf up to this many bytes, so a multi-gigabyte file stays quick
SCAN_LIMIT_BYTES = 512 * 2**20
STATIC_EVIDENCE_NOTE = (
    "static evidence, corroborating only: metadata can be stripped or forged; "
    "a generation-based check (`unlearnable verify --lora`) is what proves memorisation"
)


@dataclass
class TriggerHit:
    trigger: str
    field: str  # where it was found, e.g. "ss_tag_frequency[10_zqv style]"
    text: str  # the tag, folder name or an excerpt
    whole_token: bool
    count: int | None = None


@dataclass
class LoraReport:
    path: str
    sha256: str
    size_bytes: int
    container: str  # "safetensors" or "pickle (weights_only)"
    format: str
    format_description: str
    family: str
    family_evidence: list[str]
    ranks: list[int]
    alphas: list[float]
    module_count: int
    targets: dict[str, int]
    layer_kinds: dict[str, int]
    training: TrainingMetadata
    trigger_hits: list[TriggerHit] = field(default_factory=list)
    triggers_searched: list[str] = field(default_factory=list)
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
            f"rank(s)     {', '.join(map(str, self.ranks)) or '-'}    alpha(s) {', '.join(f'{a:g}' for a in self.alphas) or '-'}",
            f"modules     {self.module_count}: " + ", ".join(f"{k} {v}" for k, v in sorted(self.targets.items()))
            + "  (" + ", ".join(f"{k} {v}" for k, v in sorted(self.layer_kinds.items())) + ")",
        ]
        t = self.training
        if t.base_model:
            lines.append("trained on  " + ", ".join(f"{k.removeprefix('ss_')}={v}" for k, v in t.base_model.items()))
        if t.dates:
            lines.append("dates       " + ", ".join(f"{k.removeprefix('ss_training_')}={v}" for k, v in t.dates.items()))
        if t.output_name:
            lines.append(f"output name {t.output_name}")
        if t.comment:
            lines.append(f"comment     {t.comment}")
        if t.dataset_dirs:
            lines.append("dataset folders:")
            lines += [f"  {folder}: {info}" for folder, info in t.dataset_dirs.items()]
        if t.tag_frequency:
            lines.append("most frequent caption tags:")
            for folder, tags in t.tag_frequency.items():
                lines.append(f"  [{folder}] " + ", ".join(f"{tag} ({n})" for tag, n in tags[:15]) + (" ..." if len(tags) > 15 else ""))
        if t.hyperparameters:
            lines.append("training    " + ", ".join(f"{k.removeprefix('ss_')}={v}" for k, v in t.hyperparameters.items()))
        for key, value in {**t.hashes, **t.modelspec}.items():
            lines.append(f"{key:<11} {value}")
        if not t.has_training_metadata:
            lines.append("no kohya training metadata (stripped with --no_metadata, or not a kohya file)")
        if self.triggers_searched:
            lines.append(f"trigger search for {', '.join(self.triggers_searched)}:")
            if self.trigger_hits:
                for hit in self.trigger_hits:
                    kind = "token" if hit.whole_token else "substring"
                    lines.append(f"  FOUND {hit.trigger!r} ({kind}) in {hit.field}: {hit.text}" + (f" x{hit.count}" if hit.count else ""))
            else:
                lines.append("  not found in the metadata")
            lines.append(f"  ({STATIC_EVIDENCE_NOTE})")
        if self.nonfinite_tensors:
            lines.append(f"WARNING: NaN/Inf values in {len(self.nonfinite_tensors)} tensor(s): {', '.join(self.nonfinite_tensors[:5])}")
        lines.append(f"scanned {self.scanned_tensors} of {self.total_tensors} tensors for NaN/Inf")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _token_match(trigger: str, text: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(trigger)}(?![\w])", text, flags=re.IGNORECASE) is not None


def search_triggers(triggers: list[str], training: TrainingMetadata, metadata: dict[str, str]) -> list[TriggerHit]:
    """Every place a trigger appears: tags, dataset folders, names, comments, any other string."""
    hits: list[TriggerHit] = []
    for trigger in triggers:
        needle = trigger.lower()
        places: list[tuple[str, str, int | None]] = []
        for folder, tags in training.tag_frequency.items():
            places += [(f"ss_tag_frequency[{folder}]", tag, n) for tag, n in tags]
            places.append(("ss_tag_frequency folder name", folder, None))
        places += [("dataset folder", folder, None) for folder in training.dataset_dirs]
        covered = {"ss_tag_frequency", "ss_dataset_dirs"}
        places += [(key, value, None) for key, value in metadata.items() if key not in covered]
        for where, text, count in places:
            if needle in text.lower():
                excerpt = text if len(text) <= 120 else "..." + text[max(0, text.lower().index(needle) - 50) :][:120] + "..."
                hits.append(TriggerHit(trigger, where, excerpt, _token_match(trigger, text), count))
    return hits


def _scan_nonfinite(path: Path, infos: dict[str, TensorInfo], tensors: dict[str, torch.Tensor] | None) -> tuple[list[str], int]:
    float_names = [n for n, i in infos.items() if i.dtype in ("F64", "F32", "F16", "BF16")]
    budget, chosen = SCAN_LIMIT_BYTES, []
    for name in float_names:
        if infos[name].nbytes <= budget:
            chosen.append(name)
            budget -= infos[name].nbytes
    if tensors is None:
        tensors = load_tensors(path, chosen)
    bad = [name for name in chosen if not torch.isfinite(tensors[name].float()).all()]
    return bad, len(chosen)


def _alphas(modules, loaded: dict[str, torch.Tensor] | None, path: Path) -> list[float]:
    names = [f"{name}.alpha" for name, entry in modules.items() if "alpha" in entry.tensors]
    if not names:
        return []
    if loaded is None:
        loaded = load_tensors(path, names)
    return sorted({round(float(loaded[n].float().reshape(-1)[0]), 4) for n in names})


_TORCH_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def _infos_from_state_dict(state: dict[str, torch.Tensor]) -> dict[str, TensorInfo]:
    """Header-like infos for a state dict read from a pickle container (offsets are notional)."""
    return {k: TensorInfo(_TORCH_DTYPES.get(t.dtype, "I64"), tuple(t.shape), 0, t.numel() * t.element_size()) for k, t in state.items()}


def inspect_lora(path: str | Path, triggers: list[str] | None = None) -> LoraReport:
    """Read a LoRA file safely and describe it; `triggers` are searched in its metadata."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such file")
    report_warnings: list[str] = []
    loaded: dict[str, torch.Tensor] | None = None
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        report_warnings.append("this is a pickle container; it was read with torch.load(weights_only=True), which refuses code")
        warnings.warn(f"{path}: pickle container read with weights_only=True", stacklevel=2)
        loaded = load_pickle_weights(path)
        infos, metadata, container = _infos_from_state_dict(loaded), {}, "pickle (weights_only)"
    elif suffix == ".safetensors":
        infos, metadata = read_safetensors_header(path)
        container = "safetensors"
    else:
        raise InputFileError(path, f"unsupported file type {suffix or '(none)'}: expected .safetensors (or .ckpt/.pt read with weights_only)")
    formats: FormatReport = detect_format(infos, metadata)
    if formats.format == "unknown":
        raise InputFileError(path, f"unknown key layout: none of its {len(infos)} tensor names looks like a LoRA/LyCORIS/PEFT adapter (e.g. {next(iter(infos), 'no tensors')!r})")
    if formats.incomplete_modules:
        report_warnings.append(f"{len(formats.incomplete_modules)} module(s) miss part of their weights, e.g. {formats.incomplete_modules[0]}")
    if formats.unmatched_keys:
        report_warnings.append(f"{len(formats.unmatched_keys)} tensor(s) with unrecognised names, e.g. {formats.unmatched_keys[0]}")
    training = parse_metadata(metadata)
    if training.malformed:
        report_warnings.append(f"malformed JSON in metadata: {', '.join(training.malformed)}")
    nonfinite, scanned = _scan_nonfinite(path, infos, loaded)
    alphas = _alphas(formats.modules, loaded, path)
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
        module_count=len(formats.modules),
        targets=formats.targets,
        layer_kinds=formats.layer_kinds,
        training=training,
        nonfinite_tensors=nonfinite,
        scanned_tensors=scanned,
        total_tensors=len(infos),
        warnings=report_warnings,
    )
    if triggers:
        report.triggers_searched = list(triggers)
        report.trigger_hits = search_triggers(list(triggers), training, metadata)
    return report
