"""What every model family provides to the shared training loop (training/engine/train.py).

A family is one small class: how its pipeline folder is loaded, how images and captions become the tensors the
denoiser is trained on (both cached by the loop), the noise/timestep schedule and loss, which modules LoRA
adapts, how images are sampled with the pipeline people use for inference, and how the LoRA is saved. The loop
owns everything else (data, buckets, caches, the optimizer, checkpoints, evaluation, outputs), so a new family
touches nothing but its own module.

Sub-classes: `DenoisingFamily` (DDPM-style epsilon / v-prediction UNets, families/sd.py) and
`FlowMatchingFamily` (rectified-flow transformers, families/flow.py).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

# Never fetched from the hub: other weight formats and half-precision duplicates of the safetensors weights.
HUB_IGNORE = ("*.bin", "*.pt", "*.ckpt", "*.onnx", "*.msgpack", "*.fp16.*", "*.fp16-*", "*non_ema*", "*.gguf")


def hub_files(components: tuple[str, ...]) -> tuple[str, ...]:
    """The files fetched for a hub model id of a pipeline with these components: model_index.json, each
    tokenizer's files, the scheduler's config, and each model's configs and safetensors weights (shards and
    their index included)."""
    patterns = ["model_index.json"]
    for component in components:
        if component.startswith("tokenizer"):
            patterns.append(f"{component}/*")
        elif component == "scheduler":
            patterns.append("scheduler/scheduler_config.json")
        else:
            patterns += [f"{component}/*.json", f"{component}/*.safetensors"]
    return tuple(patterns)


class ModelUnavailable(RuntimeError):
    """The base model (the `base_model` setting) cannot be loaded: not a local pipeline and not downloadable."""


@dataclass(frozen=True)
class ImageGeometry:
    """Where a training image's pixels came from: its oriented size, the crop's top-left corner in the resized
    image, and the bucket it was cropped to; each (height, width). SDXL conditions on all three."""

    original: tuple[int, int]
    crop_top_left: tuple[int, int]
    target: tuple[int, int]


class Family:
    """One model family. The loop calls, in this order: `load`, `encode_images` and `encode_prompts` (through
    its caches), `release_text_encoders`, then `sample_timesteps` and `loss` every step, and `pipeline` /
    `generate` for previews, and `save_lora`."""

    name: ClassVar[str]  # the registry's and the run's name of the family, e.g. "flux"
    label: ClassVar[str]  # for people, e.g. "FLUX.1"
    pipeline_classes: ClassVar[tuple[str, ...]]  # model_index.json `_class_name`s this family trains
    components: ClassVar[tuple[str, ...]]  # sub-folders a pipeline folder of this family must hold
    hub_patterns: ClassVar[tuple[str, ...]]  # the files fetched for a hub model id: hub_files(components)
    denoiser_name: ClassVar[str] = "transformer"  # the pipeline component LoRA trains ("unet" or "transformer")
    lora_targets: ClassVar[tuple[str, ...]]  # module names (peft target_modules) of the denoiser LoRA adapts
    text_encoder_lora_targets: ClassVar[tuple[str, ...]] = ()  # empty: train_text_encoder is not offered
    # Previews when the run does not say: steps and guidance as the family's model cards recommend.
    default_validation_steps: ClassVar[int] = 28
    default_validation_guidance: ClassVar[float] = 3.5
    # Names the prompt cache file (with the text encoders' fingerprint); None: prompts are not cached on disk.
    prompt_cache_tag: ClassVar[str | None] = "embeddings"

    def __init__(self, folder: Path, config, device, weight_dtype):
        self.folder = Path(folder)
        self.config = config  # the run's TrainConfig
        self.device = device
        self.weight_dtype = weight_dtype  # of the frozen weights (the autocast dtype on CUDA, else fp32)
        self.vae = None
        self.denoiser = None
        self.text_encoders: dict[str, Any] = {}  # pipeline component name -> module (empty once released)
        self.tokenizers: dict[str, Any] = {}  # pipeline component name -> tokenizer
        self.scheduler = None  # the pipeline's own scheduler (previews), from scheduler/
        self._log = None

    # --- loading

    def load(self) -> None:
        """Load the VAE, the denoiser, the text encoders, tokenizers and scheduler from `self.folder` (frozen,
        `requires_grad_(False)`, on `self.device`; the VAE in fp32). Raise ModelUnavailable with the reason."""
        raise NotImplementedError

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE's downscale times the denoiser's patch or down-sampling)."""
        raise NotImplementedError

    def load_component(self, loader, subfolder: str, **kwargs):
        """`loader.from_pretrained(folder, subfolder=...)`, failures named after the `base_model` setting."""
        try:
            return loader.from_pretrained(str(self.folder), subfolder=subfolder, **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelUnavailable(
                f"base_model {self.config.base_model!r}: its {subfolder} could not be loaded ({error})."
            ) from error

    def load_scheduler(self):
        """The base model's own scheduler (the class its scheduler_config.json names), as inference loads it."""
        import json

        import diffusers

        path = self.folder / "scheduler" / "scheduler_config.json"
        try:
            class_name = json.loads(path.read_text()).get("_class_name", "")
        except (OSError, ValueError) as error:
            raise ModelUnavailable(
                f"base_model {self.config.base_model!r}: {path} cannot be read ({error})."
            ) from error
        scheduler_class = getattr(diffusers, class_name, None)
        if scheduler_class is None:
            raise ModelUnavailable(f"base_model {self.config.base_model!r}: unknown scheduler {class_name!r}.")
        return self.load_component(scheduler_class, "scheduler")

    def load_vae(self, vae_class=None):
        """The VAE in fp32 on the device, frozen: it encodes and decodes in fp32 (half-precision VAEs overflow)."""
        import torch

        if vae_class is None:
            from diffusers import AutoencoderKL as vae_class
        self.vae = self.load_component(vae_class, "vae", torch_dtype=torch.float32)
        self.vae.requires_grad_(False)
        self.vae.to(self.device)
        return self.vae

    def freeze(self, *modules) -> None:
        """Frozen, on the device; fp32 stays fp32 on the CPU, otherwise the weight dtype."""
        import torch

        for module in modules:
            module.requires_grad_(False)
            if self.weight_dtype == torch.float32 or getattr(module, "dtype", None) == self.weight_dtype:
                module.to(self.device)  # leaves modules that ask to stay fp32 (and their warnings) alone
            else:
                module.to(self.device, dtype=self.weight_dtype)

    # --- encoding (the loop caches what these return)

    def encode_images(self, pixels):
        """Latents of a batch of images ([B, 3, H, W] fp32 in [-1, 1], on the device), normalised as the
        denoiser expects them (shift and scaling factor, or per-channel statistics)."""
        raise NotImplementedError

    def encode_prompts(self, texts: list[str]) -> list[dict[str, Any]]:
        """For each text, its conditioning tensors (no batch dimension), e.g. {"prompt_embeds": [L, D],
        "pooled_prompt_embeds": [D]}. Cached on disk by the loop: everything the denoiser and the pipeline
        need, so that the text encoders can be released before the denoiser trains."""
        raise NotImplementedError

    def collate_prompts(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """A batch of `encode_prompts` items on the device: each key stacked. Families whose items differ in
        length (masks, variable sequence) override this."""
        import torch

        return {key: torch.stack([item[key] for item in items]).to(self.device) for key in items[0]}

    def release_text_encoders(self) -> None:
        """Free the text encoders' memory once every caption is cached (T5-XXL and Qwen are GBs)."""
        self.text_encoders = {}
        gc.collect()
        if getattr(self.device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.empty_cache()

    # --- training

    def sample_timesteps(self, batch_size: int, generator=None):
        """Training times t in [0, 1) for a batch (0: clean data, 1: pure noise), from the family's density."""
        raise NotImplementedError

    def loss(self, latents, prompts: dict, noise, t, geometry: list[ImageGeometry], *, weighted: bool = True):
        """The per-sample loss [B] of the denoiser on `latents` noised with `noise` at times `t` ([B] in [0, 1)),
        conditioned on `prompts` (a `collate_prompts` batch). weighted=False: the plain MSE against the target,
        comparable across checkpoints and runs (the held-out validation loss)."""
        raise NotImplementedError

    # --- outputs

    def pipeline(self):
        """The family's inference pipeline built from the loaded components (text encoders may be released:
        previews pass cached prompt embeddings), with the base model's own scheduler."""
        raise NotImplementedError

    def generate(self, pipeline, prompt: dict, negative: dict | None, *, height, width, steps, guidance, generator):
        """PIL images for one prompt (its `collate_prompts` batch of one), as inference would make them."""
        raise NotImplementedError

    @classmethod
    def pipeline_class(cls):
        import diffusers

        return getattr(diffusers, cls.pipeline_classes[0])

    def save_lora(self, folder: Path, layers: dict[str, dict], metadata: dict[str, dict]) -> None:
        """Write `pytorch_lora_weights.safetensors` in diffusers' format. `layers`: component name -> its LoRA
        state dict (diffusers naming); `metadata`: component name -> its peft LoraConfig as a dict."""
        self.pipeline_class().save_lora_weights(
            save_directory=str(folder),
            safe_serialization=True,
            **{f"{name}_lora_layers": state for name, state in layers.items()},
            **{f"{name}_lora_adapter_metadata": meta for name, meta in metadata.items()},
        )

    # --- conveniences

    def log(self, message: str) -> None:
        if self._log:
            self._log(message)
