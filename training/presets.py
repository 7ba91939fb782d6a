"""Starting points for the launch form: a base model with hyperparameters that suit it.

A preset only fills the form; staff can change any value before launching, and the engine checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    description: str
    base_model: str
    values: dict = field(default_factory=dict)

    def form_initial(self) -> dict:
        return {"base_model": self.base_model, **self.values}


def available_presets() -> list[Preset]:
    from marketplace.core.demo_models import demo_base_model_ready

    presets = [
        Preset(
            "sd15",
            "Stable Diffusion 1.5",
            "512 px on a GPU with 16 GB or more.",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            {"resolution": 512, "batch_size": 4, "rank": 16, "alpha": 16, "learning_rate": 1e-4,
             "lr_scheduler": "cosine", "lr_warmup_steps": 100, "max_steps": 1500, "mixed_precision": "bf16",
             "validation_every": 250, "checkpoint_every": 250},
        ),
        Preset(
            "sdxl",
            "Stable Diffusion XL",
            "1024 px with gradient checkpointing, on a GPU with 24 GB or more.",
            "stabilityai/stable-diffusion-xl-base-1.0",
            {"resolution": 1024, "batch_size": 1, "gradient_accumulation": 4, "rank": 16, "alpha": 16,
             "learning_rate": 1e-4, "lr_scheduler": "cosine", "lr_warmup_steps": 100, "max_steps": 1500,
             "mixed_precision": "bf16", "gradient_checkpointing": True, "validation_every": 250,
             "checkpoint_every": 250},
        ),
    ]  # fmt: skip
    if demo_base_model_ready():
        presets.append(
            Preset(
                "demo",
                "Demo (tiny model, CPU)",
                "A tiny Stable Diffusion built on this machine by seed_demo: finishes in under a minute on a CPU; "
                "its images are noise, the run's workings are real.",
                str(settings.TRAINING_DEMO_BASE_MODEL),
                {"resolution": 64, "batch_size": 4, "rank": 4, "alpha": 4, "learning_rate": 1e-3,
                 "lr_scheduler": "constant", "lr_warmup_steps": 0, "max_steps": 60, "mixed_precision": "no",
                 "validation_every": 20, "validation_steps": 10, "checkpoint_every": 20},
            )
        )  # fmt: skip
    return presets


def get_preset(key: str | None) -> Preset | None:
    return next((preset for preset in available_presets() if preset.key == key), None)
