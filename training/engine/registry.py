"""The base models runs are trained on: for each, its family, the checkpoint it is fetched from, its licence
(and whether what is made from it may be used commercially) and the hyperparameters that suit it.

Plain data, no Django and no model library: the web process reads it for the launch page and the licence check,
the worker through the run's stored config. An operator with local copies points a key at another checkpoint
(the Django setting TRAINING_BASE_MODEL_CHECKPOINTS); nothing else here changes per installation.

Licence facts are as each model's page published them to our knowledge; they were not re-read against the live
pages when this was written (no network), and where we are unsure, the entry says so in a comment. A licence's
`commercial_use` answers the question a LoRA trained on the model raises: may that LoRA (a derivative of the
base model) and the images made with it be used commercially?
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .families import FAMILY_MODULES


@dataclass(frozen=True)
class ModelLicence:
    name: str
    spdx_id: str  # the SPDX identifier, or a LicenseRef-... (SPDX's form for a licence it does not list)
    url: str  # the licence text
    commercial_use: bool  # may a LoRA trained on the model, and its outputs, be used commercially?
    conditions: str = ""  # what else its users must honour (use restrictions, attribution); shown with it
    commercial_condition: str = ""  # when commercial use is allowed only on a condition (a revenue limit)

    @property
    def commercial_summary(self) -> str:
        """Commercial use in a few words, for the launch page and the model card."""
        if not self.commercial_use:
            return "not allowed"
        return f"allowed {self.commercial_condition}" if self.commercial_condition else "allowed"


@dataclass(frozen=True)
class BaseModel:
    key: str  # what a run records (TrainingRun.base_model_key) and the launch form and API name
    label: str
    family: str  # a key of training.engine.families.FAMILY_MODULES
    default_checkpoint: str  # a hub id; empty for the demo models, which are built on the machine
    licence: ModelLicence
    description: str  # for the launch page: what it is, the hardware it needs
    # TrainConfig fields (without base_model and device) that suit this model; the launch form starts from them.
    recommended: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""  # training advice specific to this model (distillation, the checkpoint to prefer)
    demo: bool = False  # a tiny model of the family with random weights (training/engine/tiny), for CPU demos

    def __post_init__(self):
        if self.family not in FAMILY_MODULES:
            raise ValueError(
                f"Base model {self.key!r}: unknown family {self.family!r}; known: {', '.join(FAMILY_MODULES)}."
            )
        if not self.demo and not self.default_checkpoint:
            raise ValueError(f"Base model {self.key!r} names no default checkpoint.")
        object.__setattr__(self, "recommended", MappingProxyType(dict(self.recommended)))

    @property
    def commercial_use(self) -> bool:
        return self.licence.commercial_use


# --- licences ---------------------------------------------------------------------------------------------

APACHE_2 = ModelLicence(
    name="Apache License 2.0",
    spdx_id="Apache-2.0",
    url="https://www.apache.org/licenses/LICENSE-2.0",
    commercial_use=True,
    conditions="Permissive: use, modify and distribute, commercially too, keeping the licence and its notices.",
)
CREATIVEML_OPENRAIL_M = ModelLicence(
    name="CreativeML OpenRAIL-M",
    spdx_id="CreativeML-OpenRAIL-M",
    url="https://huggingface.co/spaces/CompVis/stable-diffusion-license",
    commercial_use=True,
    conditions=(
        "Commercial use is allowed, under the licence's use-based restrictions (its Attachment A: no unlawful, "
        "harmful or deceptive uses), which every derivative (this LoRA) and its users must be bound by in turn."
    ),
)
OPENRAIL_PLUS_PLUS_M = ModelLicence(
    name="CreativeML Open RAIL++-M",
    spdx_id="LicenseRef-CreativeML-OpenRAIL-PlusPlus-M",  # not in the SPDX list; the hub tags it "openrail++"
    url="https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md",
    commercial_use=True,
    conditions=(
        "Commercial use is allowed, under the licence's use-based restrictions (its Attachment A), which every "
        "derivative (this LoRA) and its users must be bound by in turn."
    ),
)
FLUX_1_DEV_NON_COMMERCIAL = ModelLicence(
    name="FLUX.1 [dev] Non-Commercial License",
    spdx_id="LicenseRef-FLUX.1-dev-Non-Commercial",
    url="https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
    commercial_use=False,
    # Our reading of the licence (v1.1.x): it lets people use generated images commercially, but the model and
    # its derivatives (a LoRA trained on it is one) only non-commercially. Selling or serving the LoRA, which is
    # what a commercial pack is for, needs a commercial licence from Black Forest Labs.
    conditions=(
        "Non-commercial use only for the model and its derivatives (a LoRA trained on it is one); commercial use "
        "needs a licence from Black Forest Labs. Outputs may not be used to train a competing model."
    ),
)
# FLUX.2 [klein] 9B is published under a Black Forest Labs non-commercial licence. Uncertain: its exact name and
# version, and the file's name in the repository (LICENSE.md or LICENSE.txt); check the model page before relying
# on the link. That it is non-commercial for the model and its derivatives we are confident of.
FLUX_NON_COMMERCIAL = ModelLicence(
    name="FLUX Non-Commercial License",
    spdx_id="LicenseRef-FLUX-Non-Commercial",
    url="https://huggingface.co/black-forest-labs/FLUX.2-klein-9B/blob/main/LICENSE.md",
    commercial_use=False,
    conditions=(
        "Non-commercial use only for the model and its derivatives (a LoRA trained on it is one); commercial use "
        "needs a licence from Black Forest Labs."
    ),
)
STABILITY_COMMUNITY = ModelLicence(
    name="Stability AI Community License",
    spdx_id="LicenseRef-Stability-AI-Community",
    url="https://stability.ai/community-license-agreement",
    commercial_use=True,  # on the condition below, shown wherever this is
    commercial_condition=(
        "for organisations and individuals with under USD 1M in total annual revenue; above it, an Enterprise "
        "licence from Stability AI is needed"
    ),
    conditions=(
        "Free for research and non-commercial use. Derivatives (this LoRA) are shared with a copy of the licence, "
        'and products built on them say "Powered by Stability AI".'
    ),
)
NO_RESTRICTION = ModelLicence(
    name="No licence restriction (random weights, built on this machine)",
    spdx_id="LicenseRef-Random-Weights",
    url="",
    commercial_use=True,
    conditions="A tiny model with random weights made by training/engine/tiny: nobody holds rights in it.",
)


# --- hyperparameters --------------------------------------------------------------------------------------

# Stable Diffusion UNets (epsilon or v-prediction), with min-SNR weighting.
_UNET = dict(
    rank=16, alpha=16, learning_rate=1e-4, lr_scheduler="cosine", lr_warmup_steps=100, max_steps=1500,
    mixed_precision="bf16", snr_gamma=5.0, validation_every=250, checkpoint_every=250,
)  # fmt: skip
# Flow-matching transformers at their native 1024 px: one image a step, four accumulated, gradient checkpointing.
# Logit-normal times (SD3's paper; diffusers' SD3 script) and an unweighted loss; the base model's own sigma shift.
_FLOW = dict(
    rank=16, alpha=16, learning_rate=1e-4, lr_scheduler="constant_with_warmup", lr_warmup_steps=100, max_steps=1000,
    resolution=1024, batch_size=1, gradient_accumulation=4, gradient_checkpointing=True, mixed_precision="bf16",
    snr_gamma=None, timestep_density="logit_normal", logit_mean=0.0, logit_std=1.0, loss_weighting="none",
    timestep_shift=None, validation_every=250, checkpoint_every=250,
)  # fmt: skip
# The tiny demo models: a minute on a CPU at 64 px.
_DEMO = dict(
    resolution=64, batch_size=4, rank=4, alpha=4, learning_rate=1e-3, lr_scheduler="constant", lr_warmup_steps=0,
    max_steps=60, mixed_precision="no", validation_every=20, validation_steps=10, checkpoint_every=20,
)  # fmt: skip

_STEP_DISTILLED = (
    "Step-distilled for few-step sampling: a LoRA trained on it directly slowly wears the distillation away "
    "(previews at its few steps show it). Prefer short runs, or point this key at an undistilled checkpoint."
)


def _demo(family: str, key: str, label: str) -> BaseModel:
    return BaseModel(
        key=key,
        label=label,
        family=family,
        default_checkpoint="",
        licence=NO_RESTRICTION,
        description="Built on this machine with random weights: trains in about a minute on a CPU; its images are "
        "noise, the run's workings are real.",
        recommended=_DEMO,
        demo=True,
    )


BASE_MODELS: tuple[BaseModel, ...] = (
    BaseModel(
        key="sd15",
        label="Stable Diffusion 1.5",
        family="sd",
        # The runwayml repository is gone; this is the copy the diffusers team keeps.
        default_checkpoint="stable-diffusion-v1-5/stable-diffusion-v1-5",
        licence=CREATIVEML_OPENRAIL_M,
        description="512 px on a GPU with 16 GB or more.",
        recommended={**_UNET, "resolution": 512, "batch_size": 4, "validation_steps": 25, "validation_guidance": 7.5},
    ),
    BaseModel(
        key="sd21",
        label="Stable Diffusion 2.1",
        family="sd",
        # Uncertain: Stability AI has been withdrawing older repositories from the hub; if this one is gone,
        # point the key at a local copy (the engine reads v-prediction from its scheduler config).
        default_checkpoint="stabilityai/stable-diffusion-2-1",
        licence=OPENRAIL_PLUS_PLUS_M,
        description="768 px, v-prediction, on a GPU with 24 GB or more.",
        recommended={
            **_UNET,
            "resolution": 768,
            "batch_size": 2,
            "gradient_accumulation": 2,
            "gradient_checkpointing": True,
            "validation_steps": 25,
            "validation_guidance": 7.5,
        },  # fmt: skip
    ),
    BaseModel(
        key="sdxl",
        label="Stable Diffusion XL base 1.0",
        family="sdxl",
        default_checkpoint="stabilityai/stable-diffusion-xl-base-1.0",
        licence=OPENRAIL_PLUS_PLUS_M,
        description="1024 px with gradient checkpointing, on a GPU with 24 GB or more.",
        recommended={
            **_UNET,
            "resolution": 1024,
            "batch_size": 1,
            "gradient_accumulation": 4,
            "gradient_checkpointing": True,
            "validation_steps": 30,
            "validation_guidance": 5.0,
        },  # fmt: skip
    ),
    BaseModel(
        key="flux1-schnell",
        label="FLUX.1 [schnell]",
        family="flux",
        default_checkpoint="black-forest-labs/FLUX.1-schnell",
        licence=APACHE_2,
        description="12B transformer, 1024 px: a GPU with 48 GB or more (about; 80 GB is comfortable).",
        recommended={**_FLOW, "validation_steps": 4, "validation_guidance": 0.0},
        notes=_STEP_DISTILLED,
    ),
    BaseModel(
        key="flux1-dev",
        label="FLUX.1 [dev]",
        family="flux",
        default_checkpoint="black-forest-labs/FLUX.1-dev",
        licence=FLUX_1_DEV_NON_COMMERCIAL,
        description="12B guidance-distilled transformer, 1024 px: a GPU with 48 GB or more (about; 80 GB is "
        "comfortable). Research packs only: its licence is non-commercial.",
        # guidance: the guidance embedding's value while training. 1.0 as many FLUX.1-dev LoRA trainers use
        # (kohya-ss sd-scripts' examples); diffusers' dreambooth script uses 3.5. Previews at 3.5, as its card says.
        recommended={**_FLOW, "guidance": 1.0, "validation_steps": 28, "validation_guidance": 3.5},
    ),
    BaseModel(
        key="flux2-klein-4b",
        label="FLUX.2 [klein] 4B",
        family="flux2",
        # The step-distilled release, as diffusers' FLUX.2 [klein] LoRA example trains it. BFL also publishes
        # undistilled "base" weights (black-forest-labs/FLUX.2-klein-base-4B) meant for fine-tuning.
        default_checkpoint="black-forest-labs/FLUX.2-klein-4B",
        licence=APACHE_2,
        description="4B transformer with a Qwen3 text encoder, 1024 px: a GPU with 24 GB or more (about).",
        recommended={**_FLOW, "validation_steps": 4, "validation_guidance": 1.0},
        notes=_STEP_DISTILLED + " Its undistilled base: black-forest-labs/FLUX.2-klein-base-4B (then about 50 "
        "preview steps at guidance 4).",
    ),
    BaseModel(
        key="flux2-klein-9b",
        label="FLUX.2 [klein] 9B",
        family="flux2",
        default_checkpoint="black-forest-labs/FLUX.2-klein-9B",
        licence=FLUX_NON_COMMERCIAL,
        description="9B transformer with a Qwen3 text encoder, 1024 px: a GPU with 40 GB or more (about). "
        "Research packs only: its licence is non-commercial.",
        recommended={**_FLOW, "validation_steps": 4, "validation_guidance": 1.0},
        notes=_STEP_DISTILLED + " Its undistilled base: black-forest-labs/FLUX.2-klein-base-9B.",
    ),
    BaseModel(
        key="sd35-medium",
        label="Stable Diffusion 3.5 Medium",
        family="sd3",
        default_checkpoint="stabilityai/stable-diffusion-3.5-medium",
        licence=STABILITY_COMMUNITY,
        description="2.5B MMDiT-X with three text encoders (T5-XXL the largest), 1024 px: a GPU with 24 GB or "
        "more (about).",
        recommended={**_FLOW, "validation_steps": 40, "validation_guidance": 4.5},
    ),
    BaseModel(
        key="sd35-large",
        label="Stable Diffusion 3.5 Large",
        family="sd3",
        default_checkpoint="stabilityai/stable-diffusion-3.5-large",
        licence=STABILITY_COMMUNITY,
        description="8B MMDiT with three text encoders, 1024 px: a GPU with 48 GB or more (about).",
        recommended={**_FLOW, "validation_steps": 28, "validation_guidance": 3.5},
    ),
    BaseModel(
        key="qwen-image",
        label="Qwen-Image",
        family="qwen_image",
        default_checkpoint="Qwen/Qwen-Image",
        licence=APACHE_2,
        description="20B MMDiT with a Qwen2.5-VL text encoder, 1024 px: a GPU with 80 GB (about).",
        recommended={**_FLOW, "validation_steps": 50, "validation_guidance": 4.0},
    ),
    BaseModel(
        key="z-image-turbo",
        label="Z-Image Turbo",
        family="z_image",
        default_checkpoint="Tongyi-MAI/Z-Image-Turbo",
        licence=APACHE_2,
        description="6B single-stream transformer with a Qwen3 text encoder, 1024 px: a GPU with 32 GB or more "
        "(about).",
        # Its card samples 9 steps (8 transformer passes) without classifier-free guidance.
        recommended={**_FLOW, "validation_steps": 9, "validation_guidance": 0.0},
        notes=_STEP_DISTILLED,
    ),
    BaseModel(
        key="chroma",
        label="Chroma1-HD",
        family="chroma",
        default_checkpoint="lodestones/Chroma1-HD",
        licence=APACHE_2,
        description="8.9B transformer (FLUX.1 [schnell] made lighter and retrained) with a T5-XXL text encoder, "
        "1024 px: a GPU with 48 GB or more (about).",
        recommended={**_FLOW, "validation_steps": 40, "validation_guidance": 3.0},
    ),
    # The demo models: one per family. "demo" (the tiny Stable Diffusion) is the key seed_demo and `make run` use.
    _demo("sd", "demo", "Demo (tiny model, CPU)"),
    _demo("sdxl", "demo-sdxl", "Demo: tiny SDXL (CPU)"),
    _demo("flux", "demo-flux", "Demo: tiny FLUX.1 (CPU)"),
    _demo("flux2", "demo-flux2", "Demo: tiny FLUX.2 [klein] (CPU)"),
    _demo("sd3", "demo-sd3", "Demo: tiny SD3 (CPU)"),
    _demo("qwen_image", "demo-qwen-image", "Demo: tiny Qwen-Image (CPU)"),
    _demo("z_image", "demo-z-image", "Demo: tiny Z-Image (CPU)"),
    _demo("chroma", "demo-chroma", "Demo: tiny Chroma (CPU)"),
)

BY_KEY: dict[str, BaseModel] = {model.key: model for model in BASE_MODELS}
if len(BY_KEY) != len(BASE_MODELS):
    raise ValueError("Two base models share a key.")


def get(key: str) -> BaseModel | None:
    return BY_KEY.get(key)


def has_tiny_builder(family: str) -> bool:
    """Whether training/engine/tiny builds a tiny pipeline of `family` (found without importing a model library)."""
    if family in ("sd", "sdxl"):  # in tiny/__init__.py itself
        return True
    return importlib.util.find_spec(f"{__package__}.tiny.{family}") is not None
