"""FLUX.2 [klein] (Flux2KleinPipeline): Flux2Transformer2DModel over 2x2-patchified, batch-normalised latents of
AutoencoderKLFlux2, conditioned on stacked hidden states of a Qwen3 text encoder.

As Flux2KleinPipeline and diffusers' train_dreambooth_lora_flux2_klein.py:
- latents: the VAE's latent mode, patchified 2x2 (C -> 4C at half the side) and normalised by the VAE's batch-norm
  running statistics (`vae.bn`). The loop caches and noises these, so `patch_size` is 1 here: each latent pixel is
  one transformer token, packed row-major with position ids (t=0, h, w, l=0).
- prompts: the chat template (user turn, generation prompt, thinking off) padded to 512 tokens; the hidden states
  after layers 9, 18 and 27 stacked on the feature axis ([512, 3 x hidden]). The transformer sees the padding too,
  as in the pipeline.
- the klein transformer has no guidance embedding: the base model is sampled with true CFG against "", the
  step-distilled one (`is_distilled`) with none. A transformer that has one gets `config.guidance`.
- resolution-dependent shift: the pipeline's mu is `compute_empirical_mu(image tokens, steps)`, not the scheduler's
  base/max shift, so training uses that (at the model's default step count).

FLUX.2 [dev] (Flux2Pipeline) is not trained here: it conditions on Mistral-3 with a system prompt and other layers,
and is guidance-distilled.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import ModelUnavailable, hub_files
from .flow import FlowMatchingFamily

TEXT_ENCODER_OUT_LAYERS = (9, 18, 27)  # the pipeline's default `text_encoder_out_layers`
MAX_SEQUENCE_LENGTH = 512  # the pipeline's default; prompts are padded to it
# diffusers' script adapts the single blocks' output projections by name (their `attn.to_out` is a Linear, the
# double blocks' a ModuleList); the names are made for the loaded transformer's number of single blocks.
ATTENTION_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj")
TEXT_BATCH = 8


def _single_block_outputs(count: int) -> tuple[str, ...]:
    return tuple(f"single_transformer_blocks.{number}.attn.to_out" for number in range(count))


class Flux2Family(FlowMatchingFamily):
    name = "flux2"
    label = "FLUX.2 [klein]"
    pipeline_classes = ("Flux2KleinPipeline",)
    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    hub_patterns = hub_files(components)
    lora_targets = ATTENTION_TARGETS + _single_block_outputs(24)  # as the script; load() sizes it to the model
    patch_size = 1  # the cached latents are patchified already
    # The base (undistilled) models' card: 50 steps, CFG 4. Distilled klein: 4 steps, no guidance (see __init__).
    default_validation_steps = 50
    default_validation_guidance = 4.0

    def __init__(self, folder: Path, config, device, weight_dtype):
        super().__init__(folder, config, device, weight_dtype)
        self.is_distilled = is_distilled(self.folder)
        if self.is_distilled:
            self.default_validation_steps = 4
            self.default_validation_guidance = 1.0

    # --- loading

    def load(self) -> None:
        from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        self.scheduler = self.load_component(FlowMatchEulerDiscreteScheduler, "scheduler")
        self.tokenizers = {"tokenizer": self.load_component(AutoTokenizer, "tokenizer")}
        text_encoder = self.load_component(Qwen3ForCausalLM, "text_encoder", dtype=self.weight_dtype)
        layers = text_encoder.config.num_hidden_layers
        if layers < max(TEXT_ENCODER_OUT_LAYERS):
            raise ModelUnavailable(
                f"base_model {self.config.base_model!r}: its text_encoder has {layers} layers; FLUX.2 klein "
                f"conditions on the hidden states after layers {', '.join(map(str, TEXT_ENCODER_OUT_LAYERS))}."
            )
        self.text_encoders = {"text_encoder": text_encoder}
        self.load_vae(AutoencoderKLFlux2)
        self.denoiser = self.load_component(Flux2Transformer2DModel, "transformer", torch_dtype=self.weight_dtype)
        self.freeze(self.denoiser, text_encoder)
        self.lora_targets = ATTENTION_TARGETS + _single_block_outputs(self.denoiser.config.num_single_layers)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def pixel_multiple(self) -> int:
        return self.vae_scale_factor * 2  # the VAE's downscale, then the 2x2 patchify

    # --- encoding

    def encode_images(self, pixels):
        import torch
        from diffusers import Flux2KleinPipeline

        with torch.no_grad():
            latents = self.vae.encode(pixels.to(self.device, dtype=self.vae.dtype)).latent_dist.mode()
            patches = Flux2KleinPipeline._patchify_latents(latents)
            statistics = self.vae.bn
            mean = statistics.running_mean.view(1, -1, 1, 1).to(patches)
            std = torch.sqrt(statistics.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(patches)
            return ((patches - mean) / std).float()

    def encode_prompts(self, texts: list[str]) -> list[dict]:
        import torch
        from diffusers import Flux2KleinPipeline

        items = []
        for start in range(0, len(texts), TEXT_BATCH):
            with torch.no_grad():
                embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds(
                    text_encoder=self.text_encoders["text_encoder"],
                    tokenizer=self.tokenizers["tokenizer"],
                    prompt=list(texts[start : start + TEXT_BATCH]),
                    dtype=self.weight_dtype,
                    device=self.device,
                    max_sequence_length=MAX_SEQUENCE_LENGTH,
                    hidden_states_layers=TEXT_ENCODER_OUT_LAYERS,
                )
            # [512, 3 x hidden] each, padding included (FLUX.2 klein 4B: 7680 features a token).
            items += [{"prompt_embeds": embed} for embed in embeds]
        return items

    # --- training

    def dynamic_shift_mu(self, latents) -> float:
        # The klein pipeline's mu depends on the token count and the number of sampling steps (not the
        # scheduler's base/max shift): train at the noise levels of the model's default sampling.
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        return compute_empirical_mu(self.image_seq_len(latents), self.default_validation_steps)

    def predict(self, noisy, sigmas, prompts: dict, geometry):
        import torch
        from diffusers import Flux2KleinPipeline

        dtype = self.weight_dtype
        embeds = prompts["prompt_embeds"].to(self.device, dtype=dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((noisy.shape[0],), float(self.config.guidance), device=self.device, dtype=dtype)
        packed = Flux2KleinPipeline._pack_latents(noisy)  # [B, C, H, W] -> [B, H*W, C]
        prediction = self.denoiser(
            hidden_states=packed,
            encoder_hidden_states=embeds,
            timestep=sigmas.to(self.device, dtype=dtype),  # the pipeline passes timestep / 1000 = sigma
            img_ids=Flux2KleinPipeline._prepare_latent_ids(noisy).to(self.device),
            txt_ids=Flux2KleinPipeline._prepare_text_ids(embeds).to(self.device),
            guidance=guidance,
            return_dict=False,
        )[0]
        return prediction[:, : packed.shape[1]].transpose(1, 2).reshape(noisy.shape)

    # --- outputs

    def pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

        pipeline = Flux2KleinPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config),
            vae=self.vae,
            text_encoder=self.text_encoders.get("text_encoder"),
            tokenizer=self.tokenizers.get("tokenizer"),
            transformer=self.denoiser,
            is_distilled=self.is_distilled,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def generate(self, pipeline, prompt: dict, negative: dict | None, *, height, width, steps, guidance, generator):
        import torch

        # The pipeline encodes "" itself when CFG has no negative embeddings, and the text encoder may be gone.
        true_cfg = guidance > 1 and negative is not None and not self.is_distilled
        extra = {"negative_prompt_embeds": negative["prompt_embeds"].to(self.weight_dtype)} if true_cfg else {}
        latents = pipeline(
            prompt_embeds=prompt["prompt_embeds"].to(self.weight_dtype),
            guidance_scale=guidance if true_cfg else 1.0,
            height=height,
            width=width,
            num_inference_steps=steps,
            generator=generator,
            output_type="latent",  # the VAE's own latents: un-normalised and un-patchified by the pipeline
            **extra,
        ).images
        # Decoded as the pipeline does, but by the fp32 VAE with autocast off (the transformer may run in half).
        with torch.autocast(self.device.type, enabled=False):
            pixels = self.vae.decode(latents.to(self.vae.dtype)).sample
        return pipeline.image_processor.postprocess(pixels, output_type="pil")


def is_distilled(folder: Path) -> bool:
    """Whether model_index.json marks the pipeline step-distilled (FLUX.2 klein 4B/9B, not the -base models)."""
    try:
        return bool(json.loads((folder / "model_index.json").read_text()).get("is_distilled", False))
    except (OSError, ValueError, AttributeError):
        return False


FAMILIES = (Flux2Family,)
