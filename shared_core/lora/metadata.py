"""kohya / modelspec training metadata turned into readable, structured form.

Every value in a safetensors header is a string, some of them JSON. Malformed values are kept as
raw strings and flagged, never fatal: a damaged header is itself worth reporting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

HYPERPARAMETERS = (
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_learning_rate",
    "ss_unet_lr", "ss_text_encoder_lr", "ss_lr_scheduler", "ss_optimizer", "ss_num_epochs", "ss_max_train_steps",
    "ss_num_train_images", "ss_num_reg_images", "ss_batch_size_per_device", "ss_resolution", "ss_mixed_precision",
    "ss_seed", "ss_clip_skip", "ss_noise_offset", "ss_min_snr_gamma", "ss_caption_dropout_rate",
)  # fmt: skip
BASE_MODEL_KEYS = ("ss_sd_model_name", "ss_base_model_version", "ss_v2", "ss_sd_model_hash", "ss_new_sd_model_hash", "ss_vae_name", "ss_vae_hash")
DATE_KEYS = ("ss_training_started_at", "ss_training_finished_at")


@dataclass
class TrainingMetadata:
    tag_frequency: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # folder -> tags by count
    dataset_dirs: dict[str, dict] = field(default_factory=dict)  # folder -> {n_repeats, img_count}
    comment: str | None = None
    output_name: str | None = None
    base_model: dict[str, str] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # sshs_*
    modelspec: dict[str, str] = field(default_factory=dict)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)

    @property
    def has_training_metadata(self) -> bool:
        return bool(self.tag_frequency or self.dataset_dirs or self.hyperparameters or self.base_model)


def _json(raw: str, key: str, malformed: list[str]):
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        malformed.append(key)
        return None


def _iso(raw: str) -> str:
    try:
        return datetime.fromtimestamp(float(raw), tz=timezone.utc).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return raw


def parse_metadata(metadata: dict[str, str]) -> TrainingMetadata:
    result = TrainingMetadata()
    consumed = set()
    tags = _json(metadata["ss_tag_frequency"], "ss_tag_frequency", result.malformed) if "ss_tag_frequency" in metadata else None
    if isinstance(tags, dict):
        for folder, counts in tags.items():
            if isinstance(counts, dict):
                pairs = [(str(tag), int(n)) for tag, n in counts.items() if isinstance(n, (int, float))]
                result.tag_frequency[str(folder)] = sorted(pairs, key=lambda p: (-p[1], p[0]))
    consumed.add("ss_tag_frequency")
    dirs = _json(metadata["ss_dataset_dirs"], "ss_dataset_dirs", result.malformed) if "ss_dataset_dirs" in metadata else None
    if isinstance(dirs, dict):
        result.dataset_dirs = {str(k): v if isinstance(v, dict) else {"value": v} for k, v in dirs.items()}
    consumed.add("ss_dataset_dirs")
    datasets = _json(metadata["ss_datasets"], "ss_datasets", result.malformed) if "ss_datasets" in metadata else None
    if isinstance(datasets, list):  # newer kohya: per-dataset subsets with tag frequencies
        for dataset in datasets:
            if not isinstance(dataset, dict):
                continue
            for folder, counts in (dataset.get("tag_frequency") or {}).items():
                if isinstance(counts, dict) and folder not in result.tag_frequency:
                    pairs = [(str(t), int(n)) for t, n in counts.items() if isinstance(n, (int, float))]
                    result.tag_frequency[str(folder)] = sorted(pairs, key=lambda p: (-p[1], p[0]))
            for subset in dataset.get("subsets") or []:
                if isinstance(subset, dict) and subset.get("image_dir"):
                    result.dataset_dirs.setdefault(str(subset["image_dir"]), {"n_repeats": subset.get("num_repeats"), "img_count": subset.get("img_count")})
    consumed.add("ss_datasets")
    result.comment = metadata.get("ss_training_comment") or None
    result.output_name = metadata.get("ss_output_name") or None
    consumed.update({"ss_training_comment", "ss_output_name"})
    for key in BASE_MODEL_KEYS:
        if key in metadata:
            result.base_model[key] = metadata[key]
            consumed.add(key)
    for key in DATE_KEYS:
        if key in metadata:
            result.dates[key] = _iso(metadata[key])
            consumed.add(key)
    for key in HYPERPARAMETERS:
        if key in metadata:
            result.hyperparameters[key] = metadata[key]
            consumed.add(key)
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
