"""Reads of the base-model registry (training/engine/registry.py) as this installation configures it: each
key's checkpoint (TRAINING_BASE_MODEL_CHECKPOINTS, else the registry's default, else the demo model's folder),
which base models can be launched here, and whether a pack licence is for commercial use."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from marketplace.core import demo_models
from marketplace.packs.models import Pack
from training.engine import registry
from training.engine.registry import BaseModel, ModelLicence


@dataclass(frozen=True)
class ConfiguredBaseModel:
    """A registry entry with the checkpoint this installation trains it from."""

    model: BaseModel
    checkpoint: str  # a hub id or a path on the workers
    overridden: bool  # the checkpoint comes from TRAINING_BASE_MODEL_CHECKPOINTS

    @property
    def key(self) -> str:
        return self.model.key

    @property
    def label(self) -> str:
        return self.model.label

    @property
    def licence(self) -> ModelLicence:
        return self.model.licence

    @property
    def commercial_use(self) -> bool:
        return self.model.commercial_use


def configured_checkpoints() -> dict[str, str]:
    """TRAINING_BASE_MODEL_CHECKPOINTS, each key checked against the registry."""
    checkpoints = dict(settings.TRAINING_BASE_MODEL_CHECKPOINTS)
    unknown = sorted(set(checkpoints) - set(registry.BY_KEY))
    if unknown:
        raise ImproperlyConfigured(
            f"TRAINING_BASE_MODEL_CHECKPOINTS names base models the registry does not know: {', '.join(unknown)}; "
            f"it knows {', '.join(registry.BY_KEY)}."
        )
    return checkpoints


def configure(model: BaseModel, checkpoints: dict[str, str] | None = None) -> ConfiguredBaseModel:
    checkpoints = configured_checkpoints() if checkpoints is None else checkpoints
    if model.key in checkpoints:
        return ConfiguredBaseModel(model, checkpoints[model.key], overridden=True)
    default = str(demo_models.demo_model_folder(model.family)) if model.demo else model.default_checkpoint
    return ConfiguredBaseModel(model, default, overridden=False)


def is_available(configured: ConfiguredBaseModel) -> bool:
    """Every real base model can be launched (a worker fetches or reads it); a demo model once the tiny builder
    of its family exists and its folder is built on this machine."""
    model = configured.model
    if not model.demo:
        return True
    return registry.has_tiny_builder(model.family) and demo_models.tiny_model_built(configured.checkpoint, model.family)


def available_base_models() -> list[ConfiguredBaseModel]:
    """The base models staff can launch runs on here, in the registry's order."""
    checkpoints = configured_checkpoints()
    configured = (configure(model, checkpoints) for model in registry.BASE_MODELS)
    return [entry for entry in configured if is_available(entry)]


def available_base_model(key: str) -> ConfiguredBaseModel | None:
    return next((entry for entry in available_base_models() if entry.key == key), None)


def pack_is_commercial(licence) -> bool:
    """Whether the pack licence (a commerce.PackLicence) is for commercial models: the use its terms state."""
    use = (licence.terms or {}).get("use") or licence.version.use
    return use == Pack.Use.COMMERCIAL


def pack_use_label(licence) -> str:
    terms = licence.terms or {}
    use = terms.get("use") or licence.version.use
    return terms.get("use_label") or Pack.Use(use).label


# --- memory estimates (the launch page, before a run starts) ----------------------------------------------

CONFIG_PATTERNS = ["model_index.json", "*/config.json", "*/tokenizer_config.json", "scheduler/scheduler_config.json"]


def local_config_folder(configured: ConfiguredBaseModel):
    """A folder holding the base model's configs on this machine (a local checkpoint, or the Hugging Face cache),
    or None: the web process never downloads a model."""
    from pathlib import Path

    folder = Path(configured.checkpoint).expanduser()
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(configured.checkpoint, allow_patterns=CONFIG_PATTERNS, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached here: no estimate
        return None


def memory_estimate(configured: ConfiguredBaseModel, config) -> dict:
    """The estimated peak GPU memory of a run with `config` (a TrainConfig) and the preset per card size, as
    JSON for the launch page; `unavailable` says why there is none."""
    from training.engine import memory

    folder = local_config_folder(configured)
    if folder is None:
        return {
            "unavailable": f"The configs of {configured.checkpoint} are not on this machine (it downloads no "
            "model): the estimate appears once a worker has fetched it, or with a local checkpoint."
        }
    family = configured.model.family
    try:
        estimate = memory.estimate(folder, family, config)
        presets = [(size, memory.preset_for(folder, family, config, size)) for size in memory.PRESETS_GB]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return {"unavailable": f"No estimate for {configured.checkpoint}: {error}"}
    return {
        "peak_gb": round(estimate.peak_bytes / 2**30, 1),
        "phase": estimate.phase,
        "text": estimate.as_text(),
        "presets": [
            {
                "gpu_gb": size,
                "label": preset.label if preset else f"{size} GB: no settings fit",
                "values": preset.values if preset else {},
            }
            for size, preset in presets
        ],
    }
