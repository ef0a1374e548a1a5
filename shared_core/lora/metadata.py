"""kohya / modelspec training metadata turned into readable, structured form.

Every value in a safetensors header is a string, some of them JSON. Malformed values are kept as
raw strings and listed, never fatal: a damaged or hand-edited header is itself worth reporting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

HYPERPARAMETERS = (
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_learning_rate",
    "ss_unet_lr", "ss_text_encoder_lr", "ss_lr_scheduler", "ss_optimizer", "ss_num_epochs", "ss_max_train_steps",
    "ss_num_train_images", "ss_num_reg_images", "ss_batch_size_per_device", "ss_resolution", "ss_mixed_precision",
    "ss_seed", "ss_clip_skip", "ss_noise_offset", "ss_min_snr_gamma", "ss_caption_dropout_rate",
)  # fmt: skip
BASE_MODEL_KEYS = (
    "ss_sd_model_name",
    "ss_base_model_version",
    "ss_v2",
    "ss_sd_model_hash",
    "ss_new_sd_model_hash",
    "ss_vae_name",
    "ss_vae_hash",
)
DATE_KEYS = ("ss_training_started_at", "ss_training_finished_at")
JSON_KEYS = ("ss_tag_frequency", "ss_dataset_dirs", "ss_datasets", "ss_network_args")


@dataclass
class TrainingMetadata:
    tag_frequency: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # folder -> tags, most frequent first
    dataset_dirs: dict[str, dict] = field(default_factory=dict)  # folder -> {n_repeats, img_count}
    comment: str | None = None
    output_name: str | None = None
    base_model: dict[str, str] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)  # ISO 8601 UTC
    hashes: dict[str, str] = field(default_factory=dict)  # sshs_*
    modelspec: dict[str, str] = field(default_factory=dict)
    hyperparameters: dict[str, object] = field(default_factory=dict)  # ss_network_args parsed, the rest verbatim
    other: dict[str, str] = field(default_factory=dict)
    malformed: dict[str, str] = field(default_factory=dict)  # key -> raw value that is not the JSON it should be

    @property
    def has_training_metadata(self) -> bool:
        return bool(self.tag_frequency or self.dataset_dirs or self.hyperparameters or self.base_model)


def _count(value) -> int | None:
    """A tag count as an int; None for anything else (strings, NaN, nested objects)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


def _tag_counts(counts) -> list[tuple[str, int]] | None:
    if not isinstance(counts, dict):
        return None
    pairs = [(str(tag), n) for tag, raw in counts.items() if (n := _count(raw)) is not None]
    return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))


def _iso(raw: str) -> str:
    try:
        return datetime.fromtimestamp(float(raw), tz=timezone.utc).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return raw


def _parse_json_values(metadata: dict[str, str], result: TrainingMetadata) -> dict:
    parsed = {}
    for key in JSON_KEYS:
        if key not in metadata:
            continue
        try:
            parsed[key] = json.loads(metadata[key])
        except (json.JSONDecodeError, RecursionError):
            result.malformed[key] = metadata[key]
    return parsed


def _read_datasets(datasets, result: TrainingMetadata) -> None:
    """Newer kohya `ss_datasets`: a list of datasets, each with tag frequencies and subsets."""
    for dataset in datasets if isinstance(datasets, list) else []:
        if not isinstance(dataset, dict):
            continue
        tag_frequency = dataset.get("tag_frequency")
        for folder, counts in tag_frequency.items() if isinstance(tag_frequency, dict) else []:
            pairs = _tag_counts(counts)
            if pairs is not None:
                result.tag_frequency.setdefault(str(folder), pairs)
        subsets = dataset.get("subsets")
        for subset in subsets if isinstance(subsets, list) else []:
            if isinstance(subset, dict) and subset.get("image_dir"):
                info = {"n_repeats": subset.get("num_repeats"), "img_count": subset.get("img_count")}
                result.dataset_dirs.setdefault(str(subset["image_dir"]), info)


def parse_metadata(metadata: dict[str, str]) -> TrainingMetadata:
    result = TrainingMetadata()
    parsed = _parse_json_values(metadata, result)
    tags = parsed.get("ss_tag_frequency")
    for folder, counts in tags.items() if isinstance(tags, dict) else []:
        pairs = _tag_counts(counts)
        if pairs is not None:
            result.tag_frequency[str(folder)] = pairs
    dirs = parsed.get("ss_dataset_dirs")
    if isinstance(dirs, dict):
        result.dataset_dirs = {str(k): v if isinstance(v, dict) else {"value": v} for k, v in dirs.items()}
    _read_datasets(parsed.get("ss_datasets"), result)
    for key, expected in (("ss_tag_frequency", dict), ("ss_dataset_dirs", dict), ("ss_datasets", list)):
        if key in parsed and not isinstance(parsed[key], expected):
            result.malformed[key] = metadata[key]
    result.comment = metadata.get("ss_training_comment") or None
    result.output_name = metadata.get("ss_output_name") or None
    consumed = {*JSON_KEYS[:3], "ss_training_comment", "ss_output_name"}
    for key in BASE_MODEL_KEYS:
        if key in metadata:
            result.base_model[key] = metadata[key]
    for key in DATE_KEYS:
        if key in metadata:
            result.dates[key] = _iso(metadata[key])
    for key in HYPERPARAMETERS:
        if key in metadata:
            result.hyperparameters[key] = parsed.get(key, metadata[key])
    consumed.update(BASE_MODEL_KEYS, DATE_KEYS, HYPERPARAMETERS)
    for key, value in metadata.items():
        if key in consumed:
            continue
        if key.startswith("sshs_"):
            result.hashes[key] = value
        elif key.startswith("modelspec."):
            result.modelspec[key] = value
        else:
            result.other[key] = value
    return result
