"""Starting points for the launch form: one per base model that can be launched here, with the hyperparameters
the registry recommends for it (training/engine/registry.py).

A preset only fills the form; staff can change any value before launching, and the engine checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training import base_models


@dataclass(frozen=True)
class Preset:
    key: str  # the base model's registry key
    label: str
    description: str
    base_model_key: str
    values: dict = field(default_factory=dict)

    def form_initial(self) -> dict:
        return {"base_model_key": self.base_model_key, **self.values}


def available_presets() -> list[Preset]:
    """A preset per base model staff can launch here (the demo models once they are built)."""
    return [
        Preset(
            key=entry.key,
            label=entry.label,
            description=entry.model.description,
            base_model_key=entry.key,
            values=dict(entry.model.recommended),
        )
        for entry in base_models.available_base_models()
    ]


def get_preset(key: str | None) -> Preset | None:
    return next((preset for preset in available_presets() if preset.key == key), None)
